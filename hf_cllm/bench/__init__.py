"""Benchmarks that report task quality and decoding speed (greedy AR vs Jacobi) of one model in one run.

`run_benchmark(model, tokenizer, name, output_dir, ...)` or `hf-cllm bench NAME` runs a registered `BenchmarkTask`:
the built-in `gsm8k`, `humaneval` and `spider` (`hf_cllm.bench.tasks`, one module each) or any subclass defined
elsewhere. Scoring uses `evaluate` metrics shipped with the tasks, which work offline. Names are imported lazily, so
listing the tasks (the CLI's help) does not import torch or evaluate.
"""

from __future__ import annotations

import importlib


_LAZY = {
    "run_benchmark": "harness",
    "BenchmarkTask": "task",
    "benchmark_names": "task",
    "get_benchmark": "task",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'hf_cllm.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
