"""``config/datasets.yaml``: validated against ``workflow/schemas/datasets.schema.yaml``, then normalised.

The file holds ``format_version: 1`` and ``datasets``, a mapping ``name -> entry``; the schema is the single
definition of every field (what each ``kind`` may hold, paths, URLs, checksums, ``expected`` entries). It is
checked with ``jsonschema`` through the same validator as the config (:func:`medkd.config.schema_validator`,
which also fills ``default`` values), and an error names the file, the dataset, the key path and the
problem (``datasets.yaml: dataset 'acdc': expected/2/md5 must be 32 hexadecimal digits, got 'xyz'``).

What a schema cannot express is done here, after validation (:func:`validate_dataset_spec`): the entry is
normalised - ``citation`` becomes a list, a single ``url`` (+ ``filename``, ``md5``, ``sha256``,
``extract_to``, ``root``) becomes a one-element ``archives`` list, an archive without ``filename`` takes the
last part of its URL's path (which must then be a plain, unique file name), checksums are lower-cased and
paths normalised. The normalised form is what the fetch marker fingerprints (:mod:`medkd.data.sources.fetch`).
"""

from __future__ import annotations

import copy
import posixpath
import urllib.parse
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from medkd.config import REPO_ROOT, schema_validator
from medkd.errors import InputError
from medkd.io import load_yaml
from medkd.data.sources.download import expected_digests

DATASETS_SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "datasets.schema.yaml"
DATASETS_FORMAT_VERSION = 1
ARCHIVE_KEYS = ("url", "filename", "md5", "sha256", "extract_to", "root")


class DatasetSpecError(InputError):
    """``config/datasets.yaml`` (or one dataset spec) is malformed; the message names the file and field."""


@lru_cache(maxsize=1)
def load_datasets_schema() -> dict:
    with open(DATASETS_SCHEMA_PATH) as fh:
        return load_yaml(fh)


# ------------------------------------------------------------------------------------------ validation


def _problem(err: jsonschema.ValidationError) -> str:
    """What is wrong, in medkd's words: the schema's ``errorMessage`` or a phrase for the standard keywords."""
    if err.validator == "required":
        return f"missing required field(s) {[k for k in err.validator_value if k not in err.instance]}"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        return f"unknown field(s) {sorted(k for k in err.instance if k not in allowed)}; allowed: {allowed}"
    message = err.schema.get("errorMessage")
    if message is None:
        if err.validator == "enum":
            message = f"must be one of {err.validator_value}"
        elif err.validator == "const":
            message = f"must be {err.validator_value!r}"
        else:
            return err.message
    if message.startswith("must") and not isinstance(err.instance, (dict, list)):
        return f"{message}, got {err.instance!r}"
    if isinstance(err.instance, dict):
        named = [f"{k} {err.instance[k]!r}" for k in ("path", "url") if isinstance(err.instance.get(k), str)]
        if named:
            return f"{message} ({named[0]})"
    return message


def _message(err: jsonschema.ValidationError, where: str) -> str:
    """``<where>[: dataset '<name>']: <key path> <problem>``."""
    path = list(err.absolute_path)
    prefix = [where] if where else []
    if "propertyNames" in err.schema_path:  # a bad dataset name: the instance is the name itself
        return ": ".join(prefix + [f"dataset {err.instance!r}", _problem(err)])
    if len(path) >= 2 and path[0] == "datasets":
        prefix.append(f"dataset {path[1]!r}")
        path = path[2:]
    key, problem = "/".join(str(p) for p in path), _problem(err)
    if problem.startswith("must"):
        return ": ".join(prefix + [f"{key or 'the entry'} {problem}"])
    return ": ".join(prefix + ([f"{key}: {problem}"] if key else [problem]))


def _validate(document: dict, where: str) -> None:
    """Validate (and fill defaults in) ``document``; raise :class:`DatasetSpecError` for the first problem.

    The reported error is the one highest up in the document (first in schema order among those), so a
    missing field is named before a detail inside it; an ``anyOf`` without its own ``errorMessage`` is
    descended like :func:`jsonschema.exceptions.best_match` does.
    """
    errors = list(schema_validator(load_datasets_schema()).iter_errors(document))
    if not errors:
        return
    err = min(errors, key=lambda e: len(e.absolute_path))
    if err.context and "errorMessage" not in err.schema:
        err = jsonschema.exceptions.best_match([err])
    raise DatasetSpecError(_message(err, where))


# ------------------------------------------------------------------------------------------ normalisation


