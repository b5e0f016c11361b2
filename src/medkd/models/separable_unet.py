"""Keras-vocabulary separable-convolution U-Net: the BraTS seed's teacher and student (our reconstruction).

The seed (``Mahbub2001/medical-image-segmentation-brats-mri-dataset``) publishes only a README: input
128x128x3, Keras blocks (Conv2D / SeparableConv2D, BatchNormalization, LeakyReLU(alpha=0.01),
MaxPooling2D 2x2, Dropout, Conv2DTranspose 3x3 stride 2, Concatenate skips), teacher Dropout 0.5 and
student Dropout 0.3, and two parameter summaries:

* teacher: 8,639,778 total, 8,639,778 trainable, 0 non-trainable;
* student: 608,589 total, 605,645 trainable, 2,944 non-trainable (= moving mean + variance of 1,472 BN
  channels).

Depth, widths and class count are not given. Keras counts BN moving statistics as non-trainable
*parameters*; PyTorch keeps them as buffers, so :func:`keras_parameter_counts` reports Keras-equivalent
numbers. A teacher with 0 non-trainable parameters cannot contain Keras BatchNormalization, contradicting
the README's layer list; ``batchnorm`` is therefore a switch, off for the teacher, on for the student.

Architecture (our reading of the README's vocabulary), for ``widths = (w_0, ..., w_L)``:

* encoder level i < L: ``convs_per_block`` x [conv 3x3 'same' -> (BN) -> LeakyReLU(0.01)] to w_i, then
  ``pools.i`` (MaxPool 2x2) and ``enc_dropouts.i`` (Dropout). Every conv is a Keras SeparableConv2D
  (depthwise 3x3 without bias + pointwise 1x1 with bias: 9*c_in + c_in*c_out + c_out parameters) except,
  with ``first_conv="plain"``, the very first one, a Conv2D (9*c_in*c_out + c_out);
* ``bottleneck``: the same block at w_L;
* decoder level i (deep to shallow): ``upsamplers.j`` Conv2DTranspose 3x3 stride 2 'same' to w_i
  (9*c_in*w_i + w_i parameters), concatenation with the encoder output of level i, ``dec_dropouts.j``,
  then the block to w_i;
* ``head``: Conv2D 1x1 to ``out_channels`` (logits; Keras would apply softmax here).

Both README totals are hit exactly (see :func:`keras_parameter_counts`; a search over depths, widths,
convs per block, first-layer type, transposed-kernel size and class count found these):

* **student** (``brats_student``): widths (16, 32, 64, 128, 256), 2 separable convs per block, BN after
  every conv, ``first_conv="separable"``, 2 classes -> 602,701 weights + 2 x 1,472 BN gamma/beta =
  605,645 trainable, 2 x 1,472 moving statistics = 2,944 non-trainable, 608,589 total. This regular
  4-pool design is the only one of the family that hits all three student numbers; it needs the first
  layer to be separable (the README's ``Conv2D(32, 3x3)`` is called an example). With
  ``first_conv="plain"`` the count is 608,946 (+357, +0.06 %).
* **teacher** (``brats_teacher``): no BN, ``first_conv="plain"`` (the README's ``Conv2D(16, 3x3)``), the
  same 2-conv blocks, 2 classes, widths (16, 48, 120, 224, 488, 1008) -> 8,639,778 total, all
  trainable. No doubling width list of this family hits the total exactly (the closest regular
  variants are 0.3-1.3 % off), so these widths are a search result chosen as the exact hit closest to
  doubling; they are not evidence of the original widths, which are unknown.

The count of 2 output classes (softmax over background / tumour, e.g. the whole-tumour region of
:func:`medkd.brats.brats_regions`) is what makes both totals exact; any other ``out_channels`` changes
the head by (w_0 + 1) parameters per class.

Keras semantics kept: BN ``eps=1e-3`` and moving-average ``momentum=0.01`` (Keras momentum 0.99),
Glorot-uniform kernels and zero biases (``keras_init=True``), element-wise Dropout.

Initialisation switch ``init``: ``"keras"`` (the default: Keras's Glorot-uniform, zero biases) or ``"he"``
(variance-preserving: depthwise kernels normal with variance 1 / 9, pointwise, plain and transposed kernels
He-normal for LeakyReLU(0.01) over their fan-in, the 1x1 head normal with variance 1 / fan-in, zero biases). Glorot on a *separable* conv shrinks the
signal: the depthwise kernel's fan_in + fan_out is 9 (c_in + 1), so its output has about 2 / (c_in + 1) of
the input's second moment, and each separable conv + LeakyReLU divides it by about c_in + 1. With
BatchNorm (the student) training renormalises every layer; without it (the teacher) the embedded-width
teacher's bottleneck output is about 1e-10 of its input at initialisation, only the shallowest skip path
carries signal, and the network cannot learn anything that needs context (it predicted background only).
``"he"`` keeps the second moment of every level near the input's.

Tap paths: ``encoders.<i>`` (level i before pooling, w_i channels at H/2^i), ``bottleneck``,
``decoders.<j>`` (j = 0 is the deepest decoder level), ``head``. Input ``(B, in_channels, H, W)`` with H, W
divisible by 2^L; output logits ``(B, out_channels, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from medkd.models import MODELS

FIRST_CONV_TYPES = ("separable", "plain")
INITS = ("keras", "he")


class SeparableConv2d(nn.Module):
    """Keras ``SeparableConv2D`` (depth multiplier 1, 'same' padding).

    ``depthwise``: per-channel k x k convolution without bias; ``pointwise``: 1x1 convolution with bias.
    Parameters: k*k*c_in + c_in*c_out + c_out.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2,
                                   groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class KerasBlock(nn.Sequential):
    """``n_convs`` x [conv 3x3 -> BatchNorm (optional) -> LeakyReLU].

    Args:
        in_channels: input channels.
        out_channels: channels of every conv in the block.
        n_convs: number of convolutions (>= 1).
        first_plain: the first conv is a plain Conv2D instead of a separable one.
        batchnorm: BatchNorm (Keras eps 1e-3, momentum 0.99) after every conv.
        negative_slope: LeakyReLU slope (the README's alpha = 0.01).
        bn_momentum: PyTorch BatchNorm momentum (Keras momentum 0.99 = 0.01 here).
    """

    def __init__(self, in_channels: int, out_channels: int, n_convs: int, first_plain: bool = False,
                 batchnorm: bool = True, negative_slope: float = 0.01, bn_momentum: float = 0.01):
        layers: list[nn.Module] = []
        cin = in_channels
        for k in range(n_convs):
            if k == 0 and first_plain:
                layers.append(nn.Conv2d(cin, out_channels, 3, padding=1, bias=True))
            else:
                layers.append(SeparableConv2d(cin, out_channels))
            if batchnorm:
                layers.append(nn.BatchNorm2d(out_channels, eps=1e-3, momentum=bn_momentum))
            layers.append(nn.LeakyReLU(negative_slope))
            cin = out_channels
        super().__init__(*layers)


