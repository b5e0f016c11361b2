"""MTMS Dice, DiceBCE and the reconstruction-to-input MSE term."""

from __future__ import annotations

import math

import pytest
import torch

from medkd.distill import build_loss

# Hand example: B = 2, maps 1x2. Logits (0, ln 3) and (-ln 3, 0) -> sigmoid 0.5, 0.75, 0.25, 0.5.
# Target (1, 1) and (0, 0).
# Batch-pooled Dice: sum(p*y) = 0.5 + 0.75 = 1.25, sum(p) = 2.0, sum(y) = 2.
#   dice = (2 * 1.25 + 1) / (2.0 + 2 + 1) = 3.5 / 5 = 0.7 -> loss 0.3.
# (Per-image Dice averaged would differ: image 1 (2.5+1)/(1.25+2+1) = 0.8235, image 2 1/(0.75+1) = 0.5714.)
# BCE: mean(-ln 0.5, -ln 0.75, -ln 0.75, -ln 0.5) = (2 ln 2 + 2 ln(4/3)) / 4 = 0.490415.
LOGITS = torch.tensor([[0.0, math.log(3)], [-math.log(3), 0.0]]).reshape(2, 1, 1, 2)
TARGET = torch.tensor([[1, 1], [0, 0]], dtype=torch.int64).reshape(2, 1, 2)
HAND_DICE = 0.3
HAND_BCE = (2 * math.log(2) + 2 * math.log(4 / 3)) / 4


def test_dice_matches_hand_value():
    value = build_loss("dice")(LOGITS, None, {"target": TARGET}, 0)
    assert value.item() == pytest.approx(HAND_DICE, abs=1e-6)


def test_dice_bce_matches_hand_value():
    assert HAND_BCE == pytest.approx(0.490415, abs=1e-6)
    value = build_loss("dice_bce")(LOGITS, None, {"target": TARGET}, 0)
    assert value.item() == pytest.approx(HAND_BCE + HAND_DICE, abs=1e-6)


def test_dice_smooth_parameter():
    # smooth 0: (2 * 1.25) / (2.0 + 2) = 0.625 -> loss 0.375.
    value = build_loss("dice", smooth=0.0)(LOGITS, None, {"target": TARGET}, 0)
    assert value.item() == pytest.approx(0.375, abs=1e-6)


def test_dice_accepts_channel_target_and_is_not_a_teacher_term():
    loss = build_loss("dice")
    assert not loss.needs_teacher
    assert loss(LOGITS, None, {"target": TARGET.unsqueeze(1)}, 0).item() == pytest.approx(HAND_DICE, abs=1e-6)


def test_last_batch_of_three_with_batch_size_twenty_configured():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, requires_grad=True)
    target = (torch.rand(3, 8, 8) > 0.5).long()
    for name in ("dice", "dice_bce"):
        value = build_loss(name)(logits, None, {"target": target}, 0)
        assert value.ndim == 0 and torch.isfinite(value)
        value.backward()
    assert logits.grad is not None


def test_perfect_confident_prediction_gives_near_zero_dice_bce():
    target = torch.tensor([[[1, 0], [0, 1]]])
    logits = (target.float() * 2 - 1).unsqueeze(1) * 30  # sigmoid = 1 or 0 to float precision
    assert build_loss("dice_bce")(logits, None, {"target": target}, 0).item() == pytest.approx(0.0, abs=1e-6)


def test_binary_target_checks():
    with pytest.raises(ValueError, match="single-channel"):
        build_loss("dice")(torch.zeros(1, 2, 2, 2), None, {"target": torch.zeros(1, 2, 2, dtype=torch.long)}, 0)
    with pytest.raises(ValueError, match="does not match"):
        build_loss("dice")(torch.zeros(1, 1, 2, 2), None, {"target": torch.zeros(1, 3, 3, dtype=torch.long)}, 0)
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        build_loss("dice_bce")(torch.zeros(1, 1, 2, 2), None, {"target": torch.full((1, 2, 2), 2)}, 0)


def test_mse_to_input():
    # recon all 1, image all 0.25 -> (0.75)^2 = 0.5625.
    recon = torch.ones(2, 3, 4, 4)
    image = torch.full((2, 3, 4, 4), 0.25)
    assert build_loss("mse_to_input")(recon, None, {"image": image}, 0).item() == pytest.approx(0.5625)
    with pytest.raises(ValueError, match="differ"):
        build_loss("mse_to_input")(recon[:, :1], None, {"image": image}, 0)


# --- multi-class soft Dice (medkd's Dice + CE recipe term) -------------------------------------------------

def test_multiclass_soft_dice_golden_value():
    """Two pixels, three classes, hand-computed: p = softmax(logits) per pixel, batch-pooled Dice of
    classes 1 and 2 (background excluded), smooth 1."""
    import math

    from medkd.distill.task import multiclass_soft_dice

    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]], [[0.0, 0.0]]]])  # (1, 3, 1, 2)
    target = torch.tensor([[[1, 0]]])                                                 # (1, 1, 2)
    # pixel 0: p = (1/3, 1/3, 1/3); pixel 1: p = (3/5, 1/5, 1/5)
    p1 = 1 / 3 + 1 / 5
    p2 = 1 / 3 + 1 / 5
    dice1 = (2 * (1 / 3) + 1) / (p1 + 1 + 1)
    dice2 = (0 + 1) / (p2 + 0 + 1)
    expected = 1 - (dice1 + dice2) / 2
    got = multiclass_soft_dice(logits, target)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    with_bg = multiclass_soft_dice(logits, target, include_background=True)
    dice0 = (2 * (3 / 5) + 1) / ((1 / 3 + 3 / 5) + 1 + 1)
    assert with_bg.item() == pytest.approx(1 - (dice0 + dice1 + dice2) / 3, rel=1e-6)


def test_multiclass_soft_dice_perfect_and_registered():
    from medkd.distill import build_loss

    target = torch.randint(0, 3, (2, 8, 8))
    perfect = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 40.0
    term = build_loss("soft_dice")
    assert term(perfect, None, {"target": target}, 0).item() == pytest.approx(0.0, abs=1e-6)
    wrong = torch.roll(perfect, 1, dims=1)
    assert term(wrong, None, {"target": target}, 0).item() > 0.9
    with pytest.raises(ValueError, match="multi-class"):
        term(torch.zeros(1, 1, 4, 4), None, {"target": torch.zeros(1, 4, 4, dtype=torch.long)}, 0)
