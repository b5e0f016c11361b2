"""The canonical 2-D slice store: one HDF5 file per dataset (``results/slices/<dataset>.h5``).

Every segmentation dataset, whatever its source format, is converted once into this file, and every later
stage (split, train, cache, infer, evaluate) reads only this file. Slices of one case (volume) stay
together, with enough geometry to re-stack predictions into the source volume and to measure distances
in millimetres.

Format (``format_version`` 1)
-----------------------------
Root attributes:

- ``format_version`` (int): 1.
- ``dataset`` (str): dataset name, e.g. ``"embedded"``.
- ``channel_names`` (JSON list of str): one name per image channel, e.g. ``["T1", "T2"]``.
- ``label_names`` (JSON object): source label value (as a string) -> name, e.g.
  ``{"0": "background", "1": "spleen"}``. Stored labels keep the *source* values; the experiment config
  maps them to classes.
- ``provenance`` (JSON object): converter name, source directory, options, medkd version, created-by.
- ``size`` (JSON list ``[H, W]``): in-plane size of every stored slice.

Group ``cases/<case_id>`` per case (case ids are unique and contain no ``/``):

- dataset ``image``: float32 ``(S, C, H, W)``; S slices, C channels.
- dataset ``label``: uint8 ``(S, H, W)``; absent for unlabelled cases.
- attribute ``spacing``: float64 ``[row_mm, col_mm, slice_mm]`` of the *stored* (resized) slices.
- attribute ``affine``: float64 ``(4, 4)`` voxel-to-world (RAS, mm) matrix of the canonical source volume.
- attribute ``source_image`` / ``source_label``: str paths of the source files (``""`` when absent).
- attribute ``original_shape``: int64 ``(3,)`` spatial shape of the canonical source volume.
- attribute ``slice_indices``: int64 ``(S,)`` index along the source slice axis of each stored slice.
- further attributes given by a converter are stored as they are (str, numbers, arrays).

``image`` and ``label`` use gzip level 1 with one slice per chunk, so reading one slice decompresses only
that slice. The writer records no timestamps, so the same input gives the same file contents.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medkd.io import h5_dataset

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
REQUIRED_ROOT_ATTRS = ("dataset", "channel_names", "label_names", "provenance", "size")
_JSON_ROOT_ATTRS = ("channel_names", "label_names", "provenance", "size")
_REQUIRED_CASE_ATTRS = ("source_image", "original_shape", "slice_indices")


@dataclass
class SliceCase:
    """All stored slices of one case (volume).

    Attributes:
        case_id: unique case name, e.g. ``"spleen_10"``; no ``/``.
        image: float32 ``(S, C, H, W)``.
        label: uint8 ``(S, H, W)`` source label values, or None for an unlabelled case.
        spacing: ``(row_mm, col_mm, slice_mm)`` of the stored slices.
        affine: float64 ``(4, 4)`` affine of the canonical source volume.
        attrs: ``source_image`` (str), ``source_label`` (str, may be omitted when ``label`` is None),
            ``original_shape`` (3 ints), ``slice_indices`` (S ints), plus optional converter extras.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    affine: np.ndarray
    attrs: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ writing


def write_store(path: str | Path, cases: Iterable[SliceCase], attrs: dict) -> None:
    """Write a slice store atomically.

    ``cases`` may be a generator: cases are validated and written one at a time, so a dataset larger
    than memory can be converted. The file is written to ``.<name>.tmp-<pid>`` (:func:`medkd.io.atomic_path`) and renamed to ``path``
    only when complete; on any exception the temporary file is removed and the exception re-raised, so
    ``path`` is never left half-written (an existing ``path`` stays untouched). Root attributes are
    validated first and serialised after the last case, so a converter may still add to
    ``attrs["provenance"]`` (e.g. skipped cases) while its generator runs.

    Args:
        path: destination ``.h5`` file; parent directories are created.
        cases: the cases to store, each a :class:`SliceCase`.
        attrs: root attributes ``dataset`` (str), ``channel_names`` (list of C str), ``label_names``
            (dict source value -> name), ``provenance`` (dict), ``size`` ([H, W]).

    Raises:
        ValueError: a missing root attribute; no cases; a case whose image is not 4-D float32 with at
            least one slice, whose label is not uint8 of shape (S, H, W), whose C/H/W differ from the
            first case or from ``channel_names``/``size``, whose spacing/affine/attrs are malformed, or
            whose id is empty, contains ``/`` or repeats. The message names the case.
    """
    path = Path(path)
    root_attrs = _validated_root_attrs(attrs)
    from medkd.io import atomic_path

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", track_order=False) as fh:
            group = fh.create_group("cases")
            seen: set[str] = set()
            n_channels = len(root_attrs["channel_names"])
            size = tuple(root_attrs["size"])
            for case in cases:
                _validate_case(case, seen, n_channels, size)
                seen.add(case.case_id)
                _write_case(group, case)
            if not seen:
                raise ValueError(f"{path}: no cases to write")
            # root attributes last: a converter may complete attrs["provenance"] while producing cases
            root_attrs = _validated_root_attrs(attrs)
            fh.attrs["format_version"] = FORMAT_VERSION
            fh.attrs["dataset"] = root_attrs["dataset"]
            for key in _JSON_ROOT_ATTRS:
                fh.attrs[key] = json.dumps(root_attrs[key], sort_keys=True, default=_json_default)
    log.info("wrote slice store %s (%d cases)", path, len(seen))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"slice store attrs: cannot serialise {type(obj).__name__} to JSON")


