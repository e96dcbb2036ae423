"""Base vs consistency-trained SmolLM2-135M on GSM8K test, measured in one run; writes docs/results.{json,md} + plots.

    python examples/gsm8k_smollm2/compare.py --cllm runs/gsm8k/full --data gsm8k_test.jsonl --limit 30

For every model (the base, then each `--cllm` folder: a full model or a LoRA adapter, merged here), the GSM8K
benchmark of `hf-cllm bench` runs greedy AR and Jacobi decoding (n=16) back to back on the same test items: accuracy
of both outputs, TPF, tokens/s, speedup. Then, per model, the per-iteration acceptance of Jacobi blocks on the first
prompts, and the TPF-vs-steps curve from each run's `trainer_state.json`. Each benchmark resumes from its
`items.jsonl`, so an interrupted run loses nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_cllm import enable_jacobi, jacobi_generate
from hf_cllm.bench import get_benchmark, run_benchmark
from hf_cllm.cli.common import resolve_model_path
from hf_cllm.prompts import tokenize_prompts


def is_degenerate(tokens: list[int]) -> bool:
    """The pilot's definition: a run of >= 10 identical tokens, or <= 4 distinct tokens among the last 40."""
    run = longest = 1
    for previous, token in zip(tokens, tokens[1:]):
        run = run + 1 if token == previous else 1
        longest = max(longest, run)
    return longest >= 10 or (len(tokens) >= 40 and len(set(tokens[-40:])) <= 4)


def repeated_share(tokens: list[int], n: int = 8) -> float:
    """Share of an answer's tokens inside an n-gram that already occurred earlier in it: phrase-level loops (a line
    said again and again), which `is_degenerate` misses and which n-gram guessing decodes fast."""
    seen, covered = set(), [False] * len(tokens)
    for start in range(len(tokens) - n + 1):
        gram = tuple(tokens[start : start + n])
        if gram in seen:
            covered[start : start + n] = [True] * n
        seen.add(gram)
    return sum(covered) / max(len(tokens), 1)


def load(path: str, base: str):
    """A model folder, or a LoRA adapter folder merged into `base`; with Jacobi decoding enabled (n=16)."""
    path = resolve_model_path(path)
    if (Path(path) / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), path)
        model = model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return enable_jacobi(model.eval(), jacobi_n=16)


@torch.no_grad()
def acceptance(model, prompts: list[list[int]], max_new_tokens: int, n: int = 16) -> list[float]:
    """Mean share of a block's n tokens settled after 1, 2, ... n Jacobi iterations (full blocks only)."""
    settled = torch.zeros(n)
    blocks = 0
    for ids in prompts:
        out = model.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, jacobi_n=n,
            custom_generate=jacobi_generate, return_dict_in_generate=True, jacobi_return_states=True,
        )  # fmt: skip
        for states in out.jacobi_states:  # (num_states, 1, width); the last state is the fixed point
            if states.shape[-1] < n:
                continue
            fixed = states[-1, 0]
            # the accepted prefix after iteration k: leading positions of state k+1 that equal the fixed point
            prefix = [int((state[0] == fixed).long().cumprod(0).sum()) for state in states[1:]]
            prefix += [n] * (n - len(prefix))
            settled += torch.tensor(prefix[:n], dtype=torch.float) / n
            blocks += 1
    return (settled / max(blocks, 1)).tolist()


def tpf_curve(run_dir: Path) -> list[dict]:
    """eval_tpf by step, from the run's trainer state (kept in its last checkpoint)."""
    checkpoints = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name[11:]))
    states = [run_dir / "trainer_state.json", *reversed(checkpoints)]
    state = next((path for path in states if path.exists()), None)
    if state is None:
        return []
    history = json.loads(state.read_text())["log_history"]
    return [{"step": h["step"], "tpf": h["eval_tpf"]} for h in history if "eval_tpf" in h]


