"""Multi-teacher KL: single-teacher reduction, weight normalisation, identical teachers, score weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import rel_entr, softmax

from medkd.distill import build_loss
from medkd.distill.multi_teacher import MultiTeacherKL, normalise_weights, teacher_weights_from_scores


def _reference_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    """T^2 * mean over (b, h, w) of sum_c p_t log(p_t / p_s), with SciPy."""
    ps = softmax(student.double().numpy() / temperature, axis=1)
    pt = softmax(teacher.double().numpy() / temperature, axis=1)
    return float(rel_entr(pt, ps).sum(axis=1).mean() * temperature**2)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 4, 4, generator=g)
    t1 = torch.randn(2, 3, 4, 4, generator=g) * 2
    t2 = torch.randn(2, 3, 4, 4, generator=g)
    return student, t1, t2


def test_one_teacher_weight_one_is_single_teacher_kl(logits):
    student, t1, _ = logits
    loss = build_loss("multi_teacher_kl", weights=[1.0], temperature=2.0)(student, [t1], {}, 0)
    assert loss.item() == pytest.approx(_reference_kl(student, t1, 2.0), rel=1e-5)
    # a bare tensor is a one-teacher list; equals the registered single-teacher kl_div too
    bare = MultiTeacherKL(temperature=2.0)(student, t1, {}, 0)
    single = build_loss("kl_div", temperature=2.0)(student, t1, {}, 0)
    assert bare.item() == pytest.approx(single.item(), rel=1e-6)


def test_weights_normalised_and_combined(logits):
    student, t1, t2 = logits
    assert normalise_weights([2, 6], 2) == [0.25, 0.75]
    assert sum(normalise_weights([0.3, 0.3, 0.9], 3)) == pytest.approx(1.0)
    loss = MultiTeacherKL(weights=[2, 6], temperature=4.0)(student, [t1, t2], {}, 0)
    expected = 0.25 * _reference_kl(student, t1, 4.0) + 0.75 * _reference_kl(student, t2, 4.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # a zero weight drops that teacher
    only_first = MultiTeacherKL(weights=[1, 0], temperature=4.0)(student, [t1, t2], {}, 0)
    assert only_first.item() == pytest.approx(_reference_kl(student, t1, 4.0), rel=1e-5)


def test_two_identical_teachers_equal_one(logits):
    student, t1, _ = logits
    one = MultiTeacherKL()(student, [t1], {}, 0)
    two = MultiTeacherKL(weights="uniform")(student, [t1, t1.clone()], {}, 0)
    assert two.item() == pytest.approx(one.item(), rel=1e-6)


def test_binary_single_logit_student_as_two_classes():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 1, 3, 3, generator=g)
    teacher = torch.randn(2, 2, 3, 3, generator=g)
    temperature = 3.0
    p = 1 / (1 + np.exp(-z.double().numpy() / temperature))
    ps = np.concatenate([1 - p, p], axis=1)  # [1 - p, p]
    pt = softmax(teacher.double().numpy() / temperature, axis=1)
    expected = rel_entr(pt, ps).sum(axis=1).mean() * temperature**2
    loss = MultiTeacherKL(temperature=temperature)(z, [teacher], {}, 0)
    assert loss.item() == pytest.approx(float(expected), rel=1e-5)


def test_teacher_logits_detached(logits):
    student, t1, t2 = logits
    student = student.clone().requires_grad_(True)
    t1 = t1.clone().requires_grad_(True)
    MultiTeacherKL()(student, [t1, t2], {}, 0).backward()
    assert student.grad is not None and t1.grad is None
    assert MultiTeacherKL.needs_teacher is True


def test_weight_errors(logits):
    student, t1, t2 = logits
    with pytest.raises(ValueError, match="non-negative"):
        MultiTeacherKL(weights=[1.0, -0.5])
    with pytest.raises(ValueError, match="all zero"):
        MultiTeacherKL(weights=[0.0, 0.0])
    with pytest.raises(ValueError, match="3 weights for 2 teachers"):
        MultiTeacherKL(weights=[1, 1, 1])(student, [t1, t2], {}, 0)
    with pytest.raises(ValueError, match="uniform"):
        MultiTeacherKL(weights="equal")
    with pytest.raises(ValueError, match="temperature"):
        MultiTeacherKL(temperature=0)


def test_teacher_weights_from_scores():
    # proportional: [0.6, 0.9, 0.9] / 2.4 = [0.25, 0.375, 0.375]
    assert teacher_weights_from_scores([0.6, 0.9, 0.9]) == pytest.approx([0.25, 0.375, 0.375])
    # softmax, T = 0.1: exp([8, 9]) / (e^8 + e^9) = [1 / (1 + e), e / (1 + e)] = [0.268941, 0.731059]
    w = teacher_weights_from_scores([0.8, 0.9], mode="softmax", temperature=0.1)
    assert w == pytest.approx([1 / (1 + np.e), np.e / (1 + np.e)], rel=1e-9)
    assert teacher_weights_from_scores([0.1, 0.7], mode="uniform") == [0.5, 0.5]
    with pytest.raises(ValueError, match="non-negative"):
        teacher_weights_from_scores([0.5, -0.1])
    # every teacher scored 0: equal weights (the limit for equal scores), not an error
    assert teacher_weights_from_scores([0.0, 0.0, 0.0]) == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="mode"):
        teacher_weights_from_scores([0.5], mode="rank")
    with pytest.raises(ValueError, match="finite"):
        teacher_weights_from_scores([float("nan"), 0.5])