@MODELS.register("separable_unet")
class SeparableUNet(nn.Module):
    """U-Net of Keras separable-convolution blocks (see the module docstring for the layout).

    Args:
        in_channels: input channels (3 for the seed's "RGB" stack of three MR sequences).
        out_channels: number of classes (logits); the README counts are exact with 2.
        widths: channels per level, shallow to deep; the last entry is the bottleneck. ``len(widths) - 1``
            poolings.
        convs_per_block: convolutions in every encoder, bottleneck and decoder block.
        first_conv: ``"separable"`` or ``"plain"`` (Keras Conv2D) for the network's very first conv.
        batchnorm: BatchNorm after every conv (the teacher's counts need ``False``).
        dropout: Dropout probability after every pooling and every skip concatenation (teacher 0.5,
            student 0.3 in the README).
        negative_slope: LeakyReLU slope.
        keras_init: Glorot-uniform kernels and zero biases, as Keras initialises layers (``init="keras"``);
            False leaves PyTorch's default initialisation.
        init: ``"keras"`` or ``"he"`` (variance-preserving, see the module docstring); overrides
            ``keras_init`` when given.
        bn_momentum: BatchNorm running-statistics momentum in PyTorch's convention: 0.01 is Keras's 0.99
            (the default); PyTorch's own default is 0.1. With 0.01 the running statistics need several
            hundred updates to follow the batch statistics, so a model trained for ~100-200 updates is
            evaluated with statistics that still mostly hold their initial values (mean 0, variance 1).

    Raises:
        ValueError: fewer than two widths, a non-positive width, ``convs_per_block < 1``, an unknown
            ``first_conv`` or ``init``, or a dropout outside [0, 1).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 2,
                 widths: Sequence[int] = (16, 32, 64, 128, 256), convs_per_block: int = 2,
                 first_conv: str = "separable", batchnorm: bool = True, dropout: float = 0.3,
                 negative_slope: float = 0.01, keras_init: bool = True, init: str | None = None,
                 bn_momentum: float = 0.01):
        super().__init__()
        if init is not None and init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"widths must list at least two positive channel counts, got {widths}")
        if convs_per_block < 1:
            raise ValueError(f"convs_per_block must be >= 1, got {convs_per_block}")
        if first_conv not in FIRST_CONV_TYPES:
            raise ValueError(f"first_conv must be one of {FIRST_CONV_TYPES}, got {first_conv!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.widths = widths
        self.depth = len(widths) - 1
        if not 0.0 < bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum}")
        block = dict(n_convs=convs_per_block, batchnorm=batchnorm, negative_slope=negative_slope,
                     bn_momentum=bn_momentum)

        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        self.enc_dropouts = nn.ModuleList()
        cin = in_channels
        for i, w in enumerate(widths[:-1]):
            self.encoders.append(KerasBlock(cin, w, first_plain=(i == 0 and first_conv == "plain"), **block))
            self.pools.append(nn.MaxPool2d(2))
            self.enc_dropouts.append(nn.Dropout(dropout))
            cin = w
        self.bottleneck = KerasBlock(cin, widths[-1], **block)

        self.upsamplers = nn.ModuleList()
        self.dec_dropouts = nn.ModuleList()
        self.decoders = nn.ModuleList()
        cin = widths[-1]
        for w in reversed(widths[:-1]):
            self.upsamplers.append(nn.ConvTranspose2d(cin, w, 3, stride=2, padding=1, output_padding=1))
            self.dec_dropouts.append(nn.Dropout(dropout))
            self.decoders.append(KerasBlock(2 * w, w, **block))
            cin = w
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        if init == "he":
            self.apply(lambda m: _he_init(m, negative_slope))
            nn.init.normal_(self.head.weight, std=1.0 / widths[0] ** 0.5)  # logits: linear, no ReLU gain
        elif init == "keras" or (init is None and keras_init):
            self.apply(_keras_init)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, H, W)`` of ``image`` ``(B, in_channels, H, W)``.

        Raises:
            ValueError: H or W not divisible by 2**depth.
        """
        h, w = image.shape[-2:]
        if h % 2**self.depth or w % 2**self.depth:
            raise ValueError(f"input {h}x{w} is not divisible by 2**depth = {2**self.depth}")
        skips = []
        x = image
        for enc, pool, drop in zip(self.encoders, self.pools, self.enc_dropouts):
            x = enc(x)
            skips.append(x)
            x = drop(pool(x))
        x = self.bottleneck(x)
        for up, drop, dec, skip in zip(self.upsamplers, self.dec_dropouts, self.decoders, reversed(skips)):
            x = dec(drop(torch.cat([up(x), skip], dim=1)))
        return self.head(x)


