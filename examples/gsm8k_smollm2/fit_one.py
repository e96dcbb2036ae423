"""One-question fit diagnostic: can SmolLM2-135M learn to Jacobi-decode ONE memorised answer in parallel?

    python examples/gsm8k_smollm2/fit_one.py --data path/to/gsm8k/train.jsonl

Collects the Jacobi trajectory of one GSM8K train question (n=16 and n=8, float32 teacher, 128 new tokens), then
trains the base model on it alone with `CLLMTrainer` (the CLLM recipe: every state of a block drawn at random,
global consistency to the fixed point, `hard_ce`), for each run of a small grid: consistency loss alone and with the
AR loss, learning rates 1e-4 / 3e-4 / 1e-3, n=16 and n=8, and 8 trajectories of the question (different first
guesses) instead of one. Every `--eval-every` steps the model Jacobi-decodes the
question (float32, so the output is its own greedy output) and the script records TPF and how much of the
memorised answer it reproduces (common prefix with the recorded answer). If TPF on one memorised question does not
pass 2, something in the loss, mask or targets is wrong: a defect, not a compute limit.

Writes runs/fit1/<run>/ (checkpoints: rerun the same command to resume) and, when every run is done,
docs/results_fit1.{json,png}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from hf_cllm import CLLMConfig, CLLMTrainer, collect_trajectories, jacobi_generate, load_trajectories
from hf_cllm.cli.common import resolve_model_path
from hf_cllm.fast import computes_bf16


# (name, n, learning rate, AR weight, steps, trajectories): AR weight 0 is the consistency loss alone; trajectories
# > 1 collects the question that many times with different random first guesses (more distinct states).
GRID = [
    ("cons_lr3e-4_n16", 16, 3e-4, 0.0, 60, 1),
    ("ar_cons_lr1e-4_n16", 16, 1e-4, 10.0, 300, 1),
    ("ar_cons_lr3e-4_n16", 16, 3e-4, 10.0, 300, 1),
    ("ar_cons_lr1e-3_n16", 16, 1e-3, 10.0, 300, 1),
    ("ar_cons_lr3e-4_n8", 8, 3e-4, 10.0, 300, 1),
    ("ar_cons_lr1e-3_n16_8traj", 16, 1e-3, 10.0, 300, 8),
]


def common_prefix(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


class FitProbe(TrainerCallback):
    """Jacobi-decodes the one question at step 0 and every `every` steps; logs `fit_tpf` (new tokens per forward)
    and `fit_answer_prefix` (share of the recorded answer its output reproduces before the first difference)."""

    def __init__(self, trainer, probe_model, prompt: list[int], answer: list[int], jacobi_n: int, every: int):
        self.trainer, self.probe_model, self.jacobi_n, self.every = trainer, probe_model, jacobi_n, every
        self.prompt, self.answer = prompt, answer

    def probe(self):
        # A plain float32 copy of the weights: under bf16 mixed precision accelerate wraps the trained model's forward
        # in autocast, and the probe must decode exactly (Jacobi output = the model's own greedy output).
        model = self.probe_model
        model.load_state_dict(self.trainer.model.state_dict())
        with torch.no_grad():
            out = model.generate(
                torch.tensor([self.prompt]), attention_mask=torch.ones(1, len(self.prompt), dtype=torch.long),
                custom_generate=jacobi_generate, jacobi_n=self.jacobi_n, max_new_tokens=len(self.answer),
                do_sample=False, return_dict_in_generate=True, pad_token_id=0,
            )  # fmt: skip
        tokens = out.sequences[0, len(self.prompt) :].tolist()
        self.trainer.log({
            "fit_tpf": len(tokens) / int(out.num_forward_passes[0]),
            "fit_answer_prefix": common_prefix(tokens, self.answer) / len(self.answer),
        })  # fmt: skip

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self.probe()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.probe()


def collect(model_path, tokenizer, data: str, question: int, jacobi_n: int, out: Path, count: int = 1):
    """The question's trajectory, `count` times with different seeds of the first guesses (one dataset)."""
    from datasets import concatenate_datasets

    teacher = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    rows = [json.loads(line) for line in Path(data).read_text().splitlines() if line.strip()][question : question + 1]
    parts = []
    for seed in range(count):
        folder = out / (f"traj_n{jacobi_n}" if seed == 0 else f"traj_n{jacobi_n}_seed{seed}")
        collect_trajectories(teacher, tokenizer, rows, jacobi_n=jacobi_n, max_new_tokens=128, output_dir=folder,
                             task="gsm8k", shard_size=1, seed=seed, progress=False)  # fmt: skip
        parts.append(load_trajectories(folder))
    return concatenate_datasets(parts)


