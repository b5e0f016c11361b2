"""The two-class U-Net of P-CD (Paced-Curriculum Distillation, IJCARS 2023), a milesial-style UNet.

Architecture (docs/sources.md 5.2; P-CD ``models/unet.py``), channel numbers at ``width = 1``:

* encoder: ``inp`` DoubleConv 3->64, then ``down1..down4`` = MaxPool2d(2) + DoubleConv
  64->128->256->512->512 (the deepest block keeps 512 channels);
* decoder ``up1..up4``: nearest-neighbour x2 upsampling, zero padding of the upsampled map to the skip's
  size (so odd sizes work), concatenation ``[skip, upsampled]`` and a DoubleConv whose middle width is
  half its input: 1024->512->256, 512->256->128, 256->128->64, 128->64->64;
* head ``out``: Conv1x1 64->n_classes (2 for P-CD).

DoubleConv = [Conv3x3 (with bias) -> BatchNorm -> ReLU] x 2. The convolutions keep their bias, as in the
P-CD code (milesial's newer version drops it); with bias, 3 input channels and 2 classes the model has
exactly **17,267,458** parameters (our count, docs/sources.md 5.2), which the unit test asserts.

The module layout mirrors the P-CD code, so ``state_dict`` keys (``inp.double_conv.0.weight``,
``down1.maxpool_conv.1.double_conv.0.weight``, ``up1.conv.double_conv.0.weight``, ``out.weight``, ...)
are the same as the authors' checkpoints.

Tap paths (forward-hook module paths) for distillation:

* ``inp``: full-resolution encoder features ``(B, 64w, H, W)``;
* ``down<k>``: encoder level k output ``(B, C_k, H/2^k, W/2^k)``; ``down<k>.maxpool_conv.0`` is its
  pooling; ``down4`` is the bottleneck ``(B, 512w, H/16, W/16)``;
* ``up<k>``: decoder block k output; ``up<k>.up``: its upsampled input before padding/concatenation;
* ``out``: the logits ``(B, n_classes, H, W)`` (same as the ``"out"`` tap).

``width`` scales every channel count (``round(c * width)``, at least 1) for CPU-scale runs. ``dropout``
(probability p, default 0 = none, as in the paper) appends a ``Dropout2d(p)`` to every DoubleConv; it
has no parameters, so counts and ``state_dict`` keys are unchanged. It exists for MC-dropout
uncertainty (:func:`medkd.uncertainty.mc_dropout_variance`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from medkd.models import MODELS

#: Encoder widths of the P-CD UNet at ``width = 1`` (levels inp, down1, down2, down3; down4 repeats 512).
PCD_ENCODER_WIDTHS = (64, 128, 256, 512)


class DoubleConv(nn.Module):
    """[Conv3x3 (bias) -> BN -> ReLU] x 2, optionally followed by ``Dropout2d(dropout)``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        mid_channels: channels after the first convolution (default ``out_channels``).
        dropout: Dropout2d probability; 0 adds no dropout module.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None, dropout: float = 0.0):
        mid = mid_channels or out_channels
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__()
        self.double_conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """MaxPool2d(2) then DoubleConv: ``(B, in, H, W) -> (B, out, floor(H/2), floor(W/2))``."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels, dropout=dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Nearest x2 upsampling, pad to the skip's size, concatenate ``[skip, up]``, DoubleConv(mid = in/2).

    Args:
        in_channels: channels after concatenation (skip + upsampled).
        out_channels: output channels.
        dropout: Dropout2d probability inside the DoubleConv.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2, dropout=dropout)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(deep)
        dy = skip.shape[-2] - x.shape[-2]
        dx = skip.shape[-1] - x.shape[-1]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


@MODELS.register("pcd_unet")
class PCDUNet(nn.Module):
    """P-CD's UNet(2) (see the module docstring for layers, tap paths and the parameter count).

    Args:
        in_channels: image channels (3 in P-CD: PIL RGB scaled to [0, 1]).
        out_channels: number of classes (2 in P-CD; argmax gives the prediction).
        width: channel multiplier (1 = paper; e.g. 0.125 gives 8-16-32-64-64 for CPU runs).
        dropout: Dropout2d probability after every DoubleConv (0 = paper, no dropout).

    Raises:
        ValueError: non-positive ``width``, ``dropout`` outside ``[0, 1)`` or channels < 1.

    Input ``(B, in_channels, H, W)`` with H, W >= 16 (four poolings); output logits
    ``(B, out_channels, H, W)``.
    """
    # NHWC on CPU, in both (benchmarks/memory_format.py, x NCHW time: train 0.77-0.80x, inference 0.66-0.67x)
    cpu_channels_last = ("train", "eval")

    input_keys = ("image",)

    def __init__(self, in_channels: int = 3, out_channels: int = 2, width: float = 1.0, dropout: float = 0.0):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        c1, c2, c3, c4 = (_scaled(c, width) for c in PCD_ENCODER_WIDTHS)
        self.inp = DoubleConv(in_channels, c1, dropout=dropout)
        self.down1 = Down(c1, c2, dropout)
        self.down2 = Down(c2, c3, dropout)
        self.down3 = Down(c3, c4, dropout)
        self.down4 = Down(c4, c4, dropout)
        self.up1 = Up(2 * c4, c3, dropout)
        self.up2 = Up(2 * c3, c2, dropout)
        self.up3 = Up(2 * c2, c1, dropout)
        self.up4 = Up(2 * c1, c1, dropout)
        self.out = nn.Conv2d(c1, out_channels, kernel_size=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, H, W)`` for ``image`` ``(B, in_channels, H, W)``."""
        if image.dim() != 4:
            raise ValueError(f"image must be (B, C, H, W), got shape {tuple(image.shape)}")
        if min(image.shape[-2:]) < 16:
            raise ValueError(f"image {tuple(image.shape[-2:])} is smaller than 16 pixels (4 poolings)")
        x1 = self.inp(image)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.out(x)