def _normpath(value: str) -> str:
    """Normalised relative POSIX path, keeping a trailing ``/`` (a directory)."""
    norm = posixpath.normpath(value)
    return norm + ("/" if value.endswith("/") and norm != "." else "")


def _normalise_archive(raw: dict, where: str) -> dict:
    url = raw["url"]
    filename = raw.get("filename") or posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    if filename in ("", ".", "..") or "/" in filename or "\\" in filename:
        raise DatasetSpecError(f"{where}: the file name {filename!r} taken from {url} is not a plain file name; "
                               "set `filename:`")
    digests = expected_digests(raw.get("md5"), raw.get("sha256"))
    root = raw.get("root")
    return {"url": url, "filename": filename, "md5": digests.get("md5"), "sha256": digests.get("sha256"),
            "extract_to": _normpath(raw.get("extract_to", ".")).rstrip("/"),
            "root": None if root is None else _normpath(root).rstrip("/")}


def _normalise_expected(raw: str | dict) -> dict:
    entry = {"path": raw} if isinstance(raw, str) else raw
    out: dict[str, Any] = {"path": _normpath(entry["path"])}
    for key in ("count", "min_count", "size"):
        if entry.get(key) is not None:
            out[key] = entry[key]
    out.update(expected_digests(entry.get("md5"), entry.get("sha256")))
    if entry.get("description") is not None:
        out["description"] = str(entry["description"])
    return out


def validate_dataset_spec(name: str, spec: Any, where: str = "") -> dict:
    """Check one dataset entry of ``config/datasets.yaml`` and return a normalised copy.

    Every kind requires ``kind``, ``description``, ``licence``, ``citation`` (string or list of strings),
    ``converter`` and ``experiments`` (list of experiment names); the kind-specific fields are defined in
    ``workflow/schemas/datasets.schema.yaml``:

    * embedded: ``generator`` (mapping of generator parameters).
    * download: either ``url`` (+ ``filename``, ``md5``/``sha256``, ``extract_to``, ``root``) or ``archives``
      (a list of such mappings); optional ``expected``, ``allow_unverified`` (bool) and ``instructions``.
      The normalised spec always has ``archives`` (and ``expected``, ``allow_unverified``).
    * manual: ``expected`` (non-empty list), ``request_url`` and ``instructions``.

    Args:
        name: Dataset name (lower-case letters, digits and ``_``; it becomes ``data/<name>``).
        spec: The entry as loaded from YAML (or an already normalised one: normalising is idempotent).
        where: Prefix for error messages (e.g. the file path).

    Returns:
        A new dict with defaults filled in and the normalisation of the module docstring applied.

    Raises:
        DatasetSpecError: Naming the dataset, the offending key path and the problem.
    """
    document = {"format_version": DATASETS_FORMAT_VERSION, "datasets": {name: copy.deepcopy(spec)}}
    _validate(document, where)
    return _normalise(name, document["datasets"][name], where)


def _normalise(name: str, spec: dict, where: str) -> dict:
    loc = f"{where + ': ' if where else ''}dataset {name!r}"
    out = dict(spec)
    if isinstance(spec["citation"], str):
        out["citation"] = [spec["citation"]]
    if spec["kind"] == "embedded":
        out["generator"] = dict(spec["generator"])
        return out
    out["expected"] = [_normalise_expected(e) for e in spec["expected"]]
    if spec["kind"] == "download":
        single = {k: out.pop(k) for k in ARCHIVE_KEYS if k in out}
        raw = spec["archives"] if "archives" in spec else [single]
        out["archives"] = [_normalise_archive(a, f"{loc}: archives/{i}" if "archives" in spec else loc)
                           for i, a in enumerate(raw)]
        names = [a["filename"] for a in out["archives"]]
        if len(set(names)) != len(names):
            raise DatasetSpecError(f"{loc}: archive file names must be unique, got {names}")
    return out


def load_datasets_yaml(path: str | Path) -> dict[str, dict]:
    """Load and validate ``config/datasets.yaml`` (read with ``medkd.io.load_yaml``: YAML's safe subset).

    Args:
        path: The YAML file.

    Returns:
        ``{name: normalised spec}`` in file order (see :func:`validate_dataset_spec`).

    Raises:
        DatasetSpecError: Missing file, invalid YAML, or a document that does not follow the schema; the
            message names the file (and the dataset and key path).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DatasetSpecError(f"{path}: file not found") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise DatasetSpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise DatasetSpecError(f"{path}: expected a mapping with `format_version` and `datasets`")
    data = copy.deepcopy(data)
    _validate(data, str(path))
    return {name: _normalise(name, spec, str(path)) for name, spec in data["datasets"].items()}
