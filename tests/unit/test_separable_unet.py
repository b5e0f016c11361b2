"""BraTS seed separable U-Net: Keras-equivalent parameter counts and shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medkd.models import MODELS, build_model
from medkd.models.separable_unet import (BratsStudent, BratsTeacher, SeparableConv2d, SeparableUNet,
                                         keras_parameter_counts)


def test_registered_names():
    assert MODELS.get("separable_unet") is SeparableUNet
    assert MODELS.get("brats_teacher") is BratsTeacher
    assert MODELS.get("brats_student") is BratsStudent


def test_teacher_hits_readme_counts_exactly():
    # README: total 8,639,778, trainable 8,639,778, non-trainable 0.
    assert keras_parameter_counts(build_model("brats_teacher", 3, 2)) == (8_639_778, 8_639_778, 0)


def test_student_hits_readme_counts_exactly():
    # README: total 608,589, trainable 605,645, non-trainable 2,944 (1,472 BN channels x 2 statistics).
    model = build_model("brats_student", 3, 2)
    assert keras_parameter_counts(model) == (608_589, 605_645, 2_944)
    bn_channels = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert bn_channels == 1_472


def test_student_with_plain_first_conv_differs_by_357():
    # Conv2D(3->16): 9*3*16 + 16 = 448 ; SeparableConv2D(3->16): 9*3 + 3*16 + 16 = 91 ; 448 - 91 = 357.
    model = build_model("brats_student", 3, 2, first_conv="plain")
    assert keras_parameter_counts(model) == (608_589 + 357, 605_645 + 357, 2_944)


def test_separable_conv_keras_count():
    # depthwise 3x3 without bias: 9*5 = 45 ; pointwise 5*7 weights + 7 bias = 42 ; total 87.
    layer = SeparableConv2d(5, 7)
    assert sum(p.numel() for p in layer.parameters()) == 87
    assert layer.depthwise.bias is None and layer.pointwise.bias is not None


def test_tiny_configuration_counted_by_hand():
    # widths (4, 8), 1 conv per block, plain first conv, BN, 2 classes, 3 input channels:
    #   Conv2D 3->4: 9*3*4 + 4 = 112          BN(4): 8 trainable + 8 statistics
    #   SepConv 4->8: 9*4 + 4*8 + 8 = 76      BN(8): 16 + 16
    #   ConvT 8->4 3x3: 9*8*4 + 4 = 292
    #   SepConv 8->4: 9*8 + 8*4 + 4 = 108     BN(4): 8 + 8
    #   head 1x1 4->2: 4*2 + 2 = 10
    # weights 598, trainable 598 + 32 = 630, non-trainable 32, total 662.
    model = SeparableUNet(in_channels=3, out_channels=2, widths=(4, 8), convs_per_block=1,
                          first_conv="plain", batchnorm=True)
    assert keras_parameter_counts(model) == (662, 630, 32)


def test_frozen_parameters_count_as_non_trainable():
    model = SeparableUNet(in_channels=3, out_channels=2, widths=(4, 8), convs_per_block=1,
                          first_conv="plain", batchnorm=False)
    total, trainable, non_trainable = keras_parameter_counts(model)
    model.head.weight.requires_grad_(False)  # 8 weights
    assert keras_parameter_counts(model) == (total, trainable - 8, non_trainable + 8)


@pytest.mark.parametrize("name", ["brats_student", "brats_teacher"])
def test_forward_shape_128(name):
    torch.manual_seed(0)
    model = build_model(name, 3, 2).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 128))
    assert out.shape == (2, 2, 128, 128)
    assert torch.isfinite(out).all()


def test_taps_and_block_vocabulary():
    model = build_model("brats_student", 3, 4)
    names = dict(model.named_modules())
    for tap in ("encoders.0", "encoders.3", "bottleneck", "decoders.0", "decoders.3", "head"):
        assert tap in names
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert acts and all(a.negative_slope == 0.01 for a in acts)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(b.eps == 1e-3 and b.momentum == 0.01 for b in bns)  # Keras momentum 0.99
    ups = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert all(u.kernel_size == (3, 3) and u.stride == (2, 2) for u in ups)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(d.p == 0.3 for d in drops)
    teacher = build_model("brats_teacher", 3, 2)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in teacher.modules())
    assert all(d.p == 0.5 for d in teacher.modules() if isinstance(d, nn.Dropout))


def test_skip_features_have_level_shapes():
    model = build_model("brats_student", 3, 2).eval()
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = output.shape

        return hook

    model.encoders[2].register_forward_hook(record("enc2"))
    model.bottleneck.register_forward_hook(record("bott"))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert seen["enc2"] == (1, 64, 16, 16)
    assert seen["bott"] == (1, 256, 4, 4)


def test_bad_input_and_arguments():
    model = build_model("brats_student", 3, 2)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 3, 100, 100))
    with pytest.raises(ValueError, match="first_conv"):
        SeparableUNet(3, 2, first_conv="dense")
    with pytest.raises(ValueError, match="widths"):
        SeparableUNet(3, 2, widths=(16,))
    with pytest.raises(ValueError, match="dropout"):
        SeparableUNet(3, 2, dropout=1.0)
