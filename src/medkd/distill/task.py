"""Task (ground-truth) losses: cross-entropy for segmentation, L1 and MSE for reconstruction.

They follow the :class:`~medkd.distill.LossTerm` interface; ``teacher`` is ignored (``None``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medkd.distill import LOSSES, LossTerm


@LOSSES.register("cross_entropy")
class CrossEntropy(LossTerm):
    """Pixel-wise cross-entropy, mean over all pixels of the batch.

    ``student``: logits ``(B, C, H, W)`` with C >= 2; ``batch["target"]``: class indices ``(B, H, W)``.
    Optional ``class_weights`` (length C) weight the classes as in ``torch.nn.CrossEntropyLoss``.
    """

    def __init__(self, class_weights: list[float] | None = None):
        super().__init__()
        self.register_buffer(
            "class_weights", torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        )

    def forward(self, student, teacher, batch, epoch):
        return F.cross_entropy(student, batch["target"], weight=self.class_weights)


@LOSSES.register("l1")
class L1ToTarget(LossTerm):
    """Mean absolute error between the prediction and ``batch["target"]`` (KD-MRI's training loss)."""

    def forward(self, student, teacher, batch, epoch):
        return F.l1_loss(student, batch["target"])


@LOSSES.register("mse")
class MSEToTarget(LossTerm):
    """Mean squared error between the prediction and ``batch["target"]``."""

    def forward(self, student, teacher, batch, epoch):
        return F.mse_loss(student, batch["target"])
