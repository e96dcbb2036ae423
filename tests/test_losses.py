"""The CLLM losses against closed forms."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_cllm.losses import ar_loss, consistency_loss


def test_ar_loss_of_uniform_logits_is_log_vocab():
    logits = torch.zeros(2, 5, 16)
    labels = torch.randint(0, 16, (2, 5))
    labels[0, :2] = -100  # ignored positions do not count
    torch.testing.assert_close(ar_loss(logits, labels), torch.tensor(math.log(16)))


def test_ar_loss_matches_cross_entropy_with_smoothing_and_external_count():
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 4, 10), torch.randint(0, 10, (3, 4))
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), label_smoothing=0.1)
    torch.testing.assert_close(ar_loss(logits, labels, label_smoothing=0.1), expected)
    # Normalised by the items of the whole accumulated batch when the trainer says so.
    torch.testing.assert_close(ar_loss(logits, labels, 0.1, num_items_in_batch=24), expected * 12 / 24)


@pytest.mark.parametrize("distance", ["forward_kl", "reverse_kl", "jsd"])
def test_identical_distributions_cost_nothing(distance):
    logits = torch.randn(2, 3, 7)
    loss = consistency_loss(logits, logits.clone(), torch.ones(2, 3), distance=distance)
    torch.testing.assert_close(loss, torch.tensor(0.0), atol=1e-6, rtol=0)


def test_forward_and_reverse_kl_closed_form():
    student = torch.log(torch.tensor([[[0.5, 0.5]]]))
    teacher = torch.log(torch.tensor([[[0.9, 0.1]]]))
    mask = torch.ones(1, 1)
    forward = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    reverse = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    torch.testing.assert_close(consistency_loss(student, teacher, mask), torch.tensor(forward))
    torch.testing.assert_close(consistency_loss(student, teacher, mask, "reverse_kl"), torch.tensor(reverse))


def test_hard_ce_is_cross_entropy_to_the_targets_top_token():
    torch.manual_seed(2)
    student, teacher = torch.randn(2, 4, 9), torch.randn(2, 4, 9)
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    per_position = F.cross_entropy(student.flatten(0, 1), teacher.argmax(-1).flatten(), reduction="none")
    expected = (per_position * mask.flatten()).sum() / mask.sum()
    torch.testing.assert_close(consistency_loss(student, teacher, mask, "hard_ce"), expected)
    # Only the top token matters: a flatter teacher with the same argmax is the same target.
    flatter = teacher / 10
    torch.testing.assert_close(consistency_loss(student, flatter, mask, "hard_ce"), expected)


def test_jsd_is_symmetric_at_half_and_bounded_by_log2():
    torch.manual_seed(1)
    a, b, mask = torch.randn(2, 4, 9), torch.randn(2, 4, 9), torch.ones(2, 4)
    torch.testing.assert_close(consistency_loss(a, b, mask, "jsd"), consistency_loss(b, a, mask, "jsd"))
    far = torch.tensor([[[30.0, -30.0]]]), torch.tensor([[[-30.0, 30.0]]])
    torch.testing.assert_close(consistency_loss(*far, torch.ones(1, 1), "jsd"), torch.tensor(math.log(2)))


def test_mask_and_stop_gradient():
    student = torch.randn(1, 3, 5, requires_grad=True)
    teacher = torch.randn(1, 3, 5, requires_grad=True)
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    loss = consistency_loss(student, teacher, mask)
    only_last_two = consistency_loss(student[:, 1:], teacher[:, 1:], torch.ones(1, 2))
    torch.testing.assert_close(loss, only_last_two)
    loss.backward()
    assert teacher.grad is None  # the fixed-point side is a target, not trained through
    assert student.grad[0, 0].abs().sum() == 0 and student.grad[0, 1:].abs().sum() > 0


def test_unknown_distance():
    with pytest.raises(ValueError, match="distance must be one of"):
        consistency_loss(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), torch.ones(1, 1), distance="l2")
