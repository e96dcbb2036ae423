"""What a Jacobi window costs: one forward over w new tokens relative to one token, per dtype and compile mode.

    python benchmarks/window_cost.py                                   # embedded SmolLM2-135M-Instruct, 4 modes
    python benchmarks/window_cost.py --modes bf16 bf16-compiled --json docs/window_cost_smollm2_cpu.json

Jacobi decoding pays only where a window costs little more than a token. Each mode runs in a process of its own
(compiling and weight freezing are per process): the model in float32 or bfloat16, eager or compiled as the fast
path compiles it (`hf_cllm.fast.compile_config`: inductor, frozen weights, one graph per width), over a static cache
of `--cache` slots holding `--context` tokens, as `generate(cache_implementation="static")` decodes. Widths are timed
interleaved, round after round (`--rounds`), and the median per width is reported; compiling a width is timed on
its first call. Prints a Markdown table and writes `--json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch


MODES = ("fp32", "bf16", "fp32-compiled", "bf16-compiled")


def measure(model_path: str, mode: str, widths, context: int, cache_length: int, rounds: int, threads: int) -> dict:
    """{width: median seconds} and {width: first-call seconds} of one mode, in this process."""
    from transformers import StaticCache

    from hf_cllm import AutoCLLMForCausalLM
    from hf_cllm.decoding import frozen_weights
    from hf_cllm.fast import compile_config

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if mode.startswith("bf16") else torch.float32
    model = AutoCLLMForCausalLM.from_pretrained(model_path, dtype=dtype).eval()
    config = compile_config("cpu")
    call = model.get_compiled_call(config) if mode.endswith("compiled") else model
    generator = torch.Generator().manual_seed(0)
    cache = StaticCache(config=model.config, max_cache_len=cache_length)
    first, seconds = {}, {width: [] for width in widths}
    with torch.inference_mode():
        model(input_ids=torch.randint(100, 20000, (1, context), generator=generator), cache=cache, use_cache=True)

        def forward(width):
            window = torch.randint(100, 20000, (1, width), generator=generator)
            positions = torch.arange(context, context + width)[None]
            start = time.perf_counter()
            with frozen_weights(config):
                call(input_ids=window, position_ids=positions, cache=cache, use_cache=True)
            elapsed = time.perf_counter() - start
            cache.crop(-width)
            return elapsed

        for width in widths:
            first[width] = forward(width)  # compiles the width's graph in a compiled mode
            forward(width)
        for _ in range(rounds):
            for width in widths:
                seconds[width].append(forward(width))
    return {"median_s": {w: statistics.median(s) for w, s in seconds.items()}, "first_call_s": first}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a model folder or Hub id (default: the embedded SmolLM2-135M)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--context", type=int, default=300, help="tokens already in the cache")
    parser.add_argument("--cache", type=int, default=512, help="static cache slots")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--one-mode", default=None, help=argparse.SUPPRESS)  # a child process measuring one mode
    args = parser.parse_args(argv)

    from hf_cllm.assets import EMBEDDED_MODEL_NAME
    from hf_cllm.cli.common import resolve_model_path

    path = resolve_model_path(args.model or EMBEDDED_MODEL_NAME)
    if args.one_mode:
        result = measure(path, args.one_mode, args.widths, args.context, args.cache, args.rounds, args.threads)
        print(json.dumps(result))
        return 0
    results = {}
    for mode in args.modes:
        child = [sys.executable, __file__, "--one-mode", mode, "--model", path, "--widths", *map(str, args.widths),
                 "--context", str(args.context), "--cache", str(args.cache), "--rounds", str(args.rounds),
                 "--threads", str(args.threads)]  # fmt: skip
        done = subprocess.run(child, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{mode} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"[{mode} done]", file=sys.stderr, flush=True)

    widths = [str(w) for w in args.widths]
    print("| mode | 1-token forward | " + " | ".join(f"w{w}" for w in widths[1:]) + " | compile, first call |")
    print("|---|---|" + "---|" * (len(widths) - 1) + "---|")
    for mode, result in results.items():
        median, first = result["median_s"], result["first_call_s"]
        compiled = mode.endswith("compiled")
        print(
            f"| {mode} | {1000 * median['1']:.1f} ms | "
            + " | ".join(f"{median[w] / median['1']:.2f}×" for w in widths[1:])
            + f" | {f'{sum(first.values()):.0f} s for {len(widths)} widths' if compiled else '—'} |"
        )
    import transformers

    environment = {
        "model": path, "context": args.context, "cache": args.cache, "rounds": args.rounds, "threads": args.threads,
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "command": " ".join(sys.argv),
    }  # fmt: skip
    print("\n" + ", ".join(f"{key}: {value}" for key, value in environment.items()))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"environment": environment, "modes": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
