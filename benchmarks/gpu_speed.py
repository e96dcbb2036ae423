"""What a given TPF buys in wall-clock speed on this device: a self-contained benchmark for the first lent GPU.

    python benchmarks/gpu_speed.py                          # on a GPU: ~1B and ~8B Llama shapes, bf16 (< 8 min)
    python benchmarks/gpu_speed.py --shapes 135m --device cpu --new-tokens 64      # a CPU: minutes
    python benchmarks/gpu_speed.py --shapes tiny --device cpu --new-tokens 32     # CI-size, seconds

No downloads: the models are random-weight Llama models built from configs of realistic shapes. Two measurements:

(a) **forward cost**: one forward of a window of 1–64 new tokens over a 512-token KV cache, relative to one token
    (median of repeats). On a GPU a wide window costs about what one token costs; on a CPU it does not.
(b) **speed vs TPF, controlled acceptance**: greedy `generate` against Jacobi decoding whose guesses come from the
    known greedy answer (a `jacobi_init` callable, `oracle_guesses`). With blocks of n tokens whose n - 1 guesses are
    right, every forward accepts exactly n tokens: TPF = n = 1, 2, 3, 4, 6 (`--tpfs`), and the speedup over greedy
    is what that TPF buys through this decoding loop, its per-step overhead included. At batch 1 and 8
    (`--batches`); tokens/s counts every row's new tokens. Outputs are checked identical to greedy.

(c) **the same, compiled**: greedy and Jacobi both with `cache_implementation="static"` and the forward compiled
    (`compile_config`, as `generate` compiles on a GPU; `_compile_all_devices` forces it on a CPU). Jacobi pads its
    windows to n so one graph serves every step. Each window width is one more graph to compile (inductor: tens of
    seconds each), so (c) runs for `--compiled-shapes` (default: the first shape), `--compiled-batches` and
    `--compiled-tpfs`; every compiled run is repeated once untimed first, so compilation is not timed.

A model that reaches TPF t with a wider window W pays cost(W) from (a) per forward instead of cost(t): its speed is
about t / cost(W) of greedy's, less the overhead (b) shows. Prints Markdown tables and writes `--json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import transformers
from transformers import CompileConfig, DynamicCache, LlamaConfig, LlamaForCausalLM

from hf_cllm.decoding import jacobi_generate
from hf_cllm.speed import count_forwards
from hf_cllm.windows import timer


SHAPES = {  # Llama-3.2-1B-like, Llama-3.1-8B-like, ... (vocabulary 32k: the head is not what is measured)
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3),  # SmolLM2-135M-like: what a CPU can run
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}  # fmt: skip


def build_model(shape: str, device: str, dtype: torch.dtype):
    config = LlamaConfig(**SHAPES[shape], vocab_size=32000, max_position_embeddings=4096, eos_token_id=None,
                         bos_token_id=None, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.generation_config.eos_token_id = None  # every row decodes its full length
    model.generation_config.pad_token_id = 0
    return model


def forward_costs(model, context: int, windows, repeats: int) -> dict[int, float]:
    """Seconds of one forward of each window length over a `context`-token cache (median of `repeats`)."""
    clock = timer(model.device)
    ids = torch.randint(1, model.config.vocab_size, (1, context + max(windows)), device=model.device)
    seconds = {}
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:, :context], cache=cache, use_cache=True)
        for length in windows:
            times = []
            for _ in range(repeats + 1):  # the first is a warm-up
                start = clock()
                model(input_ids=ids[:, context : context + length], cache=cache, use_cache=True)
                times.append(clock() - start)
                cache.crop(-length)
            seconds[length] = statistics.median(times[1:])
    return seconds


def oracle_guesses(answer: torch.LongTensor, right: int, vocab_size: int):
    """A `jacobi_init` callable: the next guesses of each row from its known greedy `answer` (prompt included),
    the first `right` of them correct and any others wrong (the correct token + 1)."""

    def guess(input_ids, count):
        start = input_ids.shape[1]
        padded = torch.nn.functional.pad(answer, (0, count + 1), value=0)
        guesses = padded[:, start : start + count].clone()
        guesses[:, right:] = (guesses[:, right:] + 1) % vocab_size
        return guesses

    return guess


def timed(model, inputs, **kwargs):
    clock = timer(model.device)
    with count_forwards(model) as calls:
        start = clock()
        out = model.generate(**inputs, **kwargs)
        seconds = clock() - start
    return (out.sequences if hasattr(out, "sequences") else out), seconds, calls[0]


def compiling(backend: str) -> CompileConfig:
    """What `generate` compiles with on a GPU, forced on any device (transformers' own switch for that)."""
    config = CompileConfig(backend=backend) if backend == "inductor" else CompileConfig(backend=backend, mode=None)
    config._compile_all_devices = True
    return config


def speed_vs_tpf(model, batch: int, prompt_length: int, new_tokens: int, tpfs, repeats: int,
                 compile_config: CompileConfig | None = None) -> list[dict]:  # fmt: skip
    """Greedy, then Jacobi at each controlled TPF; with `compile_config`, both on a static cache, compiled."""
    ids = torch.randint(1, model.config.vocab_size, (batch, prompt_length), device=model.device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    common = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    # the warm-up: a short run; compiled, the full run (other lengths make another static cache: other shapes)
    warm = {"max_new_tokens": 4, "min_new_tokens": 4}
    suffix = ""
    if compile_config is not None:
        common.update(cache_implementation="static", compile_config=compile_config)
        warm, suffix = {}, ", compiled"
    timed(model, inputs, **{**common, **warm})
    greedy_runs = [timed(model, inputs, **common) for _ in range(repeats)]
    answer = greedy_runs[0][0]
    greedy_seconds = statistics.median(run[1] for run in greedy_runs)
    rows = [{"batch": batch, "method": "greedy" + suffix, "window": 1, "tpf": 1.0, "seconds": greedy_seconds,
             "tokens_per_s": batch * new_tokens / greedy_seconds, "speedup": 1.0, "identical": True}]  # fmt: skip
    for tpf in tpfs:
        guess = oracle_guesses(answer, tpf - 1, model.config.vocab_size)
        kwargs = dict(common, custom_generate=jacobi_generate, jacobi_n=tpf, jacobi_init=guess)
        timed(model, inputs, **{**kwargs, **warm})
        runs = [timed(model, inputs, **kwargs) for _ in range(repeats)]
        seconds = statistics.median(run[1] for run in runs)
        rows.append({
            "batch": batch, "method": f"jacobi n={tpf}{suffix}", "window": tpf, "tpf": new_tokens / runs[0][2],
            "seconds": seconds, "tokens_per_s": batch * new_tokens / seconds, "speedup": greedy_seconds / seconds,
            "identical": all(torch.equal(run[0], answer) for run in runs),
        })  # fmt: skip
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["1b", "8b"], choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on a CPU")
    parser.add_argument("--context", type=int, default=512, help="cache length for the forward-cost curve")
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--tpfs", type=int, nargs="+", default=[1, 2, 3, 4, 6])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--compiled-shapes", nargs="*", default=None, help="(c) for these (default: the first shape)")
    parser.add_argument("--compiled-batches", type=int, nargs="+", default=[1])
    parser.add_argument("--compiled-tpfs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--compile-backend", default="inductor", help="`eager` checks the path without compiling")
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    compiled_shapes = args.shapes[:1] if args.compiled_shapes is None else args.compiled_shapes
    torch._dynamo.config.recompile_limit = 64  # every window width and batch is a graph of its own
    dtype = torch.bfloat16 if args.device != "cpu" else torch.float32
    dtype = getattr(torch, args.dtype) if args.dtype else dtype
    gpu = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None
    where = gpu or platform.processor() or platform.machine()
    print(f"device {args.device} ({where}), {dtype}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {torch.get_num_threads()} threads\n")  # fmt: skip
    results = {"device": args.device, "gpu": gpu, "dtype": str(dtype), "torch": torch.__version__, "shapes": {}}
    for shape in args.shapes:
        started = time.perf_counter()
        model = build_model(shape, args.device, dtype)
        size = sum(p.numel() for p in model.parameters()) / 1e9
        costs = forward_costs(model, args.context, args.windows, args.repeats)
        print(f"## {shape}: {size:.2f}B parameters, random weights\n")
        print(f"Forward over a {args.context}-token cache, relative to 1 token:\n")
        print("| window | " + " | ".join(map(str, costs)) + " |\n|---|" + "---|" * len(costs))
        print("| ms | " + " | ".join(f"{1000 * s:.2f}" for s in costs.values()) + " |")
        print("| × 1 token | " + " | ".join(f"{s / costs[args.windows[0]]:.2f}" for s in costs.values()) + " |\n")
        rows = []
        for batch in args.batches:
            rows += speed_vs_tpf(model, batch, args.prompt_length, args.new_tokens, args.tpfs, args.repeats)
        if shape in compiled_shapes:
            for batch in args.compiled_batches:
                rows += speed_vs_tpf(model, batch, args.prompt_length, args.new_tokens, args.compiled_tpfs,
                                     args.repeats, compiling(args.compile_backend))  # fmt: skip
        print(f"Speed vs TPF ({args.new_tokens} new tokens per row, {args.prompt_length}-token prompts):\n")
        print("| batch | method | TPF | tokens/s | speedup vs greedy | identical |\n|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['batch']} | {row['method']} | {row['tpf']:.2f} | {row['tokens_per_s']:.1f} | "
                  f"{row['speedup']:.2f}x | {row['identical']} |")  # fmt: skip
        print(f"\n({time.perf_counter() - started:.0f} s)\n")
        results["shapes"][shape] = {"parameters_b": size, "forward_seconds": costs, "speed": rows}
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
