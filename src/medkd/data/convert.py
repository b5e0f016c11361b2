"""The conversion driver every format shares: slicing options, normalisation, label checks, slicing, writing.

A converter of :mod:`medkd.data.formats` only knows its layout: it lists the cases of a dataset folder and,
per case, reads the volumes in the canonical orientation (:mod:`medkd.data.geometry`). Everything after
that is here, so a case from any format ends up the same way:

1. every volume is in the closest canonical orientation, RAS+ (axis 0 toward the patient's Right, axis 1
   Anterior, axis 2 Superior); extra channels on another grid are resampled onto the reference channel's
   grid by the converter; labels must already lie on that grid (same shape, affines equal within 1e-3,
   :func:`load_label_on_grid`) with integer values among the format's label names;
2. each channel is normalised over its whole 3-D volume (:func:`normalise_volume`; ``normalise``/``window``
   for all channels, or ``modality_normalise`` per channel name);
3. slices are cut along ``axis`` (2: axial); those whose fraction of non-zero voxels in the first channel,
   after normalisation, is below ``min_foreground`` are dropped;
4. the rest are resized to ``size`` (:func:`medkd.data.geometry.resize_stack`; image: linear, label:
   nearest; no anti-aliasing) - :func:`volumes_to_case`;
5. :func:`write_converted` runs the per-case loaders and writes the slice store atomically
   (:func:`medkd.data.store.write_store`); a case left with no slice is skipped with a warning and listed in
   ``provenance["skipped_cases"]``.

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
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

import medkd
from medkd.data.geometry import (
    AFFINE_TOLERANCE,
    NIFTI_SUFFIXES,
    has_suffix,
    load_canonical,
    on_grid,
    read_volume,
    resize_stack,
)
from medkd.data.store import SliceCase, write_store
from medkd.errors import InputError

log = logging.getLogger(__name__)

NORMALISATIONS = ("zscore", "minmax", "window", "none")
CONSTANT_ATTR = "constant_channels"
"""Case attribute (JSON list of ``{"channel", "value"}``) set on a case with a constant (or all-zero) channel."""

_WINDOW_SCHEMA = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}

SLICE_OPTIONS_SCHEMA: dict[str, dict] = {
    "size": {"description": "[H, W] of the stored slices", "type": "array",
             "items": {"type": "integer", "minimum": 8}, "minItems": 2, "maxItems": 2, "default": [64, 64]},
    "normalise": {"description": "per channel over the whole 3-D volume (medkd.data.convert.normalise_volume)",
                  "enum": list(NORMALISATIONS), "default": "zscore"},
    "window": {"description": "[lo, hi] for normalise: window", **_WINDOW_SCHEMA},
    "axis": {"description": "canonical slice axis: 0 sagittal, 1 coronal, 2 axial", "enum": [0, 1, 2],
             "default": 2},
    "min_foreground": {"description": "keep slices whose fraction of non-zero voxels in the first channel is >= this",
                       "type": "number", "minimum": 0, "maximum": 1, "default": 0.0},
    "slice_step": {"description": "keep only every k-th slice along the axis (index % k == 0), before min_foreground; "
                                  "the stored through-plane spacing is k times the voxel size",
                   "type": "integer", "minimum": 1, "default": 1},
}
"""JSON schema (``properties``) of the slicing options every format accepts (:func:`slice_options`)."""

MODALITY_NORMALISE_SCHEMA: dict[str, dict] = {
    "modality_normalise": {
        "description": "per channel name, a normalise/window overriding the dataset-wide ones",
        "type": "object",
        "additionalProperties": {"type": "object", "additionalProperties": False,
                                 "properties": {"normalise": {"enum": list(NORMALISATIONS)}, "window": _WINDOW_SCHEMA}},
    },
}
"""JSON schema of ``modality_normalise``, for the formats whose channels have names (include it in ``options``)."""


# ------------------------------------------------------------------------------------------ options


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
    check_normalise(method, window)
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


def check_normalise(method: str, window: Sequence[float] | None) -> None:
    """Raise ValueError unless ``method`` is known and ``window`` is given exactly when it is ``"window"``."""
    if method not in NORMALISATIONS:
        raise ValueError(f"unknown normalise {method!r}; choose one of {NORMALISATIONS}")
    if method == "window":
        if window is None or len(window) != 2 or not float(window[0]) < float(window[1]):
            raise ValueError(f"normalise='window' needs window=[lo, hi] with lo < hi, got {window!r}")
    elif window is not None:
        raise ValueError(f"window={list(window)!r} is only used with normalise='window', not {method!r}")


@dataclass(frozen=True)
class SliceOptions:
    """The slicing options shared by every converter.

    Attributes:
        size: ``(H, W)`` of the stored slices.
        normalise: ``zscore`` | ``minmax`` | ``window`` | ``none`` (:func:`normalise_volume`).
        window: ``[lo, hi]`` for ``normalise="window"``.
        axis: canonical slice axis (0 sagittal, 1 coronal, 2 axial).
        min_foreground: minimum fraction of non-zero voxels of the first channel, after normalisation.
        slice_step: keep only slices whose index along ``axis`` is a multiple of this (1: every slice); the
            through-plane spacing recorded for the case is ``slice_step`` times the voxel size, so 3-D metrics
            (HD95 in mm) stay in world units.
        modality_normalise: channel name -> ``{"normalise": ..., "window": [lo, hi]}`` overriding
            ``normalise``/``window`` for that channel (e.g. HECKTOR: CT windowed, PET z-scored).
    """

    size: tuple[int, int] = (64, 64)
    normalise: str = "zscore"
    window: tuple[float, float] | None = None
    axis: int = 2
    min_foreground: float = 0.0
    slice_step: int = 1
    modality_normalise: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def method_for(self, channel: Any) -> tuple[str, Sequence[float] | None]:
        """(normalise, window) of one channel name."""
        override = self.modality_normalise.get(channel)
        if override is None:
            return self.normalise, self.window
        return override.get("normalise", "zscore"), override.get("window")

    def as_dict(self) -> dict:
        return {"size": list(self.size), "normalise": self.normalise,
                "window": None if self.window is None else list(self.window), "axis": self.axis,
                "min_foreground": self.min_foreground, "slice_step": self.slice_step,
                "modality_normalise": {k: dict(v) for k, v in self.modality_normalise.items()}}


def slice_options(size: Sequence[int] = (64, 64), normalise: str = "zscore", window: Sequence[float] | None = None,
                  axis: int = 2, min_foreground: float = 0.0, slice_step: int = 1,
                  modality_normalise: Mapping[str, Mapping[str, Any]] | None = None,
                  channel_names: Sequence[str] | None = None) -> SliceOptions:
    """Validate the shared options and bundle them.

    Args:
        size, normalise, window, axis, min_foreground, slice_step: see :class:`SliceOptions`.
        modality_normalise: per-channel overrides, keys must be among ``channel_names``.
        channel_names: the channel names of the dataset being converted (for checking the overrides).

    Raises:
        ValueError: a size that is not two positive ints, an axis outside 0..2, ``min_foreground`` outside
            [0, 1], a ``slice_step`` below 1, an unknown normalisation or a bad window (also inside an override), an override for a
            channel that is not converted, or an override with keys other than ``normalise``/``window``.
    """
    if len(size) != 2 or min(int(s) for s in size) < 1:
        raise ValueError(f"size must be two positive ints, got {list(size)}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    if not 0.0 <= float(min_foreground) <= 1.0:
        raise ValueError(f"min_foreground must lie in [0, 1], got {min_foreground}")
    if isinstance(slice_step, bool) or int(slice_step) != slice_step or int(slice_step) < 1:
        raise ValueError(f"slice_step must be a positive integer, got {slice_step!r}")
    check_normalise(normalise, window)
    overrides = {str(k): dict(v) for k, v in (modality_normalise or {}).items()}
    for name, spec in overrides.items():
        if channel_names is not None and name not in channel_names:
            raise ValueError(f"modality_normalise names {name!r}, which is not among the converted channels "
                             f"{list(channel_names)}")
        unknown = sorted(set(spec) - {"normalise", "window"})
        if unknown:
            raise ValueError(f"modality_normalise[{name!r}]: unknown keys {unknown} (use normalise, window)")
        check_normalise(spec.get("normalise", "zscore"), spec.get("window"))
    return SliceOptions(size=(int(size[0]), int(size[1])), normalise=normalise,
                        window=None if window is None else (float(window[0]), float(window[1])), axis=int(axis),
                        min_foreground=float(min_foreground), slice_step=int(slice_step),
                        modality_normalise=overrides)


# ------------------------------------------------------------------------------------------ labels


def check_label_values(raw: np.ndarray, path: Path | str, values: set[int],
                       listed_in: str = "the format's label names") -> np.ndarray:
    """Integer label values in 0..255 that are all in ``values``; returns uint8.

    Args:
        raw: the label volume.
        path: named in the messages.
        values: the allowed values.
        listed_in: where the allowed values come from, for the message (e.g. ``"dataset.json 'labels'"``).

    Raises:
        InputError: non-integer or non-finite values, values outside 0..255 or not in ``values`` (the message
            names the file, the allowed values and the values found).
    """
    raw = np.asarray(raw)
    if not np.issubdtype(raw.dtype, np.integer):
        if not np.isfinite(raw).all() or not np.array_equal(raw, np.round(raw)):
            raise InputError(f"{path}: label has non-integer or non-finite values")
    if raw.size and (raw.min() < 0 or raw.max() > 255):
        raise InputError(f"{path}: label values must lie in 0..255, found {raw.min()}..{raw.max()}")
    label = raw.astype(np.uint8)
    present = label_values(label)
    unknown = sorted(present - values)
    if unknown:
        raise InputError(f"{path}: label values {unknown} are not listed in {listed_in} {sorted(values)} "
                         f"(values found: {sorted(present)})")
    return label


def label_values(label: np.ndarray) -> set[int]:
    """The distinct values of a uint8 label volume."""
    return {int(v) for v in np.flatnonzero(np.bincount(np.asarray(label, dtype=np.uint8).ravel(), minlength=256))}


def load_label_on_grid(path: Path, ref_shape: Sequence[int], ref_affine: np.ndarray, image_path: Path,
                       label_names: Mapping[str, str], listed_in: str = "the format's label names") -> np.ndarray:
    """A label volume that must lie on its image's grid, with values among ``label_names``.

    NIfTI labels are read with :func:`medkd.data.geometry.load_canonical` (a trailing channel axis of size 1 is
    dropped), ITK labels with :func:`medkd.data.geometry.read_volume`; both must then have the image's shape
    and affine (within 1e-3) and pass :func:`check_label_values`.

    Returns:
        uint8 ``(X, Y, Z)`` source label values.

    Raises:
        InputError: not a 3-D volume, not on the image grid, non-integer values, values outside 0..255 or not
            listed in ``label_names`` (the message names the file).
    """
    if has_suffix(path, NIFTI_SUFFIXES):
        raw, affine = load_canonical(path)
        if raw.ndim == 4 and raw.shape[3] == 1:
            raw = raw[..., 0]
        if raw.ndim != 3:
            raise InputError(f"{path}: label has shape {raw.shape}; a label is one 3-D volume")
    else:
        raw, affine = read_volume(path)
    if not on_grid(raw.shape, affine, ref_shape, ref_affine):
        raise InputError(
            f"{path}: label is not on the grid of its image {image_path} after canonicalisation: "
            f"label shape {raw.shape} vs image {tuple(ref_shape)}; label affine {affine.round(4).tolist()} vs "
            f"image affine {np.asarray(ref_affine).round(4).tolist()} (tolerance {AFFINE_TOLERANCE})"
        )
    return check_label_values(raw, path, {int(k) for k in label_names}, listed_in)


# ------------------------------------------------------------------------------------------ slicing


def volumes_to_case(case_id: str, channels: Mapping[Any, np.ndarray] | Sequence[tuple[Any, np.ndarray]],
                    affine: np.ndarray, label: np.ndarray | None,
                    options: SliceOptions, sources: Mapping[str, Any], extra_attrs: Mapping[str, Any] | None = None
                    ) -> SliceCase | None:
    """Slice one case given as canonical volumes on a common grid (steps 2-4 of the module docstring).

    Args:
        case_id: the case id.
        channels: channel name -> ``(X, Y, Z)`` volume, in channel order, all on the grid of ``affine`` (or a
            list of ``(name, volume)`` pairs, where a name may repeat; MSD names channels by source index).
        affine: canonical voxel-to-world matrix of that grid.
        label: uint8 ``(X, Y, Z)`` or None.
        options: slicing options.
        sources: ``{"image": path(s) as str, "label": path or ""}`` recorded as case attributes.
        extra_attrs: further case attributes (e.g. ``frame``, ``category``).

    Returns:
        The :class:`SliceCase`, or None when no slice passes ``min_foreground``.

    A channel whose voxels all hold one value (an empty, all-zero image included) is not an error: it is
    logged as a warning and recorded in the case attribute ``constant_channels`` (JSON), which
    :func:`write_converted` collects into ``provenance["constant_images"]``.

    Raises:
        ValueError: channels of different shapes, a label of another shape, NaN/inf in a channel, a channel
            with no voxels.
    """
    pairs = list(channels.items()) if isinstance(channels, Mapping) else list(channels)
    if not pairs:
        raise ValueError(f"case {case_id!r}: no channels")
    spatial = tuple(np.shape(pairs[0][1]))
    volumes, constant = [], []
    for name, volume in pairs:
        vol = np.asarray(volume, dtype=np.float32)
        if vol.shape != spatial:
            raise ValueError(f"case {case_id!r}: channel {name!r} has shape {vol.shape}, expected {spatial}")
        if vol.size == 0:
            raise ValueError(f"{sources.get('image', case_id)}: channel {name!r} is empty (shape {vol.shape})")
        if not np.isfinite(vol).all():
            raise ValueError(f"{sources.get('image', case_id)}: channel {name!r} contains NaN or infinite values")
        lo, hi = float(vol.min()), float(vol.max())
        if lo == hi:
            constant.append({"channel": str(name), "value": lo})
            log.warning("%s: channel %r of case %s is constant (every voxel %g)%s; flagged in the fingerprint "
                        "(constant_images)", sources.get("image", case_id), name, case_id, lo,
                        ", an empty image" if lo == 0 else "")
        method, window = options.method_for(name)
        volumes.append(normalise_volume(vol, method, window))
    if label is not None and tuple(label.shape) != spatial:
        raise ValueError(f"case {case_id!r}: label shape {label.shape} differs from the image {spatial}")
    axis = options.axis
    stack = np.moveaxis(np.stack(volumes, axis=0), axis + 1, 0)  # (S, C, H, W)
    foreground = (stack[:, 0] != 0).mean(axis=(1, 2))
    on_step = np.arange(len(foreground)) % options.slice_step == 0
    keep = np.flatnonzero((foreground >= options.min_foreground) & on_step)
    if len(keep) == 0:
        return None
    image = resize_stack(stack[keep], options.size, order=1).astype(np.float32)
    label_stack = None
    if label is not None:
        slices = np.moveaxis(label, axis, 0)[keep]
        label_stack = np.rint(resize_stack(slices.astype(np.float32), options.size, order=0)).astype(np.uint8)
    zooms = nib.affines.voxel_sizes(affine)
    in_plane = [a for a in range(3) if a != axis]
    spacing = (float(zooms[in_plane[0]] * spatial[in_plane[0]] / options.size[0]),
               float(zooms[in_plane[1]] * spatial[in_plane[1]] / options.size[1]),
               float(zooms[axis] * options.slice_step))
    attrs = {"source_image": str(sources.get("image", "")), "source_label": str(sources.get("label", "") or ""),
             "original_shape": np.asarray(spatial, dtype=np.int64), "slice_indices": keep.astype(np.int64)}
    attrs.update(extra_attrs or {})
    if constant:
        attrs[CONSTANT_ATTR] = json.dumps(constant)
    return SliceCase(case_id=case_id, image=image, label=label_stack, spacing=spacing,
                     affine=np.asarray(affine, dtype=np.float64), attrs=attrs)


# ------------------------------------------------------------------------------------------ writing


CaseLoader = Callable[[], "SliceCase | None"]
"""Reads and slices one case when called (lazily, so :func:`write_converted` holds one case at a time)."""


def write_converted(out_path: str | Path, jobs: Sequence[tuple[str, CaseLoader]], *, converter: Callable,
                    src_dir: Path, options: dict, channel_names: Sequence[str], label_names: Mapping[str, str],
                    dataset: str | None, provenance_extra: Mapping[str, Any] | None = None) -> None:
    """Run the case loaders and write the slice store atomically (the driver every converter uses).

    Args:
        out_path: the slice store to write.
        jobs: ``(case_id, loader)`` per case, in store order.
        converter: the converter function, recorded in the provenance by its qualified name.
        src_dir: the dataset folder (for messages and the provenance).
        options: the converter's options as recorded in the provenance; needs ``size`` and ``min_foreground``.
        channel_names, label_names: the store's root attributes.
        dataset: store name (default: the stem of ``out_path``).
        provenance_extra: further provenance entries.

    Cases whose loader returns None (no slice passes ``min_foreground``) are skipped with a warning and listed
    in ``provenance["skipped_cases"]``; when every case is skipped, nothing is written. Cases with a constant
    (e.g. all-zero) image channel are kept, warned about and listed in ``provenance["constant_images"]``
    (``[{"case", "channels": [{"channel", "value"}]}]``; the fingerprint JSON repeats it): normalising such
    a channel yields a constant (z-score: all zeros), which is almost never what the data should hold.

    Raises:
        ValueError: no cases at all, or every case skipped; any error of a loader (nothing is written).
    """
    name = f"{converter.__module__}.{converter.__qualname__}"
    if not jobs:
        raise ValueError(f"{src_dir}: no cases found for converter {name}")
    skipped: list[str] = []
    constant: list[dict] = []
    provenance = {"converter": name, "source_dir": str(src_dir), "options": options,
                  "medkd_version": medkd.__version__, "created_by": "medkd convert", "skipped_cases": skipped,
                  "constant_images": constant, **dict(provenance_extra or {})}
    standin = standin_of(src_dir)
    if standin is not None:  # generated rehearsal data (config standin_data): labelled all the way down
        provenance["standin"] = True
        provenance["standin_source"] = standin
    attrs = {"dataset": dataset or Path(out_path).stem, "channel_names": list(channel_names),
             "label_names": dict(label_names), "provenance": provenance, "size": list(options["size"])}

    def produce() -> Iterator[SliceCase]:
        for case_id, load in tqdm(jobs, desc=f"convert {src_dir.name}", unit="case", disable=None):
            case = load()
            if case is None:
                log.warning("%s: case %s has no slice with foreground fraction >= %g; skipped", src_dir, case_id,
                            options["min_foreground"])
                skipped.append(case_id)
                continue
            if CONSTANT_ATTR in case.attrs:
                constant.append({"case": case_id, "channels": json.loads(case.attrs[CONSTANT_ATTR])})
            yield case
        if len(skipped) == len(jobs):
            raise ValueError(f"{src_dir}: every case was skipped by min_foreground={options['min_foreground']}")

    write_store(out_path, produce(), attrs)


STANDIN_MARKER = ".medkd-fetched.json"
"""The fetch marker (medkd.data.sources.fetch.MARKER_NAME; read here directly, so the converters' code hash
does not cover the fetch code)."""


def standin_of(src_dir: str | Path) -> dict | None:
    """``{"generator", "seed", "version"}`` when ``src_dir`` holds stand-in data (its fetch marker says
    ``"standin": true``, :mod:`medkd.data.standins`), else None (real data, or no marker)."""
    try:
        marker = json.loads((Path(src_dir) / STANDIN_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not marker.get("standin"):
        return None
    return {"generator": marker.get("standin_generator"), "seed": marker.get("standin_seed"),
            "version": marker.get("standin_version")}


# ------------------------------------------------------------------------------------------ layouts


class MissingCaseFile(InputError, FileNotFoundError):
    """A file a case needs (a modality, a mask, a label) is missing: refused, naming the file and the case.

    An :class:`~medkd.errors.InputError` that is also a FileNotFoundError (what the converters raised before)."""


def refuse_orphans(pairs: Iterable[tuple[Path, Path]], what: str) -> None:
    """Refuse the first ``(file, image)`` pair whose image is missing: a label, mask or extra sequence with
    nothing to belong to is a broken case, never silently ignored.

    Raises:
        InputError: ``<file>: <what> without its image <image> (orphan)``.
    """
    for path, image in pairs:
        if not image.is_file():
            raise InputError(f"{path}: {what} without its image {image.name} (orphan); add the image or remove "
                             "the file")


def warn_source(warnings: list[str], message: str) -> None:
    """Log ``message`` as a warning and append it to ``warnings``.

    A converter passes ``warnings`` as ``provenance_extra={"source_warnings": warnings}`` to
    :func:`write_converted`, so what it converted anyway (a grey PNG replicated to RGB, studies skipped by a
    documented option) is listed in the store's provenance and, by ``medkd convert``, in the fingerprint JSON
    (``source_warnings``, as MSD's numTraining mismatch). Loaders may append while the store is written: the
    provenance is serialised after the last case.
    """
    log.warning("%s", message)
    warnings.append(message)



def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory; FileNotFoundError naming it and ``what`` it should hold otherwise."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {what} not found")
    return path


def find_one(folder: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    """``folder/<stem><suffix>`` for the first suffix that exists (None if none does)."""
    for suffix in suffixes:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def natural_key(text: str) -> list:
    """Sort key that orders the digit runs of ``text`` numerically (``"2" < "10"``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]
