"""H-DenseFormer 2-D as its authors built it (TeachFormer's third teacher): exact parameter counts against the
authors' class, forward/backward, deep-supervision outputs and their losses, taps, concatenation fusion."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from medkd.distill.taps import TapRecorder
from medkd.models import MODELS, build_model, count_parameters
from medkd.models.hdenseformer import DCTBlock, HDenseFormer2d, hdenseformer_2d_parameter_count
from medkd.objective import Objective
from medkd.spec import LossSpec

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(img_size=32, n_filters=2, transformer_depth=4)

# Parameter counts of the authors' HDenseFormer_2D (shijun18/H-DenseFormer @ db44a4b, models/HDenseFormer_2D.py),
# obtained by instantiating their class (torch + einops) outside this repository: (modalities, classes,
# image side, n_filters, transformer_depth) -> parameters. docs/sources.md section 4.1.
AUTHORS_COUNTS = {
    (2, 2, 144, 32, 24): 4_181_192,  # HECKTOR21 slices as the paper config reads them (CT + PET, 144 px)
    (3, 2, 256, 32, 24): 5_074_152,  # PI-CAI22 as the paper config reads it (T2w, ADC, HBV at 256 px)
    (3, 2, 384, 32, 24): 5_197_032,  # PI-CAI22 at the authors' input size (config.py: 384 x 384)
    (2, 2, 32, 32, 4): 3_349_320,
    (3, 2, 32, 32, 8): 4_002_792,
    (2, 3, 32, 16, 4): 944_476,
}


def test_registered_and_old_reading_gone():
    assert "hdenseformer_2d" in MODELS.names()
    assert "hdenseformer2d" not in MODELS.names()  # the summation reading was replaced (no config used it after)
    assert isinstance(build_model("hdenseformer_2d", in_channels=2, out_channels=2, **TINY), HDenseFormer2d)


@pytest.mark.parametrize("key", sorted(AUTHORS_COUNTS))
def test_parameter_count_equals_the_authors(key):
    m, classes, size, f, depth = key
    kwargs = dict(img_size=size, n_filters=f, transformer_depth=depth)
    with torch.device("meta"):
        model = HDenseFormer2d(in_channels=m, out_channels=classes, **kwargs)
    assert count_parameters(model) == AUTHORS_COUNTS[key]
    assert hdenseformer_2d_parameter_count(m, classes, **kwargs) == AUTHORS_COUNTS[key]


@pytest.mark.parametrize("experiment", ["teachformer_hecktor", "teachformer_picai"])
def test_paper_config_builds_the_authors_model(experiment):
    exp = yaml.safe_load((ROOT / "config/experiments/teachformer.yaml").read_text())["experiments"][experiment]
    model = exp["models"]["hdenseformer"]
    assert model["arch"] == "hdenseformer_2d"
    m, classes, kwargs = len(exp["channels"]), len(exp["classes"]), model["arch_kwargs"]
    assert kwargs.get("n_filters", 32) == 32 and kwargs.get("transformer_depth", 24) == 24
    with torch.device("meta"):
        built = build_model("hdenseformer_2d", in_channels=m, out_channels=classes, **kwargs)
    assert count_parameters(built) == AUTHORS_COUNTS[(m, classes, kwargs["img_size"], 32, 24)]
    # the authors' loss: focal + Dice on the output and on the three deep-supervision heads, weights 1/2^i
    terms = [(t["loss"], t.get("weight", 1.0), t.get("student_tap", "out")) for t in model["losses"]]
    assert terms == [("focal_dice", 1.0, "out"), ("focal_dice", 0.5, "out:aux_2"),
                     ("focal_dice", 0.25, "out:aux_4"), ("focal_dice", 0.125, "out:aux_8")]


def test_parameter_count_formula_tracks_every_option():
    for extra in ({"heads": 1}, {"heads": 4, "growth_rate": 16}, {"transformer_depth": 8}, {"img_size": 48}):
        kwargs = {**TINY, **extra}
        with torch.device("meta"):
            model = HDenseFormer2d(in_channels=3, out_channels=4, **kwargs)
        assert count_parameters(model) == hdenseformer_2d_parameter_count(3, 4, **kwargs), extra


def test_forward_backward_deep_supervision_and_taps():
    torch.manual_seed(0)
    model = HDenseFormer2d(in_channels=2, out_channels=3, **TINY)
    rec = TapRecorder(model, ["coarse_map", "fine_map", "paths.1", "paths.0.blocks.0.layers.3.attn.probs"])
    x = torch.randn(2, 2, 32, 32, requires_grad=True)
    out = model(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "out": (2, 3, 32, 32), "aux_2": (2, 3, 16, 16), "aux_4": (2, 3, 8, 8), "aux_8": (2, 3, 4, 4)}
    assert rec.get("coarse_map", out).shape == (2, 16, 4, 4)  # E_n: 8f at S/8
    assert rec.get("fine_map", out).shape == (2, 4, 16, 16)  # D_{n-1}: 2f at S/2
    assert rec.get("paths.1", out).shape == (2, 8, 2, 2)  # 4f tokens at S/16
    assert rec.get("paths.0.blocks.0.layers.3.attn.probs", out).shape == (2, 8, 4, 4)  # 8 heads, 4 tokens
    target = torch.randint(0, 3, (2, 32, 32))
    specs = [LossSpec.from_dict({"loss": "focal_dice", "weight": w, "kwargs": {}, "student_tap": tap,
                                 "teacher_tap": "out"})
             for w, tap in [(1.0, "out"), (0.5, "out:aux_2"), (0.25, "out:aux_4"), (0.125, "out:aux_8")]]
    total, parts = Objective(tuple(specs))(out, rec, {}, {"image": x, "target": target}, 0)
    assert len(parts) == 4 and torch.isfinite(total)
    total.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters()), "every parameter is used"


def test_modalities_are_concatenated_not_summed():
    model = HDenseFormer2d(in_channels=3, out_channels=2, **TINY)
    assert model.fuse.conv.in_channels == 3 * 4 * TINY["n_filters"]  # M paths x D channels each
    assert model.paths[0].patch_embed.in_channels == 1 and model.enc1[0].in_channels == 3
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y = model(x)["out"]
        x2 = x.clone()
        x2[:, 2] = 0
        assert not torch.allclose(model(x2)["out"], y)  # the third modality matters


def test_dct_block_is_dense():
    block = DCTBlock(dim=16, growth=8, depth=4, heads=2, dropout=0.0)
    assert [layer.transition.in_features for layer in block.layers] == [16, 24, 32, 40]
    assert block.out[0].in_features == 48 and block.out[0].out_features == 16  # MLP D + 4g -> 2g -> D
    assert block(torch.randn(2, 5, 16)).shape == (2, 5, 16)


def test_bad_sizes():
    with pytest.raises(ValueError, match="divisible by 16"):
        HDenseFormer2d(in_channels=1, out_channels=2, img_size=40)
    with pytest.raises(ValueError, match="multiple of 4"):
        HDenseFormer2d(in_channels=1, out_channels=2, img_size=32, transformer_depth=6)
    with pytest.raises(ValueError, match="expects"):
        HDenseFormer2d(in_channels=1, out_channels=2, **TINY)(torch.randn(1, 1, 16, 16))
