"""Load on `hf-cllm serve`: requests/s and tokens/s of greedy vs Jacobi decoding through the OpenAI API, localhost.

    pip install -e ".[serve]"
    python benchmarks/serve_load.py --json docs/serve_load_smollm2_cpu.json

Starts one server (`hf-cllm serve MODEL`, in its own process) and sends GSM8K test questions as chat requests with
the real openai client, each method chosen per request through `generation_config` (`{"jacobi_n": 1}` is plain
greedy decoding, `{"jacobi_n": "auto"}` Jacobi), temperature 0:

- sequential: the questions one after another, the two methods back to back per question (order alternating);
- concurrent: all questions sent at once, one method at a time (the server decodes one request at a time: this
  measures queueing, not batching).

Prints completion tokens, seconds, requests/s, tokens/s and the ratio Jacobi / greedy, and whether the two methods'
answers are equal text (exact in float32; in bfloat16 near-ties may differ). Bounded: --requests questions, each at
most --max-tokens tokens, and --timeout seconds in all.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from hf_cllm.assets import EMBEDDED_MODEL_NAME
from hf_cllm.bench import get_benchmark
from hf_cllm.prompts import get_prompt_format
from hf_cllm.serving import served_name


METHODS = {"greedy": 1, "jacobi auto": "auto"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def start_server(model: str, port: int, dtype: str, threads: int | None, log: Path, timeout: float):
    command = [sys.executable, "-m", "hf_cllm", "serve", model, "--port", str(port), "--dtype", dtype]
    command += ["--threads", str(threads)] if threads else []
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://localhost:{port}/health", timeout=2)
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise SystemExit(f"the server did not start; its log:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.5)


def ask(client, name: str, question: str, jacobi_n, max_tokens: int) -> tuple[str, int, float]:
    start = time.perf_counter()
    reply = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0,
        extra_body={"generation_config": json.dumps({"jacobi_n": jacobi_n, "max_new_tokens": max_tokens})},
    )  # fmt: skip
    return reply.choices[0].message.content, reply.usage.completion_tokens, time.perf_counter() - start


def tpf_lines(log: Path) -> list[float]:
    marker = "hf_cllm: Jacobi decoding (jacobi_n=auto)"
    return [float(line.rsplit("TPF", 1)[1]) for line in log.read_text().splitlines() if marker in line]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=EMBEDDED_MODEL_NAME)
    parser.add_argument("--data", default=None, help="GSM8K test file (default: Hub, or offline packages)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for the whole benchmark")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    import openai

    benchmark = get_benchmark("gsm8k")
    questions = [get_prompt_format("gsm8k").prompt(row) for row in benchmark.load_rows(args.data)[: args.requests]]
    started = time.monotonic()
    port, log = free_port(), Path(os.environ.get("TMPDIR", "/tmp")) / f"hf_cllm_serve_load_{os.getpid()}.log"
    process = start_server(args.model, port, args.dtype, args.threads, log, timeout=300)
    name = served_name(args.model)
    client = openai.OpenAI(base_url=f"http://localhost:{port}/v1", api_key="unused", max_retries=0,
                           timeout=args.timeout)  # fmt: skip
    results: dict = {"model": args.model, "dtype": args.dtype, "requests": len(questions),
                     "max_tokens": args.max_tokens}  # fmt: skip
    try:
        ask(client, name, "Hello", 1, 4)  # warm-up: the model loads on the first request
        answers = {method: [None] * len(questions) for method in METHODS}
        sequential = {method: {"tokens": 0, "seconds": 0.0} for method in METHODS}
        for i, question in enumerate(questions):
            order = list(METHODS) if i % 2 == 0 else list(METHODS)[::-1]
            for method in order:
                if time.monotonic() - started > args.timeout:
                    raise SystemExit(f"--timeout {args.timeout:.0f} s reached during the sequential requests")
                text, tokens, seconds = ask(client, name, question, METHODS[method], args.max_tokens)
                answers[method][i] = text
                sequential[method]["tokens"] += tokens
                sequential[method]["seconds"] += seconds
        tpf_sequential = tpf_lines(log)
        concurrent_figures = {}
        for method, jacobi_n in METHODS.items():
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:
                replies = list(pool.map(lambda q: ask(client, name, q, jacobi_n, args.max_tokens), questions))
            seconds = time.perf_counter() - start
            concurrent_figures[method] = {"tokens": sum(r[1] for r in replies), "seconds": seconds,
                                          "same_as_sequential": sum(r[0] == a for r, a in
                                                                    zip(replies, answers[method]))}  # fmt: skip
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)

    jacobi_tpfs = [tpf for tpf in tpf_sequential if tpf]
    print(f"{args.model} served by hf-cllm serve ({args.dtype}), {len(questions)} GSM8K test questions, "
          f"<= {args.max_tokens} tokens, temperature 0")  # fmt: skip
    print(f"{'':22}{'tokens':>8}{'seconds':>9}{'req/s':>8}{'tok/s':>8}")
    for mode, figures in (("sequential", sequential), ("concurrent", concurrent_figures)):
        results[mode] = {}
        for method, f in figures.items():
            f["requests_per_s"] = len(questions) / f["seconds"]
            f["tokens_per_s"] = f["tokens"] / f["seconds"]
            results[mode][method] = f
            print(f"{mode + ' ' + method:22}{f['tokens']:>8}{f['seconds']:>9.1f}{f['requests_per_s']:>8.2f}"
                  f"{f['tokens_per_s']:>8.1f}")  # fmt: skip
        ratio = figures["jacobi auto"]["tokens_per_s"] / figures["greedy"]["tokens_per_s"]
        results[mode]["jacobi_over_greedy"] = ratio
        print(f"{mode + ' Jacobi / greedy':22}{ratio:>41.2f}x")
    same = sum(a == b for a, b in zip(answers["greedy"], answers["jacobi auto"]))
    results["same_answer"] = same
    results["server_log_tpf"] = jacobi_tpfs
    print(f"answers equal (greedy vs Jacobi): {same}/{len(questions)}; concurrent answers equal to sequential: "
          + ", ".join(f"{m} {f['same_as_sequential']}/{len(questions)}" for m, f in concurrent_figures.items()))
    print(f"TPF in the server log (sequential, per request): {', '.join(f'{t:.2f}' for t in jacobi_tpfs)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
