"""Convert a Medical Segmentation Decathlon (MSD) layout dataset of NIfTI volumes into a slice store.

MSD layout: ``src_dir/dataset.json`` with ``training`` (list of ``{"image": "./imagesTr/x.nii.gz",
"label": "./labelsTr/x.nii.gz"}``), ``modality`` ({"0": "FLAIR", ...}) and ``labels``
({"0": "background", ...}). Images are 3-D (one channel, e.g. Task09 spleen CT) or 4-D ``(X, Y, Z, C)``
(e.g. Task01 brain tumour, 4 MR sequences); labels are 3-D integer volumes on the image grid. The
embedded dataset (:mod:`medkd.data.embedded`) uses the same layout.

Per case, :func:`convert_msd`:

1. loads image and label and makes both canonical with ``nibabel.as_closest_canonical`` (voxel axes
   ordered and flipped to RAS+: axis 0 grows toward the patient's Right, axis 1 toward Anterior, axis 2
   toward Superior), then requires the label on the image grid (same spatial shape, affines equal within
   1e-3);
2. normalises each selected channel over the whole 3-D volume (:func:`normalise_volume`);
3. cuts slices along ``axis`` (2: axial) and keeps those whose fraction of non-zero voxels in the first
   selected channel, after normalisation, is >= ``min_foreground``;
4. resizes every slice to ``size`` with ``skimage.transform.resize`` (image: order 1; label: order 0; both
   ``anti_aliasing=False, preserve_range=True``).

Slice orientation: no transpose or flip beyond canonicalisation. A slice's rows follow the first remaining
RAS axis and its columns the second: for ``axis=2`` (axial) ``slice[r, c] = volume[r, c, s]``, rows grow
toward the patient's Right and columns toward Anterior (display with ``np.rot90(slice)`` for the usual
radiological view); for ``axis=0`` rows are A and columns S; for ``axis=1`` rows are R and columns S.
Re-stacking is therefore ``np.moveaxis(stack, 0, axis)`` at the original in-plane size.

Stored spacing ``(row_mm, col_mm, slice_mm)``: the canonical voxel sizes of the two in-plane axes times
(original in-plane size / new size), and the voxel size along ``axis``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from skimage.transform import resize
from tqdm import tqdm

import medkd
from medkd.data.store import SliceCase, write_store

log = logging.getLogger(__name__)

NORMALISATIONS = ("zscore", "minmax", "window", "none")
AFFINE_TOLERANCE = 1e-3


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


def case_id_of(path: str | Path) -> str:
    """Case id of a NIfTI path: the file name without ``.nii.gz`` / ``.nii``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
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
        FileNotFoundError: dataset.json or a listed file is missing (message names it).
        ValueError: malformed entries or duplicate case ids.
    """
    src_dir = Path(src_dir)
    meta = read_dataset_json(src_dir)
    out: list[tuple[str, Path, Path | None]] = []
    seen: set[str] = set()
    for i, entry in enumerate(meta["training"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise ValueError(f"{src_dir / 'dataset.json'}: training entry {i} has no 'image' path: {entry!r}")
        image = src_dir / entry["image"]
        label = src_dir / entry["label"] if isinstance(entry.get("label"), str) else None
        for p in (image, label):
            if p is not None and not p.is_file():
                raise FileNotFoundError(f"{p}: listed in {src_dir / 'dataset.json'} but missing")
        cid = case_id_of(image)
        if cid in seen:
            raise ValueError(f"{src_dir / 'dataset.json'}: duplicate case id {cid!r}")
        seen.add(cid)
        out.append((cid, image, label))
    if not out:
        raise ValueError(f"{src_dir / 'dataset.json'}: 'training' lists no cases")
    return out


# ------------------------------------------------------------------------------------------ volumes


def load_canonical(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI volume reoriented to the closest canonical (RAS+) orientation.

    Args:
        path: a ``.nii`` / ``.nii.gz`` file, 3-D or 4-D.

    Returns:
        (data as stored in the file, canonical axis order, (X, Y, Z[, C]); canonical affine (4, 4) float64).

    Raises:
        ValueError: unreadable, truncated or corrupt file, or fewer than 3 dimensions (names the file).
    """
    try:
        img = nib.as_closest_canonical(nib.load(path))
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, OSError...)
        raise ValueError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    if data.ndim < 3:
        raise ValueError(f"{path}: expected a 3-D or 4-D volume, got shape {data.shape}")
    return data, affine


