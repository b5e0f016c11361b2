"""MC-dropout variance, the SVLS kernel / soft labels / label uncertainty and the fusion rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import ndimage

from medkd.uncertainty import (
    fused_difficulty,
    label_uncertainty,
    mc_dropout_variance,
    svls_kernel,
    svls_soft_labels,
)

# --- SVLS kernel ---------------------------------------------------------------------------------------------------


def test_svls_kernel_hand_values():
    # Unnormalised Gaussian (sigma 1): centre e^0 = 1, edges e^-0.5 = 0.606531, corners e^-1 = 0.367879.
    # Neighbour sum 4*(0.606531 + 0.367879) = 3.897640 replaces the centre; total 2*3.897640 = 7.795281.
    edge, corner = math.exp(-0.5), math.exp(-1.0)
    total = 2 * 4 * (edge + corner)
    k = svls_kernel()
    assert k.shape == (3, 3) and k.dtype == torch.float32
    assert k[1, 1].item() == pytest.approx(0.5, abs=1e-7)
    for (i, j) in [(0, 1), (1, 0), (1, 2), (2, 1)]:
        assert k[i, j].item() == pytest.approx(edge / total, abs=1e-7)
        assert k[i, j].item() == pytest.approx(0.0778074, abs=1e-7)
    for (i, j) in [(0, 0), (0, 2), (2, 0), (2, 2)]:
        assert k[i, j].item() == pytest.approx(corner / total, abs=1e-7)
        assert k[i, j].item() == pytest.approx(0.0471926, abs=1e-7)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_svls_kernel_larger_size_and_bad_arguments():
    k = svls_kernel(sigma=2.0, size=5)
    assert k.shape == (5, 5) and k[2, 2].item() == pytest.approx(0.5) and k.sum().item() == pytest.approx(1.0)
    assert torch.allclose(k, k.T) and torch.allclose(k, k.flip(0))
    for kwargs in ({"size": 4}, {"size": 1}, {"sigma": 0.0}):
        with pytest.raises(ValueError):
            svls_kernel(**kwargs)


# --- soft labels and label uncertainty ---------------------------------------------------------------------------


def _target() -> torch.Tensor:
    t = torch.zeros(2, 7, 8, dtype=torch.long)
    t[0, :, 4:] = 1  # a vertical boundary between columns 3 and 4
    t[1, 2:5, 2:6] = 2  # a 3x4 block of class 2 in class 0
    t[1, 0, 0] = 1  # an isolated corner pixel of class 1
    return t


def test_soft_labels_sum_to_one_and_match_scipy_with_nearest_padding():
    t = _target()
    soft = svls_soft_labels(t, 3)
    assert soft.shape == (2, 3, 7, 8)
    assert torch.allclose(soft.sum(dim=1), torch.ones(2, 7, 8), atol=1e-6)
    # independent reference: scipy correlate of each one-hot channel with the kernel, 'nearest' = replicate padding
    k = svls_kernel().double().numpy()
    for b in range(2):
        for c in range(3):
            ref = ndimage.correlate((t[b] == c).double().numpy(), k, mode="nearest")
            assert np.allclose(soft[b, c].double().numpy(), ref, atol=1e-6)


def test_label_uncertainty_zero_inside_positive_at_boundaries():
    u = label_uncertainty(_target(), 3)
    assert u.shape == (2, 7, 8)
    # image 0: columns 0-2 and 5-7 are flat (>= 1 pixel from the change) -> exactly 0
    assert torch.count_nonzero(u[0, :, [0, 1, 2, 5, 6, 7]]) == 0
    # boundary columns 3 and 4: three differing neighbours (edge + 2 corners) = 0.077807 + 2*0.047193 = 0.172193
    assert torch.allclose(u[0, :, 3:5], torch.full((7, 2), 0.1721926), atol=1e-6)
    # image 1: the isolated pixel (0, 0) with replicate padding: its 3x3 window holds itself at the centre,
    # top-left corner, top and left edges (padding copies) -> own class 0.5 + 2*0.077807 + 0.047193 = 0.702807,
    # so u = 0.297193
    assert u[1, 0, 0].item() == pytest.approx(1 - (0.5 + 2 * 0.0778074 + 0.0471926), abs=1e-6)
    assert u[1, 6, 7].item() == 0.0  # far from every label change
    assert float(u.min()) >= 0.0 and float(u.max()) <= 0.5


def test_label_uncertainty_of_a_constant_map_is_zero():
    assert torch.count_nonzero(label_uncertainty(torch.ones(1, 4, 4, dtype=torch.long), 2)) == 0


@pytest.mark.parametrize(
    "target, n, match",
    [
        (torch.zeros(4, 4, dtype=torch.long), 2, "B, H, W"),
        (torch.zeros(1, 4, 4), 2, "integer"),
        (torch.full((1, 4, 4), 3, dtype=torch.long), 2, r"\[0, 2\)"),
        (torch.zeros(1, 4, 4, dtype=torch.long), 1, "n_classes"),
    ],
)
def test_soft_labels_reject_bad_targets(target, n, match):
    with pytest.raises(ValueError, match=match):
        svls_soft_labels(target, n)


# --- fusion ---------------------------------------------------------------------------------------------------------


def test_fused_difficulty_rules():
    c = torch.tensor([[[0.9, 0.6], [1.0, 0.5]]])
    u = torch.tensor([[[0.0, 0.5], [0.2, 0.1]]])
    # product: 1 - c (1 - u) = 1 - 0.9 = 0.1; 1 - 0.3 = 0.7; 1 - 0.8 = 0.2; 1 - 0.45 = 0.55
    assert fused_difficulty(c, u).flatten().tolist() == pytest.approx([0.1, 0.7, 0.2, 0.55])
    # max: max(1 - c, u) = 0.1, 0.5, 0.2, 0.5
    assert fused_difficulty(c, u, rule="max").flatten().tolist() == pytest.approx([0.1, 0.5, 0.2, 0.5])
    with pytest.raises(ValueError, match="product, max"):
        fused_difficulty(c, u, rule="mean")
    with pytest.raises(ValueError, match="differ"):
        fused_difficulty(c, u[:, :1])


# --- MC dropout -----------------------------------------------------------------------------------------------------


class TinySegNet(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout2d(p) if p > 0 else nn.Identity()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, image):
        return self.head(self.drop(torch.relu(self.bn(self.conv(image)))))


def test_mc_dropout_variance_shape_positive_deterministic_and_modes_restored():
    torch.manual_seed(0)
    model = TinySegNet(0.5)
    model.train()
    x = torch.randn(2, 1, 6, 6)
    bn_mean = model.bn.running_mean.clone()
    rng_state = torch.get_rng_state()
    v1 = mc_dropout_variance(model, x, n_passes=4, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_state)  # caller's RNG untouched
    assert v1.shape == (2, 6, 6)
    assert float(v1.min()) >= 0.0 and float(v1.max()) > 0.0 and float(v1.max()) <= 0.25
    assert torch.equal(mc_dropout_variance(model, x, n_passes=4, seed=7), v1)
    assert not torch.equal(mc_dropout_variance(model, x, n_passes=4, seed=8), v1)
    assert torch.equal(model.bn.running_mean, bn_mean)  # BN ran in eval mode
    assert model.training and model.bn.training and model.drop.training  # flags restored


def test_mc_dropout_variance_is_the_mean_class_variance_of_the_passes():
    # A model that is only a dropout on fixed logits: with p = 0.5 each logit is 0 or doubled. Recompute the
    # passes with the same seed and compare with the population variance averaged over the 2 classes.
    model = nn.Sequential(nn.Dropout(0.5)).eval()
    logits = torch.tensor([[[[0.0, 1.0]], [[2.0, -1.0]]]])  # (1, 2, 1, 2)
    v = mc_dropout_variance(model, logits, n_passes=6, seed=3)
    torch.manual_seed(3)
    probs = torch.stack([torch.softmax(nn.functional.dropout(logits, 0.5, True), dim=1) for _ in range(6)])
    ref = probs.var(dim=0, unbiased=False).mean(dim=1)
    assert torch.allclose(v, ref)
    # two classes: Var[p0] = Var[1 - p1] -> both class variances equal
    assert torch.allclose(probs[:, :, 0].var(dim=0, unbiased=False), probs[:, :, 1].var(dim=0, unbiased=False))
    assert not model.training


def test_mc_dropout_variance_requires_dropout_and_two_passes():
    with pytest.raises(ValueError, match="no dropout"):
        mc_dropout_variance(TinySegNet(0.0), torch.randn(1, 1, 4, 4), n_passes=3, seed=0)
    with pytest.raises(ValueError, match="no dropout"):
        mc_dropout_variance(nn.Sequential(nn.Dropout(0.0)), torch.randn(1, 2, 4, 4), n_passes=3, seed=0)
    with pytest.raises(ValueError, match="n_passes"):
        mc_dropout_variance(TinySegNet(0.5), torch.randn(1, 1, 4, 4), n_passes=1, seed=0)


def test_mc_dropout_on_the_pcd_unet():
    from medkd.models.pcd_unet import PCDUNet

    torch.manual_seed(0)
    model = PCDUNet(in_channels=3, out_channels=2, width=0.125, dropout=0.2)
    v = mc_dropout_variance(model, torch.rand(1, 3, 16, 16), n_passes=3, seed=0)
    assert v.shape == (1, 16, 16) and float(v.max()) > 0
