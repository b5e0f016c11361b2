"""P-CD's two-class milesial-style UNet: exact parameter count, shapes, width, dropout, tap paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medkd.models import MODELS, build_model, count_parameters
from medkd.models.pcd_unet import PCDUNet


def double_conv_params(cin: int, mid: int, cout: int) -> int:
    """Conv3x3 with bias (9*cin*mid + mid) + BN (2*mid) + Conv3x3 with bias (9*mid*cout + cout) + BN (2*cout)."""
    return 9 * cin * mid + 3 * mid + 9 * mid * cout + 3 * cout


def analytic_count(in_ch: int, n_cls: int, c1: int, c2: int, c3: int, c4: int) -> int:
    enc = (
        double_conv_params(in_ch, c1, c1)
        + double_conv_params(c1, c2, c2)
        + double_conv_params(c2, c3, c3)
        + double_conv_params(c3, c4, c4)
        + double_conv_params(c4, c4, c4)
    )
    dec = (
        double_conv_params(2 * c4, c4, c3)
        + double_conv_params(2 * c3, c3, c2)
        + double_conv_params(2 * c2, c2, c1)
        + double_conv_params(2 * c1, c1, c1)
    )
    return enc + dec + c1 * n_cls + n_cls


def test_parameter_count_matches_sources_md_exactly():
    # Hand sum at width 1 (3 -> 2 classes), DoubleConv = 9*cin*mid + 3*mid + 9*mid*cout + 3*cout:
    #   inp 3-64-64: 1728+192+36864+192 = 38,976       up1 1024-512-256: 4718592+1536+1179648+768 = 5,900,544
    #   down1 64-128-128: 221,952                       up2 512-256-128: 1,475,712
    #   down2 128-256-256: 886,272                      up3 256-128-64: 369,216
    #   down3 256-512-512: 3,542,016                    up4 128-64-64: 110,976
    #   down4 512-512-512: 4,721,664                    out 64*2+2 = 130
    # total 17,267,458. Without conv biases it would be 4,416 fewer (17,263,042), so the convs have bias.
    model = PCDUNet(in_channels=3, out_channels=2)
    assert count_parameters(model) == 17_267_458
    assert analytic_count(3, 2, 64, 128, 256, 512) == 17_267_458


def test_width_scales_every_level_and_matches_the_analytic_count():
    model = PCDUNet(in_channels=3, out_channels=2, width=0.125)
    assert count_parameters(model) == analytic_count(3, 2, 8, 16, 32, 64)
    assert model.inp.double_conv[0].out_channels == 8
    assert model.down4.maxpool_conv[1].double_conv[3].out_channels == 64


def test_forward_shape_full_width_and_small_width():
    torch.manual_seed(0)
    full = PCDUNet(in_channels=3, out_channels=2).eval()
    with torch.no_grad():
        assert full(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    small = PCDUNet(in_channels=3, out_channels=2, width=0.125)
    out = small(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 2, 32, 32)
    out.sum().backward()  # trains
    assert small.inp.double_conv[0].weight.grad is not None


def test_odd_sizes_are_padded_back_to_the_input_size():
    model = PCDUNet(in_channels=1, out_channels=3, width=0.125).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 33, 37)).shape == (1, 3, 33, 37)


def test_registered_and_built_by_name():
    assert "pcd_unet" in MODELS
    model = build_model("pcd_unet", in_channels=3, out_channels=2, width=0.25)
    assert isinstance(model, PCDUNet)
    assert model.input_keys == ("image",)


def test_state_dict_keys_follow_the_pcd_code_layout():
    keys = set(PCDUNet(in_channels=3, out_channels=2, width=0.125).state_dict())
    for key in (
        "inp.double_conv.0.weight",
        "inp.double_conv.0.bias",
        "down1.maxpool_conv.1.double_conv.0.weight",
        "down4.maxpool_conv.1.double_conv.4.running_mean",
        "up1.conv.double_conv.0.weight",
        "up4.conv.double_conv.3.bias",
        "out.weight",
        "out.bias",
    ):
        assert key in keys


def test_documented_tap_paths_exist_with_the_documented_shapes():
    model = PCDUNet(in_channels=3, out_channels=2, width=0.125).eval()
    names = dict(model.named_modules())
    shapes = {}
    hooks = [
        names[n].register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape)))
        for n in ("inp", "down2", "down4", "down1.maxpool_conv.0", "up1.up", "up1", "up4", "out")
    ]
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert shapes["inp"] == (1, 8, 32, 32)
    assert shapes["down1.maxpool_conv.0"] == (1, 8, 16, 16)
    assert shapes["down2"] == (1, 32, 8, 8)
    assert shapes["down4"] == (1, 64, 2, 2)
    assert shapes["up1.up"] == (1, 64, 4, 4)
    assert shapes["up1"] == (1, 32, 4, 4)
    assert shapes["up4"] == (1, 8, 32, 32)
    assert shapes["out"] == (1, 2, 32, 32)


def test_dropout_adds_dropout2d_without_parameters():
    plain = PCDUNet(in_channels=3, out_channels=2, width=0.125)
    drop = PCDUNet(in_channels=3, out_channels=2, width=0.125, dropout=0.3)
    assert not any(isinstance(m, nn.Dropout2d) for m in plain.modules())
    dropouts = [m for m in drop.modules() if isinstance(m, nn.Dropout2d)]
    assert len(dropouts) == 9 and all(m.p == 0.3 for m in dropouts)  # one per DoubleConv
    assert count_parameters(plain) == count_parameters(drop)
    assert set(plain.state_dict()) == set(drop.state_dict())


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"width": -1.0}, {"dropout": 1.0}, {"dropout": -0.1}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        PCDUNet(in_channels=3, out_channels=2, **kwargs)


def test_too_small_or_wrong_rank_input_raises():
    model = PCDUNet(in_channels=3, out_channels=2, width=0.125)
    with pytest.raises(ValueError, match="smaller than 16"):
        model(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="B, C, H, W"):
        model(torch.rand(3, 32, 32))
