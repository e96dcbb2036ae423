"""Greedy AR vs prompt lookup vs Jacobi decoding (fixed n and "auto"), side by side in one process, same prompts.

    python benchmarks/decoding_speed.py                     # embedded SmolLM2-135M-Instruct, demo prompts
    python benchmarks/decoding_speed.py --task gsm8k --num-prompts 10 --ns 4 8 16 32 --auto
    python benchmarks/decoding_speed.py --task humaneval --prompts HumanEval.jsonl.gz --ns 16 --auto
    python benchmarks/decoding_speed.py --task gsm8k --ns 16 --auto --prompt-lookup 0 --temperature 0.7   # sampling
    python benchmarks/decoding_speed.py --model runs/gsm8k/jf --task gsm8k --ns 16 --blocks 1 2 --inits random ngram
    python benchmarks/decoding_speed.py --task gsm8k --dtype bfloat16 --compile --ns 8 --auto --quality   # fast path

Per prompt the methods run back to back (AR, HF prompt lookup, Jacobi n=..., Jacobi auto, AR again; the two AR runs
show the noise), each prompt starting one method later in that cycle, after one excluded warm-up of each. `--task`
takes its prompts (in the benchmarks' format) from `--prompts` or, without it, from the Hub / the offline packages as
`hf-cllm bench` does. Prints a Markdown table:
tokens/s (median and total), TPF (tokens per forward, forwards counted by a hook), speedup (median per-prompt ratio
of time per token, AR ÷ method) and how many outputs are identical to AR. With `--temperature` every method samples
(Jacobi sampling keeps sampling's distribution), each from the same seed per prompt; outputs then differ by design.

The fast path (`--dtype auto|bfloat16`, `--compile`): every method runs in that dtype with a static cache (compiled
with `hf_cllm.fast.compile_config`), and two more rows run first: stock `generate()` greedy in float32 (what a
transformers user runs today; "× stock" is each method's median speedup over it) and greedy at the Jacobi windows'
width (`jacobi_n=1, jacobi_width=W`), the reference bfloat16 Jacobi equals exactly. "identical" counts outputs equal
to greedy in the same dtype; at each first divergence the top-2 gap of greedy's logits there is listed (near-ties).
`--quality` adds each method's mean NLL of its outputs under the float32 model and, with `--task`, its task score.
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
from hf_cllm.decoding import CPU_WINDOW
from hf_cllm.fast import DTYPES, compile_config, resolve_dtype
from hf_cllm.modeling import eos_token_ids
from hf_cllm.prompts import tokenize_prompts
from hf_cllm.speed import MethodSummary, first_divergence, timed_generate


def load_prompts(task: str | None, path: str | None, count: int, tokenizer, max_new_tokens: int):
    """Token ids of the prompts, a benchmark's (its format, chat template when there is one) or the demo's, and the
    rows they come from (for scoring)."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    if task is None:
        rows = [{"prompt": question} for question in DEMO_QUESTIONS[:count]]
        prompt_rows, task_format = rows, "generic"
    else:
        benchmark = get_benchmark(task)
        rows = benchmark.load_rows(path)[:count]
        prompt_rows, task_format = [benchmark.prompt_row(row, chat=chat) for row in rows], benchmark.prompt_format
    prompts, _ = tokenize_prompts(prompt_rows, tokenizer, task_format, chat, None, max_new_tokens)
    return prompts, rows


