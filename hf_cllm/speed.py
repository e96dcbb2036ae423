"""Measuring decoding speed the way docs/measuring.md defines it: TPF, tokens/s, speedup, identity.

Forward passes are counted with a forward pre-hook on the model, never by trusting the decoder's own counter.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field

import torch


@contextlib.contextmanager
def count_forwards(model):
    """Count the model's forward calls inside the block: `with count_forwards(m) as calls: ...; calls[0]`."""
    calls = [0]

    def hook(module, args, kwargs):
        calls[0] += 1

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def eos_token_ids(model) -> list[int]:
    """The model's EOS ids as a list (a generation config holds one id, a list, or none)."""
    eos = model.generation_config.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


def new_tokens_to_eos(sequence: torch.Tensor, prompt_length: int, eos_token_ids) -> torch.Tensor:
    """The generated tokens of one row, up to and including its first EOS."""
    new = sequence[prompt_length:]
    if eos_token_ids:
        hits = torch.isin(new, torch.as_tensor(eos_token_ids, device=new.device)).nonzero()
        if len(hits):
            new = new[: int(hits[0]) + 1]
    return new


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Run:
    """One `generate` call on one prompt (batch 1)."""

    tokens: torch.Tensor
    seconds: float
    forwards: int
    output: object = None  # what `generate` returned

    @property
    def tpf(self) -> float:
        return len(self.tokens) / max(self.forwards, 1)

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds


def timed_generate(model, inputs: dict, eos_token_ids, **generate_kwargs) -> Run:
    """Time one whole `generate` call (prefill included) and count its forward passes."""
    prompt_length = inputs["input_ids"].shape[1]
    _synchronize(model.device)
    with count_forwards(model) as calls:
        start = time.perf_counter()
        out = model.generate(**inputs, **generate_kwargs)
        _synchronize(model.device)
        seconds = time.perf_counter() - start
    sequences = out.sequences if hasattr(out, "sequences") else out
    return Run(new_tokens_to_eos(sequences[0], prompt_length, eos_token_ids), seconds, calls[0], out)


@dataclass
class MethodSummary:
    """Per-method figures over prompts, with the greedy baseline's runs on the same prompts."""

    name: str
    runs: list[Run] = field(default_factory=list)
    baseline: list[Run] = field(default_factory=list)

    def figures(self) -> dict:
        tokens = [len(r.tokens) for r in self.runs]
        per_prompt_tps = [len(r.tokens) / r.seconds for r in self.runs]
        speedups = [
            (b.seconds / max(len(b.tokens), 1)) / (r.seconds / max(len(r.tokens), 1))
            for r, b in zip(self.runs, self.baseline)
        ]
        return {
            "method": self.name,
            "prompts": len(self.runs),
            "tokens_per_s_median": statistics.median(per_prompt_tps),
            "tokens_per_s_total": sum(tokens) / sum(r.seconds for r in self.runs),
            "tpf": sum(tokens) / sum(r.forwards for r in self.runs),
            "speedup_median": statistics.median(speedups),
            "identical": sum(torch.equal(r.tokens, b.tokens) for r, b in zip(self.runs, self.baseline)),
        }
