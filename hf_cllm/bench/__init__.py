"""Benchmarks that report task quality and decoding speed (greedy AR vs Jacobi) of one model in one run.

`run_benchmark(model, tokenizer, "gsm8k" | "humaneval", output_dir, ...)`, or `hf-cllm bench`. Scoring uses
`evaluate` metrics shipped here (`GSM8KAccuracy`, `CodeEval`), which work offline.
"""

from .harness import BENCHMARKS, run_benchmark


__all__ = ["BENCHMARKS", "run_benchmark"]