@torch.no_grad()
def mean_nll(model, prompt: list[int], tokens: torch.Tensor) -> tuple[float, int]:
    """(summed negative log-likelihood, count) of `tokens` after `prompt` under `model`."""
    if len(tokens) == 0:
        return 0.0, 0
    ids = torch.tensor([prompt + tokens.tolist()], device=model.device)
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, len(prompt) :], reduction="sum")
    return float(nll), len(tokens)


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
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="auto: bfloat16 where native (fast path)")
    parser.add_argument("--compile", action="store_true", help="compile decoding (static cache, frozen weights)")
    parser.add_argument("--static", action="store_true", help="a static cache (windows of one width) uncompiled")
    parser.add_argument("--quality", action="store_true", help="NLL under the float32 model, and the task's score")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    path = resolve_model_path(args.model or EMBEDDED_MODEL_NAME)  # the embedded name works, as in `hf-cllm`
    tokenizer = AutoTokenizer.from_pretrained(path)
    dtype = resolve_dtype(args.dtype, args.device)
    model = AutoCLLMForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
    fast = dtype != torch.float32 or args.compile or args.static
    reference = model  # float32: stock greedy and the NLL judge
    if dtype != torch.float32 and (fast or args.quality):
        reference = AutoCLLMForCausalLM.from_pretrained(path, dtype=torch.float32).to(args.device).eval()
    eos = eos_token_ids(model)

    prompts, prompt_rows = load_prompts(args.task, args.prompts, args.num_prompts, tokenizer, args.max_new_tokens)
    sampling = {k: v for k, v in dict(temperature=args.temperature, top_p=args.top_p).items() if v is not None}
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=bool(sampling), return_dict_in_generate=True)
    common |= sampling
    if args.compile or args.static:  # one cache size for every call: one graph per width
        longest = max(len(ids) for ids in prompts) + args.max_new_tokens
        common |= {"cache_implementation": "static", "max_cache_len": longest + max([*args.ns, CPU_WINDOW])}
        common |= {"compile_config": compile_config(args.device)} if args.compile else {"disable_compile": True}
    mode = "sampling" if sampling else "greedy"
    label = str(dtype).removeprefix("torch.") + (", compiled" if args.compile else ", static" if args.static else "")
    methods = []  # (name, model, generate arguments)
    if fast and not sampling:
        methods += [("stock greedy, float32", reference, dict(max_new_tokens=args.max_new_tokens, do_sample=False,
                                                             return_dict_in_generate=True))]  # fmt: skip
    methods += [(f"AR {mode}, {label}", model, dict(output_logits=not sampling))]
    width = max([*args.ns, CPU_WINDOW if args.auto else 1]) * max(args.blocks)
    if (args.compile or args.static) and not sampling:
        methods += [(f"greedy at width {width} (jacobi_n=1)", model, dict(jacobi_n=1, jacobi_width=width))]
    if args.prompt_lookup:
        methods += [(f"HF prompt lookup ({args.prompt_lookup})", model,
                     {"prompt_lookup_num_tokens": args.prompt_lookup})]  # fmt: skip
    methods += [
        (f"Jacobi n={n} init={init}" + (f" blocks={k}" if k > 1 else ""), model,
         {"jacobi_n": n, "jacobi_init": init, "jacobi_blocks": k} | ({"jacobi_width": width} if n * k < width and
                                                                     (args.compile or args.static) else {}))
        for init in args.inits for n in args.ns for k in args.blocks
    ]  # fmt: skip
    if args.auto:
        methods += [("Jacobi auto", model, {"jacobi_n": "auto"} | ({"jacobi_width": width} if "max_cache_len" in
                                                                   common else {}))]  # fmt: skip
    methods += [(f"AR {mode} (again)", model, {})]
    names = [name for name, _, _ in methods]
    baseline_name = names[1] if fast and not sampling else names[0]
    summaries = {name: MethodSummary(name) for name in names}

    def encode(ids):
        return {"input_ids": torch.tensor([ids], device=args.device),
                "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=args.device)}  # fmt: skip

    def run(name, inputs, tokens=None):
        _, method_model, extra = methods[names.index(name)]
        arguments = extra if method_model is reference and fast else {**common, **extra}
        return timed_generate(method_model, inputs, eos, **arguments | ({"max_new_tokens": tokens} if tokens else {}))

    warm = encode(prompts[0])  # also where "auto" measures its forward costs, and where compiling happens
    start = time.perf_counter()
    for name in names[:-1]:
        run(name, warm, tokens=8)
    warm_up_seconds = time.perf_counter() - start
    print(f"warm-up{' and compilation' if args.compile else ''}: {warm_up_seconds:.0f} s", file=sys.stderr)

    stock_runs, divergences = [], {name: [] for name in names}
    for index, ids in enumerate(prompts, 1):
        inputs = encode(ids)
        runs = {}
        shift = (index - 1) % len(names)  # each prompt starts at another method: no method always follows another
        for name in names[shift:] + names[:shift]:
            torch.manual_seed(index)  # sampling: every method from the same seed for this prompt
            runs[name] = run(name, inputs)
        for name in names:
            summaries[name].runs.append(runs[name])
            summaries[name].baseline.append(runs[baseline_name])
            if not sampling:
                divergence = first_divergence(runs[name].tokens, runs[baseline_name])
                divergences[name].append(divergence and {"token": divergence[0], "gap": divergence[1]})
        stock_runs.append(runs[names[0]])
        print(f"[{index}/{len(prompts)}] {len(runs[baseline_name].tokens)} tokens", file=sys.stderr, flush=True)

    rows = []
    for name in names:
        row = summaries[name].figures()
        row["speedup_vs_stock_median"] = MethodSummary(name, summaries[name].runs, stock_runs).figures()[
            "speedup_median"]  # fmt: skip
        row["divergences"] = divergences[name]
        if (args.compile or args.static) and not sampling:
            exact = summaries[names[2]].runs  # greedy at the windows' width
            row["identical_to_width_greedy"] = sum(torch.equal(r.tokens, e.tokens)
                                                   for r, e in zip(summaries[name].runs, exact))  # fmt: skip
        if args.quality:
            nll = [mean_nll(reference, ids, r.tokens) for ids, r in zip(prompts, summaries[name].runs)]
            row["nll_fp32"] = sum(total for total, _ in nll) / max(sum(count for _, count in nll), 1)
            if args.task:
                texts = [tokenizer.decode(r.tokens, skip_special_tokens=True) for r in summaries[name].runs]
                score = get_benchmark(args.task).score(texts, prompt_rows)
                metric = next(iter(score))
                row["task_score"] = {metric: score[metric]}
        rows.append(row)
    costs = forward_cost_curve(model, tokenizer)
    environment = {
        "model": path if args.model else "embedded SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to fp32)",
        "device": args.device,
        "dtype": str(dtype).removeprefix("torch."),
        "compiled": args.compile,
        "static_cache": args.compile or args.static,
        "warm_up_s": round(warm_up_seconds, 1),
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
    extra_columns = (["× stock fp32"] if fast and not sampling else []) + (
        ["= width greedy"] if (args.compile or args.static) and not sampling else []) + (
        ["NLL (fp32)"] if args.quality else []) + (["score"] if args.quality and args.task else [])  # fmt: skip
    columns = ["tokens/s (median)", "tokens/s (total)", "TPF", "window", "speedup vs AR", "identical", *extra_columns]
    print("| method | " + " | ".join(columns) + " | first divergences (token: top-2 gap) |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(extra_columns) + "---|")
    for row in rows:
        cells = [f"{row['speedup_vs_stock_median']:.2f}x"] if fast and not sampling else []
        if (args.compile or args.static) and not sampling:
            cells.append(f"{row['identical_to_width_greedy']}/{row['prompts']}")
        if args.quality:
            cells.append(f"{row['nll_fp32']:.3f}")
            if args.task:
                cells.append(", ".join(f"{k} {v:.3f}" for k, v in row["task_score"].items()))
        gaps = ", ".join(f"{d['token']}: " + ("—" if d["gap"] is None else f"{d['gap']:.3f}")
                         for d in row["divergences"] if d is not None)  # fmt: skip
        print(
            f"| {row['method']} | {row['tokens_per_s_median']:.1f} | {row['tokens_per_s_total']:.1f} | "
            f"{row['tpf']:.3f} | {row['window_width']:.1f} | {row['speedup_median']:.2f}x | "
            f"{'—' if sampling else str(row['identical']) + '/' + str(row['prompts'])} | "
            + "".join(f"{cell} | " for cell in cells) + f"{gaps or '—'} |"
        )
    print("\nOne forward over a 150-token cache: " + ", ".join(f"{k} new: {ms:.0f} ms" for k, ms in costs.items()))
    print("\n" + ", ".join(f"{k}: {v}" for k, v in environment.items()))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"environment": environment, "rows": rows, "forward_ms": costs}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
