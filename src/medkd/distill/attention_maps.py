"""Normalised spatial-attention similarity (TeachFormer's attention-map distillation, our reading).

TeachFormer (Hossain et al., Sci Rep 2025) distils a *coarse* attention map from the deepest encoder
stage E_n and a *fine* map from the decoder stage D_{n-1} with an "L1/L2-normalised attention-similarity
loss". The paper's code is not public; the formula here is ours, built on the activation-based spatial
attention of Zagoruyko & Komodakis (2017):

* spatial attention of a feature map F ``(B, C, H, W)``: ``A(F) = reduce_c |F_c|^power`` with
  ``reduction="mean"`` (default) or ``"sum"``, giving ``(B, H, W)``; ``power = 2`` by default;
* the teacher map is resized to the student map's ``(H, W)`` (bilinear, ``align_corners=False``), so
  teachers and students with different resolutions can be paired;
* each map is flattened per sample to ``(B, H*W)`` and normalised to unit ``norm`` (``"l2"`` default, or
  ``"l1"``; an all-zero map stays zero);
* loss = mean over samples of ``|| A_s - A_t ||_distance_p`` (``distance_p = 2`` default: the Euclidean
  distance, not squared).

Several (student, teacher) map pairs (e.g. coarse and fine) can be passed as equal-length lists: the loss
is then the mean over pairs. One term compares with one teacher; for several teachers the config lists
several terms (one per teacher and map pair). Teacher maps are detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medkd.distill import LOSSES, LossTerm

REDUCTIONS = ("mean", "sum")
NORMS = {"l1": 1.0, "l2": 2.0}


def spatial_attention(features: torch.Tensor, power: float = 2.0, reduction: str = "mean") -> torch.Tensor:
    """``reduce_c |F|^power`` of a feature map.

    Args:
        features: ``(B, C, H, W)``.
        power: exponent applied to ``|F|`` (> 0).
        reduction: ``"mean"`` or ``"sum"`` over channels.

    Returns:
        ``(B, H, W)`` float tensor.

    Raises:
        ValueError: not 4-D, non-positive power or unknown reduction.
    """
    if features.dim() != 4:
        raise ValueError(f"attention maps need (B, C, H, W) features, got shape {tuple(features.shape)}")
    if power <= 0:
        raise ValueError(f"power must be positive, got {power}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    energy = features.float().abs().pow(power)
    return energy.mean(dim=1) if reduction == "mean" else energy.sum(dim=1)


def normalised_attention(features: torch.Tensor, size: tuple[int, int] | None = None, power: float = 2.0,
                         reduction: str = "mean", norm: str = "l2") -> torch.Tensor:
    """Flattened, normalised spatial attention ``(B, H*W)``, optionally resized to ``size`` first.

    Raises:
        ValueError: as :func:`spatial_attention`, or an unknown ``norm``.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
    att = spatial_attention(features, power, reduction)
    if size is not None and tuple(att.shape[-2:]) != tuple(size):
        att = F.interpolate(att.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
    return F.normalize(att.flatten(1), p=NORMS[norm], dim=1)


def attention_similarity(student: torch.Tensor, teacher: torch.Tensor, power: float = 2.0,
                         reduction: str = "mean", norm: str = "l2", distance_p: float = 2.0) -> torch.Tensor:
    """Mean over samples of ``||A(student) - A(teacher resized)||_distance_p`` for one map pair.

    Args:
        student: student features ``(B, C_s, H_s, W_s)``.
        teacher: teacher features ``(B, C_t, H_t, W_t)`` (channels and size may differ).
        power, reduction, norm: see :func:`normalised_attention`.
        distance_p: order of the distance between the normalised maps (> 0).

    Returns:
        Scalar tensor.

    Raises:
        ValueError: batch sizes differ, or an invalid option.
    """
    if distance_p <= 0:
        raise ValueError(f"distance_p must be positive, got {distance_p}")
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(f"attention maps need (B, C, H, W) features, got student {tuple(student.shape)} "
                         f"and teacher {tuple(teacher.shape)}")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"batch sizes differ: student {student.shape[0]}, teacher {teacher.shape[0]}")
    a_s = normalised_attention(student, None, power, reduction, norm)
    a_t = normalised_attention(teacher, tuple(student.shape[-2:]), power, reduction, norm)
    return (a_s - a_t).norm(p=distance_p, dim=1).mean()


@LOSSES.register("attention_similarity")
class AttentionSimilarity(LossTerm):
    """Normalised attention-similarity loss between student and teacher feature maps.

    Args:
        power: exponent of ``|F|`` in the attention map (default 2).
        reduction: ``"mean"`` (default) or ``"sum"`` over channels.
        norm: per-sample normalisation of the flattened map, ``"l2"`` (default) or ``"l1"``.
        distance_p: order of the distance between maps (default 2).

    ``student`` and ``teacher`` are tensors ``(B, C, H, W)`` or equal-length lists of them (pairs, e.g.
    coarse E_n and fine D_{n-1}); the loss is the mean over pairs.
    """

    needs_teacher = True

    def __init__(self, power: float = 2.0, reduction: str = "mean", norm: str = "l2", distance_p: float = 2.0):
        super().__init__()
        if power <= 0 or distance_p <= 0:
            raise ValueError(f"power and distance_p must be positive, got {power} and {distance_p}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
        self.power = float(power)
        self.reduction = reduction
        self.norm = norm
        self.distance_p = float(distance_p)

    def forward(self, student, teacher, batch, epoch):
        students = list(student) if isinstance(student, (list, tuple)) else [student]
        teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
        if len(students) != len(teachers):
            raise ValueError(f"{len(students)} student maps but {len(teachers)} teacher maps; pair them one to one")
        if not students:
            raise ValueError("no feature maps given")
        losses = [attention_similarity(s, t.detach(), self.power, self.reduction, self.norm, self.distance_p)
                  for s, t in zip(students, teachers)]
        return torch.stack(losses).mean()
