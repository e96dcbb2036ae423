"""The CLLM losses as pure tensor functions (CLLM paper, §3.2; docs and trainer to follow).

- AR loss: next-token cross-entropy on the target answer (teacher output or gold labels), optionally label-smoothed;
  it keeps the model's greedy quality.
- Consistency loss: the student's next-token distributions on an intermediate Jacobi state are pulled towards the
  distributions the same model gives on the fixed point (stop-gradient), so that it predicts the fixed point from a
  noisy block. The paper uses forward KL (soft cross-entropy, same gradient); reverse KL and JSD are alternatives, and
  `hard_ce` (cross-entropy to the target's top token) asks only what Jacobi acceptance checks: the same argmax.

Both average over the positions that count (`mask`), normalised by `num_items_in_batch` when the trainer passes it
(gradient accumulation over batches of different sizes). Jacobi Forcing normalises its consistency term per pair
instead: each (noisy block, clean block) pair's mean over its counted positions, summed, divided by the pairs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


DISTANCES = ("forward_kl", "reverse_kl", "jsd", "hard_ce")


def ar_loss(logits, labels, label_smoothing: float = 0.0, num_items_in_batch=None, ignore_index: int = -100):
    """Next-token cross-entropy. logits: `(B, T, V)` predicting `labels` `(B, T)` at the same positions (already
    shifted); positions with `ignore_index` do not count."""
    total = F.cross_entropy(
        logits.flatten(0, 1).float(),
        labels.flatten(),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction="sum",
    )
    count = num_items_in_batch if num_items_in_batch is not None else (labels != ignore_index).sum()
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)


def consistency_loss(
    student_logits,
    teacher_logits,
    mask,
    distance: str = "forward_kl",
    beta: float = 0.5,
    num_items_in_batch=None,
    pairs=None,
    num_pairs=None,
):
    """Distance between next-token distributions, averaged over the positions where `mask` is true — or, given
    `pairs` (`(B, T)`, each position's pair numbered across the batch, -1 for padding) and `num_pairs`, averaged per
    pair and then over the pairs (Jacobi Forcing's normalisation: a long wrong tail does not outweigh other blocks).

    student_logits, teacher_logits: `(B, T, V)`; the teacher side is detached here (stop-gradient). mask: `(B, T)`.
    `forward_kl` = KL(teacher || student), the paper's soft cross-entropy up to the teacher's entropy;
    `reverse_kl` = KL(student || teacher); `jsd` = beta·KL(teacher || M) + (1-beta)·KL(student || M),
    M = beta·teacher + (1-beta)·student; `hard_ce` = −log student(argmax teacher): a soft KL can also fall by
    flattening both distributions, while acceptance needs only the top token to agree.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if distance == "hard_ce":  # only the target's top token counts: its distribution is never needed
        targets = teacher_logits.detach().argmax(-1)
        per_position = F.cross_entropy(student_logits.float().transpose(1, 2), targets, reduction="none")
    else:
        student = F.log_softmax(student_logits.float(), dim=-1)
        teacher = F.log_softmax(teacher_logits.detach().float(), dim=-1)
        if distance == "forward_kl":
            per_position = _kl(teacher, student)
        elif distance == "reverse_kl":
            per_position = _kl(student, teacher)
        else:
            if not 0 < beta < 1:
                raise ValueError(f"jsd needs 0 < beta < 1, got {beta}")
            mixture = torch.logaddexp(teacher + math.log(beta), student + math.log(1 - beta))
            per_position = beta * _kl(teacher, mixture) + (1 - beta) * _kl(student, mixture)
    mask = mask.to(per_position.dtype)
    if pairs is not None:
        slots = pairs.flatten() + 1  # padding (-1) goes to slot 0, which its zero mask leaves empty
        total = per_position.new_zeros(slots.numel() + 1).scatter_add(0, slots, (per_position * mask).flatten())
        counted = mask.new_zeros(slots.numel() + 1).scatter_add(0, slots, mask.flatten())
        per_pair = total / counted.clamp(min=1)
        return per_pair.sum() / torch.as_tensor(num_pairs, device=mask.device).clamp(min=1)
    count = num_items_in_batch if num_items_in_batch is not None else mask.sum()
    return (per_position * mask).sum() / torch.as_tensor(count, device=mask.device).clamp(min=1)


def _kl(log_p, log_q):
    """KL(p || q) over the last dim, from log-probabilities."""
    return F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