def _validated_root_attrs(attrs: dict) -> dict:
    missing = [k for k in REQUIRED_ROOT_ATTRS if k not in attrs]
    if missing:
        raise ValueError(f"slice store attrs lack {missing} (need {list(REQUIRED_ROOT_ATTRS)})")
    out = dict(attrs)
    if not isinstance(out["dataset"], str) or not out["dataset"]:
        raise ValueError(f"slice store attr 'dataset' must be a non-empty string, got {out['dataset']!r}")
    names = list(out["channel_names"])
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"slice store attr 'channel_names' must be a non-empty list of str, got {names!r}")
    out["channel_names"] = names
    out["label_names"] = {str(k): str(v) for k, v in dict(out["label_names"]).items()}
    size = [int(s) for s in out["size"]]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"slice store attr 'size' must be [H, W] with positive ints, got {out['size']!r}")
    out["size"] = size
    if not isinstance(out["provenance"], dict):
        raise ValueError("slice store attr 'provenance' must be a dict")
    return out


def _validate_case(case: SliceCase, seen: set[str], n_channels: int, size: tuple[int, int]) -> None:
    cid = case.case_id
    where = f"case {cid!r}"
    if not isinstance(cid, str) or not cid or "/" in cid or cid in (".", ".."):
        raise ValueError(f"{where}: case id must be a non-empty string without '/'")
    if cid in seen:
        raise ValueError(f"{where}: duplicate case id")
    image = case.image
    if not isinstance(image, np.ndarray) or image.ndim != 4:
        raise ValueError(f"{where}: image must be a 4-D array (S, C, H, W), got shape {np.shape(image)}")
    if image.dtype != np.float32:
        raise ValueError(f"{where}: image must be float32, got {image.dtype}")
    s, c, h, w = image.shape
    if s < 1:
        raise ValueError(f"{where}: image has no slices")
    if c != n_channels:
        raise ValueError(f"{where}: image has {c} channels but channel_names lists {n_channels}")
    if (h, w) != size:
        raise ValueError(f"{where}: slice size {(h, w)} differs from the store size {size} (all cases share C/H/W)")
    if not np.isfinite(image).all():
        raise ValueError(f"{where}: image contains NaN or infinite values")
    if case.label is not None:
        label = case.label
        if not isinstance(label, np.ndarray) or label.shape != (s, h, w):
            raise ValueError(f"{where}: label shape {np.shape(label)} != image (S, H, W) {(s, h, w)}")
        if label.dtype != np.uint8:
            raise ValueError(f"{where}: label must be uint8, got {label.dtype}")
    spacing = np.asarray(case.spacing, dtype=np.float64)
    if spacing.shape != (3,) or not np.isfinite(spacing).all() or (spacing <= 0).any():
        raise ValueError(f"{where}: spacing must be 3 positive numbers (row, col, slice mm), got {case.spacing!r}")
    affine = np.asarray(case.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"{where}: affine must be a finite 4x4 matrix, got shape {affine.shape}")
    missing = [k for k in _REQUIRED_CASE_ATTRS if k not in case.attrs]
    if case.label is not None and "source_label" not in case.attrs:
        missing.append("source_label")
    if missing:
        raise ValueError(f"{where}: attrs lack {missing}")
    if np.asarray(case.attrs["original_shape"]).shape != (3,):
        raise ValueError(f"{where}: original_shape must have 3 entries, got {case.attrs['original_shape']!r}")
    if np.asarray(case.attrs["slice_indices"]).shape != (s,):
        raise ValueError(f"{where}: slice_indices must have one entry per slice ({s}), "
                         f"got shape {np.asarray(case.attrs['slice_indices']).shape}")


def _write_case(group: h5py.Group, case: SliceCase) -> None:
    s, c, h, w = case.image.shape
    grp = group.create_group(case.case_id)
    h5_dataset(grp, "image", case.image, chunks=(1, c, h, w), compression="gzip",
                       compression_opts=1, track_times=False)
    if case.label is not None:
        h5_dataset(grp, "label", case.label, chunks=(1, h, w), compression="gzip",
                           compression_opts=1, track_times=False)
    grp.attrs["spacing"] = np.asarray(case.spacing, dtype=np.float64)
    grp.attrs["affine"] = np.asarray(case.affine, dtype=np.float64)
    attrs = dict(case.attrs)
    grp.attrs["source_image"] = str(attrs.pop("source_image"))
    grp.attrs["source_label"] = str(attrs.pop("source_label", "") or "")
    grp.attrs["original_shape"] = np.asarray(attrs.pop("original_shape"), dtype=np.int64)
    grp.attrs["slice_indices"] = np.asarray(attrs.pop("slice_indices"), dtype=np.int64)
    for key, value in attrs.items():
        grp.attrs[key] = value