def figures(report: dict, items: list[dict]) -> dict:
    jacobi_tokens = [item["jacobi"]["tokens"] for item in items]
    degenerate = [is_degenerate(tokens) for tokens in jacobi_tokens]
    clean = [item for item, bad in zip(items, degenerate) if not bad]
    clean_tpf = sum(len(i["jacobi"]["tokens"]) for i in clean) / max(sum(i["jacobi"]["forwards"] for i in clean), 1)
    return {
        "accuracy": report["quality"]["ar"],
        "accuracy_jacobi": report["quality"]["jacobi"],
        "tpf": report["speed"]["jacobi"]["tpf"],
        "tpf_without_degenerate": clean_tpf,
        "degenerate": sum(degenerate),
        "tokens_per_s": report["speed"]["jacobi"]["tokens_per_s_median"],
        "ar_tokens_per_s": report["speed"]["ar"]["tokens_per_s_median"],
        "speedup": report["speedup_median"],
        "identical": report["identical"],
        "items": report["items"],
        "new_tokens": report["speed"]["jacobi"]["new_tokens"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="smollm2-135m-instruct", help="the base model (default: the embedded one)")
    parser.add_argument("--cllm", nargs="+", required=True, help="trained run folders (full model or LoRA adapter)")
    parser.add_argument("--curves", nargs="*", default=[], help="more training runs: only their TPF-vs-steps curve")
    parser.add_argument("--data", default=None, help="GSM8K test jsonl (default: Hub, or the offline package)")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--acceptance-prompts", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default="runs/gsm8k/eval")
    parser.add_argument("--results", default="docs/results", help="writes <results>.json/.md and <results>_*.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base_path = resolve_model_path(args.base)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    gsm8k = get_benchmark("gsm8k")
    prompt_rows = [gsm8k.prompt_row(row, chat=True) for row in gsm8k.load_rows(args.data)[: args.acceptance_prompts]]
    prompts, _ = tokenize_prompts(prompt_rows, tokenizer, "gsm8k", True, None, args.max_new_tokens)

    results = {"settings": vars(args) | {"command": " ".join(sys.argv)}, "models": {}}
    for name, path in [("base", args.base)] + [(Path(p).name, p) for p in args.cllm]:
        model = load(path, base_path)
        out = Path(args.output_dir) / name
        report = run_benchmark(
            model, tokenizer, "gsm8k", out, data=args.data, jacobi_n=16, limit=args.limit,
            max_new_tokens=args.max_new_tokens, chat=True, command=" ".join(sys.argv),
        )  # fmt: skip
        items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines() if line.strip()]
        entry = figures(report, items)
        entry["acceptance"] = acceptance(model, prompts, 128)
        entry["tpf_over_steps"] = tpf_curve(Path(path)) if name != "base" else []
        entry["path"] = str(path)
        results["models"][name] = entry
        results["environment"] = report["environment"]
        print(f"{name}: {json.dumps({k: v for k, v in entry.items() if k != 'acceptance'})}", flush=True)

    results["curves"] = {Path(path).name: tpf_curve(Path(path)) for path in [*args.cllm, *args.curves]}
    names = list(results["models"])
    trained = [name for name in names if name != "base"]
    best = max(trained, key=lambda name: results["models"][name]["tpf"])
    results["base"] = {k: results["models"]["base"][k] for k in ("accuracy", "tpf", "tokens_per_s", "speedup")}
    results["cllm"] = {k: results["models"][best][k] for k in ("accuracy", "tpf", "tokens_per_s", "speedup")}
    results["cllm"]["run"] = best
    write(results, Path(args.results))
    return 0


def write(results: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    models = results["models"]
    print("| model | accuracy (AR) | accuracy (Jacobi) | TPF | TPF w/o degenerate | degenerate | AR tok/s "
          "| Jacobi tok/s | speedup | identical |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, e in models.items():
        print(
            f"| {name} | {e['accuracy']:.3f} | {e['accuracy_jacobi']:.3f} | {e['tpf']:.3f} | "
            f"{e['tpf_without_degenerate']:.3f} | {e['degenerate']}/{e['items']} | {e['ar_tokens_per_s']:.1f} | "
            f"{e['tokens_per_s']:.1f} | {e['speedup']:.2f}x | {e['identical']}/{e['items']} |"
        )

    figure, axis = plt.subplots(figsize=(6, 3.5))
    for name, curve in results["curves"].items():
        if curve:
            axis.plot([p["step"] for p in curve], [p["tpf"] for p in curve], marker="o", label=name)
    axis.axhline(models["base"]["tpf"], color="grey", linestyle="--", label="base (test)")
    axis.set_xlabel("training step")
    axis.set_ylabel("TPF (held-out prompts)")
    axis.set_title("TPF over consistency training")
    axis.legend()
    figure.tight_layout()
    figure.savefig(f"{stem}_tpf_over_steps.png", dpi=120)

    figure, axis = plt.subplots(figsize=(6, 3.5))
    for name, entry in models.items():
        axis.plot(range(1, len(entry["acceptance"]) + 1), entry["acceptance"], marker=".", label=name)
    axis.set_xlabel("Jacobi iteration within a 16-token block")
    axis.set_ylabel("share of the block settled")
    axis.set_title("Per-iteration acceptance (GSM8K test prompts)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(f"{stem}_acceptance.png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
