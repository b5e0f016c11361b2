"""MTMS contrastive (InfoNCE) feature distillation and prediction-map distillation."""

from __future__ import annotations

import math

import pytest
import torch

from medkd.distill import build_loss
from medkd.distill.contrastive import ContrastiveFeatureKD, info_nce

# Hand example, B = 2, two channels, 1x1 maps, tau = 0.5.
# Student s1 = (2, 0), s2 = (0, 3) -> normalised (1, 0), (0, 1).
# Teacher t1 = (1, 0), t2 = (1, 1) -> normalised (1, 0), (1/sqrt2, 1/sqrt2).
# Cosines: row 1 = (1, 1/sqrt2), row 2 = (0, 1/sqrt2); divided by tau: (2, sqrt2), (0, sqrt2).
# Row 1, positive = column 0: -log(e^2 / (e^2 + e^sqrt2)) = log(1 + e^-(2 - sqrt2)) = log(1.556710) = 0.442548
# Row 2, positive = column 1: -log(e^sqrt2 / (1 + e^sqrt2)) = log(1 + e^-sqrt2)      = log(1.243117) = 0.217622
# Mean = 0.330085.
HAND_INFONCE = 0.5 * (math.log(1 + math.exp(-(2 - math.sqrt(2)))) + math.log(1 + math.exp(-math.sqrt(2))))
STUDENT = torch.tensor([[2.0, 0.0], [0.0, 3.0]]).reshape(2, 2, 1, 1)
TEACHER = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).reshape(2, 2, 1, 1)


def test_hand_value_constant_is_the_arithmetic_above():
    assert HAND_INFONCE == pytest.approx(0.330085, abs=1e-6)


def test_infonce_matches_hand_value_without_adapter():
    loss = build_loss("infonce", adapter="none", temperature=0.5)
    value = loss(STUDENT, TEACHER, {}, 0)
    assert value.item() == pytest.approx(HAND_INFONCE, abs=1e-6)
    assert info_nce(STUDENT.flatten(1), TEACHER.flatten(1), 0.5).item() == pytest.approx(HAND_INFONCE, abs=1e-6)


def test_infonce_resizes_teacher_to_student_grid():
    # Spatially constant maps stay constant under bilinear resizing, and repeating each embedding value
    # 16 times does not change cosines: a 2x2 teacher against a 4x4 student gives the hand value again.
    student = STUDENT.expand(2, 2, 4, 4).clone()
    teacher = TEACHER.expand(2, 2, 2, 2).clone()
    loss = build_loss("infonce", adapter="none", temperature=0.5)
    assert loss(student, teacher, {}, 0).item() == pytest.approx(HAND_INFONCE, abs=1e-6)


def test_infonce_resizing_is_bilinear_on_a_non_constant_map():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 2, 2)
    loss = build_loss("infonce", adapter="none", temperature=0.4)
    resized = torch.nn.functional.interpolate(teacher, size=(4, 4), mode="bilinear", align_corners=False)
    expected = info_nce(student.flatten(1), resized.flatten(1), 0.4)
    assert loss(student, teacher, {}, 0).item() == pytest.approx(expected.item(), abs=1e-6)


def test_single_sample_batch_gives_exact_zero():
    loss = build_loss("infonce", adapter="none", temperature=0.4)
    assert loss(STUDENT[:1], TEACHER[:1], {}, 0).item() == 0.0


@pytest.mark.parametrize("project, in_ch, out_ch", [("teacher", 8, 4), ("student", 4, 8)])
def test_learned_adapter_is_a_trainable_parameter(project, in_ch, out_ch):
    loss = build_loss("infonce", student_channels=4, teacher_channels=8, project=project, temperature=0.4)
    params = dict(loss.named_parameters())
    assert params["adapter.weight"].shape == (out_ch, in_ch, 1, 1)
    assert params["adapter.bias"].shape == (out_ch,)
    student = torch.randn(3, 4, 4, 4, requires_grad=True)
    teacher = torch.randn(3, 8, 2, 2)  # bottleneck-like: smaller teacher grid, more channels
    loss(student, teacher, {}, 0).backward()
    assert params["adapter.weight"].grad is not None and params["adapter.weight"].grad.abs().sum() > 0
    assert student.grad is not None


def test_learned_teacher_adapter_equals_conv_then_infonce():
    torch.manual_seed(1)
    loss = build_loss("infonce", student_channels=2, teacher_channels=3, temperature=0.4)
    student, teacher = torch.randn(4, 2, 2, 2), torch.randn(4, 3, 2, 2)
    expected = info_nce(student.flatten(1), loss.adapter(teacher).flatten(1), 0.4)
    assert loss(student, teacher, {}, 0).item() == pytest.approx(expected.item(), abs=1e-6)


