"""P-CD: paced-curriculum self-distillation (Islam et al., IJCARS 2023; docs/sources.md section 5.3).

A student UNet learns from ground truth (per-pixel cross-entropy) and from a same-architecture teacher's
logits (per-pixel KL at temperature T). Pixels are weighted by how *easy* they are for the teacher: the
teacher's temperature-scaled confidence (``softmax(z_t / T_s)``, T_s = 6.26, a fixed calibration
temperature) is compared with a threshold ``1 - mu``, and the pace ``mu`` grows with the epoch, so hard
pixels enter the loss progressively.

Per-pixel terms (``(B, H, W)``, averaged over every pixel of the batch at the end):

* ``CE = -log softmax(s)_y`` (no reduction);
* ``KL = T^2 * (1/C) sum_c p_t,c (log p_t,c - log_softmax(s/T)_c)`` with ``p_t = softmax(t/T)``, T = 4: the
  KL summed over classes then divided by C, i.e. the **mean over the class dim** as the code does (half
  the usual KL for two classes).

Weights (``(B, H, W)``):

* :func:`curriculum_weights` (CPL, ``get_weights``): 1 where the teacher's probability of the GT class is
  >= ``1 - mu``, else ``min(1, mu + 0.1)``;
* :func:`self_paced_weights_per_pixel` (TPL, ``get_weights_spl_per_px``): 1 where some class has
  confidence >= ``1 - mu`` (max probability), else 0; GT not used;
* :func:`self_paced_weights_per_image` (``get_weights_spl_per_img``): the same test on the class-mean
  confidence. The class mean of a softmax is always 1/C, so these weights are all 1 once
  ``mu >= 1 - 1/C`` and all 0 before: a faithful copy of a degenerate test.

Loss types (``alpha`` = 0.3; ``w`` = CPL weights, ``w_spl`` = TPL per-pixel, ``w_img`` = per-image):

==========================================  =================================================
``kd``                                      ``mean[a KL + (1-a) CE]``
``ce_weighted`` (code default)              ``mean[a KL + (1-a) w CE]``
``kld_weighted``                            ``mean[a w KL + (1-a) CE]``
``both_weighted``                           ``mean[w (a KL + (1-a) CE)]``
``both_weighted_spl_per_px``                ``mean[w_spl (a KL + (1-a) CE)]``
``both_weighted_spl_per_img``               ``mean[w_img (a KL + (1-a) CE)]`` (in the code only, docs/sources.md 5.3)
``both_weighted_spl_per_px_no_alpha``       ``mean[w_spl (KL + CE)]``
``..._no_alpha_no_weights``                 ``mean[KL + CE]``
``ce_aliter_weighted``                      ``mean[(1 - w a) CE + w a KL]``
``both_weighted_cpl_spl_per_px`` (ours)     ``mean[w w_spl (a KL + (1-a) CE)]``
==========================================  =================================================

The last one is the re-implementers' reading of the paper's "CPL + TPL" (both curricula at once, as the
product of the two weights, sharing one ``mu``); the shipped code has no such loss.

Pacing (``epoch`` is the engine's 0-based index e):

* ``schedule="curriculum"`` (``core/ckd.py``): :func:`curriculum_mu`, mu0 0.2, +0.1 after every epoch
  with ``epoch % 5 == 0``, i.e. e = 0 -> 0.2, e = 1..5 -> 0.3, e = 6..10 -> 0.4, ..., capped at 1.
* ``schedule="self_paced"`` (``core/ckd_spl.py``): :func:`self_paced_mu`, mu0 0.39, +0.183 every 5
  epochs: e = 0..4 -> 0.39, 5..9 -> 0.573, 10..14 -> 0.756, 15..19 -> 0.939, >= 20 -> 1.0. With two
  classes the max probability is >= 0.5, so from mu >= 0.5 (e >= 5) every TPL weight is 1.

Paper variants vs the shipped code (config/experiments/pcd.yaml holds both readings as models): the training scripts always call the loss named
by ``--ckd-loss-type`` (default ``ce_weighted``), so the README's "KD" runs ``ce_weighted`` (the same
loss as "KD + CPL"), "KD + TPL" runs ``..._no_alpha_no_weights`` (plain KL + CE, mu only logged) and
"CPL + TPL" runs ``both_weighted_spl_per_px_no_alpha``. The paper reading follows the labels; the
code reading follows the scripts. P-CD's label (annotation-boundary) uncertainty is not in the code
at all; ``label_uncertainty=True`` adds it with SVLS (:mod:`medkd.uncertainty`) and a fusion rule of our
choosing (:func:`medkd.uncertainty.fused_difficulty`); the "P-CD" entry of the paper reading uses it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from medkd.distill import LOSSES, LossTerm
from medkd.uncertainty import FUSION_RULES, class_probabilities, fused_difficulty, label_uncertainty

#: Fixed temperature that turns the teacher's logits into a calibrated confidence (``--confidence-ts``).
PCD_CONFIDENCE_TEMPERATURE = 6.26
#: Indexing conventions of :func:`curriculum_mu`.
CURRICULUM_INDEXING = ("code", "blocks")
#: Pacing schedules of :class:`PacedKD`.
SCHEDULES = ("curriculum", "self_paced")


# --- pacing -----------------------------------------------------------------------------------------------


def _check_pacing(epoch: int, every: int) -> None:
    if int(epoch) != epoch or epoch < 0:
        raise ValueError(f"epoch must be a 0-based non-negative integer, got {epoch!r}")
    if int(every) != every or every < 1:
        raise ValueError(f"the update period 'every' must be a positive integer, got {every!r}")


def _paced(mu0: float, step: float, n_updates: int) -> float:
    """``n_updates`` times ``mu = min(mu + step, 1)`` (the scripts' own loop, same float rounding), then
    clamped to ``[0, 1]``."""
    mu = float(mu0)
    for _ in range(n_updates):
        mu = min(mu + step, 1.0)
    return min(max(mu, 0.0), 1.0)


def curriculum_mu(epoch: int, mu0: float = 0.2, step: float = 0.1, every: int = 5, indexing: str = "code") -> float:
    """The CPL pace ``mu`` used during 0-based epoch ``epoch``.

    ``indexing="code"`` (default; ``core/ckd.py``): the script loops ``epoch`` over ``0..N-1`` and, *after*
    each epoch with ``epoch % every == 0``, adds ``step`` (capped at 1). Epoch 0 already triggers it, so
    with the defaults e = 0 -> 0.2, e = 1..5 -> 0.3, e = 6..10 -> 0.4, ..., e = 36..40 -> 1.0 (cap);
    in general ``mu(e) = mu0 + step * ceil(e / every)``. (The script hard-codes ``every = 5``, ``step = 0.1``.)

    ``indexing="blocks"``: the update comes after every completed block of ``every`` epochs (as the
    self-paced script does), ``mu(e) = mu0 + step * floor(e / every)``: e = 0..4 -> 0.2, 5..9 -> 0.3, ...

    The value is clamped to ``[0, 1]`` (the script only caps at 1; a negative ``step`` is allowed).

    Args:
        epoch: 0-based epoch index, as the engine passes it.
        mu0: initial pace (``--initial-mu``).
        step: increment per update.
        every: update period in epochs.
        indexing: ``"code"`` or ``"blocks"``.

    Returns:
        mu in ``[0, 1]``.

    Raises:
        ValueError: negative or non-integer epoch, ``every < 1``, unknown ``indexing``.
    """
    _check_pacing(epoch, every)
    if indexing == "code":
        n_updates = -(-int(epoch) // int(every))  # ceil(e / every): updates after epochs 0, every, 2*every, ... < e
    elif indexing == "blocks":
        n_updates = int(epoch) // int(every)
    else:
        raise ValueError(f"unknown indexing {indexing!r}; valid: {', '.join(CURRICULUM_INDEXING)}")
    return _paced(mu0, step, n_updates)


def self_paced_mu(epoch: int, mu0: float = 0.39, delta: float = 0.183, every: int = 5) -> float:
    """The TPL (self-paced) pace ``mu`` used during 0-based epoch ``epoch`` (``core/ckd_spl.py``).

    The script counts epochs from 1 and adds ``delta`` after every epoch that is a multiple of ``every``
    (capped at 1). In 0-based terms ``mu(e) = mu0 + delta * floor(e / every)``, clamped to ``[0, 1]``. With
    the README values (0.39, 0.183, 5): e = 0..4 -> 0.39, 5..9 -> 0.573, 10..14 -> 0.756, 15..19 -> 0.939,
    e >= 20 -> 1.0. A negative ``delta`` is an anti-curriculum (the sweep in ``train_model.sh`` uses
    +-0.183, +-0.55, ...): with (0.39, -0.183) e = 0..4 -> 0.39, 5..9 -> 0.207, 10..14 -> 0.024, then 0
    (the script would go negative; every weight is 0 either way).

    Args:
        epoch: 0-based epoch index.
        mu0: initial pace (``--initial-mu``).
        delta: change per update (``--mu-update``), may be negative.
        every: update period in epochs (``--mu-update-every``).

    Returns:
        mu in ``[0, 1]``.

    Raises:
        ValueError: negative or non-integer epoch, ``every < 1``.
    """
    _check_pacing(epoch, every)
    return _paced(mu0, delta, int(epoch) // int(every))


# --- per-pixel weights --------------------------------------------------------------------------------------


def _teacher_confidence(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if teacher_logits.dim() != 4 or teacher_logits.shape[1] < 2:
        raise ValueError(f"teacher logits must be (B, C>=2, H, W), got shape {tuple(teacher_logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"confidence temperature must be positive, got {temperature}")
    return class_probabilities(teacher_logits.detach(), temperature)


def _fuse(confidence: torch.Tensor, uncertainty: torch.Tensor | None, fusion_rule: str) -> torch.Tensor:
    """Confidence after fusing the label uncertainty (``1 - fused_difficulty``); unchanged without it."""
    if uncertainty is None:
        return confidence
    return 1.0 - fused_difficulty(confidence, uncertainty, fusion_rule)


def curriculum_weights(
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    mu: float,
    temperature: float = PCD_CONFIDENCE_TEMPERATURE,
    label_uncertainty: torch.Tensor | None = None,
    fusion_rule: str = "product",
) -> torch.Tensor:
    """CPL weights (P-CD ``get_weights``): 1 for pixels the teacher finds easy, ``min(1, mu + 0.1)`` else.

    Easy means the teacher's probability of the ground-truth class at temperature ``temperature``,
    ``softmax(z_t / T_s)_y``, is >= ``1 - mu``. (The code tests classes 0 and 1 only; taking the GT class
    by index is the same for two classes and extends it to C classes.) With ``label_uncertainty`` the
    probability is first fused with it (:func:`medkd.uncertainty.fused_difficulty`, ``fusion_rule``).

    Args:
        teacher_logits: ``(B, C, H, W)``.
        target: GT class indices ``(B, H, W)`` int64.
        mu: pace in ``[0, 1]``.
        temperature: confidence temperature T_s (6.26 in P-CD).
        label_uncertainty: optional ``(B, H, W)`` SVLS label uncertainty.
        fusion_rule: rule of :func:`medkd.uncertainty.fused_difficulty`.

    Returns:
        Float32 weights ``(B, H, W)`` in ``{min(1, mu + 0.1), 1}``.

    Raises:
        ValueError: shapes that do not match.
    """
    p = _teacher_confidence(teacher_logits, temperature)
    if target.shape != (p.shape[0],) + tuple(p.shape[2:]):
        raise ValueError(f"target {tuple(target.shape)} does not match teacher logits {tuple(p.shape)}")
    p_gt = p.gather(1, target.long().unsqueeze(1)).squeeze(1)
    p_gt = _fuse(p_gt, label_uncertainty, fusion_rule)
    low = max(0.0, min(1.0, mu + 0.1))
    return torch.where(p_gt >= 1 - mu, torch.ones_like(p_gt), torch.full_like(p_gt, low))


def self_paced_weights_per_pixel(
    teacher_logits: torch.Tensor,
    mu: float,
    temperature: float = PCD_CONFIDENCE_TEMPERATURE,
    label_uncertainty: torch.Tensor | None = None,
    fusion_rule: str = "product",
) -> torch.Tensor:
    """TPL weights (P-CD ``get_weights_spl_per_px``): 1 where ``1 - p_c <= mu`` for some class c, else 0.

    ``p = softmax(z_t / T_s)``; the test on any class is the test on the maximum probability. The GT is
    not used. For two classes ``max p >= 0.5``, so every weight is 1 once ``mu >= 0.5``. With
    ``label_uncertainty`` the maximum probability is fused with it first.

    Args:
        teacher_logits: ``(B, C, H, W)``.
        mu: pace.
        temperature: confidence temperature T_s.
        label_uncertainty: optional ``(B, H, W)``.
        fusion_rule: rule of :func:`medkd.uncertainty.fused_difficulty`.

    Returns:
        Float32 weights ``(B, H, W)`` in ``{0, 1}``.
    """
    conf = _fuse(_teacher_confidence(teacher_logits, temperature).max(dim=1).values, label_uncertainty, fusion_rule)
    return (1 - conf <= mu).float()


def self_paced_weights_per_image(
    teacher_logits: torch.Tensor,
    mu: float,
    temperature: float = PCD_CONFIDENCE_TEMPERATURE,
    label_uncertainty: torch.Tensor | None = None,
    fusion_rule: str = "product",
) -> torch.Tensor:
    """P-CD ``get_weights_spl_per_img``: 1 where ``1 - mean_c p_c <= mu``, else 0, per pixel.

    Despite its name the code applies the test per pixel on the class-mean confidence. Since the class
    mean of a softmax is ``1/C`` everywhere, without label uncertainty the result is all ones when
    ``1 - 1/C <= mu`` and all zeros otherwise (kept as shipped).

    Args:
        teacher_logits: ``(B, C, H, W)``.
        mu: pace.
        temperature: confidence temperature T_s.
        label_uncertainty: optional ``(B, H, W)``.
        fusion_rule: rule of :func:`medkd.uncertainty.fused_difficulty`.

    Returns:
        Float32 weights ``(B, H, W)`` in ``{0, 1}``.
    """
    conf = _fuse(_teacher_confidence(teacher_logits, temperature).mean(dim=1), label_uncertainty, fusion_rule)
    return (1 - conf <= mu).float()


# --- per-pixel loss terms -------------------------------------------------------------------------------------


def pixel_cross_entropy(student_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy ``-log softmax(s)_y``, ``(B, H, W)`` (no reduction)."""
    return F.cross_entropy(student_logits.float(), target.long(), reduction="none")


def pixel_kl_class_mean(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-pixel ``T^2 * mean_c p_t,c (log p_t,c - log q_s,c)`` with ``p_t = softmax(t/T)``,
    ``q_s = softmax(s/T)``: P-CD's KL, averaged (not summed) over the C classes. ``(B, H, W)``."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)
    p_t = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
    return F.kl_div(log_q, p_t, reduction="none").mean(dim=1) * temperature**2


# loss_type -> (weights it needs, per-pixel combination f(ce, kl, w, alpha)); w is the product of the weights.
_Formula = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
_LOSS_TYPES: dict[str, tuple[tuple[str, ...], _Formula]] = {
    "kd": ((), lambda ce, kl, w, a: a * kl + (1 - a) * ce),
    "ce_weighted": (("cpl",), lambda ce, kl, w, a: a * kl + (1 - a) * w * ce),
    "kld_weighted": (("cpl",), lambda ce, kl, w, a: a * w * kl + (1 - a) * ce),
    "both_weighted": (("cpl",), lambda ce, kl, w, a: w * (a * kl + (1 - a) * ce)),
    "both_weighted_spl_per_px": (("spl_px",), lambda ce, kl, w, a: w * (a * kl + (1 - a) * ce)),
    "both_weighted_spl_per_img": (("spl_img",), lambda ce, kl, w, a: w * (a * kl + (1 - a) * ce)),
    "both_weighted_spl_per_px_no_alpha": (("spl_px",), lambda ce, kl, w, a: w * (kl + ce)),
    "both_weighted_spl_per_px_no_alpha_no_weights": ((), lambda ce, kl, w, a: kl + ce),
    "ce_aliter_weighted": (("cpl",), lambda ce, kl, w, a: (1 - w * a) * ce + w * a * kl),
    "both_weighted_cpl_spl_per_px": (("cpl", "spl_px"), lambda ce, kl, w, a: w * (a * kl + (1 - a) * ce)),
}
#: Every ``loss_type`` accepted by :class:`PacedKD`.
LOSS_TYPES = tuple(_LOSS_TYPES)


@LOSSES.register("paced_kd")
class PacedKD(LossTerm):
    """P-CD's curriculum/self-paced KD loss (``CurriculumKDLoss``), one class for every loss type.

    ``student``: student logits ``(B, C, H, W)``; ``teacher``: teacher logits of the same shape (cached
    logits); ``batch["target"]``: ``(B, H, W)`` int64; ``epoch``: 0-based, gives ``mu`` through the schedule.

    Args:
        loss_type: one of :data:`LOSS_TYPES` (module docstring has the formulas).
        schedule: ``"curriculum"`` (:func:`curriculum_mu`) or ``"self_paced"`` (:func:`self_paced_mu`).
        mu0: initial pace; default 0.2 (curriculum) or 0.39 (self-paced).
        mu_step: change per update; default 0.1 (curriculum) or 0.183 (self-paced); negative =
            anti-curriculum.
        mu_every: update period in epochs (5).
        mu_indexing: curriculum only, ``"code"`` (default) or ``"blocks"`` (see :func:`curriculum_mu`).
        temperature: KD temperature T (4).
        alpha: KL weight (0.3).
        confidence_temperature: T_s of the teacher confidence (6.26).
        label_uncertainty: fuse the SVLS label uncertainty of ``batch["target"]`` into the confidence
            (re-implementers' addition; P-CD's code has none).
        fusion_rule: :func:`medkd.uncertainty.fused_difficulty` rule (``"product"``).
        svls_sigma: SVLS Gaussian sigma (1.0, 3x3 kernel).

    Raises:
        ValueError: unknown loss type, schedule, indexing or fusion rule; non-positive temperatures;
            alpha outside [0, 1]; at call time, mismatched or non-4-D logits.
    """

    needs_teacher = True

    def __init__(
        self,
        loss_type: str = "ce_weighted",
        schedule: str = "curriculum",
        mu0: float | None = None,
        mu_step: float | None = None,
        mu_every: int = 5,
        mu_indexing: str = "code",
        temperature: float = 4.0,
        alpha: float = 0.3,
        confidence_temperature: float = PCD_CONFIDENCE_TEMPERATURE,
        label_uncertainty: bool = False,
        fusion_rule: str = "product",
        svls_sigma: float = 1.0,
    ):
        super().__init__()
        if loss_type not in _LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
        if mu_indexing not in CURRICULUM_INDEXING:
            raise ValueError(f"unknown mu_indexing {mu_indexing!r}; valid: {', '.join(CURRICULUM_INDEXING)}")
        if schedule == "self_paced" and mu_indexing != "code":
            raise ValueError("mu_indexing applies to the curriculum schedule only")
        if fusion_rule not in FUSION_RULES:
            raise ValueError(f"unknown fusion_rule {fusion_rule!r}; valid: {', '.join(FUSION_RULES)}")
        if temperature <= 0 or confidence_temperature <= 0:
            raise ValueError(f"temperatures must be positive, got {temperature} and {confidence_temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if int(mu_every) != mu_every or mu_every < 1:
            raise ValueError(f"mu_every must be a positive integer, got {mu_every!r}")
        defaults = {"curriculum": (0.2, 0.1), "self_paced": (0.39, 0.183)}[schedule]
        self.loss_type = loss_type
        self.schedule = schedule
        self.mu0 = float(defaults[0] if mu0 is None else mu0)
        self.mu_step = float(defaults[1] if mu_step is None else mu_step)
        self.mu_every = int(mu_every)
        self.mu_indexing = mu_indexing
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.confidence_temperature = float(confidence_temperature)
        self.label_uncertainty = bool(label_uncertainty)
        self.fusion_rule = fusion_rule
        self.svls_sigma = float(svls_sigma)

    def current_mu(self, epoch: int) -> float:
        """The pace ``mu`` of 0-based ``epoch`` under this loss's schedule."""
        if self.schedule == "curriculum":
            return curriculum_mu(epoch, self.mu0, self.mu_step, self.mu_every, self.mu_indexing)
        return self_paced_mu(epoch, self.mu0, self.mu_step, self.mu_every)

    def weights(self, teacher: torch.Tensor, target: torch.Tensor, epoch: int) -> torch.Tensor | None:
        """The product of the weights ``loss_type`` needs at ``epoch``, ``(B, H, W)``, or None if none."""
        needed = _LOSS_TYPES[self.loss_type][0]
        if not needed:
            return None
        mu = self.current_mu(epoch)
        unc = label_uncertainty(target, teacher.shape[1], self.svls_sigma) if self.label_uncertainty else None
        kw = {"temperature": self.confidence_temperature, "label_uncertainty": unc, "fusion_rule": self.fusion_rule}
        w = None
        for name in needed:
            if name == "cpl":
                wi = curriculum_weights(teacher, target, mu, **kw)
            elif name == "spl_px":
                wi = self_paced_weights_per_pixel(teacher, mu, **kw)
            else:
                wi = self_paced_weights_per_image(teacher, mu, **kw)
            w = wi if w is None else w * wi
        return w

    def forward(self, student, teacher, batch, epoch):
        if not isinstance(student, torch.Tensor) or not isinstance(teacher, torch.Tensor):
            raise ValueError("paced_kd takes one student tap and one teacher tap (tensors), not lists")
        if student.dim() != 4 or student.shape[1] < 2:
            raise ValueError(f"student logits must be (B, C>=2, H, W), got shape {tuple(student.shape)}")
        if student.shape != teacher.shape:
            raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
        target = batch["target"]
        teacher = teacher.detach()
        ce = pixel_cross_entropy(student, target)
        kl = pixel_kl_class_mean(student, teacher, self.temperature)
        w = self.weights(teacher, target, epoch)
        formula = _LOSS_TYPES[self.loss_type][1]
        return formula(ce, kl, w, self.alpha).mean()

    def extra_repr(self) -> str:
        return (
            f"loss_type={self.loss_type}, schedule={self.schedule}, mu0={self.mu0}, mu_step={self.mu_step}, "
            f"mu_every={self.mu_every}, T={self.temperature}, alpha={self.alpha}, T_s={self.confidence_temperature}, "
            f"label_uncertainty={self.label_uncertainty}"
        )


__all__ = [
    "CURRICULUM_INDEXING",
    "LOSS_TYPES",
    "PCD_CONFIDENCE_TEMPERATURE",
    "PacedKD",
    "SCHEDULES",
    "curriculum_mu",
    "curriculum_weights",
    "pixel_cross_entropy",
    "pixel_kl_class_mean",
    "self_paced_mu",
    "self_paced_weights_per_image",
    "self_paced_weights_per_pixel",
]
