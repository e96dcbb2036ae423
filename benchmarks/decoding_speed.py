"""Greedy AR vs Jacobi decoding, measured side by side in one process on the same prompts.

    python benchmarks/decoding_speed.py                                   # embedded SmolLM2-135M-Instruct
    python benchmarks/decoding_speed.py --prompts gsm8k_test.jsonl --num-prompts 10 --ns 4 8 16 32

Per prompt the methods run back to back (AR, Jacobi n=..., AR again; the two AR runs show the noise), after one
excluded warm-up. Prints a Markdown table: tokens/s (median and total), TPF (tokens per forward, forwards counted by
a hook), speedup (median per-prompt ratio of time per token, AR ÷ method) and how many outputs are identical to AR.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
import transformers
from transformers import AutoTokenizer

from hf_cllm import AutoCLLMForCausalLM
from hf_cllm.assets import embedded_model_dir
from hf_cllm.cli.demo import DEMO_QUESTIONS
from hf_cllm.speed import MethodSummary, eos_token_ids, timed_generate


def load_questions(path: str | None, count: int) -> list[str]:
    if path is None:
        return DEMO_QUESTIONS[:count]
    with open(path) as handle:
        return [json.loads(line)["question"] for line in handle if line.strip()][:count]


def forward_cost_curve(model, tokenizer, sizes=(1, 4, 8, 16, 32), context=150, repeats=3) -> dict[int, float]:
    """Milliseconds for one forward of k new tokens over a `context`-token cache (min of `repeats`)."""
    from transformers import DynamicCache

    ids = torch.randint(100, 1000, (1, context + max(sizes)), device=model.device)
    costs = {}
    with torch.no_grad():
        for k in sizes:
            best = float("inf")
            for _ in range(repeats):
                cache = DynamicCache(config=model.config)
                model(input_ids=ids[:, :context], cache=cache, use_cache=True)
                start = time.perf_counter()
                model(input_ids=ids[:, context : context + k], cache=cache, use_cache=True)
                best = min(best, time.perf_counter() - start)
            costs[k] = 1000 * best
    return costs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Hub id or folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--prompts", default=None, help="jsonl with a 'question' field (e.g. GSM8K test)")
    parser.add_argument("--num-prompts", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--ns", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--inits", nargs="+", default=["random"], help="jacobi_init values to compare")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    path = args.model or str(embedded_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoCLLMForCausalLM.from_pretrained(path, dtype=torch.float32).to(args.device).eval()
    eos = eos_token_ids(model)

    questions = load_questions(args.prompts, args.num_prompts)
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=False, return_dict_in_generate=True)
    methods = [("AR greedy", {})]
    methods += [
        (f"Jacobi n={n} init={init}", {"jacobi_n": n, "jacobi_init": init}) for init in args.inits for n in args.ns
    ]
    methods += [("AR greedy (again)", {})]
    summaries = {name: MethodSummary(name) for name, _ in methods}

    def encode(question):
        messages = [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(args.device)

    warm = encode(questions[0])
    for _, extra in methods[:2]:
        timed_generate(model, warm, eos, **{**common, **extra, "max_new_tokens": 8})

    for index, question in enumerate(questions, 1):
        inputs = encode(question)
        baseline = None
        for name, extra in methods:
            run = timed_generate(model, inputs, eos, **common, **extra)
            baseline = baseline or run
            summaries[name].runs.append(run)
            summaries[name].baseline.append(baseline)
        print(f"[{index}/{len(questions)}] {len(baseline.tokens)} tokens", file=sys.stderr, flush=True)

    rows = [summaries[name].figures() for name, _ in methods]
    costs = forward_cost_curve(model, tokenizer)
    environment = {
        "model": path if args.model else "embedded SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to fp32)",
        "device": args.device,
        "dtype": "float32",
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "prompts": len(questions),
        "prompt_source": args.prompts or "builtin GSM8K-style questions",
        "max_new_tokens": args.max_new_tokens,
        "command": " ".join(sys.argv),
    }
    print("| method | tokens/s (median) | tokens/s (total) | TPF | speedup vs AR | identical |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['method']} | {row['tokens_per_s_median']:.1f} | {row['tokens_per_s_total']:.1f} | "
            f"{row['tpf']:.3f} | {row['speedup_median']:.2f}x | {row['identical']}/{row['prompts']} |"
        )
    print("\nOne forward over a 150-token cache: " + ", ".join(f"{k} new: {ms:.0f} ms" for k, ms in costs.items()))
    print("\n" + ", ".join(f"{k}: {v}" for k, v in environment.items()))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"environment": environment, "rows": rows, "forward_ms": costs}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
