"""2-D transformer U-Nets (UNETR, Swin U-Net, TeachFormer student): shapes, taps, Swin internals, FLOPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medkd.distill.taps import TapRecorder
from medkd.models import MODELS, build_model
from medkd.models.transformer_unets import (SwinBlock, count_flops, count_macs, evenly_spaced_layers,
                                            relative_position_index, shifted_window_mask, window_partition,
                                            window_reverse)

SMALL = {
    "unetr2d": dict(img_size=64, patch_size=16, embed_dim=32, depth=4, heads=2, feature_size=8),
    "swin_unet2d": dict(img_size=64, embed_dim=16, depth=2, heads=2, n_stages=3, patch_size=2,
                        window_size=4, feature_size=8),
    "teachformer_student": dict(img_size=64, embed_dim=16, depth=1, heads=2, n_stages=3, patch_size=4),
}


def _run(name, taps):
    torch.manual_seed(0)
    model = build_model(name, 2, 3, **SMALL[name])
    recorder = TapRecorder(model, taps)
    out = model(torch.randn(2, 2, 64, 64))
    return model, out, recorder.features


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_shape_and_backward(name):
    model, out, _ = _run(name, [])
    assert out.shape == (2, 3, 64, 64)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unetr_taps():
    # patch 16 on 64x64 -> 4x4 grid (N = 16); depth 4 with 4 taps -> layers 1, 2, 3, 4
    # decoder stages: 8x8 (8*fs = 64 ch), 16x16 (32), 32x32 (16), 64x64 (8); fine map = stage 3
    taps = ["coarse_map", "fine_map", "encoder_grids.0", "blocks.3.attn.probs", "decoder.0"]
    model, _, feats = _run("unetr2d", taps)
    assert model.tap_layers == [1, 2, 3, 4]
    assert feats["coarse_map"].shape == (2, 32, 4, 4)
    assert feats["encoder_grids.0"].shape == (2, 32, 4, 4)
    assert feats["decoder.0"].shape == (2, 64, 8, 8)
    assert feats["fine_map"].shape == (2, 16, 32, 32)
    probs = feats["blocks.3.attn.probs"]
    assert probs.shape == (2, 2, 16, 16)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 16))
    assert model.last_attention is probs


def test_unetr_layer_choice():
    assert evenly_spaced_layers(12, 4) == [3, 6, 9, 12]  # UNETR's z3, z6, z9, z12
    assert evenly_spaced_layers(12, 3) == [4, 8, 12]
    assert evenly_spaced_layers(2, 4) == [1, 1, 2, 2]


def test_swin_taps():
    # patch 2 -> stage grids 32x32 (16 ch), 16x16 (32), 8x8 (64); window 4 -> 64, 16, 4 windows per image
    taps = ["coarse_map", "fine_map", "grids.0", "stages.0.blocks.1.attn.probs", "stages.2.blocks.0.attn.probs"]
    _, _, feats = _run("swin_unet2d", taps)
    assert feats["grids.0"].shape == (2, 16, 32, 32)
    assert feats["coarse_map"].shape == (2, 64, 8, 8)
    assert feats["fine_map"].shape == (2, 16, 32, 32)  # last stage before full resolution
    assert feats["stages.0.blocks.1.attn.probs"].shape == (2 * 64, 2, 16, 16)
    assert feats["stages.2.blocks.0.attn.probs"].shape == (2 * 4, 8, 16, 16)  # heads double per stage


def test_student_taps():
    # patch 4 -> 16x16 (16 ch), 8x8 (32), 4x4 (64); E_n = 4x4 grid, D_{n-1} back at 16x16
    taps = ["coarse_map", "fine_map", "stages.2.0.attn.probs"]
    model, _, feats = _run("teachformer_student", taps)
    assert feats["coarse_map"].shape == (2, 64, 4, 4)
    assert feats["fine_map"].shape == (2, 16, 16, 16)
    assert feats["stages.2.0.attn.probs"].shape == (2, 8, 16, 16)
    assert model.last_attention.shape == (2, 8, 16, 16)


def test_registered_and_kwargs():
    for name in ("unetr2d", "swin_unet2d", "teachformer_student"):
        assert name in MODELS
    with pytest.raises(ValueError, match="expects"):
        build_model("unetr2d", 2, 3, **SMALL["unetr2d"])(torch.randn(1, 2, 32, 32))
    with pytest.raises(ValueError, match="power of two"):
        build_model("unetr2d", 2, 3, img_size=60, patch_size=12)
    with pytest.raises(ValueError, match="divisible"):
        build_model("teachformer_student", 2, 3, img_size=40, n_stages=3, patch_size=4)
    with pytest.raises(ValueError, match="heads"):
        build_model("teachformer_student", 2, 3, img_size=64, embed_dim=10, heads=3)


def test_window_partition_roundtrip_and_order():
    x = torch.arange(2 * 4 * 4 * 3, dtype=torch.float32).view(2, 4, 4, 3)
    windows = window_partition(x, 2)
    assert windows.shape == (8, 4, 3)
    # window 1 of image 0 = rows 0-1, columns 2-3, row-major
    torch.testing.assert_close(windows[1], x[0, 0:2, 2:4].reshape(4, 3))
    torch.testing.assert_close(window_reverse(windows, 2, 4, 4), x)


def test_relative_position_index():
    # window 2: tokens (0,0), (0,1), (1,0), (1,1); index = (dy + 1) * 3 + (dx + 1)
    idx = relative_position_index(2)
    assert idx[0, 0] == 4 and idx[0, 3] == 0 and idx[3, 0] == 8
    # [1, 2]: token (0,1) minus token (1,0) = (-1, +1) -> 0 * 3 + 2 = 2
    assert idx[1, 2] == 2
    # the same offsets in a window-4 table (7 x 7): (dy + 3) * 7 + (dx + 3); [1, 2] -> 2 * 7 + 4 = 18
    big = relative_position_index(2, 4)
    assert big[0, 0] == 24 and big[1, 2] == 18


def test_swin_stage_smaller_than_window():
    # window 8 with stage sides 32, 16, 8, 4: the last stage attends over its whole 4x4 map, no shift
    model = build_model("swin_unet2d", 2, 3, img_size=64, embed_dim=8, depth=2, heads=1, n_stages=4,
                        patch_size=2, window_size=8, feature_size=8)
    recorder = TapRecorder(model, ["stages.3.blocks.1.attn.probs", "coarse_map"])
    assert model(torch.randn(1, 2, 64, 64)).shape == (1, 3, 64, 64)
    assert recorder.features["stages.3.blocks.1.attn.probs"].shape == (1, 8, 16, 16)
    assert recorder.features["coarse_map"].shape == (1, 64, 4, 4)


def test_shifted_window_mask_regions():
    # 8x8, window 4, shift 2: window 0 is one region (no masking); window 3 holds 4 regions of 2x2 tokens,
    # so 16*16 - 4 * 4*4 = 192 masked pairs.
    mask = shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()
    assert int((mask[3] != 0).sum()) == 192


def test_shifted_attention_ignores_other_regions():
    torch.manual_seed(0)
    block = SwinBlock(dim=8, heads=2, window=4, shift=2)
    tap = {}

    def keep(module, inputs, output):
        tap["p"] = output

    block.attn.probs.register_forward_hook(keep)
    block(torch.randn(1, 64, 8), (8, 8))
    probs = tap["p"]  # (windows, heads, 16, 16)
    masked = (shifted_window_mask(8, 8, 4, 2) != 0).unsqueeze(1).expand_as(probs)
    assert probs[masked].max() < 1e-30
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, 2, 16))


def test_count_flops_by_hand():
    # Conv2d 2->4, 3x3, on 8x8: MACs = 4 * 64 * (2 * 9) = 4608 -> 9216 FLOPs
    conv = nn.Conv2d(2, 4, 3, padding=1)
    assert count_flops(conv, (1, 2, 8, 8)) == 9216
    assert count_macs(conv, (1, 2, 8, 8)) == 4608
    # Linear 5->3 on 2 rows: MACs = 2 * 5 * 3 = 30
    assert count_flops(nn.Linear(5, 3), (2, 5)) == 60


def test_count_flops_restores_mode_and_scales_with_batch():
    model = build_model("teachformer_student", 2, 3, **SMALL["teachformer_student"]).train()
    one = count_flops(model, (1, 2, 64, 64))
    assert model.training
    assert one > 0 and count_flops(model, (2, 2, 64, 64)) == 2 * one
