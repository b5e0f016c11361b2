"""Binary segmentation losses of MTMS (docs/sources.md section 2.3) and its reconstruction term.

* ``dice``: ``1 - (2 * sum(sigmoid(z) * y) + s) / (sum(sigmoid(z)) + sum(y) + s)`` with smooth ``s = 1``,
  the sums running over the whole batch flattened (one Dice for the batch, not a mean of per-image
  Dice values). MTMS uses it for the S1 baseline and for every KD student.
* ``dice_bce``: ``BCE(sigmoid(z), y)`` (mean over all pixels) plus that Dice loss; MTMS uses it for the
  teachers T1/T2 and the S2 baseline. (The MTMS README says DiceBCE everywhere; the code does not.)
* ``mse_to_input``: ``MSE(recon, batch["image"])``, the teachers' auto-encoding term. The MTMS teacher loss
  ``DiceBCE(seg, mask) + 0.2 * MSE(recon, image)`` is written in a config as two terms::

      - {loss: dice_bce, weight: 1.0, student_tap: out}
      - {loss: mse_to_input, weight: 0.2, student_tap: "out:recon"}

Logits ``z``: ``(B, 1, H, W)``; targets ``batch["target"]``: ``(B, H, W)`` int64 in {0, 1} (a
``(B, 1, H, W)`` target is accepted too).

The BCE is evaluated from the logits (``binary_cross_entropy_with_logits``). The MTMS code applies
``binary_cross_entropy`` to ``sigmoid(z)``, which is the same number except where float32 saturates the
sigmoid (|z| > ~17), where PyTorch clamps the log at -100.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medkd.distill import LOSSES, LossTerm


def binary_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The target as a float tensor shaped like the single-channel ``logits``.

    Args:
        logits: ``(B, 1, H, W)`` binary logits.
        target: ``(B, H, W)`` or ``(B, 1, H, W)`` with values in {0, 1} (any dtype).

    Returns:
        ``target`` as ``logits.dtype``, shape ``(B, 1, H, W)``.

    Raises:
        ValueError: logits with more than one channel, a target of another size, or values outside {0, 1}.
    """
    if logits.ndim < 2 or logits.shape[1] != 1:
        raise ValueError(f"binary losses expect single-channel logits (B, 1, ...), got {tuple(logits.shape)}")
    expected = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(target.shape) not in (expected, tuple(logits.shape)):
        raise ValueError(f"target {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    target = target.reshape(logits.shape).to(logits.dtype)
    if target.numel() and not bool(((target == 0) | (target == 1)).all()):
        raise ValueError("binary losses expect target values in {0, 1}")
    return target


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2 * sum(p * y) + smooth) / (sum(p) + sum(y) + smooth)``, ``p = sigmoid(logits)``, pooled over
    every element of the batch.

    Args:
        logits: any shape; target: same number of elements, values in [0, 1].
        smooth: additive smoothing in numerator and denominator (1 in MTMS).

    Returns:
        Scalar tensor in [0, 1).
    """
    p = torch.sigmoid(logits).reshape(-1)
    y = target.reshape(-1).to(p.dtype)
    intersection = (p * y).sum()
    return 1 - (2 * intersection + smooth) / (p.sum() + y.sum() + smooth)


@LOSSES.register("dice")
class BatchDiceLoss(LossTerm):
    """MTMS ``DiceLoss``: batch-pooled soft Dice on sigmoid probabilities, smooth 1.

    Args:
        smooth: additive smoothing (1 in MTMS).
    """

    def __init__(self, smooth: float = 1.0):
        super().__init__()
        if smooth < 0:
            raise ValueError(f"smooth must be non-negative, got {smooth}")
        self.smooth = float(smooth)

    def forward(self, student, teacher, batch, epoch):
        return soft_dice_loss(student, binary_target(student, batch["target"]), self.smooth)


@LOSSES.register("dice_bce")
class DiceBCELoss(BatchDiceLoss):
    """MTMS ``DiceBCELoss``: pixel-mean binary cross-entropy plus the batch-pooled soft Dice loss.

    Args:
        smooth: Dice smoothing (1 in MTMS).
    """

    def forward(self, student, teacher, batch, epoch):
        target = binary_target(student, batch["target"])
        bce = F.binary_cross_entropy_with_logits(student, target)
        return bce + soft_dice_loss(student, target, self.smooth)


@LOSSES.register("mse_to_input")
class MSEToInput(LossTerm):
    """Mean squared error between a reconstruction tap (e.g. ``"out:recon"``) and ``batch["image"]``.

    The MTMS teachers' reconstruction target is the uncorrupted input image (``(B, 3, H, W)`` in [0, 1]),
    weighted 0.2 next to DiceBCE.

    Raises:
        ValueError: the reconstruction and the image differ in shape.
    """

    def forward(self, student, teacher, batch, epoch):
        image = batch["image"]
        if student.shape != image.shape:
            raise ValueError(f"reconstruction {tuple(student.shape)} and input image {tuple(image.shape)} differ")
        return F.mse_loss(student, image.to(student.dtype))
