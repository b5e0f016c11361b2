"""H-DenseFormer's segmentation losses: the focal loss and focal + Dice, with deep supervision.

They follow the formulas of the H-DenseFormer authors' code (repository shijun18/H-DenseFormer at commit
db44a4b: ``loss/cross_entropy.py`` ``FocalLoss``, ``loss/dice_loss.py`` ``DiceLoss``, ``loss/combine_loss.py``
``FLPlusDice`` and ``DeepSuperloss``; docs/sources.md section 4.1). The code is ours.

With ``p = softmax(z)`` over the C classes and ``y`` the one-hot target, for every element (b, c, h, w):

* ``focal``: ``alpha_t * (1 - p_t)^gamma * BCE(p, y)``, where ``BCE = -log p_t``, ``p_t = p`` where ``y = 1``
  and ``1 - p`` where ``y = 0``, ``alpha_t = alpha y + (1 - alpha) (1 - y)`` (no weight when ``alpha < 0``);
  the logarithm is clamped at -100 as in PyTorch's ``binary_cross_entropy``. Reduced by ``mean`` over all
  B C H W elements or ``sum``. The authors' defaults alpha 1, gamma 2 make ``alpha_t = y``: only the
  true class's element counts, ``-(1 - p_true)^2 log p_true``, so the mean is that over the pixels divided
  by C.
* ``focal_dice`` (their ``FLPlusDice``): the focal loss with ``mean`` plus the soft Dice loss
  ``1 - (2 sum(p_c y_c) + s) / (sum(p_c) + sum(y_c) + s)`` computed per image (sums over H W), averaged
  over the batch and over the foreground classes (class 0 ignored), ``s = 1e-5``.

Deep supervision: the authors' ``DeepSuperloss`` applies the loss to each output ``i`` (full resolution,
S/2, S/4, S/8) with weight ``1 / 2^i`` against the target resized by nearest-neighbour interpolation. In a
medkd config that is one term per output, the weight in the term's ``weight`` and the output in its
``student_tap`` (``out``, ``out:aux_2``, ``out:aux_4``, ``out:aux_8`` of ``hdenseformer_2d``); these losses
resize ``batch["target"]`` to the size of the logits they are given (PyTorch's ``nearest``, which picks
pixel ``floor(i * H / h)``, as the authors' interpolation of the one-hot target does).

``student``: logits ``(B, C, h, w)`` with C >= 2; ``batch["target"]``: class indices ``(B, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medkd.distill import LOSSES, LossTerm

LOG_CLAMP = -100.0  # PyTorch's binary_cross_entropy clamps its logarithms here


def target_at(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target`` (B, H, W) class indices at the spatial size of ``logits`` (nearest neighbour).

    Raises:
        ValueError: logits that are not (B, C >= 2, h, w), or a batch size that differs.
    """
    if logits.ndim != 4 or logits.shape[1] < 2:
        raise ValueError(f"expected multi-class logits (B, C>=2, H, W), got {tuple(logits.shape)}")
    if target.shape[0] != logits.shape[0] or target.ndim != 3:
        raise ValueError(f"target {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    if tuple(target.shape[-2:]) == tuple(logits.shape[-2:]):
        return target.long()
    return F.interpolate(target[:, None].float(), size=tuple(logits.shape[-2:]), mode="nearest")[:, 0].long()


def log_prob_and_complement(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p_c`` and ``log(1 - p_c)`` of ``p = softmax(logits, dim=1)``, both computed stably
    (``log(1 - p_c)`` as the log-sum-exp of the other classes' log-probabilities)."""
    log_p = torch.log_softmax(logits.float(), dim=1)
    c = logits.shape[1]
    others = log_p.unsqueeze(1).expand(-1, c, -1, -1, -1)  # (B, c, j, H, W): row c holds every class j
    eye = torch.eye(c, dtype=torch.bool, device=logits.device).view(1, c, c, 1, 1)
    return log_p, torch.logsumexp(others.masked_fill(eye, float("-inf")), dim=2)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 1.0, gamma: float = 2.0,
               reduction: str = "mean") -> torch.Tensor:
    """The authors' softmax focal loss (module docstring); ``target``: (B, h, w) at the logits' size."""
    y = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(torch.float32)
    log_p, log_q = log_prob_and_complement(logits)
    log_pt = torch.where(y > 0, log_p, log_q)
    loss = -log_pt.clamp(min=LOG_CLAMP) * (1 - log_pt.exp()) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * y + (1 - alpha) * (1 - y))
    return loss.mean() if reduction == "mean" else loss.sum()


def per_image_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """The authors' ``DiceLoss`` with class 0 ignored: mean over foreground classes of the batch mean of
    ``1 - (2 sum(p y) + s) / (sum(p) + sum(y) + s)`` per image."""
    p = torch.softmax(logits.float(), dim=1)[:, 1:].flatten(2)
    y = F.one_hot(target, logits.shape[1]).movedim(-1, 1)[:, 1:].flatten(2).to(p.dtype)
    dice = (2 * (p * y).sum(-1) + smooth) / ((p + y).sum(-1) + smooth)  # (B, C - 1)
    return (1 - dice).mean(0).mean()


@LOSSES.register("focal")
class FocalLoss(LossTerm):
    """Softmax focal loss of the H-DenseFormer code (module docstring).

    Args:
        alpha: class-balance weight of the positive (one-hot 1) elements; < 0 disables it (authors: 1).
        gamma: focusing exponent (authors: 2).
        reduction: ``mean`` over all B C H W elements, or ``sum`` (what their ``config.py`` selects
            for two classes when it trains the focal loss alone).
    """

    def __init__(self, alpha: float = 1.0, gamma: float = 2.0, reduction: str = "mean"):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if gamma < 0:
            raise ValueError(f"gamma must be non-negative, got {gamma}")
        self.alpha, self.gamma, self.reduction = float(alpha), float(gamma), reduction

    def forward(self, student, teacher, batch, epoch):
        return focal_loss(student, target_at(student, batch["target"]), self.alpha, self.gamma, self.reduction)


@LOSSES.register("focal_dice")
class FocalDiceLoss(FocalLoss):
    """The authors' ``FLPlusDice``: mean focal loss + per-image foreground soft Dice loss (module docstring).

    Args:
        alpha, gamma: of the focal term (authors: 1, 2).
        smooth: Dice smoothing (authors: 1e-5).
    """

    def __init__(self, alpha: float = 1.0, gamma: float = 2.0, smooth: float = 1e-5):
        super().__init__(alpha, gamma, "mean")
        if smooth < 0:
            raise ValueError(f"smooth must be non-negative, got {smooth}")
        self.smooth = float(smooth)

    def forward(self, student, teacher, batch, epoch):
        target = target_at(student, batch["target"])
        return focal_loss(student, target, self.alpha, self.gamma, "mean") + per_image_dice_loss(
            student, target, self.smooth)
