"""MTMS teachers (T1 multi-task U-Net, T2 multi-task TransUNet) and students (S1, S2)."""

from __future__ import annotations

import pytest
import torch

from medkd.distill.taps import TapRecorder
from medkd.models import MODELS, build_model, count_parameters
from medkd.models.mtms import patchify, scaled_channels, unpatchify


@pytest.fixture(scope="module")
def t1_full():
    torch.manual_seed(0)
    return build_model("mtms_t1", in_channels=3, out_channels=1).eval()


def test_all_four_architectures_are_registered():
    assert {"mtms_t1", "mtms_t2", "mtms_s1", "mtms_s2"} <= set(MODELS.names())


def test_t1_parameter_count_matches_paper(t1_full):
    assert count_parameters(t1_full) == 43_236_036


def test_t2_parameter_count_matches_paper():
    # Built on the meta device: exact shapes and counts, no 0.7 GB allocation.
    with torch.device("meta"):
        model = build_model("mtms_t2", in_channels=3, out_channels=1, img_dim=256)
    assert count_parameters(model) == 172_625_028
    # docs/sources.md: 134.5 M sit in the two patch projections (one token of 1024*16*16 = 262,144 values):
    # 262144*256 + 256 = 67,109,120 and 256*262144 + 262144 = 67,371,008 -> 134,480,128.
    projections = count_parameters(model.vit.project_patches) + count_parameters(model.project_patches_back)
    assert projections == 134_480_128
    # Attention inner width 12 heads x 21 = 252 (dim_head = int(256 / 12)).
    assert model.vit.transformer.layers[0].mhsa.to_qkv.weight.shape == (3 * 252, 256)
    assert len(model.vit.transformer.layers) == 8


@pytest.mark.parametrize("name, count", [("mtms_s1", 57_297), ("mtms_s2", 227_233)])
def test_student_parameter_counts_match_table_4_2(name, count):
    assert count_parameters(build_model(name, in_channels=3, out_channels=1)) == count


def test_t1_taps_at_width_1(t1_full):
    x = torch.rand(2, 3, 16, 16)
    recorder = TapRecorder(t1_full, ["b", "e2.pool", "d4_seg"])
    with torch.no_grad():
        out = t1_full(x)
    assert recorder.get("b", out).shape == (2, 1024, 1, 1)  # H/16
    assert recorder.get("e2.pool", out).shape == (2, 128, 4, 4)  # H/4
    assert recorder.get("d4_seg", out).shape == (2, 64, 16, 16)  # H
    assert recorder.get("out", out).shape == (2, 1, 16, 16)
    assert recorder.get("out:recon", out).shape == (2, 3, 16, 16)
    recorder.remove()


@pytest.mark.parametrize("name, base", [("mtms_s1", 16), ("mtms_s2", 32)])
def test_student_taps_and_output(name, base):
    model = build_model(name, in_channels=3, out_channels=1).eval()
    recorder = TapRecorder(model, ["b", "e2.pool", "d2"])
    with torch.no_grad():
        out = model(torch.rand(3, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (3, 1, 32, 32)
    assert recorder.get("b", out).shape == (3, 4 * base, 8, 8)
    assert recorder.get("e2.pool", out).shape == (3, 2 * base, 8, 8)
    assert recorder.get("d2", out).shape == (3, base, 32, 32)


def test_t1_quarter_width_forward_shapes():
    model = build_model("mtms_t1", in_channels=3, out_channels=1, width=0.25)
    recorder = TapRecorder(model, ["b", "e2.pool", "d4_seg"])
    out = model(torch.rand(2, 3, 64, 64))
    assert out["out"].shape == (2, 1, 64, 64) and out["recon"].shape == (2, 3, 64, 64)
    assert recorder.get("b", out).shape == (2, 256, 4, 4)
    assert recorder.get("e2.pool", out).shape == (2, 32, 16, 16)
    assert recorder.get("d4_seg", out).shape == (2, 16, 64, 64)


def test_t2_quarter_width_forward_shapes_and_taps():
    torch.manual_seed(0)
    model = build_model("mtms_t2", in_channels=3, out_channels=1, img_dim=64, width=0.25)
    # Width 0.25: transformer dim 64, 3 heads of 64 // 3 = 21, MLP 512, one token of 256 * 4 * 4 values.
    assert model.vit.project_patches.weight.shape == (64, 4096)
    assert model.vit.transformer.layers[0].linear[0].weight.shape == (512, 64)
    assert model.vit.transformer.layers[0].mhsa.heads == 3
    recorder = TapRecorder(model, ["conv1", "vit_conv", "dec4"])
    out = model(torch.rand(2, 3, 64, 64))
    assert out["out"].shape == (2, 1, 64, 64) and out["recon"].shape == (2, 3, 64, 64)
    assert recorder.get("conv1", out).shape == (2, 64, 16, 16)  # x4: 256 * 0.25 @ H/4
    assert recorder.get("vit_conv", out).shape == (2, 128, 4, 4)  # y: 512 * 0.25 @ H/16
    assert recorder.get("dec4", out).shape == (2, 4, 64, 64)  # 16 * 0.25 @ H
    (out["out"].mean() + out["recon"].mean()).backward()
    assert model.vit.project_patches.weight.grad is not None


def test_t2_rejects_inputs_of_another_size():
    model = build_model("mtms_t2", in_channels=3, out_channels=1, img_dim=32, width=0.125)
    with pytest.raises(ValueError, match="img_dim"):
        model(torch.rand(1, 3, 64, 64))


def test_t2_multi_token_patch_layout_round_trips():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 4, 48)
    assert torch.equal(unpatchify(tokens, 4, 3, 2, 2), x)
    # Patch index outermost: token (0, 0) gathers rows/cols 0, 2, 4, 6 (stride = number of tokens per axis).
    assert torch.equal(tokens[0, 0, :3], x[0, :, 0, 0])  # (patch_row 0, patch_col 0), channels 0..2
    assert torch.equal(tokens[0, 0, 3:6], x[0, :, 0, 2])  # (patch_row 0, patch_col 1)
    # One token: channels-last flattening of the whole map.
    assert torch.equal(patchify(x, 8)[:, 0], x.permute(0, 2, 3, 1).reshape(2, -1))


def test_width_rounding_and_validation():
    assert scaled_channels(64, 0.25) == 16
    assert scaled_channels(16, 0.01) == 1  # never below one channel
    assert scaled_channels(12, 0.125) == 2  # round(1.5) = 2 (banker's rounding)
    with pytest.raises(ValueError, match="width"):
        build_model("mtms_s1", in_channels=3, out_channels=1, width=0)


def test_input_checks_name_the_problem():
    s1 = build_model("mtms_s1", in_channels=3, out_channels=1)
    with pytest.raises(ValueError, match="divisible by 4"):
        s1(torch.rand(1, 3, 30, 30))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        s1(torch.rand(1, 1, 32, 32))
    t1 = build_model("mtms_t1", in_channels=3, out_channels=1, width=0.125)
    with pytest.raises(ValueError, match="divisible by 16"):
        t1(torch.rand(1, 3, 40, 40))
