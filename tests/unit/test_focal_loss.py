"""Golden values of H-DenseFormer's losses (medkd.distill.focal): softmax focal, focal + per-image Dice, and the
target resizing that deep supervision needs."""

from __future__ import annotations

import math

import pytest
import torch

from medkd.distill import LOSSES, build_loss
from medkd.distill.focal import per_image_dice_loss, target_at

LN3 = math.log(3.0)


def _pixel(p0_logit: float, p1_logit: float) -> torch.Tensor:
    return torch.tensor([p0_logit, p1_logit])


def test_registered():
    assert "focal" in LOSSES and "focal_dice" in LOSSES


def test_focal_golden_one_pixel():
    # logits [ln 3, 0] -> p = [0.75, 0.25]; target class 0.
    # alpha 1, gamma 2: only the true class's element counts: -ln(0.75) * (1 - 0.75)^2 = 0.2876821 * 0.0625
    # = 0.01798013; the other element has alpha_t = 0. sum = 0.01798013, mean over the 2 elements = 0.00899006.
    logits = _pixel(LN3, 0.0).view(1, 2, 1, 1)
    batch = {"target": torch.zeros(1, 1, 1, dtype=torch.long)}
    one = -math.log(0.75) * 0.25**2
    assert one == pytest.approx(0.01798013, rel=1e-6)
    assert build_loss("focal", reduction="sum")(logits, None, batch, 0).item() == pytest.approx(one, rel=1e-6)
    assert build_loss("focal")(logits, None, batch, 0).item() == pytest.approx(one / 2, rel=1e-6)
    # alpha < 0 (no weighting): the y = 0 element adds -ln(1 - 0.25) * (1 - 0.75)^2, the same number here
    assert build_loss("focal", alpha=-1, reduction="sum")(logits, None, batch, 0).item() == pytest.approx(
        2 * one, rel=1e-6)
    # gamma 0 and alpha 1: plain cross-entropy of the true class, -ln 0.75
    assert build_loss("focal", gamma=0, reduction="sum")(logits, None, batch, 0).item() == pytest.approx(
        -math.log(0.75), rel=1e-6)


def test_focal_dice_golden_two_pixels():
    # two pixels, two classes: pixel A logits [0, ln 3] (p1 = 0.75), target 1; pixel B [ln 3, 0] (p1 = 0.25),
    # target 0. Focal: each pixel's true class has p = 0.75 -> 0.01798013 each, mean over 4 elements =
    # 0.00899006. Dice of class 1 (class 0 ignored): inter 0.75, sum p 1.0, sum y 1 ->
    # 1 - (1.5 + 1e-5) / (2 + 1e-5) = 0.24999875. Total 0.25898881.
    logits = torch.stack([_pixel(0.0, LN3), _pixel(LN3, 0.0)], dim=-1).view(1, 2, 1, 2)
    batch = {"target": torch.tensor([[[1, 0]]])}
    focal = -math.log(0.75) * 0.25**2 / 2
    dice = 1 - (1.5 + 1e-5) / (2 + 1e-5)
    assert focal + dice == pytest.approx(0.25898881, rel=1e-6)
    assert build_loss("focal_dice")(logits, None, batch, 0).item() == pytest.approx(focal + dice, rel=1e-6)


def test_dice_is_per_image_and_per_foreground_class():
    # image 1: both pixels lesion (class 1), predicted right; image 2: pixel 0 lesion, pixel 1 background,
    # predicted the other way round (logit margin 60). Per-image Dice losses ~0 and ~1 -> mean 0.5; a Dice
    # pooled over the batch would give 1 - 2*2 / (3 + 3) = 1/3. Focal: the two wrong pixels' true classes
    # at -ln p = 60 (+ ln(1 + e^-60)), (1 - p)^2 = 1; 8 elements -> 120 / 8 = 15.
    right = torch.tensor([[-30.0, 30.0], [-30.0, 30.0]]).T.reshape(1, 2, 1, 2)
    wrong = torch.tensor([[30.0, -30.0], [-30.0, 30.0]]).T.reshape(1, 2, 1, 2)
    target = torch.tensor([[[1, 1]], [[1, 0]]])
    logits = torch.cat([right, wrong])
    assert per_image_dice_loss(logits, target).item() == pytest.approx(0.5, abs=1e-5)
    assert build_loss("focal_dice")(logits, None, {"target": target}, 0).item() == pytest.approx(15.5, abs=1e-4)
    # class 0 (background) is ignored: with three classes the mean runs over classes 1 and 2
    three = torch.cat([logits, torch.full((2, 1, 1, 2), -30.0)], dim=1)  # class 2 absent and never predicted
    assert per_image_dice_loss(three, target).item() == pytest.approx((0.5 + 0.0) / 2, abs=1e-5)


def test_gradients_finite_when_saturated():
    logits = torch.tensor([[200.0, -200.0], [0.0, 0.0]]).T.reshape(1, 2, 1, 2).requires_grad_()
    loss = build_loss("focal_dice")(logits, None, {"target": torch.tensor([[[0, 1]]])}, 0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_target_resized_nearest_for_deep_supervision():
    target = torch.arange(16).view(1, 4, 4) % 3
    logits = torch.zeros(1, 3, 2, 2)
    assert torch.equal(target_at(logits, target), target[:, ::2, ::2])  # nearest picks floor(i * 4 / 2)
    # a loss on a half-size head equals the loss on that head against the subsampled target
    z = torch.randn(1, 3, 2, 2)
    a = build_loss("focal_dice")(z, None, {"target": target}, 0)
    b = build_loss("focal_dice")(z, None, {"target": target[:, ::2, ::2]}, 0)
    assert a.item() == pytest.approx(b.item(), rel=1e-7)


def test_bad_arguments():
    with pytest.raises(ValueError, match="reduction"):
        build_loss("focal", reduction="none")
    with pytest.raises(ValueError, match="multi-class"):
        build_loss("focal")(torch.zeros(1, 1, 2, 2), None, {"target": torch.zeros(1, 2, 2, dtype=torch.long)}, 0)
