"""The training objective: the weighted sum of a model's declared loss terms, with their taps.

Each term (:class:`medkd.spec.LossSpec`) names a registered loss, its weight and kwargs, the student
tap it reads and, for distillation terms, the teacher(s) and teacher tap(s). Taps: ``out`` (the main
prediction), ``out:<key>`` (another head), a module path (forward hook, :class:`TapRecorder`) or
``cache:<key>`` (the teacher cache attached to the batch). A term with weight 0 is computed and logged
but adds nothing (e.g. KD-MRI's shipped "imitation off").
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from medkd.distill import LossContext, build_loss
from medkd.distill.taps import TapRecorder
from medkd.spec import LossSpec


class Objective(nn.Module):
    """The weighted sum of ``terms``. ``teacher_summaries`` (name -> summary.json) reach every term's
    ``setup`` hook.

    Raises:
        ValueError: a distillation loss configured without a teacher.
    """

    def __init__(self, terms: tuple[LossSpec, ...], teacher_summaries: Mapping[str, dict] | None = None):
        super().__init__()
        self.specs = tuple(terms)
        self.terms = nn.ModuleList(build_loss(t.loss, **dict(t.kwargs)) for t in self.specs)
        for spec, term in zip(self.specs, self.terms):
            if term.needs_teacher and spec.teacher is None:
                raise ValueError(f"loss {spec.loss!r} needs a teacher: set `teacher` in its config entry")
            term.setup(LossContext(term=spec, teacher_summaries=dict(teacher_summaries or {})))

    def student_taps(self) -> list[str]:
        return [tap for t in self.specs for tap in t.student_taps]

    def forward(self, output, recorder: TapRecorder, teacher_outputs: dict, batch: dict, epoch: int):
        """Returns (total loss, {"<index>:<loss name>": detached value}).

        ``teacher_outputs``: online teacher name -> (its TapRecorder, its output of this batch).
        """
        total, parts = 0.0, {}
        for i, (spec, term) in enumerate(zip(self.specs, self.terms)):
            student = recorder.get(spec.student_tap, output)
            teacher = None
            if spec.teacher is not None:
                values = [teacher_tap(teacher_outputs, batch, n, spec.teacher_tap) for n in spec.teachers]
                teacher = values if isinstance(spec.teacher, tuple) else values[0]
            value = term(student, teacher, batch, epoch)
            parts[f"{i}:{spec.loss}"] = value.detach()
            if spec.weight != 0:
                total = total + spec.weight * value
        if not torch.is_tensor(total):
            total = torch.zeros((), device=batch["image"].device)
        return total, parts


def teacher_tap(teacher_outputs: dict, batch: dict, name: str, tap):
    """Resolve one teacher tap: ``cache:<key>`` from the batch, anything else from the online teacher."""
    if isinstance(tap, (list, tuple)):
        return [teacher_tap(teacher_outputs, batch, name, t) for t in tap]
    if tap.startswith("cache:"):
        return batch["cache"][name][tap[6:]]
    recorder, output = teacher_outputs[name]
    return recorder.get(tap, output)