def normalise_volume(volume: np.ndarray, method: str = "zscore",
                     window: Sequence[float] | None = None) -> np.ndarray:
    """Normalise one channel of one case over the whole 3-D volume.

    Args:
        volume: float array, any shape (one channel).
        method: ``"zscore"``: (v - mean) / sd with mean and population sd over the non-zero voxels; zero
            voxels stay 0 (sd < 1e-8 is treated as 1). ``"minmax"``: (v - min) / (max - min) in [0, 1]
            (a constant volume gives 0). ``"window"``: clip to ``[lo, hi]`` then (v - lo) / (hi - lo); with
            window [0, 255] on CT this is the MTMS code's effective clip of HU to [0, 255] and /255.
            ``"none"``: unchanged.
        window: ``[lo, hi]`` with lo < hi, required by and only allowed with ``"window"``.

    Returns:
        float32 array of the same shape.

    Raises:
        ValueError: unknown method or bad window.
    """
    volume = np.asarray(volume, dtype=np.float32)
    _check_normalise(method, window)
    if method == "none":
        return volume.copy()
    if method == "window":
        lo, hi = (float(v) for v in window)  # type: ignore[union-attr]
        return ((np.clip(volume, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    if method == "minmax":
        lo, hi = float(volume.min()), float(volume.max())
        if hi - lo <= 0:
            return np.zeros_like(volume)
        return ((volume - lo) / (hi - lo)).astype(np.float32)
    nonzero = volume != 0
    out = np.zeros_like(volume)
    if nonzero.any():
        values = volume[nonzero].astype(np.float64)
        sd = float(values.std())
        out[nonzero] = ((values - values.mean()) / (sd if sd > 1e-8 else 1.0)).astype(np.float32)
    return out


def _check_normalise(method: str, window: Sequence[float] | None) -> None:
    if method not in NORMALISATIONS:
        raise ValueError(f"unknown normalise {method!r}; choose one of {NORMALISATIONS}")
    if method == "window":
        if window is None or len(window) != 2 or not float(window[0]) < float(window[1]):
            raise ValueError(f"normalise='window' needs window=[lo, hi] with lo < hi, got {window!r}")
    elif window is not None:
        raise ValueError(f"window={list(window)!r} is only used with normalise='window', not {method!r}")


def _resize_stack(stack: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
    """Resize the last two axes of ``stack`` (..., H, W) to ``size``; skimage, no anti-aliasing."""
    lead = stack.shape[:-2]
    h, w = stack.shape[-2:]
    if (h, w) == tuple(size):
        return stack.copy()
    flat = stack.reshape(-1, h, w).transpose(1, 2, 0)  # (H, W, N): N is kept (zoom factor 1)
    out = resize(flat, (size[0], size[1], flat.shape[2]), order=order, anti_aliasing=False,
                 preserve_range=True)
    return out.transpose(2, 0, 1).reshape(*lead, size[0], size[1])


# ------------------------------------------------------------------------------------------ conversion


def convert_msd(src_dir: str | Path, out_path: str | Path, *, size: Sequence[int] = (64, 64),
                normalise: str = "zscore", channels: Sequence[int] | None = None, axis: int = 2,
                min_foreground: float = 0.0, window: Sequence[float] | None = None,
                dataset: str | None = None) -> None:
    """Convert an MSD-layout NIfTI dataset into a slice store (see the module docstring).

    Args:
        src_dir: the MSD task directory.
        out_path: the slice store to write, e.g. ``results/slices/spleen.h5``.
        size: ``(H, W)`` of the stored slices.
        normalise: ``"zscore"``, ``"minmax"``, ``"window"`` or ``"none"`` (:func:`normalise_volume`).
        channels: image channel indices to keep, in this order (None: all).
        axis: canonical slice axis: 0 sagittal, 1 coronal, 2 axial.
        min_foreground: keep slices whose fraction of non-zero voxels in the first kept channel (after
            normalisation) is >= this; a case left with no slice is skipped with a warning and listed in
            ``provenance["skipped_cases"]``.
        window: ``[lo, hi]`` for ``normalise="window"``.
        dataset: the store's dataset name (default: the stem of ``out_path``).

    Raises:
        FileNotFoundError: dataset.json or a listed file is missing.
        ValueError: bad options; an unreadable or corrupt file, a label not on its image grid, a label with
            non-integer values or values not in dataset.json ``labels``, a channel index out of range, NaN
            in an image (each names the file); every case skipped. Nothing is written on error.
    """
    src_dir = Path(src_dir)
    size = (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise ValueError(f"size must be two positive ints, got {size}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    if not 0.0 <= float(min_foreground) <= 1.0:
        raise ValueError(f"min_foreground must lie in [0, 1], got {min_foreground}")
    _check_normalise(normalise, window)
    meta = read_dataset_json(src_dir)
    cases = read_msd_cases(src_dir)
    label_names = _label_names(meta, src_dir)
    n_source_channels = _n_channels(cases[0][1])
    selected = list(range(n_source_channels)) if channels is None else [int(c) for c in channels]
    if not selected or min(selected) < 0 or max(selected) >= n_source_channels:
        raise ValueError(f"channels {channels!r} out of range for {n_source_channels} channel(s) in {cases[0][1]}")
    modality = meta.get("modality") or {}
    channel_names = [str(modality.get(str(c), f"channel{c}")) for c in selected]
    options = {"size": list(size), "normalise": normalise, "window": None if window is None else list(window),
               "channels": selected, "axis": axis, "min_foreground": float(min_foreground)}
    skipped: list[str] = []
    provenance = {
        "converter": "medkd.data.convert.convert_msd",
        "source_dir": str(src_dir),
        "source_name": meta.get("name"),
        "options": options,
        "medkd_version": medkd.__version__,
        "created_by": "medkd convert",
        "skipped_cases": skipped,  # filled while converting; write_store serialises attrs after the cases
    }
    attrs = {"dataset": dataset or Path(out_path).stem, "channel_names": channel_names,
             "label_names": label_names, "provenance": provenance, "size": list(size)}

    def produce() -> Iterator[SliceCase]:
        for cid, image_path, label_path in tqdm(cases, desc=f"convert {src_dir.name}", unit="case"):
            case = convert_case(cid, image_path, label_path, size=size, normalise=normalise, channels=selected,
                                axis=axis, min_foreground=min_foreground, window=window,
                                label_values=set(int(k) for k in label_names))
            if case is None:
                log.warning("%s: no slice has foreground fraction >= %g; case skipped", image_path, min_foreground)
                skipped.append(cid)
                continue
            yield case
        if len(skipped) == len(cases):
            raise ValueError(f"{src_dir}: every case was skipped by min_foreground={min_foreground}")

    write_store(out_path, produce(), attrs)


def convert_case(case_id: str, image_path: Path, label_path: Path | None, *, size: tuple[int, int],
                 normalise: str, channels: Sequence[int], axis: int, min_foreground: float,
                 window: Sequence[float] | None, label_values: set[int] | None = None) -> SliceCase | None:
    """Convert one case (arguments as in :func:`convert_msd`; ``channels`` must be explicit).

    Returns:
        The case's :class:`SliceCase`, or None when no slice passes ``min_foreground``.

    Raises:
        ValueError: see :func:`convert_msd` (every message names the offending file).
    """
    data, affine = load_canonical(image_path)
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise ValueError(f"{image_path}: expected (X, Y, Z) or (X, Y, Z, C), got shape {data.shape}")
    if max(channels) >= data.shape[3]:
        raise ValueError(f"{image_path}: has {data.shape[3]} channel(s), channels {list(channels)} requested")
    spatial = data.shape[:3]
    label = None
    if label_path is not None:
        label = _load_label(label_path, spatial, affine, image_path, label_values)

    volumes = []
    for c in channels:
        channel = np.asarray(data[..., c], dtype=np.float32)
        if not np.isfinite(channel).all():
            raise ValueError(f"{image_path}: channel {c} contains NaN or infinite values")
        volumes.append(normalise_volume(channel, normalise, window))
    volume = np.stack(volumes, axis=0)  # (C, X, Y, Z)

    stack = np.moveaxis(volume, axis + 1, 0)  # (S, C, H, W)
    foreground = (stack[:, 0] != 0).mean(axis=(1, 2))
    keep = np.flatnonzero(foreground >= float(min_foreground))
    if len(keep) == 0:
        return None
    image = _resize_stack(stack[keep], size, order=1).astype(np.float32)
    label_stack = None
    if label is not None:
        slices = np.moveaxis(label, axis, 0)[keep]
        label_stack = np.rint(_resize_stack(slices.astype(np.float32), size, order=0)).astype(np.uint8)

    zooms = nib.affines.voxel_sizes(affine)
    in_plane = [a for a in range(3) if a != axis]
    spacing = (float(zooms[in_plane[0]] * spatial[in_plane[0]] / size[0]),
               float(zooms[in_plane[1]] * spatial[in_plane[1]] / size[1]),
               float(zooms[axis]))
    return SliceCase(
        case_id=case_id, image=image, label=label_stack, spacing=spacing, affine=affine,
        attrs={"source_image": str(image_path), "source_label": "" if label_path is None else str(label_path),
               "original_shape": np.asarray(spatial, dtype=np.int64), "slice_indices": keep.astype(np.int64)},
    )


def _load_label(label_path: Path, spatial: tuple[int, ...], image_affine: np.ndarray, image_path: Path,
                label_values: set[int] | None) -> np.ndarray:
    raw, affine = load_canonical(label_path)
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if raw.shape != tuple(spatial) or not np.allclose(affine, image_affine, rtol=0.0, atol=AFFINE_TOLERANCE):
        raise ValueError(
            f"{label_path}: label is not on the grid of its image {image_path} after canonicalisation: "
            f"label shape {raw.shape} vs image {tuple(spatial)}; label affine {affine.round(4).tolist()} vs "
            f"image affine {image_affine.round(4).tolist()} (tolerance {AFFINE_TOLERANCE})"
        )
    if not np.issubdtype(raw.dtype, np.integer):
        if not np.isfinite(raw).all() or not np.array_equal(raw, np.round(raw)):
            raise ValueError(f"{label_path}: label has non-integer or non-finite values")
    if raw.size and (raw.min() < 0 or raw.max() > 255):
        raise ValueError(f"{label_path}: label values must lie in 0..255, found {raw.min()}..{raw.max()}")
    label = raw.astype(np.uint8)
    if label_values is not None:
        present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
        unknown = sorted(set(int(v) for v in present) - label_values)
        if unknown:
            raise ValueError(f"{label_path}: label values {unknown} are not listed in dataset.json 'labels' "
                             f"{sorted(label_values)}")
    return label


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
