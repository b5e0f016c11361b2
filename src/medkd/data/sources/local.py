"""A researcher's own data in one config entry (``kind: local``), and the planning-time check of every input.

A config dataset ``{kind: local, path: <folder>, convert: {format: <format>, ...}}`` is read in place: any
folder, absolute or relative (to the directory Snakemake runs in, normally the repository root), inside the
repository or outside it, in any format of :mod:`medkd.data.formats`. Nothing is copied or fetched; the
``convert`` rule reads the folder directly. Optionally ``dvc: <file>.dvc`` names the DVC file that tracks the
folder (``dvc add <folder>`` in a DVC repository holding it): the file must exist and its ``outs`` must be the
folder; the convert job depends on it, so a new data version (``dvc pull`` / ``dvc add`` after a change)
re-converts.

While the DAG is planned (also under ``snakemake -n``), :func:`input_problems` checks every manual dataset of
``config/datasets.yaml`` and every local dataset the config's experiments use, and :class:`InputsMissing`
lists **all** of them at once, each with its exact missing paths: a researcher with three gated datasets to
place learns about the three in one run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from medkd.data.sources import SourceError
from medkd.data.sources.fetch import _check_expected, _missing_message


class InputsMissing(SourceError):
    """Raw data of one or more datasets is missing or laid out wrongly.

    Attributes:
        problems: dataset name -> its message (the exact paths, and for manual data where to request it).
    """

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        names = list(self.problems)
        if len(names) == 1:
            message = self.problems[names[0]]
        else:
            message = "\n\n".join([f"{len(names)} datasets are missing or incomplete: {', '.join(names)}.",
                                   *(f"[{i + 1}/{len(names)}] {self.problems[n]}" for i, n in enumerate(names))])
        super().__init__(message)


def local_dir(spec: Mapping, base: str | Path = ".") -> Path:
    """The folder of a ``kind: local`` dataset: ``path`` (``~`` expanded) relative to ``base`` unless absolute."""
    path = Path(spec["path"]).expanduser()
    return path if path.is_absolute() else Path(base) / path


def dvc_outs(dvc_file: str | Path) -> list[Path]:
    """The ``outs`` paths of a ``.dvc`` file, relative to the file's folder resolved.

    Raises:
        SourceError: the file is missing or is no DVC file (message names it).
    """
    dvc_file = Path(dvc_file)
    try:
        doc = yaml.safe_load(dvc_file.read_text())
        outs = [Path(o["path"]) for o in doc["outs"]]
    except FileNotFoundError:
        raise SourceError(f"{dvc_file}: DVC file not found") from None
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise SourceError(f"{dvc_file}: not a DVC file with `outs` ({type(exc).__name__}: {exc})") from None
    return [p if p.is_absolute() else (dvc_file.parent / p) for p in outs]


def local_problems(name: str, spec: Mapping, base: str | Path = ".") -> list[str]:
    """Problems of a local dataset: the folder (missing, not a folder), its layout for its format, and its
    ``dvc`` file. Empty when it is ready to convert."""
    from medkd.data.formats import DEFAULT_FORMAT, check_layout

    folder = local_dir(spec, base)
    fmt = spec.get("convert", {}).get("format", DEFAULT_FORMAT)
    problems = check_layout(fmt, folder)
    if spec.get("dvc"):
        dvc_file = local_dir({"path": spec["dvc"]}, base)
        try:
            outs = dvc_outs(dvc_file)
        except SourceError as exc:
            problems.append(str(exc))
        else:
            if not any(o.resolve() == folder.resolve() for o in outs):
                problems.append(f"{dvc_file}: tracks {[str(o) for o in outs]}, not the dataset folder {folder}")
    return problems


def local_message(name: str, spec: Mapping, problems: list[str], base: str | Path = ".") -> str:
    fmt = spec.get("convert", {}).get("format", "msd")
    return "\n".join([
        f"Local dataset {name!r} (path {spec['path']!r} -> {local_dir(spec, base)}, format {fmt!r}) is not ready:",
        *(f"  {p}" for p in problems),
        "Fix the folder (docs/datasets.md lists every format's layout) or the `path:` of the dataset in the config.",
    ])


def input_problems(datasets: Mapping[str, Mapping], used: Iterable[str], source_specs, data_root: str | Path,
                   base: str | Path = ".") -> dict[str, str]:
    """Every missing input of the config, by name: manual sources with missing files and local datasets
    that are missing or laid out wrongly.

    Args:
        datasets: the config's ``datasets`` (validated).
        used: names of the config datasets the experiments use (only these are checked).
        source_specs: callable returning ``config/datasets.yaml`` (validated), called only when a
            download/manual dataset is used.
        data_root: the folder of fetched/manual raw data.
        base: what a relative local ``path`` is relative to.
    """
    problems: dict[str, str] = {}
    seen_sources = set()
    for name in used:
        d = datasets[name]
        if d["kind"] == "local":
            found = local_problems(name, d, base)
            if found:
                problems[name] = local_message(name, d, found, base)
        elif d["kind"] == "manual":
            source = d.get("source", name)
            if source in seen_sources:
                continue
            seen_sources.add(source)
            spec = source_specs().get(source)
            if spec is None or spec["kind"] != "manual":
                continue  # reported by the rule itself, with its own message
            display = f"{data_root}/{source}"
            missing, lines, _ = _check_expected(Path(data_root) / source, spec["expected"], display)
            if missing:
                problems[source] = _missing_message(source, spec, display, lines, len(missing))
    return problems
