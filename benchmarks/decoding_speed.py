"""Greedy AR vs prompt lookup vs Jacobi decoding (fixed n and "auto"), side by side in one process, same prompts.

    python benchmarks/decoding_speed.py                     # embedded SmolLM2-135M-Instruct, demo prompts
    python benchmarks/decoding_speed.py --task gsm8k --num-prompts 10 --ns 4 8 16 32 --auto
    python benchmarks/decoding_speed.py --task humaneval --prompts HumanEval.jsonl.gz --ns 16 --auto
    python benchmarks/decoding_speed.py --task gsm8k --ns 16 --auto --prompt-lookup 0 --temperature 0.7   # sampling
    python benchmarks/decoding_speed.py --model runs/gsm8k/jf --task gsm8k --ns 16 --blocks 1 2 --inits random ngram

Per prompt the methods run back to back (AR, HF prompt lookup, Jacobi n=..., Jacobi auto, AR again; the two AR runs
show the noise), after one excluded warm-up of each. `--task` takes its prompts (in the benchmarks' format) from
`--prompts` or, without it, from the Hub / the offline packages as `hf-cllm bench` does. Prints a Markdown table:
tokens/s (median and total), TPF (tokens per forward, forwards counted by a hook), speedup (median per-prompt ratio
of time per token, AR ÷ method) and how many outputs are identical to AR. With `--temperature` every method samples
(Jacobi sampling keeps sampling's distribution), each from the same seed per prompt; outputs then differ by design.
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
from hf_cllm.assets import EMBEDDED_MODEL_NAME
from hf_cllm.bench import benchmark_names, get_benchmark
from hf_cllm.cli.common import resolve_model_path
from hf_cllm.cli.demo import DEMO_QUESTIONS
from hf_cllm.modeling import eos_token_ids
from hf_cllm.prompts import tokenize_prompts
from hf_cllm.speed import MethodSummary, timed_generate


def load_prompts(task: str | None, path: str | None, count: int, tokenizer, max_new_tokens: int) -> list[list[int]]:
    """Token ids of the prompts: a benchmark's (its format, chat template when there is one) or the demo's."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    if task is None:
        rows, task_format = [{"prompt": question} for question in DEMO_QUESTIONS[:count]], "generic"
    else:
        benchmark = get_benchmark(task)
        rows = [benchmark.prompt_row(row, chat=chat) for row in benchmark.load_rows(path)[:count]]
        task_format = benchmark.prompt_format
    prompts, _ = tokenize_prompts(rows, tokenizer, task_format, chat, None, max_new_tokens)
    return prompts


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
    parser.add_argument("--model", default=None, help="Hub id, folder or smollm2-135m-instruct (embedded, default)")
    parser.add_argument("--task", choices=benchmark_names(), default=None, help="default: demo prompts")
    parser.add_argument("--prompts", default=None, help="the task's data file (default: Hub, or offline packages)")
    parser.add_argument("--num-prompts", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--ns", type=int, nargs="*", default=[4, 8, 16, 32], help="fixed block sizes to run")
    parser.add_argument("--inits", nargs="+", default=["random"], help="jacobi_init values to compare")
    parser.add_argument(
        "--blocks", type=int, nargs="+", default=[1], help="jacobi_blocks values to compare (blocks in flight)"
    )
    parser.add_argument("--auto", action="store_true", help='also run jacobi_n="auto"')
    parser.add_argument("--prompt-lookup", type=int, default=10, help="HF prompt lookup tokens (0: do not run it)")
    parser.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default: greedy)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling, with --temperature")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    path = resolve_model_path(args.model or EMBEDDED_MODEL_NAME)  # the embedded name works, as in `hf-cllm`
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoCLLMForCausalLM.from_pretrained(path, dtype=torch.float32).to(args.device).eval()
    eos = eos_token_ids(model)

    prompts = load_prompts(args.task, args.prompts, args.num_prompts, tokenizer, args.max_new_tokens)
    sampling = {k: v for k, v in dict(temperature=args.temperature, top_p=args.top_p).items() if v is not None}
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=bool(sampling), return_dict_in_generate=True)
    common |= sampling
    mode = "sampling" if sampling else "greedy"
    methods = [(f"AR {mode}", {})]
    if args.prompt_lookup:
        methods += [(f"HF prompt lookup ({args.prompt_lookup})", {"prompt_lookup_num_tokens": args.prompt_lookup})]
    methods += [
        (f"Jacobi n={n} init={init}" + (f" blocks={k}" if k > 1 else ""),
         {"jacobi_n": n, "jacobi_init": init, "jacobi_blocks": k})
        for init in args.inits for n in args.ns for k in args.blocks
    ]  # fmt: skip
    if args.auto:
        methods += [("Jacobi auto", {"jacobi_n": "auto"})]
    methods += [(f"AR {mode} (again)", {})]
    summaries = {name: MethodSummary(name) for name, _ in methods}

    def encode(ids):
        return {"input_ids": torch.tensor([ids], device=args.device),
                "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=args.device)}  # fmt: skip

    warm = encode(prompts[0])  # also where "auto" measures its forward costs, once
    for _, extra in methods[:-1]:
        timed_generate(model, warm, eos, **{**common, **extra, "max_new_tokens": 8})

    for index, ids in enumerate(prompts, 1):
        inputs = encode(ids)
        baseline = None
        for name, extra in methods:
            torch.manual_seed(index)  # sampling: every method from the same seed for this prompt
            run = timed_generate(model, inputs, eos, **common, **extra)
            baseline = baseline or run
            summaries[name].runs.append(run)
            summaries[name].baseline.append(baseline)
        print(f"[{index}/{len(prompts)}] {len(baseline.tokens)} tokens", file=sys.stderr, flush=True)

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
        "prompts": len(prompts),
        "prompt_source": args.task or "builtin GSM8K-style questions",
        "prompt_file": args.prompts,
        "max_new_tokens": args.max_new_tokens,
        "sampling": sampling or None,
        "command": " ".join(sys.argv),
    }
    print("| method | tokens/s (median) | tokens/s (total) | TPF | speedup vs AR | identical |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['method']} | {row['tokens_per_s_median']:.1f} | {row['tokens_per_s_total']:.1f} | "
            f"{row['tpf']:.3f} | {row['speedup_median']:.2f}x | "
            f"{'—' if sampling else str(row['identical']) + '/' + str(row['prompts'])} |"
        )
    print("\nOne forward over a 150-token cache: " + ", ".join(f"{k} new: {ms:.0f} ms" for k, ms in costs.items()))
    print("\n" + ", ".join(f"{k}: {v}" for k, v in environment.items()))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"environment": environment, "rows": rows, "forward_ms": costs}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
