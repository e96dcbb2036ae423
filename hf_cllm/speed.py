"""Measuring decoding speed as docs/benchmarks.md defines it: TPF, tokens/s, speedup, identity.

Forward passes are counted with a forward pre-hook on the model, never by trusting the decoder's own counter.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from dataclasses import dataclass, field

import torch

from .modeling import eos_token_ids


@contextlib.contextmanager
def count_forwards(model):
    """Count the model's forward calls inside the block: `with count_forwards(m) as calls: ...; calls[0]`; `calls[1]`
    sums the tokens they computed (a padded window counts its padding)."""
    calls = [0, 0]

    def hook(module, args, kwargs):
        calls[0] += 1
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        calls[1] += input_ids.shape[-1] if torch.is_tensor(input_ids) else 0

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


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
    forwarded: int = 0  # tokens the forwards computed, the prefill included (0: not counted)
    prompt_length: int = 0

    @property
    def tpf(self) -> float:
        return len(self.tokens) / max(self.forwards, 1)

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds


def baseline_generate(model, **kwargs):
    """transformers' own `generate`, even on an hf_cllm model whose generation config carries `jacobi_n` (a CLLM):
    the greedy baseline must not quietly be Jacobi decoding."""
    from transformers import GenerationMixin

    from .decoding import frozen_weights, reuse_frozen_cache

    if not isinstance(model, GenerationMixin):  # e.g. a PEFT wrapper, whose base model is a plain one
        return model.generate(**kwargs)
    with frozen_weights(kwargs.get("compile_config")):  # as hf_cllm's `generate` compiles (`hf_cllm.fast`)
        return GenerationMixin.generate(model, **reuse_frozen_cache(model, None, None, kwargs))


def timed_generate(model, inputs: dict, eos_token_ids, **generate_kwargs) -> Run:
    """Time one whole `generate` call (prefill included) and count its forward passes. Without `jacobi_n` or
    `custom_generate` in the arguments this is the stock greedy baseline (`baseline_generate`)."""
    prompt_length = inputs["input_ids"].shape[1]
    jacobi = "jacobi_n" in generate_kwargs or "custom_generate" in generate_kwargs
    generate = model.generate if jacobi else functools.partial(baseline_generate, model)
    _synchronize(model.device)
    with count_forwards(model) as calls:
        start = time.perf_counter()
        out = generate(**inputs, **generate_kwargs)
        _synchronize(model.device)
        seconds = time.perf_counter() - start
    sequences = out.sequences if hasattr(out, "sequences") else out
    return Run(new_tokens_to_eos(sequences[0], prompt_length, eos_token_ids), seconds, calls[0], out, calls[1],
               prompt_length)  # fmt: skip


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
            "window_width": self.window_width(),
        }

    def window_width(self) -> float | None:
        """Tokens per decoding forward (the prefill left out), padding included: how wide the windows were."""
        if not all(run.forwarded for run in self.runs):
            return None
        tokens = sum(run.forwarded - run.prompt_length for run in self.runs)
        return tokens / max(sum(run.forwards - 1 for run in self.runs), 1)


@torch.no_grad()
def jacobi_counts(model, prompts: list[list[int]], jacobi_n: int, max_new_tokens: int = 128, blocks: int = 1) -> dict:
    """Jacobi decoding of `prompts` at batch 1, with up to `blocks` blocks in flight: new tokens, forward passes
    (prefill included) and prompts whose Jacobi output equals the model's own greedy output. Counts only, no timing:
    cheap enough for evaluation during training, and summable over processes."""
    from .decoding import jacobi_generate

    training = model.training
    model.eval()
    eos = eos_token_ids(model)
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=eos[0] if eos else 0)
    counts = {"tokens": 0, "forwards": 0, "identical": 0, "prompts": len(prompts)}
    try:
        for ids in prompts:
            inputs = {
                "input_ids": torch.tensor([ids], device=model.device),
                "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=model.device),
            }
            greedy = baseline_generate(model, **inputs, **settings)
            jacobi = model.generate(
                **inputs, **settings, custom_generate=jacobi_generate, jacobi_n=jacobi_n, jacobi_blocks=blocks,
                return_dict_in_generate=True,
            )  # fmt: skip
            greedy_tokens = new_tokens_to_eos(greedy[0], len(ids), eos)
            jacobi_tokens = new_tokens_to_eos(jacobi.sequences[0], len(ids), eos)
            counts["tokens"] += len(jacobi_tokens)
            counts["forwards"] += int(jacobi.num_forward_passes[0])
            counts["identical"] += int(torch.equal(greedy_tokens, jacobi_tokens))
    finally:
        model.train(training)
    return counts


def tpf_figures(counts: dict) -> dict:
    """TPF and the share of identical outputs from `jacobi_counts` (of one process, or summed over several)."""
    return {
        "tpf": counts["tokens"] / max(counts["forwards"], 1),
        "jacobi_identical": counts["identical"] / max(counts["prompts"], 1),
    }


def jacobi_speed(model, prompts: list[list[int]], jacobi_n: int, max_new_tokens: int = 128, blocks: int = 1) -> dict:
    """Jacobi TPF over `prompts` at batch 1 and the share of them identical to greedy (`jacobi_counts`)."""
    return tpf_figures(jacobi_counts(model, prompts, jacobi_n, max_new_tokens, blocks))


def first_divergence(tokens: torch.Tensor, reference: Run) -> tuple[int, float | None] | None:
    """Where `tokens` first differ from the greedy `reference` run (None where they do not), and the top-2 gap of
    the reference's logits there (None without `output_logits=True`): a gap of a rounding step or two is a near-tie,
    which another reduction order (a wider window in bfloat16) may break the other way."""
    shortest = min(len(tokens), len(reference.tokens))
    differs = (tokens[:shortest] != reference.tokens[:shortest]).nonzero()
    if len(differs) == 0:
        return None if len(tokens) == len(reference.tokens) else (shortest, None)
    index = int(differs[0])
    logits = getattr(reference.output, "logits", None)
    if not logits or index >= len(logits):
        return index, None
    top = logits[index][0].float().topk(2).values
    return index, float(top[0] - top[1])
