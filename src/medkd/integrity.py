"""Corrupted intermediates fail clean: errors that name the file, what is wrong and how to rebuild it.

Every stage reads files another stage wrote. A truncated or altered file must stop the reading stage
with one line (exit 2, no traceback) naming the file, the problem and the command that rebuilds it, and
nothing downstream may be written from it (every output goes through :func:`medkd.io.atomic_path`, so a
stage that raises writes nothing). Where a hash of a file is stored, it is checked, not trusted:

* the slice store's MD5 is in its fingerprint (``results/slices/<dataset>.json``) and in every model's
  ``summary.json`` (``data_hash``): training, cache, inference and evaluation recompute it;
* ``model.pt``'s SHA-256 is in ``summary.json`` (``model_sha256``): every stage loading the model checks it;
* a teacher cache records its teacher's ``spec_hash``: a student compares it with the teacher's summary;
* ``last.pt`` records the spec hash and seed: a checkpoint of another spec is ignored (training restarts).

:func:`rebuild_hint` knows which rule writes each pipeline file; :func:`medkd.cli.main` appends the hint
to any input error that names a pipeline file.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator

from medkd.errors import InputError


class CorruptFileError(InputError):
    """An intermediate file is truncated, altered or inconsistent with its stored hash."""


# (pattern of a path relative to the working directory, rule that writes it)
_RULES = [
    (r"results/slices/[^/\s]+\.(?:h5|json)", "convert"),
    (r"results/kspace/[^/\s]+/[^/\s]+\.h5", "undersample"),
    (r"results/splits/[^/\s]+\.json", "split"),
    (r"results/[^/\s]+/models/[^/\s]+/seed\d+/last\.pt", None),
    (r"results/[^/\s]+/models/[^/\s]+/seed\d+/(?:model\.pt|best\.pt|summary\.json|config\.json|env\.json|epochs\.jsonl)",
     "train"),
    (r"results/[^/\s]+/cache/[^/\s]+/seed\d+\.h5", "cache"),
    (r"results/[^/\s]+/predictions/[^/\s]+/seed\d+\.h5", "infer"),
    (r"results/[^/\s]+/metrics/[^/\s]+/seed\d+\.csv", "evaluate"),
    (r"results/[^/\s]+/robustness/[^/\s]+/seed\d+\.csv", "robustness"),
    (r"results/mlflow/runs\.json", "track"),
    (r"results/tables/all\.csv", "collect"),
    (r"results/tables/[^/\s]+\.(?:csv|md)", "tables"),
]
_HINT_MARK = "Rebuild it:"
METRIC_COLUMNS = ["experiment", "model", "seed", "case", "class", "metric", "convention", "value"]  # evaluate's CSV


def rebuild_hint(path: str | Path) -> str | None:
    """How to rebuild the pipeline file ``path`` (None for files no rule writes)."""
    text = str(path)
    for pattern, rule in _RULES:
        m = re.search(pattern, text)
        if not m:
            continue
        rel = m.group(0)
        if rule is None:  # last.pt: the resume checkpoint
            return (f"{_HINT_MARK} delete it (`rm {rel}`; training then restarts from epoch 0) and re-run "
                    "the same snakemake command")
        model_dir = re.match(r"(results/[^/]+/models/[^/]+/seed\d+)/", rel)
        target = f"{model_dir.group(1)}/model.pt" if model_dir else rel
        return (f"{_HINT_MARK} delete it (`rm {rel}`) and re-run the same snakemake command, or "
                f"`snakemake --forcerun {target}` (rule {rule}; everything downstream re-runs too)")
    return None


def with_hint(message: str) -> str:
    """``message`` plus the rebuild hint of the first pipeline file it names (if any and not there yet)."""
    if _HINT_MARK in message:
        return message
    for pattern, _ in _RULES:
        m = re.search(pattern, message)
        if m:
            hint = rebuild_hint(m.group(0))
            return f"{message}. {hint}" if hint else message
    return message


def corrupt(path: str | Path, problem: str) -> CorruptFileError:
    hint = rebuild_hint(path)
    return CorruptFileError(f"{path}: {problem}" + (f". {hint}" if hint else ""))


@contextlib.contextmanager
def reading(path: str | Path, what: str) -> Iterator[None]:
    """Turn any failure while reading ``path`` (truncated HDF5, bad zip, bad JSON, missing key) into a
    :class:`CorruptFileError` naming the file and its rebuild command. A missing file stays
    :class:`FileNotFoundError`; an error that already is an input error gets the hint appended."""
    try:
        yield
    except FileNotFoundError:
        raise
    except CorruptFileError:
        raise
    except InputError as exc:
        raise CorruptFileError(with_hint(str(exc))) from exc
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, TypeError, IndexError, AttributeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if str(path) in detail:
            detail = detail.replace(f"{path}: ", "")
        raise corrupt(path, f"{what} is truncated or corrupt ({type(exc).__name__}: {detail[:300]})") from exc
    except Exception as exc:  # pickle.UnpicklingError, zipfile.BadZipFile, h5py/pandas specific errors
        if type(exc).__module__.split(".")[0] in ("pickle", "_pickle", "zipfile", "h5py", "pandas", "json"):
            raise corrupt(path, f"{what} is truncated or corrupt ({type(exc).__name__}: {exc})") from exc
        raise


def sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file (``model.pt``'s, recorded in ``summary.json``)."""
    from medkd.io import file_digest

    return file_digest(path, "sha256")


_DIGEST_NAMES = {"md5": "MD5", "sha256": "SHA-256"}


def check_digest(path: str | Path, expected: str | None, source: str, algorithm: str = "md5") -> None:
    """Raise :class:`CorruptFileError` when ``path``'s ``algorithm`` digest differs from ``expected`` (recorded
    in ``source``); no ``expected``: nothing to check."""
    if not expected:
        return
    from medkd.io import file_digest

    actual = file_digest(path, algorithm)
    if actual != expected:
        raise corrupt(path, f"{_DIGEST_NAMES[algorithm]} {actual[:16]}... differs from {expected[:16]}... recorded "
                            f"in {source} (the file was altered or rebuilt after its consumers)")


def check_store_hash(store: str | Path, data_hash: str | None, source: str) -> None:
    """Check the slice store ``store`` against ``data_hash`` (only for slice stores: k-space stores
    derive from the slice store and carry no hash of their own)."""
    if data_hash and "/kspace/" not in str(store).replace("\\", "/"):
        check_digest(store, data_hash, source, "md5")


def check_metrics_csv(path: str | Path, columns: list[str]) -> None:
    """A per-case metrics CSV is complete: the exact header, every row with every field, a float
    ``value`` and a final newline (a cut exactly at a line end is not detectable: no hash is stored)."""
    import csv

    with reading(path, "metrics CSV"):
        raw = Path(path).read_bytes()
        text = raw.decode()
    if not raw.endswith(b"\n"):
        raise corrupt(path, "metrics CSV is truncated (no final newline)")
    rows = list(csv.reader(text.splitlines()))
    if not rows or rows[0] != list(columns):
        raise corrupt(path, f"metrics CSV header {rows[0] if rows else []} is not {list(columns)}")
    vi = columns.index("value")
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(columns):
            raise corrupt(path, f"metrics CSV line {n} has {len(row)} fields, expected {len(columns)}")
        try:
            float(row[vi])
        except ValueError:
            raise corrupt(path, f"metrics CSV line {n}: value {row[vi]!r} is not a number") from None
    if not rows[1:]:
        raise corrupt(path, "metrics CSV has no rows")
