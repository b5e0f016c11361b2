"""Taps: read a model's output or intermediate features by name, with forward hooks.

A tap is a string:

* ``"out"``: the model's main prediction (the tensor it returns, or the ``"out"`` entry of its dict);
* ``"out:<key>"``: another entry of the returned dict (e.g. ``"out:recon"``);
* ``"cache:<key>"``: a teacher output stored by the cache stage (resolved by the engine, not here);
* anything else: a module path from ``model.named_modules()``, whose forward output is recorded.

A list of taps yields a list of tensors in the same order (e.g. one feature map per DC-CNN cascade).
"""

from __future__ import annotations

from typing import Iterable

import torch.nn as nn


def main_output(output):
    """The main prediction of a model's return value (tensor, or dict with ``"out"``)."""
    if isinstance(output, dict):
        return output["out"]
    return output


def is_module_tap(tap: str) -> bool:
    return tap != "out" and not tap.startswith("out:") and not tap.startswith("cache:")


class TapRecorder:
    """Registers forward hooks on the module paths among ``taps`` and keeps their latest outputs.

    Raises:
        KeyError: a module path that the model does not have (the message lists close names).
    """

    def __init__(self, model: nn.Module, taps: Iterable[str]):
        self.model = model
        self.features: dict[str, object] = {}
        self._handles = []
        modules = dict(model.named_modules())
        for tap in sorted({t for t in taps if is_module_tap(t)}):
            if tap not in modules:
                hint = [n for n in modules if tap.split(".")[-1] in n][:8]
                from medkd.registry import UnknownNameError  # an InputError and a KeyError: one line, exit 2

                raise UnknownNameError(f"tap {tap!r}: {type(model).__name__} has no module {tap!r} (similar: {hint}); "
                                       "fix the loss's student_tap/teacher_tap in the config")
            self._handles.append(modules[tap].register_forward_hook(self._hook(tap)))

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.features[name] = output

        return hook

    def get(self, tap, output):
        """Resolve ``tap`` (a string or a list) against the latest forward ``output``."""
        if isinstance(tap, (list, tuple)):
            return [self.get(t, output) for t in tap]
        if tap == "out":
            return main_output(output)
        if tap.startswith("out:"):
            key = tap[4:]
            if not isinstance(output, dict) or key not in output:
                raise KeyError(f"tap {tap!r}: the model output has no entry {key!r}")
            return output[key]
        if tap not in self.features:
            raise KeyError(f"tap {tap!r} was not recorded in the last forward pass")
        return self.features[tap]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
