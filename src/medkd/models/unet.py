"""A plain 2-D U-Net (Ronneberger et al., 2015) with a configurable base width and depth.

Each level is two [Conv3x3 -> BatchNorm -> ReLU] blocks; down-sampling by 2x2 max-pooling, up-sampling by
2x2 transposed convolution followed by concatenation with the skip. The engine's generic teacher and
student for segmentation on the embedded default (teacher base 32, student base 8 or 16).

Tap paths: ``encoders.<i>`` (level i, before pooling), ``bottleneck``, ``decoders.<i>``, ``head``.
Input ``(B, in_channels, H, W)`` with H and W divisible by ``2**depth``; output logits
``(B, out_channels, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from medkd.models import MODELS


class ConvBlock(nn.Sequential):
    """Two [Conv3x3 (no bias) -> BN -> ReLU], optional dropout at the end."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.0):
        layers = [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


@MODELS.register("unet")
class UNet(nn.Module):
    """U-Net with widths ``base * 2**level`` for ``depth`` levels plus a bottleneck.

    Args:
        in_channels: input channels.
        out_channels: number of classes (logits).
        base: channels of the first level.
        depth: number of pooling steps.
        dropout: Dropout2d probability after each block (0 disables it).
    """
    # NHWC on CPU, in both (benchmarks/memory_format.py, x NCHW time: train 0.86-0.95x, inference 0.65-0.67x)
    cpu_channels_last = ("train", "eval")

    def __init__(self, in_channels: int, out_channels: int, base: int = 16, depth: int = 3, dropout: float = 0.0):
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.encoders = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.encoders.append(ConvBlock(cin, w, dropout))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(widths[-2], widths[-1], dropout)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for w_deep, w in zip(widths[:0:-1], widths[-2::-1]):
            self.upsamplers.append(nn.ConvTranspose2d(w_deep, w, 2, stride=2))
            self.decoders.append(ConvBlock(2 * w, w, dropout))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        if h % 2**self.depth or w % 2**self.depth:
            raise ValueError(f"input {h}x{w} is not divisible by 2**depth = {2**self.depth}")
        skips = []
        x = image
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.upsamplers, self.decoders, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)
