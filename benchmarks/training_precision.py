"""Consistency training in float32 vs bfloat16 autocast (fp32 master weights): step time and loss curves, side by side.

    python benchmarks/training_precision.py --toy                              # the tests' toy language, ~3 min
    python benchmarks/training_precision.py --trajectories traj/ --steps 50    # SmolLM2-135M on collected trajectories
    python benchmarks/training_precision.py --toy --trajectories traj/ --json docs/training_precision_cpu.json \\
        --plot docs/training_precision_cpu.png

Each run trains the same model from the same seed on the same rows twice: once in float32, once with `bf16=True`
(what `hf-cllm train` turns on by itself where the device computes bfloat16 natively: TrainingArguments' autocast,
the weights and optimizer state stay float32). Step times are the median of the logged steps after the first
(warm-up); the losses are the trainer's own logs. Prints a Markdown table; writes `--json` and a plot.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback


class StepTimes(TrainerCallback):
    """Wall time of every optimizer step."""

    def __init__(self):
        self.seconds, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


def train_once(build_model, tokenizer, dataset, bf16: bool, steps: int, config: dict) -> dict:
    """Train a fresh model for `steps` and return its losses per step and step times."""
    from hf_cllm import CLLMConfig, CLLMTrainer

    model = build_model()
    times = StepTimes()
    with tempfile.TemporaryDirectory() as folder:
        args = CLLMConfig(output_dir=folder, use_cpu=not torch.cuda.is_available(), bf16=bf16, report_to="none",
                          save_strategy="no", disable_tqdm=True, max_steps=steps, logging_steps=1, seed=0,
                          tpf_eval_prompts=0, **config)  # fmt: skip
        trainer = CLLMTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                              callbacks=[times])  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # the losses are in the table and the JSON, not printed per step
        trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    keys = [key for key in ("loss", "consistency_loss", "ar_loss") if key in logs[0]]
    return {
        "losses": {key: [log[key] for log in logs] for key in keys},
        "step_s_median": statistics.median(times.seconds[1:] or times.seconds),
        "step_s": times.seconds,
    }


def toy_setup():
    """The tests' toy language (tests/toy.py): its AR model and trajectories of 128 prompts, n=8."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    import toy

    from hf_cllm import collect_trajectories, load_trajectories

    tokenizer = toy.toy_tokenizer()
    folder = tempfile.mkdtemp()
    collect_trajectories(toy.toy_model(), tokenizer, toy.toy_prompts(128, seed=7), jacobi_n=toy.JACOBI_N,
                         max_new_tokens=32, output_dir=folder, batch_size=32, chat=False, progress=False)  # fmt: skip
    return (lambda: toy.toy_model()), tokenizer, load_trajectories(folder), dict(
        jacobi_n=toy.JACOBI_N, per_device_train_batch_size=8, learning_rate=2e-3, lr_scheduler_type="constant"
    )


def smollm2_setup(trajectories: str, model: str | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_cllm import load_trajectories
    from hf_cllm.assets import EMBEDDED_MODEL_NAME
    from hf_cllm.cli.common import resolve_model_path
    from hf_cllm.trajectories import read_settings

    path = resolve_model_path(model or EMBEDDED_MODEL_NAME)
    dataset = load_trajectories(trajectories)
    jacobi_n = read_settings(trajectories)["jacobi_n"]
    build = lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # noqa: E731
    return build, AutoTokenizer.from_pretrained(path), dataset, dict(
        jacobi_n=jacobi_n, per_device_train_batch_size=1, learning_rate=2e-5, lr_scheduler_type="constant"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", action="store_true", help="train the toy language's model")
    parser.add_argument("--toy-steps", type=int, default=200)
    parser.add_argument("--trajectories", default=None, help="a `hf-cllm collect` folder: train SmolLM2 on it")
    parser.add_argument("--model", default=None, help="with --trajectories (default: the embedded SmolLM2-135M)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    if not args.toy and not args.trajectories:
        parser.error("give --toy, --trajectories FOLDER or both")
    torch.set_num_threads(args.threads)

    setups = []
    if args.toy:
        setups.append(("toy language", toy_setup(), args.toy_steps))
    if args.trajectories:
        setups.append(("SmolLM2-135M", smollm2_setup(args.trajectories, args.model), args.steps))
    results = {}
    for name, (build, tokenizer, dataset, config), steps in setups:
        results[name] = {}
        for precision, bf16 in (("float32", False), ("bfloat16 autocast", True)):
            results[name][precision] = train_once(build, tokenizer, dataset, bf16, steps, config)
            print(f"[{name}, {precision} done]", file=sys.stderr, flush=True)

    print("| model | steps | float32 step | bf16 autocast step | bf16 ÷ fp32 time | final loss fp32 | final loss bf16 "
          "|")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        fp32, bf16 = runs["float32"], runs["bfloat16 autocast"]
        last = lambda run: statistics.mean(run["losses"]["loss"][-5:])  # noqa: E731
        print(f"| {name} | {len(fp32['losses']['loss'])} | {fp32['step_s_median']:.2f} s | "
              f"{bf16['step_s_median']:.2f} s | {bf16['step_s_median'] / fp32['step_s_median']:.2f} | "
              f"{last(fp32):.3f} | {last(bf16):.3f} |")  # fmt: skip
    print("(final loss: mean of the last 5 logged steps)")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
        for axis, (name, runs) in zip(axes[0], results.items()):
            for precision, run in runs.items():
                for key, style in (("consistency_loss", "-"), ("ar_loss", ":")):
                    if key in run["losses"]:
                        axis.plot(run["losses"][key], style, label=f"{precision}: {key}")
            axis.set(title=f"{name}: float32 vs bfloat16 autocast", xlabel="step", ylabel="loss", yscale="log")
            axis.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(args.plot, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
