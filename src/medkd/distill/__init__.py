"""Loss registry: task losses and distillation terms share one interface.

A training objective is a weighted sum of terms declared in config (torchdistill's idea, without code in
YAML)::

    losses:
      - {loss: cross_entropy, weight: 1.0}
      - {loss: kl_div, weight: 0.9, kwargs: {temperature: 4},
         student_tap: out, teacher: teacher, teacher_tap: "cache:logits"}

Every registered loss is an ``nn.Module`` subclass of :class:`LossTerm` whose ``forward(student,
teacher, batch, epoch)`` returns a scalar tensor:

* ``student``: the student's tap (a tensor, or a list of tensors when ``student_tap`` is a list).
* ``teacher``: the teacher's tap (same shapes rule) or ``None`` for task losses.
* ``batch``: the batch dict (``image``, ``target`` and, for reconstruction, ``kspace``/``mask``).
* ``epoch``: 0-based epoch index (for paced curricula).

Losses with parameters (adapters) are optimised together with the student.

Before training, the engine calls every term's :meth:`LossTerm.setup` once with a :class:`LossContext`
(the term's own config entry and the ``summary.json`` of each of the model's teachers), so a loss that
needs facts about its teachers (e.g. multi-teacher weights from their validation Dice) resolves them
itself: the engine knows no loss by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch.nn as nn

from medkd.registry import Registry
from medkd.spec import LossSpec

LOSSES = Registry("loss", __name__)


class LossTerm(nn.Module):
    """Base class of every registered loss. ``needs_teacher`` says whether a teacher tap is required."""

    needs_teacher: bool = False

    def setup(self, context: "LossContext") -> None:
        """Called once before the first epoch (and on resume). Default: nothing to resolve."""

    def forward(self, student, teacher, batch, epoch: int):  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class LossContext:
    """What a loss may know before training: its config entry and its teachers' summaries
    (``summary.json`` of each teacher of the model, by name; empty for teachers and students alone)."""

    term: LossSpec
    teacher_summaries: Mapping[str, dict] = field(default_factory=dict)


def build_loss(name: str, **kwargs) -> LossTerm:
    """Instantiate the registered loss ``name`` with its config ``kwargs``."""
    return LOSSES.get(name)(**kwargs)