def train_one(name, jacobi_n, lr, ar_weight, steps, trajectories, model_path, tokenizer, out: Path, every: int):
    """Train on the question's trajectories (batch 1: one trajectory, a random state per block, per step)."""
    folder = out / name
    history_file = folder / "history.json"
    if history_file.exists():
        return json.loads(history_file.read_text())
    config = CLLMConfig(
        output_dir=str(folder), jacobi_n=jacobi_n, recipe="cllm", distance="hard_ce", ar_weight=ar_weight,
        learning_rate=lr, lr_scheduler_type="constant", max_steps=steps, per_device_train_batch_size=1,
        logging_steps=5, save_steps=100, save_total_limit=1, report_to="none", seed=0, tpf_eval_prompts=0,
        bf16=computes_bf16("cpu"), disable_tqdm=True,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    trainer = CLLMTrainer(model=model, args=config, train_dataset=trajectories, processing_class=tokenizer)
    row = trajectories[0]
    probe_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    trainer.add_callback(FitProbe(trainer, probe_model, row["prompt_ids"], row["answer_ids"], jacobi_n, every))
    trainer.train(resume_from_checkpoint=get_last_checkpoint(str(folder)) if folder.exists() else None)
    history = {
        "jacobi_n": jacobi_n, "learning_rate": lr, "ar_weight": ar_weight, "steps": steps,
        "probes": [{k: log[k] for k in ("step", "fit_tpf", "fit_answer_prefix")}
                   for log in trainer.state.log_history if "fit_tpf" in log],
        "losses": [{k: log[k] for k in ("step", "ar_loss", "consistency_loss")}
                   for log in trainer.state.log_history if "ar_loss" in log],
    }  # fmt: skip
    history_file.write_text(json.dumps(history, indent=1))
    return history


def final_probes(folder: Path, row: dict, jacobi_n: int) -> dict:
    """The trained model's TPF on the question from the decoder's own random guesses (5 seeds) and from the first
    guesses the training trajectory started from: if the second is high and the first is not, the losses, mask and
    targets work, and what is missing is generalisation to guesses never trained on."""
    from hf_cllm.collection import seeded_context_init

    checkpoint = get_last_checkpoint(str(folder))
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    prompt = torch.tensor([row["prompt_ids"]])

    def tpf(**init) -> float:
        with torch.no_grad():
            out = model.generate(
                prompt, attention_mask=torch.ones_like(prompt), custom_generate=jacobi_generate, jacobi_n=jacobi_n,
                max_new_tokens=len(row["answer_ids"]), do_sample=False, return_dict_in_generate=True, pad_token_id=0,
                **init,
            )  # fmt: skip
        return float(out.num_new_tokens[0] / out.num_forward_passes[0])

    own = seeded_context_init([row["prompt_index"]], [prompt.shape[1]], prompt.shape[1], jacobi_n, seed=0)
    return {"step": int(checkpoint.rsplit("-", 1)[1]), "tpf_random_guesses": [tpf(jacobi_seed=s) for s in range(5)],
            "tpf_training_guesses": tpf(jacobi_init=own)}  # fmt: skip


def plot(results: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, history in results.items():
        steps = [p["step"] for p in history["probes"]]
        left.plot(steps, [p["fit_tpf"] for p in history["probes"]], marker=".", label=name)
        right.plot(steps, [p["fit_answer_prefix"] for p in history["probes"]], marker=".", label=name)
    left.set(xlabel="training step", ylabel="TPF on the question", title="Jacobi tokens per forward pass")
    right.set(xlabel="training step", ylabel="share of the answer reproduced", title="Memorised answer kept",
              ylim=(0, 1.05))
    left.legend(fontsize=8)
    figure.suptitle("One GSM8K train question, SmolLM2-135M, CLLM recipe (hard_ce), bf16 autocast on a CPU")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="GSM8K train.jsonl")
    parser.add_argument("--question", type=int, default=0)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, default=Path("runs/fit1"))
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--runs", nargs="*", help="names from the grid (default: all)")
    parser.add_argument("--json", type=Path, default=Path("docs/results_fit1.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/results_fit1.png"))
    args = parser.parse_args(argv)

    model_path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    grid = [run for run in GRID if not args.runs or run[0] in args.runs]
    data = {(n, count): collect(model_path, tokenizer, args.data, args.question, n, args.out, count)
            for n, count in {(run[1], run[5]) for run in grid}}  # fmt: skip
    results = {}
    for name, jacobi_n, lr, ar_weight, steps, count in grid:
        print(f"== {name}", flush=True)
        trajectories = data[jacobi_n, count]
        results[name] = train_one(name, jacobi_n, lr, ar_weight, steps, trajectories, model_path, tokenizer,
                                  args.out, args.eval_every)  # fmt: skip
        results[name]["trajectories"] = count
        if "final" not in results[name]:
            results[name]["final"] = final_probes(args.out / name, trajectories[0], jacobi_n)
            (args.out / name / "history.json").write_text(json.dumps(results[name], indent=1))
        final = results[name]["final"]
        print(f"   final TPF from random guesses {', '.join(f'{t:.2f}' for t in final['tpf_random_guesses'])}; "
              f"from the training trajectory's own first guesses {final['tpf_training_guesses']:.2f}", flush=True)
        last = results[name]["probes"][-1]
        print(f"   step {last['step']}: TPF {last['fit_tpf']:.2f}, answer kept {last['fit_answer_prefix']:.0%}",
              flush=True)
    if len(results) == len(GRID):
        args.json.write_text(json.dumps({"question": args.question, "runs": results}, indent=1))
        plot(results, args.plot)
        print(f"wrote {args.json} and {args.plot}")


if __name__ == "__main__":
    main()
