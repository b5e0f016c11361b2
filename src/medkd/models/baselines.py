"""Non-learned baselines that go through the same infer/evaluate/tables path as trained models.

``identity`` returns its input image unchanged: for reconstruction experiments its "prediction" is the
zero-filled image (or the k-space-truncated low-resolution image for super-resolution), the ZF row of
KD-MRI's tables. It has no parameters; configure it with ``role: baseline`` and ``train.epochs: 0``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from medkd.models import MODELS


@MODELS.register("identity")
class Identity(nn.Module):
    """``forward(image) -> image`` (B, C, H, W). ``in_channels`` must equal ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        if in_channels != out_channels:
            raise ValueError(f"identity baseline needs in_channels == out_channels, got {in_channels}, {out_channels}")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image
