"""Raw dataset formats -> slice store: one module per format, registered in :data:`FORMATS`.

Every module of this package (``msd``, ``brats_nifti``, ``acdc_nifti``, ...; the module name is the format
name used as ``convert.format`` in the config and ``converter`` in ``config/datasets.yaml``) defines

* a converter function ``convert_<x>(src_dir, out_path, *, <its options>, dataset=None, **slicing)`` that
  lists the cases of its layout and, per case, reads the volumes (:mod:`medkd.data.geometry`) and hands
  them to the shared driver (:mod:`medkd.data.convert`: normalisation, slicing, label checks, atomic write);
* a :class:`Format` subclass registered with ``@FORMATS.register("<format>")`` holding that function, a
  one-line ``summary`` and its ``options``: the JSON schema (``properties``) of the options it accepts
  besides the shared slicing options (:data:`medkd.data.convert.SLICE_OPTIONS_SCHEMA`).

The config schema (``workflow/schemas/config.schema.yaml``, the dataset ``convert`` object) allows each
option only with its format; it must equal :func:`convert_schema` (a unit test checks it; print the
generated fragment with ``python -m medkd.data.formats``). :func:`convert_dataset` dispatches a config's
``convert`` entry to its format and refuses options that format does not declare.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from medkd.data.convert import SLICE_OPTIONS_SCHEMA
from medkd.registry import Registry

FORMATS = Registry("convert format", __name__)
"""``convert.format`` name -> :class:`Format` subclass; filled by the modules of this package."""

DEFAULT_FORMAT = "msd"


class Format:
    """A raw dataset format (subclass it in a module of this package, register it on :data:`FORMATS`).

    Attributes:
        summary: a few words on the layout, listed in the schema's ``format`` description.
        options: JSON schema ``properties`` of the format's own options (names = the keyword arguments of
            ``convert``), without ``default`` (the converter's signature holds the defaults).
        convert: ``staticmethod(convert_<x>)``, called as ``convert(src_dir, out_path, dataset=..., **options)``.
    """

    registry_name: ClassVar[str]
    summary: ClassVar[str] = ""
    options: ClassVar[dict[str, dict]] = {}
    layout: ClassVar[tuple[str, ...]] = ()
    """Glob patterns (relative to the dataset folder) each of which must match at least one file: the cheap
    planning-time layout check of a ``kind: local`` dataset (:meth:`check_layout`)."""

    @classmethod
    def check_layout(cls, src_dir: str | Path) -> list[str]:
        """What is missing from ``src_dir`` for this format, one line per problem naming the exact path or
        pattern (empty: the layout looks right). Cheap: no volume is read."""
        import glob

        src_dir = Path(src_dir)
        problems = []
        for pattern in cls.layout:
            if not glob.glob(pattern, root_dir=src_dir):
                problems.append(f"{src_dir / pattern}   (no file matches; format {cls.registry_name!r} expects "
                                f"at least one)")
        return problems

    @staticmethod
    def convert(src_dir: str | Path, out_path: str | Path, *, dataset: str | None = None, **options: Any) -> None:
        raise NotImplementedError


def check_layout(fmt: str, src_dir: str | Path) -> list[str]:
    """Problems of ``src_dir`` as a dataset of format ``fmt`` (:meth:`Format.check_layout`); a missing folder
    is one problem naming it."""
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        return [f"{src_dir}   (folder {'is a file' if src_dir.exists() else 'does not exist'})"]
    return FORMATS.get(fmt).check_layout(src_dir)


def format_options() -> dict[str, tuple[str, ...]]:
    """Every registered format -> the option names it accepts (shared slicing options first)."""
    return {name: (*SLICE_OPTIONS_SCHEMA, *FORMATS.get(name).options) for name in FORMATS.names()}


def convert_schema() -> dict:
    """The JSON schema of a dataset's ``convert`` object, generated from the registered formats.

    The shared slicing options (with their defaults) and ``format`` are ``properties`` of the object; each
    format adds an ``if format == <name> then ...`` entry to ``allOf`` whose ``properties`` define its own
    options and whose ``propertyNames`` lists every option it accepts, so an option of another format is an
    error that names it (and the accepted ones) at the ``convert`` key. A missing ``format`` means ``msd``.
    """
    names = FORMATS.names()
    summaries = ", ".join(f"{n} ({FORMATS.get(n).summary})" for n in names)
    branches = []
    for name in names:
        condition: dict[str, Any] = {"properties": {"format": {"const": name}}}
        if name != DEFAULT_FORMAT:
            condition["required"] = ["format"]
        options = dict(FORMATS.get(name).options)
        accepted = ["format", *SLICE_OPTIONS_SCHEMA, *options]
        branches.append({"if": condition, "then": {"properties": options, "propertyNames": {"enum": accepted}}})
    return {
        "description": (
            "raw files -> slice store (medkd.data.formats.convert_dataset). The slicing options (size, normalise, "
            "window, axis, min_foreground, slice_step) mean the same for every format; every other option is declared by its "
            "format's module (medkd.data.formats.<format>) and allowed only with that format."
        ),
        "type": "object",
        "properties": {"format": {"description": summaries, "enum": names, "default": DEFAULT_FORMAT},
                       **SLICE_OPTIONS_SCHEMA},
        "allOf": branches,
    }


def convert_dataset(fmt: str, src_dir: str | Path, out_path: str | Path, options: Mapping[str, Any],
                    dataset: str | None = None) -> None:
    """Convert ``src_dir`` with the converter of ``fmt`` (a config's ``convert`` entry).

    Args:
        fmt: a registered format name (:data:`FORMATS`).
        src_dir: the raw dataset folder (``data/<name>``).
        out_path: the slice store to write.
        options: the config's ``convert`` mapping (its ``format`` key, if present, must equal ``fmt``).
        dataset: store name.

    Raises:
        ValueError: unknown format, or an option the format does not use (names both).
        Any error of the converter.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown convert format {fmt!r}; known: {FORMATS.names()}")
    opts = {k: v for k, v in options.items() if k != "format"}
    if options.get("format", fmt) != fmt:
        raise ValueError(f"convert options name format {options['format']!r}, but {fmt!r} was requested")
    accepted = format_options()[fmt]
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise ValueError(f"convert format {fmt!r} does not use option(s) {unknown}; it accepts {sorted(accepted)}")
    if "size" in opts:
        opts["size"] = tuple(opts["size"])
    FORMATS.get(fmt).convert(src_dir, out_path, dataset=dataset, **opts)
