"""The fast path: the dtype and compiled forward under which a Jacobi window costs about what one token costs.

A small model's one-token forward is memory-bound: it reads every weight to do little arithmetic, so a window of a
few tokens should cost little more. On a CPU in float32 it does not (the 2–32-row GEMM path is slow: a 16-token
window costs ~2× a token), which makes Jacobi decoding lose there. In bfloat16, on a device that computes it natively,
a window of up to 8 tokens costs about one token, and a token costs less than in float32; compiled with inductor and
frozen (pre-packed) weights, less again. Figures: docs/benchmarks.md, "On a CPU".

- `fast_dtype(device)` / `resolve_dtype("auto", device)`: bfloat16 where the device computes it natively (a CUDA GPU
  with bf16, a CPU with AVX512-BF16 or AMX — detected, not assumed), float32 elsewhere.
- `compile_config(device)`: transformers' `CompileConfig` for `generate(..., cache_implementation="static",
  compile_config=...)`; on a CPU it compiles there too (transformers only compiles on accelerators by default), with
  inductor's weight freezing.

Exactness: in float32 Jacobi decoding is token-identical to greedy decoding. In bfloat16 a forward's rounding depends
on how many tokens it computes, so a Jacobi window and a one-token step may break a near-tie differently. With a
static cache every decoding forward has one width (`jacobi_width`), and then Jacobi decoding equals greedy decoding
computed at that width (`jacobi_n=1, jacobi_width=W`) exactly; against ordinary one-token greedy decoding it differs
only at near-ties (measured in docs/benchmarks.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CompileConfig


DTYPES = ("auto", "float32", "bfloat16", "float16")
# On a CPU, the widest window that costs about what one token costs in bfloat16, eager or compiled (docs/benchmarks.md)
CPU_WINDOW = 8


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic instructions (x86 AVX512-BF16 or AMX; Arm's BF16 extension)."""
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, check, None)
        if probe is not None and probe():
            return True
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16", "bf16"))


def computes_bf16(device) -> bool:
    """Whether `device` computes bfloat16 natively (emulated bfloat16 is slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_computes_bf16()
    return False


def fast_dtype(device="cpu") -> torch.dtype:
    """bfloat16 where `device` computes it natively, else float32: the fast path's dtype."""
    return torch.bfloat16 if computes_bf16(device) else torch.float32


def resolve_dtype(dtype, device="cpu") -> torch.dtype:
    """A `--dtype` value ("auto", "float32", "bfloat16", "float16" or a `torch.dtype`) as a `torch.dtype`; "auto" is
    `fast_dtype(device)`. (transformers' own `dtype="auto"` means the checkpoint's dtype: not this.)"""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return fast_dtype(device)
    if dtype not in DTYPES:
        raise ValueError(
            f"dtype must be one of {DTYPES} (got {dtype!r}): 'auto' is bfloat16 where the device computes it "
            "natively and float32 elsewhere; pass 'float32' for results exactly identical to greedy decoding."
        )
    return getattr(torch, dtype)


def compile_config(device="cpu") -> CompileConfig:
    """The `compile_config` that compiles decoding on `device` (with `cache_implementation="static"`).

    On a CPU: inductor, one static graph per window width, weights frozen into the graph (pre-packed: on 2 cores in
    bfloat16 1.3× faster than eager per token, 1.9× per 8-token window), and allowed on a CPU, where transformers
    would not compile by itself. Frozen weights
    are constants: after changing the model's weights, call `torch._dynamo.reset()` before generating again. Each
    width compiles once per process (tens of seconds on a small CPU; inductor caches the code on disk). On an
    accelerator: transformers' default (CUDA graphs).
    """
    if torch.device(device).type != "cpu":
        return CompileConfig()
    # `options` reach inductor only after dynamo has traced the parameters as inputs, too late to freeze them: the
    # decoder turns freezing on around each compiled call instead (`decoding.frozen_weights`).
    config = CompileConfig(dynamic=False, mode=None, options={"freezing": True})
    config._compile_all_devices = True  # transformers' switch to compile on a CPU
    return config