def _keras_init(module: nn.Module) -> None:
    """Glorot-uniform kernel, zero bias (Keras defaults). fan_in + fan_out is the same in both layouts."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _he_init(module: nn.Module, negative_slope: float) -> None:
    """Variance-preserving init: depthwise kernels N(0, 1 / k^2) (linear), every other kernel He-normal over
    its fan-in for LeakyReLU(negative_slope), zero biases."""
    if isinstance(module, SeparableConv2d):
        k2 = module.depthwise.weight[0].numel()
        nn.init.normal_(module.depthwise.weight, std=(1.0 / k2) ** 0.5)
    elif isinstance(module, nn.ConvTranspose2d):
        # weight (c_in, c_out, k, k); a stride-2 output pixel sums about c_in k^2 / 4 inputs
        fan_in = module.weight.shape[0] * module.weight[0, 0].numel() / 4
        gain = nn.init.calculate_gain("leaky_relu", negative_slope)
        nn.init.normal_(module.weight, std=gain / fan_in**0.5)
    elif isinstance(module, nn.Conv2d) and module.groups == 1:
        nn.init.kaiming_normal_(module.weight, a=negative_slope, mode="fan_in", nonlinearity="leaky_relu")
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.bias is not None:
        nn.init.zeros_(module.bias)


@MODELS.register("brats_teacher")
class BratsTeacher(SeparableUNet):
    """The seed's teacher: 8,639,778 Keras parameters, all trainable (no BN), Dropout 0.5.

    Defaults: widths (16, 48, 120, 224, 488, 1008) (searched, see the module docstring), 2 separable convs
    per block, plain Conv2D(16) first layer, 2 classes. Any keyword of :class:`SeparableUNet` overrides.
    """
    # NHWC on CPU, for inference only (benchmarks/memory_format.py, x NCHW time: inference 0.55-0.56x; train 1.00-1.01x)
    cpu_channels_last = ("eval",)

    def __init__(self, in_channels: int = 3, out_channels: int = 2,
                 widths: Sequence[int] = (16, 48, 120, 224, 488, 1008), convs_per_block: int = 2,
                 first_conv: str = "plain", batchnorm: bool = False, dropout: float = 0.5, **kwargs):
        super().__init__(in_channels=in_channels, out_channels=out_channels, widths=widths,
                         convs_per_block=convs_per_block, first_conv=first_conv, batchnorm=batchnorm,
                         dropout=dropout, **kwargs)


@MODELS.register("brats_student")
class BratsStudent(SeparableUNet):
    """The seed's student: 608,589 Keras parameters (605,645 trainable, 2,944 BN statistics), Dropout 0.3.

    Defaults: widths (16, 32, 64, 128, 256), 2 separable convs per block with BN, separable first layer,
    2 classes. Any keyword of :class:`SeparableUNet` overrides.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 2,
                 widths: Sequence[int] = (16, 32, 64, 128, 256), convs_per_block: int = 2,
                 first_conv: str = "separable", batchnorm: bool = True, dropout: float = 0.3, **kwargs):
        super().__init__(in_channels=in_channels, out_channels=out_channels, widths=widths,
                         convs_per_block=convs_per_block, first_conv=first_conv, batchnorm=batchnorm,
                         dropout=dropout, **kwargs)


def keras_parameter_counts(model: nn.Module) -> tuple[int, int, int]:
    """Parameter counts as Keras ``model.summary()`` reports them.

    Keras counts BatchNormalization moving mean and variance as non-trainable parameters; PyTorch keeps
    them as buffers (``running_mean``, ``running_var``; ``num_batches_tracked`` has no Keras counterpart
    and is not counted). Frozen parameters (``requires_grad=False``) are non-trainable too.

    Args:
        model: any module.

    Returns:
        ``(total, trainable, non_trainable)`` with ``total = trainable + non_trainable``.
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    bn_stats = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            bn_stats += module.running_mean.numel() + module.running_var.numel()
    non_trainable = frozen + bn_stats
    return trainable + non_trainable, trainable, non_trainable
