"""Golden values of the engine's own losses (task losses and Hinton KD) and the tap mechanism."""

import math

import pytest
import torch

from medkd.distill import LOSSES, build_loss
from medkd.distill.taps import TapRecorder
from medkd.models import build_model


def test_registry_lists_engine_losses():
    for name in ("cross_entropy", "kl_div", "l1", "mse"):
        assert name in LOSSES
    with pytest.raises(KeyError, match="unknown loss 'nope'"):
        build_loss("nope")


def test_hinton_kl_golden_value():
    # one pixel, two classes, T = 2: student logits [1, 0], teacher [0, 1]
    # p_s = softmax([0.5, 0]) = [s, 1 - s] with s = sigmoid(0.5) = 0.6224593
    # p_t = [1 - s, s];  KL(p_t || p_s) = (1-s) ln((1-s)/s) + s ln(s/(1-s)) = (2s - 1) * ln(s/(1-s))
    # ln(s/(1-s)) = 0.5 exactly, so KL = (2s - 1) * 0.5 = 0.1224593; times T^2 = 4 -> 0.4898373
    s = 1 / (1 + math.exp(-0.5))
    expected = (2 * s - 1) * 0.5 * 4
    student = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    teacher = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    loss = build_loss("kl_div", temperature=2.0)(student, teacher, {}, 0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.4898373, rel=1e-6)


def test_hinton_kl_zero_for_identical_and_averaged_over_pixels():
    z = torch.randn(2, 3, 4, 4)
    assert build_loss("kl_div", temperature=4.0)(z, z.clone(), {}, 0).item() == pytest.approx(0.0, abs=1e-6)
    # two pixels: one identical (KL 0), one as in the golden test -> the mean halves the value
    student = torch.tensor([[1.0, 5.0], [0.0, 5.0]]).view(1, 2, 1, 2)
    teacher = torch.tensor([[0.0, 5.0], [1.0, 5.0]]).view(1, 2, 1, 2)
    s = 1 / (1 + math.exp(-0.5))
    assert build_loss("kl_div", temperature=2.0)(student, teacher, {}, 0).item() == pytest.approx(
        (2 * s - 1) * 0.5 * 4 / 2, rel=1e-6)


def test_hinton_kl_binary_single_logit_equals_two_class():
    s, t = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    two_s = torch.cat([torch.zeros_like(s), s], 1)
    two_t = torch.cat([torch.zeros_like(t), t], 1)
    kl = build_loss("kl_div", temperature=3.0)
    assert kl(s, t, {}, 0).item() == pytest.approx(kl(two_s, two_t, {}, 0).item(), rel=1e-6)


def test_cross_entropy_golden_value():
    # logits [2, 0] with target 0: -log(e^2 / (e^2 + 1)) = log(1 + e^-2) = 0.126928
    logits = torch.tensor([2.0, 0.0]).view(1, 2, 1, 1)
    loss = build_loss("cross_entropy")(logits, None, {"target": torch.zeros(1, 1, 1, dtype=torch.long)}, 0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_l1_and_mse():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    target = torch.zeros(1, 1, 2, 2)
    batch = {"target": target}
    assert build_loss("l1")(pred, None, batch, 0).item() == pytest.approx(2.5)
    assert build_loss("mse")(pred, None, batch, 0).item() == pytest.approx(30 / 4)


def test_taps_record_module_outputs_and_reject_unknown_paths():
    model = build_model("unet", in_channels=1, out_channels=3, base=4, depth=2)
    rec = TapRecorder(model, ["out", "bottleneck", "encoders.1"])
    out = model(torch.zeros(2, 1, 16, 16))
    assert rec.get("out", out).shape == (2, 3, 16, 16)
    assert rec.get("bottleneck", out).shape == (2, 16, 4, 4)
    assert [t.shape[1] for t in rec.get(["encoders.0", "encoders.1"][1:], out)] == [8]
    with pytest.raises(KeyError, match="has no module 'bottle'"):
        TapRecorder(model, ["bottle"])
    with pytest.raises(KeyError, match="no entry 'recon'"):
        rec.get("out:recon", out)
