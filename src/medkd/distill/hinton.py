"""Hinton et al. (2015) soft-label distillation.

``L_KD = T^2 * KL( softmax(z_t / T) || softmax(z_s / T) )``, the KL summed over classes and averaged over
pixels and samples. The ``T^2`` factor keeps the gradient scale of the soft term comparable to the hard
term when T changes. Used with a task loss in the config, e.g. ``CE + alpha * L_KD`` as the BraTS seed
describes (cross-entropy plus KL to the teacher's soft labels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medkd.distill import LOSSES, LossTerm


def _two_class(logits: torch.Tensor) -> torch.Tensor:
    """A single binary logit ``z`` as the two-class logits ``[0, z]`` (softmax of these = sigmoid)."""
    return torch.cat([torch.zeros_like(logits), logits], dim=1) if logits.shape[1] == 1 else logits


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * mean_pixels sum_c p_t log(p_t / p_s)`` for logits ``(B, C, H, W)`` (or ``(B, C)``).

    Single-logit (binary, C = 1) inputs are treated as two classes.
    """
    s = _two_class(student_logits.float()) / temperature
    t = _two_class(teacher_logits.float()) / temperature
    if s.shape != t.shape:
        raise ValueError(f"student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ")
    log_ps = F.log_softmax(s, dim=1)
    log_pt = F.log_softmax(t, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
    return kl.mean() * temperature**2


@LOSSES.register("kl_div")
class HintonKL(LossTerm):
    """Soft-label KL at temperature ``temperature`` (default 4), times T^2. Teacher logits are detached."""

    needs_teacher = True

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, student, teacher, batch, epoch):
        return soft_kl(student, teacher.detach(), self.temperature)
