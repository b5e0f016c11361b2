"""Name -> class registries with automatic discovery of the modules that fill them.

A registry maps a config name (``"unet"``, ``"kl_div"``) to a class. Modules register with the
``@REGISTRY.register("name")`` decorator; :meth:`Registry.discover` imports every module of a package so
that adding a model or a loss means adding one file, with no central list to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Dict, Type

from medkd.errors import InputError


class UnknownNameError(InputError, KeyError):
    """A config names a model or loss that no module registers."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry:
    """A named mapping of config names to classes.

    Args:
        kind: what the registry holds ("model", "loss"); used in error messages.
        package: dotted name of the package whose modules are imported on first lookup.
    """

    def __init__(self, kind: str, package: str):
        self.kind = kind
        self.package = package
        self._items: Dict[str, Type] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[Type], Type]:
        """Decorator: register ``cls`` under ``name``. A name may be registered only once."""

        def deco(cls: Type) -> Type:
            if name in self._items and self._items[name] is not cls:
                raise KeyError(f"{self.kind} {name!r} is registered twice ({self._items[name]} and {cls})")
            self._items[name] = cls
            cls.registry_name = name
            return cls

        return deco

    def discover(self) -> None:
        """Import every module of the package once, so their decorators run."""
        if self._discovered:
            return
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")
        self._discovered = True

    def get(self, name: str) -> Type:
        """The class registered as ``name``; an :class:`UnknownNameError` (a KeyError) lists the known names otherwise."""
        self.discover()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._items
