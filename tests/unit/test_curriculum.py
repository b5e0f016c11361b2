"""P-CD pacing, weight functions and every loss type of ``paced_kd`` against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from medkd.distill import LOSSES, build_loss
from medkd.distill.curriculum import (
    LOSS_TYPES,
    PacedKD,
    curriculum_mu,
    curriculum_weights,
    self_paced_mu,
    self_paced_weights_per_image,
    self_paced_weights_per_pixel,
)
from medkd.uncertainty import label_uncertainty

LN3, LN9 = math.log(3.0), math.log(9.0)


def two_class_logits(diffs: list[float]) -> torch.Tensor:
    """(1, 2, 2, 2) logits [0, d] per pixel, pixels in row-major order; softmax gives p1 = sigmoid(d)."""
    d = torch.tensor(diffs, dtype=torch.float32).reshape(1, 1, 2, 2)
    return torch.cat([torch.zeros_like(d), d], dim=1)


# --- pacing ------------------------------------------------------------------------------------------------------


def test_curriculum_mu_code_indexing_sequence():
    # core/ckd.py: after 0-based epoch e with e % 5 == 0, mu += 0.1 (epoch 0 triggers it), cap 1.
    got = [curriculum_mu(e) for e in range(42)]
    expected = [0.2] + [0.3] * 5 + [0.4] * 5 + [0.5] * 5 + [0.6] * 5 + [0.7] * 5 + [0.8] * 5 + [0.9] * 5 + [1.0] * 6
    assert got == pytest.approx(expected, abs=1e-12)
    assert max(got) == 1.0


def test_curriculum_mu_blocks_indexing_and_parameters():
    got = [curriculum_mu(e, indexing="blocks") for e in (0, 4, 5, 9, 10)]
    assert got == pytest.approx([0.2, 0.2, 0.3, 0.3, 0.4])
    # mu0 0.5, step 0.25 every 2 (code indexing: updates after e = 0, 2, 4): e=0 .5, e=1,2 .75, e>=3 1.
    assert [curriculum_mu(e, 0.5, 0.25, 2) for e in range(5)] == pytest.approx([0.5, 0.75, 0.75, 1.0, 1.0])


def test_self_paced_mu_readme_sequence():
    # 1-indexed epochs 1-5 -> 0.39, 6-10 -> 0.573, 11-15 -> 0.756, 16-20 -> 0.939, then 1.0 (0.39 + 4*0.183 = 1.122).
    got = [self_paced_mu(e) for e in range(25)]
    expected = [0.39] * 5 + [0.573] * 5 + [0.756] * 5 + [0.939] * 5 + [1.0] * 5
    assert got == pytest.approx(expected, abs=1e-12)


def test_self_paced_mu_negative_delta_is_an_anti_curriculum_clamped_at_zero():
    # 0.39 - 0.183 = 0.207, 0.207 - 0.183 = 0.024, then 0.024 - 0.183 < 0 -> clamped to 0.
    got = [self_paced_mu(e, 0.39, -0.183) for e in (0, 4, 5, 9, 10, 14, 15, 39)]
    assert got == pytest.approx([0.39, 0.39, 0.207, 0.207, 0.024, 0.024, 0.0, 0.0], abs=1e-12)
    # the train_model.sh sweep value 0.46 / -0.2: 0.46, 0.26, 0.06, 0
    assert [self_paced_mu(e, 0.46, -0.2) for e in (0, 5, 10, 15)] == pytest.approx([0.46, 0.26, 0.06, 0.0])


@pytest.mark.parametrize("fn", [curriculum_mu, self_paced_mu])
def test_pacing_rejects_bad_epochs(fn):
    with pytest.raises(ValueError, match="epoch"):
        fn(-1)
    with pytest.raises(ValueError, match="every"):
        fn(3, every=0)


def test_curriculum_mu_unknown_indexing():
    with pytest.raises(ValueError, match="code, blocks"):
        curriculum_mu(1, indexing="paper")


# --- weights at the confidence temperature 6.26 -------------------------------------------------------------------
# Teacher logit differences d = 6.26*ln9, 6.26*ln3, 0, -6.26*ln3 give p1 = sigmoid(d / 6.26) = 0.9, 0.75, 0.5,
# 0.25 (e.g. sigmoid(ln 3) = 3/(3+1)); target [[1, 0], [1, 1]] gives p_gt = 0.9, 0.25, 0.5, 0.25 and
# max_c p = 0.9, 0.75, 0.5, 0.75.

TS = 6.26
TEACHER_TS = two_class_logits([TS * LN9, TS * LN3, 0.0, -TS * LN3])
TARGET = torch.tensor([[[1, 0], [1, 1]]])


def test_curriculum_weights_hand_values():
    # mu 0.3: threshold 1-mu = 0.7; only p_gt 0.9 passes; the others get min(1, 0.3+0.1) = 0.4.
    w = curriculum_weights(TEACHER_TS, TARGET, 0.3)
    assert w.shape == (1, 2, 2)
    assert w.flatten().tolist() == pytest.approx([1.0, 0.4, 0.4, 0.4])
    # mu 0.5: threshold 0.5; p_gt 0.9 and 0.5 pass, 0.25 -> 0.6.
    assert curriculum_weights(TEACHER_TS, TARGET, 0.5).flatten().tolist() == pytest.approx([1.0, 0.6, 1.0, 0.6])
    # mu 0.95: low weight min(1, 1.05) = 1 everywhere.
    assert curriculum_weights(TEACHER_TS, TARGET, 0.95).flatten().tolist() == pytest.approx([1.0] * 4)


def test_self_paced_weights_per_pixel_hand_values():
    # mu 0.3: max p >= 0.7 -> 0.9, 0.75, 0.75 pass; 0.5 fails. GT is not used.
    assert self_paced_weights_per_pixel(TEACHER_TS, 0.3).flatten().tolist() == [1.0, 1.0, 0.0, 1.0]
    # mu 0.2: threshold 0.8 -> only 0.9.
    assert self_paced_weights_per_pixel(TEACHER_TS, 0.2).flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    # two classes: max p >= 0.5, so every weight is 1 once mu >= 0.5.
    assert self_paced_weights_per_pixel(TEACHER_TS, 0.5).flatten().tolist() == [1.0] * 4


def test_self_paced_weights_per_image_use_the_class_mean():
    # mean_c p = 1/2 at every pixel: 1 - 0.5 <= mu only from mu = 0.5.
    assert self_paced_weights_per_image(TEACHER_TS, 0.49).flatten().tolist() == [0.0] * 4
    assert self_paced_weights_per_image(TEACHER_TS, 0.5).flatten().tolist() == [1.0] * 4


def test_label_uncertainty_lowers_the_fused_confidence():
    # product rule: fused confidence = p (1 - u). mu 0.3 (threshold 0.7):
    # pixel 0: p_gt 0.9, u 0.25 -> 0.675 < 0.7 -> weight 0.4 (was 1); pixel 1..3 unchanged (already low).
    u = torch.tensor([[[0.25, 0.0], [0.0, 0.0]]])
    w = curriculum_weights(TEACHER_TS, TARGET, 0.3, label_uncertainty=u)
    assert w.flatten().tolist() == pytest.approx([0.4, 0.4, 0.4, 0.4])
    # u 0.1 -> 0.81 >= 0.7 keeps weight 1; SPL: max p 0.75 * (1 - 0.1) = 0.675 < 0.7 -> 0.
    u = torch.tensor([[[0.1, 0.1], [0.0, 0.0]]])
    assert curriculum_weights(TEACHER_TS, TARGET, 0.3, label_uncertainty=u).flatten()[0].item() == 1.0
    assert self_paced_weights_per_pixel(TEACHER_TS, 0.3, label_uncertainty=u).flatten().tolist() == [1.0, 0.0, 0.0, 1.0]
    # max rule: difficulty max(1 - 0.9, 0.25) = 0.25 <= 0.3 -> weight 1 at pixel 0.
    u = torch.tensor([[[0.25, 0.0], [0.0, 0.0]]])
    w = curriculum_weights(TEACHER_TS, TARGET, 0.3, label_uncertainty=u, fusion_rule="max")
    assert w.flatten()[0].item() == 1.0


def test_weights_reject_bad_shapes():
    with pytest.raises(ValueError, match="does not match"):
        curriculum_weights(TEACHER_TS, torch.zeros(1, 3, 2, dtype=torch.long), 0.3)
    with pytest.raises(ValueError, match="C>=2"):
        self_paced_weights_per_pixel(torch.zeros(1, 1, 2, 2), 0.3)


# --- every loss type on a 2x2 example at T = 4 -------------------------------------------------------------------
# confidence_temperature = 4 = T so the same teacher probabilities serve the KL and the weights.
# Teacher d_t = 4 ln9, 4 ln3, 0, -4 ln3 -> p_t1 = 0.9, 0.75, 0.5, 0.25; student d_s = 0, 0, 4 ln3, 0 ->
# at T = 4: q1 = 0.5, 0.5, 0.75, 0.5; target [[1, 0], [1, 1]].
#
# CE (T = 1): pixels 0, 1, 3 have student logits [0, 0] -> ln 2 = 0.693147; pixel 2: logits [0, 4 ln3], target 1
#   -> ln(1 + e^(-4 ln3)) = ln(82/81) = 0.012270.
# KL = T^2 * (1/2) * sum_c p_c ln(p_c / q_c) = 8 * sum:
#   pixel 0: 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5) = 0.529008 - 0.160944 = 0.368064 -> 2.944514
#   pixel 1: 0.75 ln 1.5 + 0.25 ln 0.5 = 0.304099 - 0.173287 = 0.130812 -> 1.046496 (pixel 3 the same)
#   pixel 2: 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = -0.202733 + 0.346574 = 0.143841 -> 1.150728
# Epoch 1 with the curriculum schedule: mu = 0.3 (threshold 0.7):
#   w_cpl (p_gt = 0.9, 0.25, 0.5, 0.25) = 1, 0.4, 0.4, 0.4;  w_spl (max p = 0.9, 0.75, 0.5, 0.75) = 1, 1, 0, 1;
#   w_img = 0 (1 - 0.5 > 0.3).

CE = [math.log(2), math.log(2), math.log(82 / 81), math.log(2)]
KL = [
    8 * (0.9 * math.log(1.8) + 0.1 * math.log(0.2)),
    8 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5)),
    8 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0)),
    8 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5)),
]
W_CPL = [1.0, 0.4, 0.4, 0.4]
W_SPL = [1.0, 1.0, 0.0, 1.0]
A = 0.3


def _mean(values):
    return sum(values) / len(values)


EXPECTED = {
    "kd": _mean([A * k + (1 - A) * c for c, k in zip(CE, KL)]),
    "ce_weighted": _mean([A * k + (1 - A) * w * c for c, k, w in zip(CE, KL, W_CPL)]),
    "kld_weighted": _mean([A * w * k + (1 - A) * c for c, k, w in zip(CE, KL, W_CPL)]),
    "both_weighted": _mean([w * (A * k + (1 - A) * c) for c, k, w in zip(CE, KL, W_CPL)]),
    "both_weighted_spl_per_px": _mean([w * (A * k + (1 - A) * c) for c, k, w in zip(CE, KL, W_SPL)]),
    "both_weighted_spl_per_img": 0.0,
    "both_weighted_spl_per_px_no_alpha": _mean([w * (k + c) for c, k, w in zip(CE, KL, W_SPL)]),
    "both_weighted_spl_per_px_no_alpha_no_weights": _mean([k + c for c, k in zip(CE, KL)]),
    "ce_aliter_weighted": _mean([(1 - w * A) * c + w * A * k for c, k, w in zip(CE, KL, W_CPL)]),
    "both_weighted_cpl_spl_per_px": _mean(
        [wc * ws * (A * k + (1 - A) * c) for c, k, wc, ws in zip(CE, KL, W_CPL, W_SPL)]
    ),
}

TEACHER_T4 = two_class_logits([4 * LN9, 4 * LN3, 0.0, -4 * LN3])
STUDENT_T4 = two_class_logits([0.0, 0.0, 4 * LN3, 0.0])


def test_hand_constants():
    # spot-check the decimals written in the comment above
    assert KL[0] == pytest.approx(2.944514, abs=1e-6)
    assert KL[1] == pytest.approx(1.046496, abs=1e-6)
    assert KL[2] == pytest.approx(1.150728, abs=1e-6)
    assert CE[2] == pytest.approx(0.012270, abs=1e-6)
    # kd: mean of 0.3*KL + 0.7*CE = (0.3*6.188234 + 0.7*2.091712)/4 = (1.856470 + 1.464198)/4 = 0.830167
    assert EXPECTED["kd"] == pytest.approx(0.830167, abs=1e-6)


def test_all_loss_types_are_covered():
    assert set(EXPECTED) == set(LOSS_TYPES)


@pytest.mark.parametrize("loss_type", sorted(EXPECTED))
def test_every_loss_type_matches_the_hand_computation(loss_type):
    loss = PacedKD(loss_type=loss_type, schedule="curriculum", confidence_temperature=4.0)
    assert loss.current_mu(1) == pytest.approx(0.3)
    value = loss(STUDENT_T4, TEACHER_T4, {"target": TARGET}, epoch=1)
    assert value.dim() == 0
    assert value.item() == pytest.approx(EXPECTED[loss_type], abs=1e-5)


def test_epoch_drives_mu_through_the_schedule():
    # epoch 0 (mu 0.2, threshold 0.8): w_cpl = 1, 0.3, 0.3, 0.3 -> ce_weighted changes accordingly.
    loss = PacedKD(loss_type="ce_weighted", confidence_temperature=4.0)
    w = [1.0, 0.3, 0.3, 0.3]
    expected = _mean([A * k + (1 - A) * wi * c for c, k, wi in zip(CE, KL, w)])
    assert loss(STUDENT_T4, TEACHER_T4, {"target": TARGET}, epoch=0).item() == pytest.approx(expected, abs=1e-5)
    # self-paced, epoch 5 -> mu 0.573 >= 0.5: every SPL weight is 1 -> equals the unweighted alpha loss (kd).
    spl = PacedKD(loss_type="both_weighted_spl_per_px", schedule="self_paced", confidence_temperature=4.0)
    assert spl.current_mu(5) == pytest.approx(0.573)
    assert spl(STUDENT_T4, TEACHER_T4, {"target": TARGET}, epoch=5).item() == pytest.approx(EXPECTED["kd"], abs=1e-5)


def test_default_confidence_temperature_is_6_26():
    # With T_s = 6.26 the teacher TEACHER_TS has p_gt = 0.9, 0.25, 0.5, 0.25, so at mu 0.3 the loss's weights
    # are the curriculum weights of the hand test above.
    loss = PacedKD(loss_type="both_weighted")
    assert loss.confidence_temperature == 6.26 and loss.temperature == 4.0 and loss.alpha == 0.3
    w = loss.weights(TEACHER_TS, TARGET, epoch=1)
    assert w.flatten().tolist() == pytest.approx([1.0, 0.4, 0.4, 0.4])


def test_label_uncertainty_switch_uses_svls_of_the_target():
    target = torch.tensor([[[1, 0], [1, 1]]])
    loss = PacedKD(loss_type="both_weighted", label_uncertainty=True)
    u = label_uncertainty(target, 2)
    # pixel (0, 0): two differing neighbours, an edge and a corner: u = 0.077807 + 0.047193 = 0.125
    assert u[0, 0, 0].item() == pytest.approx(0.125, abs=1e-6)
    expected = curriculum_weights(TEACHER_TS, target, 0.3, label_uncertainty=u)
    assert torch.equal(loss.weights(TEACHER_TS, target, epoch=1), expected)
    # p_gt 0.9 * (1 - 0.125) = 0.7875 >= 0.7 still 1; at mu 0.2 (epoch 0, threshold 0.8) it drops to 0.3.
    assert loss.weights(TEACHER_TS, target, epoch=0)[0, 0, 0].item() == pytest.approx(0.3)
    assert PacedKD(loss_type="both_weighted").weights(TEACHER_TS, target, epoch=0)[0, 0, 0].item() == 1.0


def test_registered_and_needs_teacher_and_gradients_flow_to_the_student_only():
    assert "paced_kd" in LOSSES
    loss = build_loss("paced_kd", loss_type="both_weighted_spl_per_px", schedule="self_paced")
    assert loss.needs_teacher
    student = STUDENT_T4.clone().requires_grad_(True)
    teacher = TEACHER_T4.clone().requires_grad_(True)
    loss(student, teacher, {"target": TARGET}, epoch=0).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert teacher.grad is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss_type": "weighted"}, "unknown loss_type"),
        ({"schedule": "linear"}, "unknown schedule"),
        ({"mu_indexing": "paper"}, "unknown mu_indexing"),
        ({"schedule": "self_paced", "mu_indexing": "blocks"}, "curriculum schedule only"),
        ({"fusion_rule": "sum"}, "unknown fusion_rule"),
        ({"temperature": 0}, "positive"),
        ({"alpha": 1.5}, "alpha"),
    ],
)
def test_bad_configuration_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PacedKD(**kwargs)


def test_mismatched_logits_raise():
    loss = PacedKD()
    with pytest.raises(ValueError, match="differ"):
        loss(STUDENT_T4, torch.zeros(1, 3, 2, 2), {"target": TARGET}, epoch=0)
    with pytest.raises(ValueError, match="not lists"):
        loss([STUDENT_T4], [TEACHER_T4], {"target": TARGET}, epoch=0)


# --- the paper-scale config holds both readings --------------------------------------------------------------


def test_paper_config_holds_both_readings():
    """config/experiments/pcd.yaml (the config the pipeline reads) runs each label in both readings."""
    from medkd.config import REPO_ROOT, load_config

    cfg = load_config(REPO_ROOT / "config" / "paper.yaml")
    models = cfg["experiments"]["pcd_busi"]["models"]

    def kwargs(name):
        (term,) = [t for t in models[name]["losses"] if t["loss"] == "paced_kd"]
        PacedKD(**term["kwargs"])  # every entry builds
        assert term["kwargs"]["alpha"] == 0.3 and term["kwargs"]["temperature"] == 4.0
        return term["kwargs"]

    assert [t["loss"] for t in models["unet"]["losses"]] == ["cross_entropy"]
    assert kwargs("kd")["loss_type"] == "kd" and kwargs("kd")["schedule"] == "curriculum"
    assert kwargs("kd_cpl")["loss_type"] == "ce_weighted" and kwargs("kd_cpl")["schedule"] == "curriculum"
    assert kwargs("kd_tpl")["loss_type"] == "both_weighted_spl_per_px"
    assert kwargs("kd_tpl")["schedule"] == "self_paced" and kwargs("kd_tpl")["mu0"] == 0.39
    assert kwargs("cpl_tpl")["loss_type"] == "both_weighted_cpl_spl_per_px"
    assert kwargs("pcd")["label_uncertainty"] is True
    assert kwargs("kd_code")["loss_type"] == "ce_weighted"
    assert kwargs("kd_tpl_code")["loss_type"] == "both_weighted_spl_per_px_no_alpha_no_weights"
    assert kwargs("cpl_tpl_code")["loss_type"] == "both_weighted_spl_per_px_no_alpha"