def test_random_per_step_adapter_has_no_parameters_and_is_redrawn():
    loss = build_loss(
        "infonce", student_channels=16, teacher_channels=64, project="student", adapter="random_per_step",
        temperature=0.4,
    )
    assert list(loss.parameters()) == []
    torch.manual_seed(0)
    student = torch.randn(3, 16, 8, 8, requires_grad=True)
    teacher = torch.randn(3, 64, 8, 8)
    first, second = loss(student, teacher, {}, 0), loss(student, teacher, {}, 0)
    assert first.item() != second.item()
    first.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    # Drawn from torch's global RNG: reseeding reproduces the projection.
    torch.manual_seed(5)
    a = loss(student, teacher, {}, 0)
    torch.manual_seed(5)
    b = loss(student, teacher, {}, 0)
    assert a.item() == b.item()


def test_last_batch_smaller_than_configured_batch_size():
    # The MTMS code reshapes with the configured batch size 20; a last batch of 3 must work here.
    loss = build_loss("infonce", student_channels=64, teacher_channels=1024, temperature=0.4)
    value = loss(torch.randn(3, 64, 4, 4), torch.randn(3, 1024, 1, 1), {}, 0)
    assert value.ndim == 0 and torch.isfinite(value)


def test_teacher_tap_given_as_one_element_list():
    loss = build_loss("infonce", adapter="none", temperature=0.5)
    assert loss([STUDENT], [TEACHER], {}, 0).item() == pytest.approx(HAND_INFONCE, abs=1e-6)


def test_configuration_errors_are_named():
    with pytest.raises(ValueError, match="adapter"):
        ContrastiveFeatureKD(4, 8, adapter="fixed")
    with pytest.raises(ValueError, match="project"):
        ContrastiveFeatureKD(4, 8, project="both")
    with pytest.raises(ValueError, match="teacher_channels is required"):
        ContrastiveFeatureKD(student_channels=4)
    with pytest.raises(ValueError, match="equal channel counts"):
        ContrastiveFeatureKD(4, 8, adapter="none")
    loss = ContrastiveFeatureKD(4, 8)
    with pytest.raises(ValueError, match="teacher tap has 6 channels"):
        loss(torch.randn(2, 4, 2, 2), torch.randn(2, 6, 2, 2), {}, 0)
    with pytest.raises(ValueError, match="values per sample"):
        ContrastiveFeatureKD(adapter="none")(torch.randn(2, 4, 2, 2), torch.randn(2, 8, 2, 2), {}, 0)


# PMD, sigmoid_kl, T = 4. Pixel 1: s = 0, t = 4 -> p = sigmoid(0) = 0.5, q = sigmoid(1) = 0.731059.
# KL = q ln(q / 0.5) + (1 - q) ln((1 - q) / 0.5) = 0.731059 * 0.379885 + 0.268941 * (-0.620115)
#    = 0.277719 - 0.166775 = 0.110944. Pixel 2: s = t = 2 -> KL = 0. Mean 0.055472, times T^2 = 16: 0.887553.
HAND_PMD = 0.5 * 16 * (
    (1 / (1 + math.exp(-1))) * math.log(2 / (1 + math.exp(-1)))
    + (1 - 1 / (1 + math.exp(-1))) * math.log(2 * (1 - 1 / (1 + math.exp(-1))))
)


def test_pmd_sigmoid_kl_matches_hand_value():
    assert HAND_PMD == pytest.approx(0.887553, abs=1e-6)
    student = torch.tensor([0.0, 2.0]).reshape(1, 1, 1, 2)
    teacher = torch.tensor([4.0, 2.0]).reshape(1, 1, 1, 2)
    loss = build_loss("pmd")
    assert loss.needs_teacher
    assert loss(student, teacher, {}, 0).item() == pytest.approx(HAND_PMD, abs=1e-5)


def test_pmd_sigmoid_kl_is_zero_for_equal_maps_and_pulls_student_to_teacher():
    torch.manual_seed(0)
    teacher = torch.randn(3, 1, 4, 4)
    loss = build_loss("pmd", mode="sigmoid_kl", temperature=4)
    assert loss(teacher.clone(), teacher, {}, 0).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.zeros(3, 1, 4, 4, requires_grad=True)
    loss(student, teacher, {}, 0).backward()
    # d/ds of the KL moves sigmoid(s/T) toward sigmoid(t/T): the gradient sign is opposite to t's sign.
    assert torch.all(torch.sign(student.grad) == -torch.sign(teacher))


def test_pmd_code_zero_is_exactly_zero_with_zero_gradient():
    torch.manual_seed(0)
    student = torch.randn(3, 1, 8, 8, requires_grad=True)
    teacher = torch.randn(3, 1, 8, 8)
    value = build_loss("pmd", mode="code_zero")(student, teacher, {}, 0)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert student.grad is not None and torch.count_nonzero(student.grad) == 0


def test_pmd_errors():
    with pytest.raises(ValueError, match="mode"):
        build_loss("pmd", mode="softmax")
    with pytest.raises(ValueError, match="differ"):
        build_loss("pmd")(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 2, 2), {}, 0)
