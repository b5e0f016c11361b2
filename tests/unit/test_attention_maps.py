"""Normalised attention-similarity loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from medkd.distill import build_loss
from medkd.distill.attention_maps import AttentionSimilarity, attention_similarity, spatial_attention


def _student() -> torch.Tensor:
    # (1, 2, 1, 2): channel 0 = [1, 2], channel 1 = [1, 0]
    return torch.tensor([[[[1.0, 2.0]], [[1.0, 0.0]]]])


def _teacher() -> torch.Tensor:
    # (1, 1, 1, 2): [2, 2]
    return torch.tensor([[[[2.0, 2.0]]]])


def test_spatial_attention_mean_and_sum():
    # |F|^2: channel 0 = [1, 4], channel 1 = [1, 0]; mean = [1, 2]; sum = [2, 4]
    assert torch.equal(spatial_attention(_student()), torch.tensor([[[1.0, 2.0]]]))
    assert torch.equal(spatial_attention(_student(), reduction="sum"), torch.tensor([[[2.0, 4.0]]]))
    # power 1: |F| mean = [(1+1)/2, (2+0)/2] = [1, 1]
    assert torch.equal(spatial_attention(_student(), power=1), torch.tensor([[[1.0, 1.0]]]))


def test_l2_value_by_hand():
    # A_s = [1, 2] / sqrt(5); A_t = [4, 4] -> [1, 1] / sqrt(2)
    # ||A_s - A_t||^2 = 1 + 1 - 2 * (1 + 2) / (sqrt(5) sqrt(2)) = 2 - 6 / sqrt(10)  -> 0.320364...
    expected = math.sqrt(2 - 6 / math.sqrt(10))
    loss = build_loss("attention_similarity")(_student(), _teacher(), {}, 0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.320364, abs=1e-6)


def test_l1_norm_and_l1_distance_by_hand():
    # A_s = [1, 2] / 3 ; A_t = [1, 1] / 2 ; A_s - A_t = [-1/6, 1/6] ; L1 distance = 1/3
    loss = AttentionSimilarity(norm="l1", distance_p=1)(_student(), _teacher(), {}, 0)
    assert loss.item() == pytest.approx(1 / 3, rel=1e-6)


def test_sum_and_mean_reductions_agree_after_normalisation():
    a = AttentionSimilarity(reduction="mean")(_student(), _teacher(), {}, 0)
    b = AttentionSimilarity(reduction="sum")(_student(), _teacher(), {}, 0)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_teacher_resized_bilinearly_to_student_size():
    # teacher (1, 1, 2, 4) = [[1, 1, 2, 2], [1, 1, 2, 2]] -> |F|^2 = [[1, 1, 4, 4], [1, 1, 4, 4]]
    # bilinear (align_corners=False) to 1x2 samples the centres of the 2x2 blocks -> [1, 4]
    # A_t = [1, 4] / sqrt(17), A_s = [1, 2] / sqrt(5): ||.||^2 = 2 - 2 * 9 / sqrt(85)
    teacher = torch.tensor([[[[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]]]])
    loss = attention_similarity(_student(), teacher)
    assert loss.item() == pytest.approx(math.sqrt(2 - 18 / math.sqrt(85)), rel=1e-6)


def test_mean_over_samples_and_pairs():
    single = math.sqrt(2 - 6 / math.sqrt(10))
    student = torch.cat([_student(), _student()])
    teacher = torch.cat([_teacher(), torch.tensor([[[[1.0, 2.0**0.5]]]])])
    # sample 2: teacher |F|^2 = [1, 2] = student map -> distance 0 ; mean over samples = single / 2
    loss = AttentionSimilarity()(student, teacher, {}, 0)
    assert loss.item() == pytest.approx(single / 2, rel=1e-5)
    # two pairs (coarse, fine): the mean of the pair losses
    pairs = AttentionSimilarity()([_student(), _student()], [_teacher(), _student()], {}, 0)
    assert pairs.item() == pytest.approx(single / 2, rel=1e-5)


def test_gradient_reaches_student_only():
    student = _student().requires_grad_(True)
    teacher = _teacher().requires_grad_(True)
    AttentionSimilarity()(student, teacher, {}, 0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_identical_maps_give_zero_and_needs_teacher():
    x = torch.randn(3, 4, 5, 5)
    assert AttentionSimilarity()(x, x.clone(), {}, 0).item() == pytest.approx(0.0, abs=1e-6)
    assert AttentionSimilarity.needs_teacher is True


def test_bad_inputs():
    loss = AttentionSimilarity()
    with pytest.raises(ValueError, match="pair"):
        loss([_student()], [_teacher(), _teacher()], {}, 0)
    with pytest.raises(ValueError, match="B, C, H, W"):
        loss(torch.ones(1, 2, 3), torch.ones(1, 2, 3), {}, 0)
    with pytest.raises(ValueError, match="batch"):
        loss(torch.ones(2, 1, 2, 2), torch.ones(1, 1, 2, 2), {}, 0)
    with pytest.raises(ValueError, match="norm"):
        AttentionSimilarity(norm="max")
    with pytest.raises(ValueError, match="reduction"):
        AttentionSimilarity(reduction="max")
