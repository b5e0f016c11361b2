"""Multi-teacher soft-label distillation (TeachFormer: several teachers condensed into one student).

``L = sum_i w_i * T^2 * KL( softmax(z_i / T) || softmax(z_s / T) )``, with the KL summed over classes
and averaged over pixels and samples (as :func:`medkd.distill.hinton.soft_kl`), ``z_i`` the logits of
teacher i and ``w_i`` non-negative weights normalised to sum to one. TeachFormer's exact weighting is not
public; uniform weights, fixed weights, or weights from each teacher's validation Dice
(:func:`teacher_weights_from_scores`) are our options.

Binary single-logit tensors ``(B, 1, H, W)`` (student or teacher) are read as two-class probabilities
``[1 - p, p]`` with ``p = sigmoid(z / T)`` (logits ``[0, z]``), so a binary student can learn from
two-class teachers and vice versa.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from medkd.distill import LOSSES, LossTerm
from medkd.distill.hinton import soft_kl

SCORE_MODES = ("proportional", "softmax", "uniform")

log = logging.getLogger(__name__)


def normalise_weights(weights: Sequence[float] | str, n_teachers: int) -> list[float]:
    """Weights that sum to one.

    Args:
        weights: ``"uniform"`` or one non-negative number per teacher.
        n_teachers: number of teachers (>= 1).

    Returns:
        ``n_teachers`` floats summing to 1.

    Raises:
        ValueError: wrong length, a negative or non-finite weight, all weights zero, or an unknown string.
    """
    if n_teachers < 1:
        raise ValueError(f"need at least one teacher, got {n_teachers}")
    if isinstance(weights, str):
        if weights != "uniform":
            raise ValueError(f"weights must be 'uniform' or a list of numbers, got {weights!r}")
        return [1.0 / n_teachers] * n_teachers
    values = [float(w) for w in weights]
    if len(values) != n_teachers:
        raise ValueError(f"{len(values)} weights for {n_teachers} teachers")
    if any(not math.isfinite(w) or w < 0 for w in values):
        raise ValueError(f"teacher weights must be finite and non-negative, got {values}")
    total = sum(values)
    if total == 0:
        raise ValueError("teacher weights are all zero")
    return [w / total for w in values]


def teacher_weights_from_scores(scores: Sequence[float], mode: str = "proportional",
                                temperature: float = 1.0) -> list[float]:
    """Teacher weights from validation scores (e.g. each teacher's mean Dice in [0, 1]).

    Args:
        scores: one score per teacher, higher is better.
        mode: ``"proportional"``: ``w_i = s_i / sum s`` (scores must be non-negative; all zero: equal
            weights, with a warning, the limit for equal scores);
            ``"softmax"``: ``w_i = exp(s_i / temperature) / sum_j exp(s_j / temperature)``;
            ``"uniform"``: ``1 / n`` regardless of the scores.
        temperature: softmax temperature (> 0); small values favour the best teacher.

    Returns:
        Weights summing to 1, in the order of ``scores``.

    Raises:
        ValueError: empty or non-finite scores, unknown mode, non-positive temperature, or (proportional)
            negative scores.
    """
    values = [float(s) for s in scores]
    if not values:
        raise ValueError("no teacher scores given")
    if any(not math.isfinite(s) for s in values):
        raise ValueError(f"teacher scores must be finite, got {values}")
    if mode == "uniform":
        return normalise_weights("uniform", len(values))
    if mode == "proportional":
        if values and all(v == 0 for v in values):
            # every teacher scored 0 (e.g. a rehearsal's one-step teachers): none is better than another, the
            # limit of s_i / sum s for equal scores
            log.warning("every teacher scored 0 on validation: equal teacher weights")
            return normalise_weights("uniform", len(values))
        return normalise_weights(values, len(values))
    if mode == "softmax":
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        return torch.softmax(torch.tensor(values, dtype=torch.float64) / temperature, dim=0).tolist()
    raise ValueError(f"mode must be one of {SCORE_MODES}, got {mode!r}")


@LOSSES.register("multi_teacher_kl")
class MultiTeacherKL(LossTerm):
    """Weighted sum over teachers of the temperature-scaled soft-label KL.

    Args:
        weights: ``"uniform"`` (default), one non-negative weight per teacher (normalised to sum 1), or
            ``"val_score"``: weights from each teacher's validation Dice at its selected epoch
            (``summary.json`` ``best_val.val_dice``, resolved in :meth:`setup`; segmentation only). The
            Dice is used whatever metric the teacher selected on, so a teacher selected on a loss never
            gets a weight that grows with its loss.
        weight_mode: how scores become weights (:func:`teacher_weights_from_scores`): proportional
            (default), softmax or uniform. Only with ``weights: val_score``.
        temperature: softmax temperature T (> 0; default 4 as ``kl_div``); each KL is multiplied by T^2.

    ``teacher`` is a list of logits tensors ``(B, C, H, W)`` (one per teacher, each shaped like the
    student's, or single-logit binary); a bare tensor is treated as a one-teacher list. Teacher logits
    are detached.
    """

    needs_teacher = True

    def __init__(self, weights: Sequence[float] | str = "uniform", temperature: float = 4.0,
                 weight_mode: str | None = None):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if weight_mode is not None and weights != "val_score":
            raise ValueError("weight_mode applies only to weights: val_score")
        self.weight_mode = weight_mode or "proportional"
        if weights == "val_score":
            if self.weight_mode not in SCORE_MODES:
                raise ValueError(f"weight_mode must be one of {SCORE_MODES}, got {self.weight_mode!r}")
        elif isinstance(weights, str):
            normalise_weights(weights, 1)  # validates the string
        else:
            normalise_weights(weights, len(weights))  # validates the numbers
        self.weights = weights
        self.temperature = float(temperature)

    def setup(self, context) -> None:
        """Resolve ``weights: val_score`` from the teachers' summaries (in the term's teacher order)."""
        if self.weights != "val_score":
            return
        names = context.term.teachers
        scores = {n: context.teacher_summaries.get(n, {}).get("best_val", {}).get("val_dice") for n in names}
        missing = [n for n, s in scores.items() if s is None]
        if missing:
            raise ValueError(f"multi_teacher_kl: no validation Dice for teachers {missing} (segmentation only; "
                             f"their summary.json must be given)")
        self.weights = [float(w) for w in teacher_weights_from_scores([scores[n] for n in names], self.weight_mode)]

    def forward(self, student, teacher, batch, epoch):
        if self.weights == "val_score":
            raise RuntimeError("multi_teacher_kl with weights: val_score used before setup()")
        teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
        weights = normalise_weights(self.weights, len(teachers))
        total = student.new_zeros((), dtype=torch.float32)
        for w, t in zip(weights, teachers):
            if w > 0:
                total = total + w * soft_kl(student, t.detach(), self.temperature)
        return total
