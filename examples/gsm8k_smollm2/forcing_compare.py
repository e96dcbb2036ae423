"""Does training pay? The base model with `jacobi_n="auto"` against trained models with their decoders, in one run.

    python examples/gsm8k_smollm2/forcing_compare.py --models runs/gsm8k/jacobi_forcing --data gsm8k/test.jsonl \
        --limit 32 --blocks 1 2
    # on the CPU fast path: every model in bfloat16, n=8 and n=16
    python examples/gsm8k_smollm2/forcing_compare.py --models runs/gsm8k/fast --data gsm8k/test.jsonl \
        --dtype bfloat16 --ns 8 16 --blocks 1 2 --entry fast_path --tag fast --output-dir runs/gsm8k/fast_eval

Per GSM8K test question, back to back at batch 1 (`--dtype`, default fp32; 256 new tokens): the base model's greedy
AR and `jacobi_n="auto"`; then for every trained model its greedy AR, Jacobi n=16 (each `--ns`) with each `--blocks`
value, and `"auto"`. Forward passes are counted by a hook; outputs are checked against the same model's greedy output
(exact in fp32; in bf16 a window may round a near-tie the other way, so each first divergence is given with the top-2
logit gap of the greedy run's logits there, from one forward over the prompt and greedy answer). Quality:
GSM8K accuracy, degenerate answers, looping answers (>= 30 % of tokens in an 8-gram said before; their TPF comes
from copying, so TPF is also given without them), and the mean NLL per token of the base's greedy answers under each
model. Every question is one line of `<output-dir>/items.jsonl` (rerun to resume).
Writes `<results>_<tag>.json` with every figure, adds `base_auto` and `<entry>` (the best trained model with its best
decoding; both with a `_<dtype>` suffix when it is not float32) to `<results>.json` and these runs' held-out TPF over
training to its `forcing_curves` (`<entry>_curves` for another entry), and plots those curves beside the CLLM runs'
into `<results>_<tag>_tpf_over_steps.png`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from compare import is_degenerate, load, repeated_share, tpf_curve
from transformers import AutoTokenizer

from hf_cllm.bench import get_benchmark
from hf_cllm.cli.common import resolve_model_path
from hf_cllm.fast import resolve_dtype
from hf_cllm.modeling import eos_token_ids
from hf_cllm.prompts import tokenize_prompts
from hf_cllm.speed import timed_generate


def methods_of(blocks: list[int], ns: tuple[int, ...] = (16,)) -> list[tuple[str, dict]]:
    return (
        [("AR", {})]
        + [(f"n{n} blocks={k}", {"jacobi_n": n, "jacobi_blocks": k}) for n in ns for k in blocks]
        + [("auto", {"jacobi_n": "auto"})]
    )


@torch.no_grad()
def tie_gap(model, prompt: list[int], greedy: list[int], index: int) -> float | None:
    """The top-2 logit gap of `model` before greedy token `index` (one forward over prompt and greedy answer)."""
    if index >= len(greedy):
        return None
    logits = model(input_ids=torch.tensor([prompt + greedy[:index]])).logits[0, -1].float()
    top = logits.topk(2).values
    return float(top[0] - top[1])


@torch.no_grad()
def answer_nll(model, prompt: list[int], answer: list[int]) -> tuple[float, int]:
    """Summed NLL of `answer` after `prompt` under `model`, and its token count."""
    ids = torch.tensor([prompt + answer])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()  # in the model's dtype, read as fp32
    return float(torch.nn.functional.cross_entropy(logits, ids[0, len(prompt) :], reduction="sum")), len(answer)


def measure(models: dict, prompt: list[int], row: dict, methods: list, max_new_tokens: int, eos) -> dict:
    """One question: every model's runs back to back, then the NLL of the base's greedy answer under each and, for
    every run that left its model's greedy output, where (`first_difference`) and the greedy logits' top-2 gap."""
    inputs = {"input_ids": torch.tensor([prompt]), "attention_mask": torch.ones(1, len(prompt), dtype=torch.long)}
    common = dict(max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True)
    record = {"question": row["question"], "models": {}}
    for name, model in models.items():
        runs = {}
        for method, extra in methods if name != "base" else [("AR", {}), ("auto", {"jacobi_n": "auto"})]:
            run = timed_generate(model, inputs, eos, **common, **extra)
            runs[method] = {"tokens": run.tokens.tolist(), "seconds": run.seconds, "forwards": run.forwards}
        greedy = runs["AR"]["tokens"]
        for run in (run for run in runs.values() if run["tokens"] != greedy):
            pairs = enumerate(zip(run["tokens"], greedy))
            index = next((i for i, (a, b) in pairs if a != b), min(len(run["tokens"]), len(greedy)))
            run["first_difference"] = [index, tie_gap(model, prompt, greedy, index)]
        record["models"][name] = runs
    base_answer = record["models"]["base"]["AR"]["tokens"]
    for name, model in models.items():
        record["models"][name]["nll_of_base_answer"] = answer_nll(model, prompt, base_answer)
    return record


LOOPING = 0.3  # an answer with this share of its tokens in repeated 8-grams is counted as looping


def summarise(items: list[dict], name: str, method: str, tokenizer, rows: list[dict]) -> dict:
    """A method's figures over the questions, against the same model's greedy runs (and the base's `auto`)."""
    runs = [item["models"][name][method] for item in items]
    ar = [item["models"][name]["AR"] for item in items]
    base_auto = [item["models"]["base"]["auto"] for item in items]
    per_token = lambda run: run["seconds"] / max(len(run["tokens"]), 1)  # noqa: E731
    texts = [tokenizer.decode(run["tokens"], skip_special_tokens=True) for run in runs]
    shares = [repeated_share(run["tokens"]) for run in runs]
    fresh = [run for run, share in zip(runs, shares) if share < LOOPING]
    return {
        "accuracy": get_benchmark("gsm8k").score(texts, rows[: len(items)])["accuracy"],
        "tpf": sum(len(r["tokens"]) for r in runs) / sum(r["forwards"] for r in runs),
        "tokens_per_s": statistics.median(len(r["tokens"]) / r["seconds"] for r in runs),
        "speedup": statistics.median(per_token(a) / per_token(r) for r, a in zip(runs, ar)),
        "speedup_vs_base_auto": statistics.median(per_token(b) / per_token(r) for r, b in zip(runs, base_auto)),
        "identical": sum(r["tokens"] == a["tokens"] for r, a in zip(runs, ar)),
        "first_differences": [r["first_difference"] for r in runs if "first_difference" in r],  # [index, gap]
        "degenerate": sum(is_degenerate(r["tokens"]) for r in runs),
        "repeated_share": statistics.mean(shares),
        "looping": len(runs) - len(fresh),
        "tpf_without_looping": sum(len(r["tokens"]) for r in fresh) / max(sum(r["forwards"] for r in fresh), 1),
        "items": len(runs),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="smollm2-135m-instruct", help="the base model (default: the embedded one)")
    parser.add_argument("--models", nargs="+", required=True, help="trained run folders")
    parser.add_argument("--data", default=None, help="GSM8K test jsonl (default: Hub, or the offline package)")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument(
        "--blocks",
        type=int,
        nargs="*",
        default=[1, 2],
        help="jacobi_blocks values for each --ns (none: only greedy, auto)",
    )
    parser.add_argument("--ns", type=int, nargs="+", default=[16], help="block sizes n for the trained models")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"],
                        help="every model's dtype (auto: bf16 where the CPU computes it natively)")  # fmt: skip
    parser.add_argument("--entry", default="jacobi_forcing", help="<results>.json key of the best trained run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default="runs/gsm8k/forcing_eval")
    parser.add_argument("--results", default="docs/results", help="reads/updates <results>.json")
    parser.add_argument("--tag", default="forcing", help="this run's figures go to <results>_<tag>.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base_path = resolve_model_path(args.base)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    gsm8k = get_benchmark("gsm8k")
    rows = gsm8k.load_rows(args.data)[: args.limit]
    prompts, _ = tokenize_prompts([gsm8k.prompt_row(r, chat=True) for r in rows], tokenizer, "gsm8k", True, None,
                                  args.max_new_tokens)  # fmt: skip
    paths = {Path(p).name: p for p in args.models}
    dtype = resolve_dtype(args.dtype)
    models = {"base": load(args.base, base_path)} | {name: load(path, base_path) for name, path in paths.items()}
    models = {name: model.to(dtype) for name, model in models.items()}
    methods = methods_of(args.blocks, tuple(args.ns))
    eos = eos_token_ids(models["base"])
    warm = {
        "input_ids": torch.tensor([prompts[0]]),
        "attention_mask": torch.ones(1, len(prompts[0]), dtype=torch.long),
    }
    for model in models.values():  # warm-up, and where "auto" measures its forward costs once
        for _, extra in methods:
            timed_generate(model, warm, eos, max_new_tokens=8, do_sample=False, return_dict_in_generate=True, **extra)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "items.jsonl"
    items = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for index in range(len(items), len(rows)):
        items.append(measure(models, prompts[index], rows[index], methods, args.max_new_tokens, eos))
        with log.open("a") as handle:
            handle.write(json.dumps(items[-1]) + "\n")
        print(f"[{index + 1}/{len(rows)}]", file=sys.stderr, flush=True)

    summary = {
        "settings": vars(args) | {"command": " ".join(sys.argv), "dtype": str(dtype).removeprefix("torch.")},
        "models": {},
    }
    for name in models:
        names = ["AR", "auto"] if name == "base" else [m for m, _ in methods]
        nll, count = (sum(item["models"][name]["nll_of_base_answer"][i] for item in items) for i in (0, 1))
        summary["models"][name] = {m: summarise(items, name, m, tokenizer, rows) for m in names}
        summary["models"][name]["nll_of_base_answers"] = nll / count
        summary["models"][name]["tpf_over_steps"] = tpf_curve(Path(paths[name])) if name in paths else []
    print(
        "| model | decoding | accuracy | TPF | TPF without looping answers | tokens/s | speedup vs its AR | "
        "vs base auto | identical | degenerate | looping | repeated 8-gram share |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, entry in summary["models"].items():
        for method, f in entry.items():
            if isinstance(f, dict):
                print(f"| {name} | {method} | {f['accuracy']:.3f} | {f['tpf']:.3f} | {f['tpf_without_looping']:.3f} | "
                      f"{f['tokens_per_s']:.1f} | {f['speedup']:.2f}x | {f['speedup_vs_base_auto']:.2f}x | "
                      f"{f['identical']}/{f['items']} | {f['degenerate']}/{f['items']} | "
                      f"{f['looping']}/{f['items']} | {f['repeated_share']:.2f} |")  # fmt: skip
        print(f"| {name} | NLL of the base's greedy answers | {entry['nll_of_base_answers']:.3f} per token |")
    write(summary, Path(args.results), args.tag, args.entry)
    return 0


def write(summary: dict, stem: Path, tag: str, entry: str) -> None:
    """`<stem>_<tag>.json`, the new top-level entries and curves of `<stem>.json`, and the TPF-over-steps plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}_{tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
    fields = ("accuracy", "tpf", "tokens_per_s", "speedup")
    trained = [(name, method, f) for name, entry in summary["models"].items() if name != "base"
               for method, f in entry.items() if isinstance(f, dict) and method != "AR"]  # fmt: skip
    name, method, best = max(trained, key=lambda t: t[2]["tokens_per_s"])
    results_path = stem.with_suffix(".json")
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    dtype = summary["settings"]["dtype"]
    suffix = "" if dtype == "float32" else f"_{dtype}"
    models = summary["models"]
    base_auto = {k: models["base"]["auto"][k] for k in fields} | {"dtype": dtype}
    results[f"base_auto{suffix}"] = base_auto
    results[f"{entry}{suffix}"] = {k: best[k] for k in fields} | {
        "run": name,
        "decoding": method,
        "dtype": dtype,
        "speedup_vs_base_auto": best["speedup_vs_base_auto"],
        "base_auto_same_run": base_auto,
        "nll_of_base_answers": {
            "base": models["base"]["nll_of_base_answers"],
            "trained": models[name]["nll_of_base_answers"],
        },
    }
    curves = results.setdefault("forcing_curves" if entry == "jacobi_forcing" else f"{entry}_curves", {})
    curves.update({run: e["tpf_over_steps"] for run, e in summary["models"].items() if e["tpf_over_steps"]})
    results_path.write_text(json.dumps(results, indent=2) + "\n")

    figure, axis = plt.subplots(figsize=(6, 3.5))
    earlier = {label: curve for label, curve in results.get("curves", {}).items() if label in ("full", "lr3e-4")}
    for label, curve in earlier.items():
        axis.plot([p["step"] for p in curve], [p["tpf"] for p in curve], marker="o", label=f"CLLM recipe ({label})")
    for label, curve in curves.items():
        axis.plot([p["step"] for p in curve], [p["tpf"] for p in curve], marker="s", label=label)
    axis.set_xlabel("training step (batch 1)")
    axis.set_ylabel("eval_tpf, n=16 (4 held-out prompts)")
    axis.set_title("held-out TPF over training" + (": CLLM runs of 2026-11-26 and these" if earlier else ""), size=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(f"{stem}_{tag}_tpf_over_steps.png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