# ------------------------------------------------------------------------------------------ reading


class SliceStore:
    """Read-only access to a slice store; use as a context manager.

    The constructor checks the file (exists, is HDF5, known ``format_version``) and reads the root
    attributes and case ids, then closes it; the data handle is opened on the first :meth:`read_case`
    and kept until :meth:`close` (so a store object can be created in one process and used in another).

    Args:
        path: the ``.h5`` slice store.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a readable HDF5 file, or its format is unknown (message names the file).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: slice store not found")
        self._fh: h5py.File | None = None
        try:
            with h5py.File(self.path, "r") as fh:
                version = fh.attrs.get("format_version")
                if version is None or int(version) != FORMAT_VERSION:
                    raise ValueError(f"{self.path}: unknown slice store format_version {version!r} "
                                     f"(expected {FORMAT_VERSION})")
                self.attrs: dict[str, Any] = _decode_root_attrs(fh.attrs, self.path)
                if "cases" not in fh:
                    raise ValueError(f"{self.path}: slice store has no 'cases' group")
                self.case_ids: list[str] = sorted(fh["cases"].keys())
        except ValueError:
            raise
        except (OSError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.path}: not a readable HDF5 slice store ({exc})") from exc

    def __enter__(self) -> SliceStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fh"] = None
        return state

    def _file(self) -> h5py.File:
        if self._fh is None:
            try:
                self._fh = h5py.File(self.path, "r")
            except OSError as exc:
                raise ValueError(f"{self.path}: cannot open slice store ({exc})") from exc
        return self._fh

    def _group(self, case_id: str) -> h5py.Group:
        if case_id not in self.case_ids:
            raise KeyError(f"{self.path}: no case {case_id!r} in the slice store")
        return self._file()["cases"][case_id]

    def read_case(self, case_id: str) -> SliceCase:
        """Load one case.

        Args:
            case_id: one of :attr:`case_ids`.

        Returns:
            The :class:`SliceCase` with ``image`` float32 (S, C, H, W), ``label`` uint8 (S, H, W) or None,
            ``spacing`` (row, col, slice mm), ``affine`` (4, 4) and ``attrs`` (source_image, source_label,
            original_shape, slice_indices, extras).

        Raises:
            KeyError: unknown case id (message names the file).
            ValueError: the case's data cannot be read (corrupt file; message names file and case).
        """
        grp = self._group(case_id)
        try:
            image = grp["image"][()]
            label = grp["label"][()] if "label" in grp else None
            raw = dict(grp.attrs)
        except (OSError, KeyError) as exc:
            raise ValueError(f"{self.path}: cannot read case {case_id!r} ({exc})") from exc
        spacing = tuple(float(v) for v in raw.pop("spacing"))
        affine = np.asarray(raw.pop("affine"), dtype=np.float64)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
        return SliceCase(case_id=case_id, image=image, label=label, spacing=spacing,  # type: ignore[arg-type]
                         affine=affine, attrs=attrs)

    def dataset(self, case_id: str, key: str) -> h5py.Dataset:
        """The HDF5 dataset ``key`` (``image`` (S, C, H, W) float32, ``label`` (S, H, W) uint8) of a case,
        for reading slices without loading the case (one slice per chunk)."""
        try:
            return self._group(case_id)[key]
        except KeyError as exc:
            raise KeyError(f"{self.path}: case {case_id!r} has no {key!r}") from exc

    def has(self, case_id: str, key: str) -> bool:
        """Whether a case stores ``key`` (``label`` is absent for unlabelled cases)."""
        return key in self._group(case_id)

    def case_spacing(self, case_id: str) -> tuple[float, float, float]:
        """(row, col, slice) spacing in mm of a case, without reading its arrays."""
        return tuple(float(v) for v in self._group(case_id).attrs["spacing"])  # type: ignore[return-value]

    def n_slices(self, case_id: str) -> int:
        """Number of stored slices S of ``case_id`` (no data is read)."""
        return int(self._group(case_id)["image"].shape[0])

    def close(self) -> None:
        """Close the data handle (if open); the object can be reopened by the next read."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _decode_root_attrs(raw: h5py.AttributeManager, path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"format_version": int(raw["format_version"])}
    for key in REQUIRED_ROOT_ATTRS:
        if key not in raw:
            raise ValueError(f"{path}: slice store lacks root attribute {key!r}")
        value = raw[key]
        if isinstance(value, bytes):
            value = value.decode()
        if key in _JSON_ROOT_ATTRS:
            try:
                value = json.loads(value)
            except (TypeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path}: root attribute {key!r} is not valid JSON ({exc})") from exc
        out[key] = value
    return out
