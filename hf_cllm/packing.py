"""Pack a trajectory row into ONE forward pass for consistency training.

The reference trainer runs one forward per block record for the AR loss, one on the fixed point and one on a state,
each repeating the prompt and all previous blocks. Here a row (one prompt) becomes one sequence:

    [ prompt | answer (all fixed points) | gold answer (optional) | states of every block ... ]

with a 4-D attention mask: prompt and answer are causal as usual; every other segment sees a prefix of
prompt + answer (a state of block b sees the prompt and the answer before block b; the gold answer sees the prompt)
and itself causally, and its position ids continue from that prefix. Its logits are the ones the separate forwards
would give, so the answer part yields the AR loss and, detached, the consistency teacher (the model on the fixed
point, the paper's stop-gradient θ⁻), and every state part yields a student — the prefix computed once for all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .trajectories import mixed_seed


IGNORE_INDEX = -100


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
    )

    def add_segment(tokens: list[int], context: int) -> int:
        start = len(packed.input_ids)
        packed.input_ids += tokens
        packed.position_ids += range(context, context + len(tokens))
        packed.segment_start += [start] * len(tokens)
        packed.context_length += [context] * len(tokens)
        packed.ar_labels += [IGNORE_INDEX] * len(tokens)
        return start

    if options.ar_on_prompt:
        packed.ar_labels[: p - 1] = prompt[1:]
    if options.ar_target == "teacher":
        packed.ar_labels[p - 1 : p + a - 1] = answer
    else:  # gold labels, as their own segment after the prompt
        gold = list(row["labels"]) + ([options.eos_token_id] if options.eos_token_id is not None else [])
        start = add_segment(gold, context=p)
        packed.ar_labels[p - 1] = gold[0]
        packed.ar_labels[start : start + len(gold) - 1] = gold[1:]

    states, state_block = row["states"], row["state_block"]
    chosen = pick_states(state_block, generator, per_block=options.states_per_block)
    for block, index in ((block, index) for block in sorted(chosen) for index in chosen[block]):
        state = list(states[index])
        offset = block * options.jacobi_n
        start = add_segment(state, context=p + offset)
        if options.consistency == "global":
            target = answer[offset : offset + len(state)]
            teacher_start = p + offset
        else:  # local: the next recorded state of the block, or the fixed point after the last one
            later = [i for i in range(index + 1, len(states)) if state_block[i] == block]
            if later:
                target = list(states[later[0]])
                teacher_start = add_segment(target, context=p + offset)
            else:
                target = answer[offset : offset + len(state)]
                teacher_start = p + offset
        # Positions whose whole context agrees with the target's see the same input, hence give the same
        # distribution: the paper drops them ("misleading gradients"), from the first differing token on all count.
        divergence = _first_difference(state, target) if options.first_divergence_mask else 0
        for j in range(len(state)):
            if offset + j + 1 >= a:  # the teacher's distribution there predicts past the answer's end
                break
            packed.student_positions.append(start + j)
            packed.teacher_positions.append(teacher_start + j)
            packed.consistency_mask.append(j >= divergence)
    return packed


class JacobiCollator:
    """Turns trajectory rows into padded batches for `CLLMTrainer`: one packed sequence per row, a boolean 4-D
    attention mask `(B, 1, T, T)`, position ids, AR labels and the consistency pairs.

    Each time a row is drawn, `states_per_block` random states of every block are packed, each as its own segment.
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
