"""What one Jacobi forward pass confirms: the acceptance rule, the stopping rules, and the settled tokens.

The decoding loop (decoding.py) runs a window `[known next token, guesses...]` through the model; this module turns
the window's logits into what may be committed. Like decoding.py it imports only torch and transformers: it is copied
into the `custom_generate/` folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from transformers.generation import logits_process
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria


# Logits processors whose output at a position depends on that position's logits only, never on the tokens before
# it (exact classes: a subclass may look at its input): applied to every window position in one call.
_PREFIX_FREE = {
    getattr(logits_process, name)
    for name in ("TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper",
                 "TypicalLogitsWarper", "EpsilonLogitsWarper", "EtaLogitsWarper", "TopHLogitsWarper")
    if hasattr(logits_process, name)
}  # fmt: skip


class Prediction(NamedTuple):
    """The choice at every window position: tokens [B, L], processed scores [B, L, V], raw logits [B, L, V], and
    (sampling) whether each guess was accepted [B, L-1]."""

    tokens: torch.LongTensor
    scores: torch.FloatTensor
    logits: torch.FloatTensor
    accepted: torch.BoolTensor | None = None


class AcceptanceRule:
    """What a window's predictions are and how many of its guesses they confirm: `GreedyAcceptance` or
    `SamplingAcceptance`, the one place where greedy decoding and sampling differ."""

    def __init__(self, logits_processor):
        self.logits_processor = logits_processor

    def processed_scores(self, logits, input_ids, window) -> tuple[torch.FloatTensor, torch.FloatTensor]:
        """(processed scores, raw float32 logits) [B, L, V] for window [B, L] after input_ids [B, T] (whose last
        token is the window's first); each position's logits are processed with its own prefix (the guesses before
        it), as `generate` would have them. Processors that never look at the prefix (the sampling warpers) run once
        on the whole window; the others once per position."""
        raw = logits.to(dtype=torch.float32)
        if len(self.logits_processor) == 0:
            return raw, raw
        batch, length, vocab = raw.shape
        prefix_len, prefixes = input_ids.shape[1], torch.cat([input_ids, window[:, 1:]], dim=1)
        scores = raw.clone()  # processors may work in place; the raw logits are returned too
        window_ids = None  # one prefix row per window position, for the warpers' (unread) input_ids argument
        for processor in self.logits_processor:
            if type(processor) in _PREFIX_FREE:
                window_ids = input_ids.repeat_interleave(length, dim=0) if window_ids is None else window_ids
                flat = processor(window_ids, scores.reshape(batch * length, vocab))
                scores = flat.reshape(batch, length, vocab)
            else:
                scores = torch.stack(
                    [processor(prefixes[:, : prefix_len + i], scores[:, i]) for i in range(length)], dim=1
                )
        return scores, raw

    def predict(self, logits, input_ids, window) -> Prediction:
        raise NotImplementedError

    def accepted_guesses(self, window, prediction: Prediction) -> torch.LongTensor:
        """How many leading guesses of each row the window confirms [B]."""
        raise NotImplementedError


class GreedyAcceptance(AcceptanceRule):
    """Greedy verification: the prediction at each position is the argmax; guess j+1 was right iff it equals the
    prediction made at position j, and predictions after the first wrong guess came from a wrong prefix."""

    def predict(self, logits, input_ids, window) -> Prediction:
        scores, raw = self.processed_scores(logits, input_ids, window)
        return Prediction(scores.argmax(-1), scores, raw)

    def accepted_guesses(self, window, prediction: Prediction) -> torch.LongTensor:
        return (window[:, 1:] == prediction.tokens[:, :-1]).long().cumprod(-1).sum(-1)  # [B]


class SamplingAcceptance(AcceptanceRule):
    """The acceptance rule of Jacobi sampling: speculative sampling with the guesses as a point-mass draft, so every
    committed token has exactly the distribution ordinary sampling (`generate(do_sample=True)`) gives it.

    With p_i the processed and warped distribution at window position i (its logits processed with its own prefix,
    as `_sample` does), guess x = window[i+1] is accepted with probability p_i(x) (= min(1, p/q) for q = δ_x); at the
    first rejection the token is drawn from p_i with x removed and renormalised (= norm(max(0, p_i − δ_x)), the
    residual), and after the last guess a token is drawn from p_i. Draws use torch's global generator
    (`torch.manual_seed` makes runs repeatable), but not in `_sample`'s order, so the same seed gives other samples
    than stock sampling, from the same distribution.
    """

    def predict(self, logits, input_ids, window) -> Prediction:
        scores, raw = self.processed_scores(logits, input_ids, window)
        probs = torch.softmax(scores, dim=-1)  # [B, L, V]
        guesses = window[:, 1:]  # [B, L-1]: the draft for positions 0 … L-2
        drawn = _draw(torch.cat([self.residual(probs[:, :-1], guesses), probs[:, -1:]], dim=1))  # [B, L]
        guessed = probs[:, :-1].gather(-1, guesses[..., None])[..., 0]  # p_i(x) [B, L-1]
        accepted = torch.rand_like(guessed) < guessed  # accept x with probability p_i(x)
        tokens = torch.cat([torch.where(accepted, guesses, drawn[:, :-1]), drawn[:, -1:]], dim=1)
        return Prediction(tokens, scores, raw, accepted)

    def accepted_guesses(self, window, prediction: Prediction) -> torch.LongTensor:
        return prediction.accepted.long().cumprod(-1).sum(-1)  # [B]

    @staticmethod
    def residual(probs, guesses):
        """p with the guessed token removed (`multinomial` renormalises). Where p puts all its mass on the guess it
        is always accepted, and the residual is never used: keep p there so the draw stays defined."""
        removed = probs.scatter(-1, guesses[..., None], 0.0)
        return torch.where(removed.sum(-1, keepdim=True) > 0, removed, probs)


def _draw(weights):
    """One token per position from unnormalised weights [B, L, V] -> [B, L]."""
    batch, length, vocab = weights.shape
    return torch.multinomial(weights.reshape(-1, vocab), 1).reshape(batch, length)


def _first_true(mask, default):
    """Index of the first True along the last dim, or `default` where there is none."""
    return torch.where(mask.any(-1), mask.long().argmax(-1), default)


@dataclass
class Stopping:
    """When rows stop, from `generate`'s stopping criteria. Finished rows are padded only when there is an EOS
    criterion, exactly as `_sample` does. EOS and max length are checked for a whole window at once; any other
    criterion sees the sequence grow one token at a time (`stepwise`)."""

    criteria: object
    pad: torch.Tensor | None
    eos_ids: torch.Tensor | None
    stepwise: bool
    max_length: int | None

    @classmethod
    def from_generate(cls, stopping_criteria, generation_config, device) -> Stopping:
        has_eos = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
        eos = [c.eos_token_id.to(device).flatten() for c in stopping_criteria if isinstance(c, EosTokenCriteria)]
        return cls(
            criteria=stopping_criteria,
            pad=generation_config._pad_token_tensor.to(device) if has_eos else None,
            eos_ids=torch.cat(eos) if has_eos and eos else None,
            stepwise=any(not isinstance(c, (EosTokenCriteria, MaxLengthCriteria)) for c in stopping_criteria),
            max_length=stopping_criteria.max_length,
        )

    def emit(self, pred, unfinished, input_ids):
        """Tokens a row emits at each window position and whether it is unfinished after it.

        pred: [B, L]. Returns (emitted [B, L], unfinished_after [B, L]).
        """
        if self.stepwise:
            return self._emit_stepwise(pred, unfinished, input_ids)
        if self.eos_ids is None:
            return pred, unfinished[:, None].expand_as(pred).clone()
        is_eos = torch.isin(pred, self.eos_ids)
        eos_seen = is_eos.long().cumsum(-1)
        finished_before = ~unfinished[:, None] | (eos_seen - is_eos.long() > 0)
        emitted = torch.where(finished_before, self.pad, pred)
        return emitted, unfinished[:, None] & (eos_seen == 0)

    def _emit_stepwise(self, pred, unfinished, input_ids):
        prefix_len = input_ids.shape[1]
        sequence = torch.cat([input_ids, pred], dim=1)
        unfinished_after = []
        for j in range(pred.shape[1]):
            if self.pad is not None:
                sequence[:, prefix_len + j] = torch.where(unfinished, pred[:, j], self.pad)
            unfinished = unfinished & ~self.criteria(sequence[:, : prefix_len + j + 1], None)
            unfinished_after.append(unfinished)
        return sequence[:, prefix_len:], torch.stack(unfinished_after, dim=1)


class Settled(NamedTuple):
    """What one forward pass settles, as tensors: what each row would emit at each window position [B, L], whether
    it is unfinished after each [B, L], how many tokens the batch accepts, and the first position after which every
    row has stopped (L if none)."""

    emitted: torch.LongTensor
    unfinished_after: torch.BoolTensor
    accepted: torch.LongTensor
    all_stopped_at: torch.LongTensor
    row_accepted: torch.LongTensor  # [B]: what each row alone accepts (per-row progress)

    def decide(self, sequence_length: int, max_length: int | None) -> tuple[int, bool]:
        """How many window tokens to commit, and whether decoding stops after them: the step's one host sync."""
        accepted, all_stopped_at = torch.stack([self.accepted, self.all_stopped_at]).tolist()
        keep = min(accepted, all_stopped_at + 1)
        stop = all_stopped_at < accepted or (max_length is not None and sequence_length + keep >= max_length)
        return keep, stop


def settle(window, prediction: Prediction, matches, unfinished, input_ids, stopping: Stopping) -> Settled:
    """Apply EOS/stopping to the predictions and the confirmed guesses (`matches` [B]), without a host sync."""
    length = window.shape[1]
    emitted, unfinished_after = stopping.emit(prediction.tokens, unfinished, input_ids)
    if stopping.pad is not None:
        # A row padded from position j on does not care whether its guesses after j were right.
        matches = torch.where(_first_true(~unfinished_after, length) <= matches, length - 1, matches)
    accepted = matches.min() + 1  # with one shared cache length the batch moves at its slowest row's pace
    return Settled(emitted, unfinished_after, accepted, _first_true(~unfinished_after.any(0), length), matches + 1)
