"""Medical Segmentation Decathlon (MSD) layout: NIfTI volumes listed in ``dataset.json`` (format ``msd``).

Layout: ``src_dir/dataset.json`` with ``training`` (list of ``{"image": "./imagesTr/x.nii.gz",
"label": "./labelsTr/x.nii.gz"}``), ``modality`` ({"0": "FLAIR", ...}) and ``labels``
({"0": "background", ...}). Images are 3-D (one channel, e.g. Task09 spleen CT) or 4-D ``(X, Y, Z, C)``
(e.g. Task01 brain tumour, 4 MR sequences); labels are 3-D integer volumes on the image grid. The
embedded dataset (:mod:`medkd.data.embedded`) uses the same layout.

Per case, :func:`convert_msd` loads image and label canonically (:func:`medkd.data.geometry.load_canonical`),
requires the label on the image grid with values listed in dataset.json ``labels``, and slices the selected
channels with the shared rules of :mod:`medkd.data.convert` (orientation, normalisation, ``min_foreground``,
resizing and stored spacing are described there). Channel names come from dataset.json ``modality``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

import nibabel as nib

from medkd.data.convert import (
    CaseLoader,
    MissingCaseFile,
    SliceOptions,
    load_label_on_grid,
    slice_options,
    volumes_to_case,
    write_converted,
)
from medkd.data.formats import FORMATS, Format
from medkd.data.geometry import NIFTI_SUFFIXES, load_canonical
from medkd.data.store import SliceCase
from medkd.errors import InputError

log = logging.getLogger(__name__)

LABELS_LISTED_IN = "dataset.json 'labels'"


# ------------------------------------------------------------------------------------------ dataset.json


def read_dataset_json(src_dir: str | Path) -> dict:
    """Parse ``src_dir/dataset.json`` (MSD schema).

    Raises:
        FileNotFoundError: no dataset.json.
        ValueError: not valid JSON, or no ``training`` list (message names the file).
    """
    path = Path(src_dir) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MSD dataset.json not found")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: cannot parse dataset.json ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("training"), list):
        raise ValueError(f"{path}: dataset.json has no 'training' list (MSD schema)")
    return meta


class PathOutsideDataset(InputError):
    """A path listed in dataset.json leaves the dataset folder (absolute, ``..``, or a symlink pointing out)."""


def contained_path(src_dir: Path, entry: str, what: str) -> Path:
    """``src_dir / entry`` when it stays inside ``src_dir``, symlinks resolved.

    Raises:
        PathOutsideDataset: ``entry`` is absolute (POSIX or Windows drive), or the path, with every ``..``
            and symlink resolved, lies outside the (resolved) dataset folder; the message names dataset.json,
            the entry and where it points.
    """
    where = src_dir / "dataset.json"
    if PurePosixPath(entry).is_absolute() or PureWindowsPath(entry).is_absolute() or PureWindowsPath(entry).drive:
        raise PathOutsideDataset(f"{where}: {what} {entry!r} is an absolute path; dataset.json paths must be "
                                 f"relative to the dataset folder {src_dir}")
    path = src_dir / entry
    root, real = src_dir.resolve(), path.resolve()
    if real != root and root not in real.parents:
        raise PathOutsideDataset(f"{where}: {what} {entry!r} leaves the dataset folder {root} (it resolves to "
                                 f"{real}); refused: every listed file must lie inside the dataset folder")
    return path


def case_id_of(path: str | Path) -> str:
    """Case id of a NIfTI path: the file name without ``.nii.gz`` / ``.nii``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_msd_cases(src_dir: str | Path) -> list[tuple[str, Path, Path | None]]:
    """The labelled training cases listed in ``src_dir/dataset.json``.

    Args:
        src_dir: MSD task directory (holding dataset.json, imagesTr/, labelsTr/).

    Returns:
        ``[(case_id, image_path, label_path or None), ...]`` in dataset.json order; paths are
        ``src_dir / entry`` (the ``./`` prefix of MSD entries is dropped by path joining).

    Raises:
        FileNotFoundError: dataset.json is missing; MissingCaseFile (an InputError and a FileNotFoundError): a
            listed file is missing (message names it).
        PathOutsideDataset: a listed path is absolute or leaves ``src_dir`` (``..``, a symlink pointing out).
        ValueError: malformed entries or duplicate case ids.
    """
    src_dir = Path(src_dir)
    meta = read_dataset_json(src_dir)
    out: list[tuple[str, Path, Path | None]] = []
    seen: set[str] = set()
    for i, entry in enumerate(meta["training"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise ValueError(f"{src_dir / 'dataset.json'}: training entry {i} has no 'image' path: {entry!r}")
        image = contained_path(src_dir, entry["image"], f"training entry {i} 'image'")
        label = (contained_path(src_dir, entry["label"], f"training entry {i} 'label'")
                 if isinstance(entry.get("label"), str) else None)
        for p in (image, label):
            if p is not None and not p.is_file():
                raise MissingCaseFile(f"{p}: listed in {src_dir / 'dataset.json'} but missing")
        cid = case_id_of(image)
        if cid in seen:
            raise ValueError(f"{src_dir / 'dataset.json'}: duplicate case id {cid!r}")
        seen.add(cid)
        out.append((cid, image, label))
    if not out:
        raise ValueError(f"{src_dir / 'dataset.json'}: 'training' lists no cases")
    return out


def _label_names(meta: dict, src_dir: Path) -> dict[str, str]:
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{src_dir / 'dataset.json'}: needs a 'labels' object such as {{'0': 'background'}}")
    out = {}
    for key, name in labels.items():
        try:
            value = int(key)
        except ValueError as exc:
            raise ValueError(f"{src_dir / 'dataset.json'}: label key {key!r} is not an integer") from exc
        if not 0 <= value <= 255:
            raise ValueError(f"{src_dir / 'dataset.json'}: label value {value} outside 0..255")
        out[str(value)] = str(name)
    return out


def _n_channels(image_path: Path) -> int:
    try:
        shape = nib.load(image_path).shape
    except Exception as exc:  # see load_canonical
        raise ValueError(f"{image_path}: cannot read NIfTI header ({type(exc).__name__}: {exc})") from exc
    if len(shape) == 3:
        return 1
    if len(shape) == 4:
        return int(shape[3])
    raise ValueError(f"{image_path}: expected a 3-D or 4-D volume, got shape {shape}")


# ------------------------------------------------------------------------------------------ conversion


def convert_msd(src_dir: str | Path, out_path: str | Path, *, channels: Sequence[int] | None = None,
                size: Sequence[int] = (64, 64), normalise: str = "zscore", window: Sequence[float] | None = None,
                axis: int = 2, min_foreground: float = 0.0, slice_step: int = 1, dataset: str | None = None) -> None:
    """Convert an MSD-layout NIfTI dataset into a slice store (see the module docstring).

    Args:
        src_dir: the MSD task directory.
        out_path: the slice store to write, e.g. ``results/slices/spleen.h5``.
        channels: image channel indices to keep, in this order (None: all).
        size: ``(H, W)`` of the stored slices.
        normalise: ``"zscore"``, ``"minmax"``, ``"window"`` or ``"none"``
            (:func:`medkd.data.convert.normalise_volume`).
        window: ``[lo, hi]`` for ``normalise="window"``.
        axis: canonical slice axis: 0 sagittal, 1 coronal, 2 axial.
        min_foreground: keep slices whose fraction of non-zero voxels in the first kept channel (after
            normalisation) is >= this; a case left with no slice is skipped with a warning and listed in
            ``provenance["skipped_cases"]``.
        slice_step: keep every k-th slice along ``axis`` (:class:`medkd.data.convert.SliceOptions`).
        dataset: the store's dataset name (default: the stem of ``out_path``).

    Raises:
        FileNotFoundError: dataset.json or a listed file is missing.
        ValueError: bad options; an unreadable or corrupt file, a label not on its image grid, a label with
            non-integer values or values not in dataset.json ``labels``, a channel index out of range, NaN
            in an image (each names the file); every case skipped. Nothing is written on error.
    """
    src_dir = Path(src_dir)
    opts = slice_options(size=size, normalise=normalise, window=window, axis=axis, min_foreground=min_foreground,
                         slice_step=slice_step)
    meta = read_dataset_json(src_dir)
    cases = read_msd_cases(src_dir)
    label_names = _label_names(meta, src_dir)
    n_source_channels = _n_channels(cases[0][1])
    selected = list(range(n_source_channels)) if channels is None else [int(c) for c in channels]
    if not selected or min(selected) < 0 or max(selected) >= n_source_channels:
        raise ValueError(f"channels {channels!r} out of range for {n_source_channels} channel(s) in {cases[0][1]}")
    modality = meta.get("modality") or {}
    channel_names = [str(modality.get(str(c), f"channel{c}")) for c in selected]
    options = {"size": list(opts.size), "normalise": normalise, "window": None if window is None else list(window),
               "channels": selected, "axis": axis, "min_foreground": float(min_foreground),
               "slice_step": opts.slice_step}
    jobs = [(cid, _loader(cid, image, label, selected, label_names, opts)) for cid, image, label in cases]
    warnings = _source_warnings(meta, src_dir)
    write_converted(out_path, jobs, converter=convert_msd, src_dir=src_dir, options=options,
                    channel_names=channel_names, label_names=label_names, dataset=dataset,
                    provenance_extra={"source_name": meta.get("name"), "source_warnings": warnings})


def _source_warnings(meta: dict, src_dir: Path) -> list[str]:
    """What dataset.json says that its files contradict, each logged as a warning: the store is still
    usable (the ``training`` list is what is converted), so these go into the provenance and the
    fingerprint JSON (``source_warnings``) instead of stopping the conversion."""
    out = []
    declared = meta.get("numTraining")
    if declared is not None and declared != len(meta["training"]):
        out.append(f"{src_dir / 'dataset.json'}: numTraining is {declared!r} but 'training' lists "
                   f"{len(meta['training'])} cases; the {len(meta['training'])} listed cases were converted")
    for message in out:
        log.warning("%s", message)
    return out


def _loader(case_id: str, image_path: Path, label_path: Path | None, channels: list[int],
            label_names: dict[str, str], opts: SliceOptions) -> CaseLoader:
    def load() -> SliceCase | None:
        data, affine = load_canonical(image_path)
        if data.ndim == 3:
            data = data[..., None]
        if data.ndim != 4:
            raise ValueError(f"{image_path}: expected (X, Y, Z) or (X, Y, Z, C), got shape {data.shape}")
        if max(channels) >= data.shape[3]:
            raise ValueError(f"{image_path}: has {data.shape[3]} channel(s), channels {list(channels)} requested")
        spatial = data.shape[:3]
        label = None if label_path is None else load_label_on_grid(
            label_path, spatial, affine, image_path, label_names, listed_in=LABELS_LISTED_IN)
        volumes = [(c, data[..., c]) for c in channels]  # named by source index; an index may repeat
        return volumes_to_case(case_id, volumes, affine, label, opts,
                               {"image": str(image_path), "label": "" if label_path is None else str(label_path)})
    return load


@FORMATS.register("msd")
class Msd(Format):
    """Medical Segmentation Decathlon layout (``dataset.json``, ``imagesTr/``, ``labelsTr/``)."""

    summary = "MSD NIfTI listed in dataset.json"

    @classmethod
    def check_layout(cls, src_dir: str | Path) -> list[str]:
        """dataset.json present and parseable, and every image and label it lists present inside the folder."""
        src_dir = Path(src_dir)
        try:
            meta = read_dataset_json(src_dir)
        except (OSError, ValueError) as exc:
            return [f"{src_dir / 'dataset.json'}   ({'missing' if isinstance(exc, FileNotFoundError) else exc})"]
        problems = []
        for i, entry in enumerate(meta["training"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
                problems.append(f"{src_dir / 'dataset.json'}   (training entry {i} has no 'image' path)")
                continue
            for key in ("image", "label"):
                if not isinstance(entry.get(key), str):
                    continue
                try:
                    path = contained_path(src_dir, entry[key], f"training entry {i} {key!r}")
                except PathOutsideDataset as exc:
                    problems.append(str(exc))
                    continue
                if not path.is_file():
                    problems.append(f"{path}   (listed in dataset.json as training entry {i} {key!r}, missing)")
        if not meta["training"]:
            problems.append(f"{src_dir / 'dataset.json'}   ('training' lists no cases)")
        return problems
    options = {
        "channels": {"description": "image channel indices to keep, in order (default all)", "type": "array",
                     "items": {"type": "integer", "minimum": 0}},
    }
    convert = staticmethod(convert_msd)
