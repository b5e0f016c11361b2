"""Task (ground-truth) losses: cross-entropy and soft Dice for segmentation, L1 and MSE for reconstruction.

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


def multiclass_soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
                         include_background: bool = False) -> torch.Tensor:
    """``1 - mean_c (2 * sum(p_c * y_c) + s) / (sum(p_c) + sum(y_c) + s)`` with ``p = softmax(logits)``.

    The sums run over the whole batch (batch Dice, as nnU-Net's ``batch_dice``): a class absent from one
    slice still has a well-defined term as long as it occurs somewhere in the batch, and a class absent
    from the whole batch scores ``s / (sum(p_c) + s)``, which pushes its probability down.

    Args:
        logits: ``(B, C, H, W)`` with C >= 2.
        target: ``(B, H, W)`` int64 class indices in ``[0, C)``.
        smooth: additive smoothing ``s`` in numerator and denominator.
        include_background: whether class 0 takes part in the mean (default: foreground classes only).

    Returns:
        Scalar tensor in [0, 1).
    """
    if logits.ndim < 2 or logits.shape[1] < 2:
        raise ValueError(f"soft_dice expects multi-class logits (B, C>=2, ...), got {tuple(logits.shape)}")
    n_classes = logits.shape[1]
    p = torch.softmax(logits.float(), dim=1)
    y = F.one_hot(target.long(), n_classes).movedim(-1, 1).to(p.dtype)
    dims = (0,) + tuple(range(2, p.ndim))
    intersection = (p * y).sum(dims)
    dice = (2 * intersection + smooth) / (p.sum(dims) + y.sum(dims) + smooth)
    if not include_background:
        dice = dice[1:]
    return 1 - dice.mean()


@LOSSES.register("soft_dice")
class SoftDice(LossTerm):
    """Multi-class soft Dice on softmax probabilities, pooled over the batch, background excluded.

    Used next to ``cross_entropy`` (Dice + CE, nnU-Net's default segmentation loss) where a thin or
    small class (CSF, a lesion) is otherwise left at Dice 0 by cross-entropy alone in a short run.
    ``student``: logits ``(B, C, H, W)``; ``batch["target"]``: ``(B, H, W)`` class indices.

    Args:
        smooth: additive smoothing (default 1).
        include_background: also average the background class's Dice (default False).
    """

    def __init__(self, smooth: float = 1.0, include_background: bool = False):
        super().__init__()
        if smooth < 0:
            raise ValueError(f"smooth must be non-negative, got {smooth}")
        self.smooth = float(smooth)
        self.include_background = bool(include_background)

    def forward(self, student, teacher, batch, epoch):
        return multiclass_soft_dice(student, batch["target"], self.smooth, self.include_background)


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
