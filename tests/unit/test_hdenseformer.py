"""H-DenseFormer 2-D (TeachFormer's third teacher): exact parameter count, forward, taps, dense connections."""

from __future__ import annotations

import pytest
import torch

from medkd.distill.taps import TapRecorder
from medkd.models import MODELS, build_model, count_parameters
from medkd.models.hdenseformer import DenselyConnectedTransformer, HDenseFormer2d, hdenseformer_parameter_count

TINY = dict(img_size=32, feature_size=4, embed_dim=16, patch_size=2, path_depth=1, dct_depth=3, heads=2)
# the teachformer paper config's sizes (config/experiments/teachformer.yaml)
HECKTOR = dict(img_size=144, feature_size=16, embed_dim=256, patch_size=3, path_depth=2, dct_depth=6, heads=8)
PICAI = dict(img_size=256, feature_size=16, embed_dim=256, patch_size=4, path_depth=2, dct_depth=6, heads=8)


def test_registered():
    assert "hdenseformer2d" in MODELS.names()
    assert isinstance(build_model("hdenseformer2d", in_channels=2, out_channels=2, **TINY), HDenseFormer2d)


@pytest.mark.parametrize("m, classes, kwargs, expected", [
    (2, 2, TINY, 38_818),
    (2, 2, HECKTOR, 10_503_490),
    (3, 2, PICAI, 12_884_594),
])
def test_exact_parameter_count(m, classes, kwargs, expected):
    with torch.device("meta"):
        model = HDenseFormer2d(in_channels=m, out_channels=classes, **kwargs)
    assert count_parameters(model) == expected
    assert hdenseformer_parameter_count(m, classes, **kwargs) == expected


def test_parameter_count_formula_tracks_every_option():
    for extra in ({"deep_supervision": True}, {"dct_depth": 1, "path_depth": 0}, {"mlp_ratio": 2.0}):
        kwargs = {**TINY, **extra}
        model = HDenseFormer2d(in_channels=3, out_channels=4, **kwargs)
        assert count_parameters(model) == hdenseformer_parameter_count(3, 4, **kwargs), extra


def test_forward_backward_and_taps():
    torch.manual_seed(0)
    model = HDenseFormer2d(in_channels=2, out_channels=3, **TINY)
    rec = TapRecorder(model, ["coarse_map", "fine_map", "paths.1", "dct.layers.2.attn.probs"])
    x = torch.randn(2, 2, 32, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 3, 32, 32)
    assert rec.get("coarse_map", out).shape == (2, 16, 4, 4)  # S / (4 p)
    assert rec.get("fine_map", out).shape == (2, 8, 16, 16)  # 2f at S/2
    assert rec.get("dct.layers.2.attn.probs", out).shape == (2, 2, 16, 16)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for n, p in model.named_parameters()), "every parameter is used"


def test_each_modality_has_its_own_path():
    torch.manual_seed(0)
    model = HDenseFormer2d(in_channels=2, out_channels=2, **TINY).eval()
    x = torch.randn(1, 2, 32, 32)
    y = model(x)
    x2 = x.clone()
    x2[:, 1] = 0
    assert not torch.allclose(model(x2), y)  # the second modality matters
    assert model.paths[0].patch_embed.weight.data_ptr() != model.paths[1].patch_embed.weight.data_ptr()


def test_dct_layers_see_every_earlier_output():
    dct = DenselyConnectedTransformer(dim=8, depth=3, heads=2, mlp_ratio=2.0, dropout=0.0)
    assert [t.in_features for t in dct.transitions] == [8, 16, 24] and dct.fuse.in_features == 32
    assert dct(torch.randn(2, 5, 8)).shape == (2, 5, 8)


def test_deep_supervision_and_bad_sizes():
    model = HDenseFormer2d(in_channels=1, out_channels=2, deep_supervision=True, **TINY)
    out = model(torch.randn(1, 1, 32, 32))
    assert set(out) == {"out", "aux_4", "aux_2"} and out["aux_4"].shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match="divisible by 4 \\* patch_size"):
        HDenseFormer2d(in_channels=1, out_channels=2, img_size=30, patch_size=2)
    with pytest.raises(ValueError, match="expects"):
        HDenseFormer2d(in_channels=1, out_channels=2, **TINY)(torch.randn(1, 1, 16, 16))
