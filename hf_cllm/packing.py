"""Pack a trajectory row into ONE forward pass for consistency training.

The reference trainer runs one forward per block record for the AR loss, one on the fixed point and one on a state,
each repeating the prompt and all previous blocks. Here a row (one prompt) becomes one sequence:

    cllm:            [ prompt | answer (all fixed points) | gold answer (optional) | a state of block 0 | of 1 | ... ]
    jacobi_forcing:  [ prompt | answer (all fixed points) | gold answer (optional) | noisy answer                  ]

with a 4-D attention mask: prompt and answer are causal as usual; every other segment sees a prefix of
prompt + answer and itself causally, and its position ids continue from that prefix. For `cllm` a state of block b
sees the prompt and the answer before block b (its earlier blocks are clean). For `jacobi_forcing` (the CLLM
authors' successor) the noisy answer is every block's noisy state in a row, seeing only the prompt: a noisy block
sees the earlier *noisy* blocks and itself, while a clean block sees the earlier clean blocks — the noisy-context
mask, which prepares the model to decode a block while the blocks before it are still unconverged. Each noisy block
shares its clean block's position ids. The gold answer sees the prompt.

The logits are the ones the separate forwards would give, so the answer part yields the AR loss and, detached, the
consistency teacher (the model on the fixed point, the paper's stop-gradient θ⁻), and every state part yields a
student — the prefix computed once for all.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from .trajectories import mixed_seed


IGNORE_INDEX = -100
RECIPES = ("cllm", "jacobi_forcing")
NOISE_SCHEDULES = ("progressive", "random")


@dataclass(frozen=True)
class PackingOptions:
    """How a trajectory row becomes a training sequence: the one place these choices live. `CLLMTrainer` builds it
    from its `CLLMConfig` (`from_config`, where each option is documented); `pack_row` and `JacobiCollator` read it."""

    jacobi_n: int
    consistency: str = "global"
    ar_target: str = "teacher"
    ar_on_prompt: bool = False
    first_divergence_mask: bool = True
    states_per_block: int = 1
    eos_token_id: int | None = None
    recipe: str = "cllm"
    noise_schedule: str = "progressive"
    noise_levels: int | None = None  # None: jacobi_n

    @classmethod
    def from_config(cls, args, tokenizer) -> PackingOptions:
        return cls(
            jacobi_n=args.jacobi_n,
            consistency=args.consistency_loss,
            ar_target=args.ar_target,
            ar_on_prompt=args.ar_on_prompt,
            first_divergence_mask=args.first_divergence_mask,
            states_per_block=args.states_per_block,
            eos_token_id=tokenizer.eos_token_id,
            recipe=args.recipe,
            noise_schedule=args.noise_schedule,
            noise_levels=args.noise_levels,
        )


@dataclass
class PackedRow:
    """One row as flat lists; `JacobiCollator` pads a batch of them into tensors."""

    input_ids: list[int]
    position_ids: list[int]
    segment_start: list[int]  # index of the first token of the token's own segment
    context_length: list[int]  # how many prompt+answer tokens the token sees besides its own segment
    ar_labels: list[int]  # the next-token target at each position, IGNORE_INDEX where none
    student_positions: list[int]  # consistency pairs: the student's position ...
    teacher_positions: list[int]  # ... and the position whose (detached) distribution it should match
    consistency_mask: list[bool]  # whether the pair counts (the first-divergence mask)
    consistency_pair: list[int]  # which (state, target) pair of the row each position belongs to
    num_pairs: int = 0

    def add_segment(self, tokens: list[int], context: int) -> int:
        """Append a segment that sees the first `context` tokens (prompt + answer) and itself causally, with
        position ids continuing from that prefix; returns where it starts."""
        start = len(self.input_ids)
        self.input_ids += tokens
        self.position_ids += range(context, context + len(tokens))
        self.segment_start += [start] * len(tokens)
        self.context_length += [context] * len(tokens)
        self.ar_labels += [IGNORE_INDEX] * len(tokens)
        return start


def pick_states(
    state_block: list[int], generator: torch.Generator | None = None, per_block: int = 1
) -> dict[int, list[int]]:
    """Up to `per_block` distinct random states of every block that has states: {block: sorted indices into the
    row's `states`}. More than one state per block reuses the row's prefix (computed once) for more training signal."""
    by_block: dict[int, list[int]] = {}
    for index, block in enumerate(state_block):
        by_block.setdefault(block, []).append(index)
    return {
        block: sorted(indices[i] for i in torch.randperm(len(indices), generator=generator)[:per_block].tolist())
        for block, indices in by_block.items()
    }


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))


def state_noise(state: list[int], fixed_point: list[int]) -> float:
    """Jacobi Forcing's noise of a state: the share of its block still wrong, from the first differing token on."""
    return (len(fixed_point) - _first_difference(state, fixed_point)) / len(fixed_point)


def pick_noisy_states(
    row: dict, options: PackingOptions, generator: torch.Generator | None = None
) -> list[int | None]:
    """Jacobi Forcing's noise schedule: for every block of the answer, the index into `row["states"]` of the state
    whose noise is nearest the block's target level, or None where the fixed point itself (noise 0) is nearest.

    Target levels are `linspace(0, 1, noise_levels)`; `progressive` gives block j level `j % noise_levels` (noise
    rises along the answer, then cycles: the schedule their ablation found best), `random` a random level. Ties go
    to a random one of the nearest states, so repeated draws of a row see different states."""
    n, answer = options.jacobi_n, row["answer_ids"]
    count = options.noise_levels or n
    levels = torch.linspace(0, 1, count).tolist()
    candidates: dict[int, list[tuple[float, int | None]]] = {}
    for index, (state, block) in enumerate(zip(row["states"], row["state_block"])):
        candidates.setdefault(block, []).append((state_noise(list(state), answer[block * n : block * n + n]), index))
    chosen = []
    for block in range((len(answer) + n - 1) // n):
        if options.noise_schedule == "progressive":
            level = levels[block % count]
        else:
            level = levels[int(torch.randint(count, (1,), generator=generator))]
        choices = [(0.0, None), *candidates.get(block, [])]
        best = min(abs(noise - level) for noise, _ in choices)
        nearest = [index for noise, index in choices if abs(noise - level) - best < 1e-9]
        chosen.append(nearest[int(torch.randint(len(nearest), (1,), generator=generator))])
    return chosen


def pack_row(row: dict, options: PackingOptions, generator: torch.Generator | None = None) -> PackedRow:
    """Lay out one trajectory row (schema: `hf_cllm.trajectories`) as one sequence; see the module docstring."""
    prompt, answer = list(row["prompt_ids"]), list(row["answer_ids"])
    p, a = len(prompt), len(answer)
    packed = PackedRow(
        input_ids=prompt + answer,
        position_ids=list(range(p + a)),
        segment_start=[0] * (p + a),
        context_length=[0] * (p + a),
        ar_labels=[IGNORE_INDEX] * (p + a),
        student_positions=[],
        teacher_positions=[],
        consistency_mask=[],
        consistency_pair=[],
    )

    if options.ar_on_prompt:
        packed.ar_labels[: p - 1] = prompt[1:]
    if options.ar_target == "teacher":
        packed.ar_labels[p - 1 : p + a - 1] = answer
    else:  # gold labels, as their own segment after the prompt
        gold = list(row["labels"]) + ([options.eos_token_id] if options.eos_token_id is not None else [])
        start = packed.add_segment(gold, context=p)
        packed.ar_labels[p - 1] = gold[0]
        packed.ar_labels[start : start + len(gold) - 1] = gold[1:]

    if options.recipe == "jacobi_forcing":
        _add_noisy_answer(packed, row, options, generator)
    else:
        _add_states(packed, row, options, generator)
    return packed


def _add_pairs(packed, state, target, student_start, teacher_start, offset, answer_length, options):
    """The consistency pairs of one state: each of its positions against the target's, counted from the first
    position where the two differ (earlier positions see the same input, hence give the same distribution: the
    paper drops them as "misleading gradients"); the answer's last token predicts nothing. Pairs are numbered in
    the order they are added."""
    divergence = _first_difference(state, target) if options.first_divergence_mask else 0
    for j in range(len(state)):
        if offset + j + 1 >= answer_length:  # the teacher's distribution there predicts past the answer's end
            break
        packed.student_positions.append(student_start + j)
        packed.teacher_positions.append(teacher_start + j)
        packed.consistency_mask.append(j >= divergence)
        packed.consistency_pair.append(packed.num_pairs)
    packed.num_pairs += 1


def _add_states(packed, row, options, generator):
    """CLLM: states of every block, each its own segment on top of the clean answer before its block."""
    p, answer = len(row["prompt_ids"]), list(row["answer_ids"])
    states, state_block = row["states"], row["state_block"]
    chosen = pick_states(state_block, generator, per_block=options.states_per_block)
    for block, index in ((block, index) for block in sorted(chosen) for index in chosen[block]):
        state = list(states[index])
        offset = block * options.jacobi_n
        start = packed.add_segment(state, context=p + offset)
        if options.consistency == "global":
            target = answer[offset : offset + len(state)]
            teacher_start = p + offset
        else:  # local: the next recorded state of the block, or the fixed point after the last one
            later = [i for i in range(index + 1, len(states)) if state_block[i] == block]
            if later:
                target = list(states[later[0]])
                teacher_start = packed.add_segment(target, context=p + offset)
            else:
                target = answer[offset : offset + len(state)]
                teacher_start = p + offset
        _add_pairs(packed, state, target, start, teacher_start, offset, len(answer), options)


def _add_noisy_answer(packed, row, options, generator):
    """Jacobi Forcing: every block as a (noisy state, fixed point) pair; the noisy blocks in one segment that sees
    the prompt only, so each noisy block sees the earlier noisy blocks. A block whose schedule picks noise 0 is its
    fixed point (a pair with nothing to learn, as in the reference)."""
    p, answer, n = len(row["prompt_ids"]), list(row["answer_ids"]), options.jacobi_n
    chosen = pick_noisy_states(row, options, generator)
    noisy = [list(row["states"][index]) if index is not None else answer[b * n : b * n + n]
             for b, index in enumerate(chosen)]  # fmt: skip
    start = packed.add_segment([token for block in noisy for token in block], context=p)
    for block, state in enumerate(noisy):
        offset = block * n
        target = answer[offset : offset + n]
        _add_pairs(packed, state, target, start + offset, p + offset, offset, len(answer), options)


class JacobiCollator:
    """Turns trajectory rows into padded batches for `CLLMTrainer`: one packed sequence per row, a boolean 4-D
    attention mask `(B, 1, T, T)`, position ids, AR labels and the consistency pairs.

    Each time a row is drawn, `states_per_block` random states of every block are packed, each as its own segment
    (`cllm`), or one state per block picked by the noise schedule (`jacobi_forcing`).
    The draw is seeded by (seed, the row's `prompt_index`, `epoch`), so it is the same whatever the batch, the number
    of processes or a resume from a checkpoint; `CLLMTrainer` sets `epoch` at the start of each epoch. Rows without
    `prompt_index` use torch's global generator.
    """

    def __init__(self, options: PackingOptions, pad_token_id: int, seed: int = 0):
        self.options = options
        self.pad_token_id = pad_token_id
        self.seed = seed
        self.epoch = 0

    def _generator(self, row: dict) -> torch.Generator | None:
        if row.get("prompt_index") is None:
            return None
        return torch.Generator().manual_seed(mixed_seed(self.seed, row["prompt_index"], self.epoch, "states"))

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        packed = [pack_row(row, self.options, self._generator(row)) for row in rows]
        batch, width = len(packed), max(len(r.input_ids) for r in packed)
        pairs = max(1, max(len(r.student_positions) for r in packed))
        first_pair = list(itertools.accumulate((r.num_pairs for r in packed), initial=0))

        def padded(values, length, fill, dtype=torch.long):
            out = torch.full((batch, length), fill, dtype=dtype)
            for i, v in enumerate(values):
                out[i, : len(v)] = torch.tensor(v, dtype=dtype)
            return out

        positions = torch.arange(width)
        # Padding tokens form one-token segments of their own, so no attention row is empty.
        start = positions.expand(batch, width).clone()
        context = torch.zeros(batch, width, dtype=torch.long)
        for i, r in enumerate(packed):
            start[i, : len(r.segment_start)] = torch.tensor(r.segment_start)
            context[i, : len(r.context_length)] = torch.tensor(r.context_length)
        query, key = positions[:, None], positions[None, :]
        attend = (key < context[:, :, None]) | ((key >= start[:, :, None]) & (key <= query))
        return {
            "input_ids": padded([r.input_ids for r in packed], width, self.pad_token_id),
            "position_ids": padded([r.position_ids for r in packed], width, 0),
            "attention_mask": attend[:, None],
            "ar_labels": padded([r.ar_labels for r in packed], width, IGNORE_INDEX),
            "student_positions": padded([r.student_positions for r in packed], pairs, 0),
            "teacher_positions": padded([r.teacher_positions for r in packed], pairs, 0),
            "consistency_mask": padded([r.consistency_mask for r in packed], pairs, False, torch.bool),
            # The pair of each position, numbered across the batch (-1: padding), and how many pairs there are.
            "consistency_pair": padded(
                [[first + pair for pair in r.consistency_pair] for first, r in zip(first_pair, packed)], pairs, -1
            ),
            "num_pairs": torch.tensor(sum(r.num_pairs for r in packed)),
        }


def _attention_setup(model):
    """The model's (text) config and attention implementation."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return config, getattr(config, "_attn_implementation", None) or "sdpa"


def check_packable(model):
    """Packed rows need an attention that takes a ready 4-D mask; flash and paged attention do not. Returns the
    model's (text) config and attention implementation."""
    config, implementation = _attention_setup(model)
    if implementation.startswith("flash") or "paged" in implementation:
        raise ValueError(
            f"attn_implementation={implementation!r} cannot take the custom 4-D attention mask consistency training "
            "packs its sequences with; load the model with attn_implementation='sdpa' (or 'eager')"
        )
    return config, implementation


def model_attention_mask(model, attend: torch.Tensor, position_ids: torch.Tensor):
    """The collator's boolean `(B, 1, T, T)` mask in the form `model` takes as a ready 4-D mask.

    Sliding-window layers also need the window, applied on position ids; models with both layer kinds take a dict
    keyed by layer type. Eager attention adds the mask to its scores, so it gets an additive float mask.
    """
    config, implementation = check_packable(model)
    window = getattr(config, "sliding_window", None)
    layer_types = set(getattr(config, "layer_types", None) or [])
    masks = {"full_attention": attend}
    if window and (not layer_types or "sliding_attention" in layer_types):
        distance = position_ids[:, :, None] - position_ids[:, None, :]
        masks["sliding_attention"] = attend & (distance < window)[:, None]
    if implementation == "eager":
        dtype = model.dtype
        masks = {
            kind: torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, torch.finfo(dtype).min)
            for kind, m in masks.items()
        }
    if len(masks) == 1:
        return masks["full_attention"]
    if not layer_types:  # every layer slides (Mistral-style config)
        return masks["sliding_attention"]
    return {kind: masks[kind] for kind in layer_types}
