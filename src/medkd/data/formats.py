"""Converters for the raw formats of the paper datasets other than MSD, into the canonical slice store.

Every converter reads one dataset folder ``data/<name>/`` (the layouts listed in ``config/datasets.yaml``)
and writes ``results/slices/<name>.h5`` with :func:`medkd.data.store.write_store`. They share the slicing
rules of :func:`medkd.data.convert.convert_msd` and reuse its helpers (``load_canonical``,
``normalise_volume``, the label checks and the resize), so a case from any format ends up the same way:

1. every volume is read in the closest canonical orientation, RAS+ (axis 0 toward the patient's Right,
   axis 1 Anterior, axis 2 Superior). NIfTI goes through ``nibabel.as_closest_canonical``; ITK formats
   (``.mha``, ``.mhd``, ``.nrrd``; PI-CAI, MRBrainS13's original release) are read with SimpleITK, whose
   LPS physical frame is turned into RAS (x and y negated) before the same canonicalisation
   (:func:`read_volume`). Formats without geometry (PNG, ``.mat``) use the identity orientation with the
   given pixel spacing;
2. extra channels on another grid (HECKTOR PET vs CT, PI-CAI ADC/high-b vs T2w) are resampled onto the
   reference channel's grid through world coordinates (:func:`resample_to_grid`). Labels must already lie
   on the reference grid (same shape, affines equal within 1e-3), exactly as ``convert_msd`` requires;
3. each channel is normalised over its whole 3-D volume (``normalise``/``window`` for all channels, or
   ``modality_normalise`` per channel name), slices are cut along ``axis``, slices whose fraction of
   non-zero voxels in the first channel is below ``min_foreground`` are dropped, and the rest are resized
   to ``size`` (image: linear, label: nearest; no anti-aliasing);
4. stored spacing is ``(row_mm, col_mm, slice_mm)`` of the resized slices, as in ``convert_msd``.

Formats (``convert.format`` in the config; the names of the ``converter`` fields of
``config/datasets.yaml``):

=================  ==========================  ====================================================
format             function                    layout under ``src_dir``
=================  ==========================  ====================================================
``brats_nifti``    :func:`convert_brats`       ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``
``acdc_nifti``     :func:`convert_acdc`        ``{training,testing}/patientNNN/Info.cfg`` and
                                               ``patientNNN_frameFF[_gt].nii.gz``
``mrbrains13``     :func:`convert_mrbrains`    ``{TrainingData,TestData}/<n>/{T1,T1_IR,T2_FLAIR,
                                               LabelsForTesting,...}.{nii,nii.gz,mhd}``
``cc359_nifti``    :func:`convert_cc359`       ``Original/CC*.nii.gz`` (no labels)
``vn_knee_mat``    :func:`convert_knee_mat`    ``<sequence>/<patient>/espirit<k>.mat`` (``reference``)
``busi_png``       :func:`convert_busi`        ``{benign,malignant,normal}/<class> (<n>)[_mask].png``
``hecktor_nifti``  :func:`convert_hecktor`     ``hecktor_nii/<ID>_{ct,pt,gtvt}.nii.gz`` + bbox CSV
``picai_mha``      :func:`convert_picai`       ``images/<patient>/<patient>_<study>_{t2w,adc,hbv}.mha``
                                               and ``labels/.../<patient>_<study>.nii.gz``
=================  ==========================  ====================================================

:func:`convert_dataset` dispatches a config's ``convert`` entry to the right function (``msd`` included)
and refuses options the chosen format does not use.
"""

from __future__ import annotations

import configparser
import csv
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

import medkd
from medkd.data.convert import (
    AFFINE_TOLERANCE,
    _check_normalise,
    _load_label,
    _resize_stack,
    convert_msd,
    load_canonical,
    normalise_volume,
)
from medkd.data.store import SliceCase, write_store

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
INTERPOLATIONS = ("nearest", "linear")

#: Label names per format (source value -> name); stored labels keep the source values.
BRATS_LABELS = {"0": "background", "1": "NCR_NET", "2": "ED", "3": "ET_2023", "4": "ET"}
ACDC_LABELS = {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}
MRBRAINS_LABELS = {
    "LabelsForTesting": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"},
    "LabelsForTraining": {"0": "background", "1": "cortical_GM", "2": "basal_ganglia", "3": "WM",
                          "4": "WM_lesions", "5": "CSF", "6": "ventricles", "7": "cerebellum",
                          "8": "brainstem"},
}
BUSI_LABELS = {"0": "background", "1": "lesion"}
HECKTOR_LABELS = {"0": "background", "1": "GTVt"}
PICAI_LABELS = {"0": "background", "1": "lesion", "2": "ISUP2", "3": "ISUP3", "4": "ISUP4", "5": "ISUP5"}
BUSI_CLASSES = ("benign", "malignant", "normal")


# ------------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class SliceOptions:
    """The slicing options shared by every converter (the meaning is that of ``convert_msd``).

    Attributes:
        size: ``(H, W)`` of the stored slices.
        normalise: ``zscore`` | ``minmax`` | ``window`` | ``none`` (:func:`medkd.data.convert.normalise_volume`).
        window: ``[lo, hi]`` for ``normalise="window"``.
        axis: canonical slice axis (0 sagittal, 1 coronal, 2 axial).
        min_foreground: minimum fraction of non-zero voxels of the first channel, after normalisation.
        modality_normalise: channel name -> ``{"normalise": ..., "window": [lo, hi]}`` overriding
            ``normalise``/``window`` for that channel (e.g. HECKTOR: CT windowed, PET z-scored).
    """

    size: tuple[int, int] = (64, 64)
    normalise: str = "zscore"
    window: tuple[float, float] | None = None
    axis: int = 2
    min_foreground: float = 0.0
    modality_normalise: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def method_for(self, channel: str) -> tuple[str, Sequence[float] | None]:
        """(normalise, window) of one channel name."""
        override = self.modality_normalise.get(channel)
        if override is None:
            return self.normalise, self.window
        return override.get("normalise", "zscore"), override.get("window")

    def as_dict(self) -> dict:
        return {"size": list(self.size), "normalise": self.normalise,
                "window": None if self.window is None else list(self.window), "axis": self.axis,
                "min_foreground": self.min_foreground,
                "modality_normalise": {k: dict(v) for k, v in self.modality_normalise.items()}}


def slice_options(size: Sequence[int] = (64, 64), normalise: str = "zscore", window: Sequence[float] | None = None,
                  axis: int = 2, min_foreground: float = 0.0,
                  modality_normalise: Mapping[str, Mapping[str, Any]] | None = None,
                  channel_names: Sequence[str] | None = None) -> SliceOptions:
    """Validate the shared options and bundle them.

    Args:
        size, normalise, window, axis, min_foreground: as in :func:`medkd.data.convert.convert_msd`.
        modality_normalise: per-channel overrides, keys must be among ``channel_names``.
        channel_names: the channel names of the dataset being converted (for checking the overrides).

    Raises:
        ValueError: a size that is not two positive ints, an axis outside 0..2, ``min_foreground`` outside
            [0, 1], an unknown normalisation or a bad window (also inside an override), an override for a
            channel that is not converted, or an override with keys other than ``normalise``/``window``.
    """
    if len(size) != 2 or min(int(s) for s in size) < 1:
        raise ValueError(f"size must be two positive ints, got {list(size)}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    if not 0.0 <= float(min_foreground) <= 1.0:
        raise ValueError(f"min_foreground must lie in [0, 1], got {min_foreground}")
    _check_normalise(normalise, window)
    overrides = {str(k): dict(v) for k, v in (modality_normalise or {}).items()}
    for name, spec in overrides.items():
        if channel_names is not None and name not in channel_names:
            raise ValueError(f"modality_normalise names {name!r}, which is not among the converted channels "
                             f"{list(channel_names)}")
        unknown = sorted(set(spec) - {"normalise", "window"})
        if unknown:
            raise ValueError(f"modality_normalise[{name!r}]: unknown keys {unknown} (use normalise, window)")
        _check_normalise(spec.get("normalise", "zscore"), spec.get("window"))
    return SliceOptions(size=(int(size[0]), int(size[1])), normalise=normalise,
                        window=None if window is None else (float(window[0]), float(window[1])), axis=int(axis),
                        min_foreground=float(min_foreground), modality_normalise=overrides)


# ------------------------------------------------------------------------------------------ reading


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D volume in the closest canonical (RAS+) orientation, whatever its format.

    NIfTI (``.nii``, ``.nii.gz``) uses :func:`medkd.data.convert.load_canonical`. ITK formats (``.mha``,
    ``.mhd``, ``.nrrd``, ``.nhdr``) are read with SimpleITK: its array ``(z, y, x)`` is transposed to index
    order ``(x, y, z)``, the voxel-to-world matrix ``direction * spacing`` plus ``origin`` (LPS, mm) becomes
    RAS by negating its first two rows, and the volume is reoriented with ``nibabel.as_closest_canonical``.
    An ITK volume with identity direction therefore comes out flipped along axes 0 and 1.

    Args:
        path: the file.

    Returns:
        (data ``(X, Y, Z)`` in canonical axis order, with the file's dtype; canonical affine ``(4, 4)`` float64).

    Raises:
        ValueError: unsupported suffix, unreadable or corrupt file, not a 3-D single-component volume
            (the message names the file).
    """
    path = Path(path)
    if _has_suffix(path, NIFTI_SUFFIXES):
        data, affine = load_canonical(path)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise ValueError(f"{path}: expected a 3-D volume, got shape {data.shape}")
        return data, affine
    if not _has_suffix(path, ITK_SUFFIXES):
        raise ValueError(f"{path}: unsupported volume format (use {NIFTI_SUFFIXES + ITK_SUFFIXES})")
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:  # SimpleITK raises RuntimeError for unreadable/corrupt files
        raise ValueError(f"{path}: cannot read image ({str(exc).strip().splitlines()[-1]})") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{path}: expected a 3-D single-component image, got dimension {image.GetDimension()} "
                         f"with {image.GetNumberOfComponentsPerPixel()} component(s)")
    data = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, ras))
    return np.asanyarray(canonical.dataobj), np.asarray(canonical.affine, dtype=np.float64)


def on_grid(shape: Sequence[int], affine: np.ndarray, ref_shape: Sequence[int], ref_affine: np.ndarray) -> bool:
    """True when two volumes share the voxel grid: same shape, affines equal within 1e-3."""
    return tuple(shape) == tuple(ref_shape) and bool(
        np.allclose(affine, ref_affine, rtol=0.0, atol=AFFINE_TOLERANCE))


def resample_to_grid(data: np.ndarray, affine: np.ndarray, shape: Sequence[int], target_affine: np.ndarray,
                     order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Resample a volume onto another voxel grid through world (RAS, mm) coordinates.

    Output voxel ``v`` takes the input value at voxel ``inv(affine) @ target_affine @ v`` (scipy
    ``ndimage.affine_transform``, spline ``order``; outside the input: ``cval``, as ITK's default pixel
    value 0). A volume already on the grid (:func:`on_grid`) is returned unchanged.

    Args:
        data: ``(X, Y, Z)`` volume.
        affine: its voxel-to-world matrix.
        shape: output shape ``(X', Y', Z')``.
        target_affine: the output grid's voxel-to-world matrix.
        order: 0 nearest (labels), 1 linear, 3 cubic B-spline (the HECKTOR organisers' resampling).
        cval: value outside the input.

    Returns:
        float32 ``shape`` array (orders > 0), or the input dtype for order 0.

    Raises:
        ValueError: not a 3-D volume, a singular affine, or an order outside 0..5.
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"resample_to_grid expects a 3-D volume, got shape {data.shape}")
    if not 0 <= int(order) <= 5:
        raise ValueError(f"spline order must lie in 0..5, got {order}")
    if on_grid(data.shape, affine, shape, target_affine):
        return data
    try:
        mapping = np.linalg.solve(np.asarray(affine, dtype=np.float64), np.asarray(target_affine, dtype=np.float64))
    except np.linalg.LinAlgError as exc:
        raise ValueError(f"resample_to_grid: singular affine {np.asarray(affine).tolist()}") from exc
    source = data if order == 0 else data.astype(np.float32)
    out = ndimage.affine_transform(source, mapping[:3, :3], offset=mapping[:3, 3],
                                   output_shape=tuple(int(s) for s in shape), order=int(order), mode="constant",
                                   cval=cval, prefilter=int(order) > 1)
    return out if order == 0 else out.astype(np.float32)


def load_label_on_grid(path: Path, ref_shape: Sequence[int], ref_affine: np.ndarray, image_path: Path,
                       label_names: Mapping[str, str]) -> np.ndarray:
    """A label volume that must lie on its image's grid, with values among ``label_names``.

    NIfTI labels go through :func:`medkd.data.convert._load_label` (the MSD converter's checks); ITK labels
    are read with :func:`read_volume` and checked the same way.

    Returns:
        uint8 ``(X, Y, Z)`` source label values.

    Raises:
        ValueError: not on the image grid, non-integer values, values outside 0..255 or not listed in
            ``label_names`` (the message names the file).
    """
    values = {int(k) for k in label_names}
    if _has_suffix(path, NIFTI_SUFFIXES):
        return _load_label(path, tuple(ref_shape), ref_affine, image_path, values)
    raw, affine = read_volume(path)
    if not on_grid(raw.shape, affine, ref_shape, ref_affine):
        raise ValueError(f"{path}: label is not on the grid of its image {image_path} after canonicalisation: "
                         f"label shape {raw.shape} vs image {tuple(ref_shape)}; label affine "
                         f"{affine.round(4).tolist()} vs image affine {np.asarray(ref_affine).round(4).tolist()}")
    return check_label_values(raw, path, values)


def check_label_values(raw: np.ndarray, path: Path | str, values: set[int]) -> np.ndarray:
    """Integer label values in 0..255 that are all in ``values``; returns uint8 (message names ``path``)."""
    raw = np.asarray(raw)
    if not np.issubdtype(raw.dtype, np.integer):
        if not np.isfinite(raw).all() or not np.array_equal(raw, np.round(raw)):
            raise ValueError(f"{path}: label has non-integer or non-finite values")
    if raw.size and (raw.min() < 0 or raw.max() > 255):
        raise ValueError(f"{path}: label values must lie in 0..255, found {raw.min()}..{raw.max()}")
    label = raw.astype(np.uint8)
    present = {int(v) for v in np.flatnonzero(np.bincount(label.ravel(), minlength=256))}
    unknown = sorted(present - values)
    if unknown:
        raise ValueError(f"{path}: label values {unknown} are not among the known values {sorted(values)}")
    return label


# ------------------------------------------------------------------------------------------ slicing


def volumes_to_case(case_id: str, channels: Mapping[str, np.ndarray], affine: np.ndarray, label: np.ndarray | None,
                    options: SliceOptions, sources: Mapping[str, str], extra_attrs: Mapping[str, Any] | None = None
                    ) -> SliceCase | None:
    """Slice one case given as canonical volumes on a common grid (the array form of ``convert_case``).

    Args:
        case_id: the case id.
        channels: channel name -> ``(X, Y, Z)`` volume, in channel order, all on the grid of ``affine``.
        affine: canonical voxel-to-world matrix of that grid.
        label: uint8 ``(X, Y, Z)`` or None.
        options: slicing options.
        sources: ``{"image": path(s) as str, "label": path or ""}`` recorded as case attributes.
        extra_attrs: further case attributes (e.g. ``frame``, ``category``).

    Returns:
        The :class:`SliceCase`, or None when no slice passes ``min_foreground``.

    Raises:
        ValueError: channels of different shapes, a label of another shape, NaN/inf in a channel.
    """
    names = list(channels)
    if not names:
        raise ValueError(f"case {case_id!r}: no channels")
    spatial = tuple(np.shape(channels[names[0]]))
    volumes = []
    for name in names:
        vol = np.asarray(channels[name], dtype=np.float32)
        if vol.shape != spatial:
            raise ValueError(f"case {case_id!r}: channel {name!r} has shape {vol.shape}, expected {spatial}")
        if not np.isfinite(vol).all():
            raise ValueError(f"{sources.get('image', case_id)}: channel {name!r} contains NaN or infinite values")
        method, window = options.method_for(name)
        volumes.append(normalise_volume(vol, method, window))
    if label is not None and tuple(label.shape) != spatial:
        raise ValueError(f"case {case_id!r}: label shape {label.shape} differs from the image {spatial}")
    axis = options.axis
    stack = np.moveaxis(np.stack(volumes, axis=0), axis + 1, 0)  # (S, C, H, W)
    foreground = (stack[:, 0] != 0).mean(axis=(1, 2))
    keep = np.flatnonzero(foreground >= options.min_foreground)
    if len(keep) == 0:
        return None
    image = _resize_stack(stack[keep], options.size, order=1).astype(np.float32)
    label_stack = None
    if label is not None:
        slices = np.moveaxis(label, axis, 0)[keep]
        label_stack = np.rint(_resize_stack(slices.astype(np.float32), options.size, order=0)).astype(np.uint8)
    zooms = nib.affines.voxel_sizes(affine)
    in_plane = [a for a in range(3) if a != axis]
    spacing = (float(zooms[in_plane[0]] * spatial[in_plane[0]] / options.size[0]),
               float(zooms[in_plane[1]] * spatial[in_plane[1]] / options.size[1]),
               float(zooms[axis]))
    attrs = {"source_image": str(sources.get("image", "")), "source_label": str(sources.get("label", "") or ""),
             "original_shape": np.asarray(spatial, dtype=np.int64), "slice_indices": keep.astype(np.int64)}
    attrs.update(extra_attrs or {})
    return SliceCase(case_id=case_id, image=image, label=label_stack, spacing=spacing,
                     affine=np.asarray(affine, dtype=np.float64), attrs=attrs)


CaseLoader = Callable[[], "SliceCase | None"]


def write_converted(out_path: str | Path, jobs: Sequence[tuple[str, CaseLoader]], *, converter: str,
                    src_dir: Path, options: dict, channel_names: Sequence[str], label_names: Mapping[str, str],
                    dataset: str | None, provenance_extra: Mapping[str, Any] | None = None) -> None:
    """Run the case loaders and write the slice store atomically (the driver every converter shares).

    Cases whose loader returns None (no slice passes ``min_foreground``) are skipped with a warning and listed
    in ``provenance["skipped_cases"]``; when every case is skipped, nothing is written.

    Raises:
        ValueError: no cases at all, or every case skipped; any error of a loader (nothing is written).
    """
    if not jobs:
        raise ValueError(f"{src_dir}: no cases found for converter {converter}")
    skipped: list[str] = []
    provenance = {"converter": f"medkd.data.formats.{converter}", "source_dir": str(src_dir), "options": options,
                  "medkd_version": medkd.__version__, "created_by": "medkd convert", "skipped_cases": skipped,
                  **dict(provenance_extra or {})}
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
            yield case
        if len(skipped) == len(jobs):
            raise ValueError(f"{src_dir}: every case was skipped by min_foreground={options['min_foreground']}")

    write_store(out_path, produce(), attrs)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {what} not found")
    return path


def _find_one(folder: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    """``folder/<stem><suffix>`` for the first suffix that exists (None if none does)."""
    for suffix in suffixes:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


# ------------------------------------------------------------------------------------------ BraTS


def convert_brats(src_dir: str | Path, out_path: str | Path, *,
                  modalities: Sequence[str] = ("flair", "t1", "t1ce", "t2"), label_suffix: str = "seg",
                  dataset: str | None = None, **slicing: Any) -> None:
    """BraTS case folders -> slice store.

    Layout: one folder per case under ``src_dir`` (e.g. ``BraTS2021_00000/``) holding
    ``<case>_<modality>.nii.gz`` for every modality and ``<case>_<label_suffix>.nii.gz``; folders without the
    first modality's file are ignored (e.g. ``.archives``). BraTS 2021 volumes are skull-stripped,
    co-registered, 240x240x155 at 1 mm; labels 0 background, 1 NCR/NET, 2 ED, 4 ET (BraTS 2023 numbers ET 3,
    also accepted). A case without a label file is stored unlabelled.

    Args:
        src_dir: the dataset folder.
        out_path: the slice store to write.
        modalities: file suffixes, in channel order (BraTS 2023 uses ``t2f``, ``t1n``, ``t1c``, ``t2w``).
        label_suffix: suffix of the label file.
        dataset: store name (default: the stem of ``out_path``).
        **slicing: :func:`slice_options` (size, normalise, window, axis, min_foreground, modality_normalise).

    Raises:
        FileNotFoundError: ``src_dir`` missing, or a case folder lacks a modality file (names it).
        ValueError: no case folder, bad options, unreadable files, a modality or label on another grid.
    """
    src = _require_dir(Path(src_dir), "BraTS folder")
    mods = [str(m) for m in modalities]
    if not mods:
        raise ValueError("modalities must name at least one BraTS sequence")
    opts = slice_options(channel_names=mods, **slicing)
    folders = sorted((d for d in src.iterdir() if d.is_dir() and not d.name.startswith(".")
                      and _find_one(d, f"{d.name}_{mods[0]}", NIFTI_SUFFIXES)), key=lambda d: d.name)
    if not folders:
        raise ValueError(f"{src}: no case folder <case>/<case>_{mods[0]}.nii.gz found (BraTS layout)")

    def loader(folder: Path) -> CaseLoader:
        def load() -> SliceCase | None:
            paths = {}
            for mod in mods:
                p = _find_one(folder, f"{folder.name}_{mod}", NIFTI_SUFFIXES)
                if p is None:
                    raise FileNotFoundError(f"{folder / (folder.name + '_' + mod + '.nii.gz')}: missing BraTS modality")
                paths[mod] = p
            channels, ref_affine, ref_shape = _same_grid_channels(paths)
            label_path = _find_one(folder, f"{folder.name}_{label_suffix}", NIFTI_SUFFIXES)
            label = None if label_path is None else load_label_on_grid(
                label_path, ref_shape, ref_affine, paths[mods[0]], BRATS_LABELS)
            return volumes_to_case(folder.name, channels, ref_affine, label, opts,
                                   {"image": ";".join(str(p) for p in paths.values()), "label": label_path or ""})
        return load

    write_converted(out_path, [(d.name, loader(d)) for d in folders], converter="convert_brats", src_dir=src,
                    options={**opts.as_dict(), "modalities": mods, "label_suffix": label_suffix},
                    channel_names=mods, label_names=BRATS_LABELS, dataset=dataset)


def _same_grid_channels(paths: Mapping[str, Path]) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[int, ...]]:
    """Read co-registered channels that must share the first channel's grid (BraTS, MRBrainS)."""
    channels: dict[str, np.ndarray] = {}
    ref_affine: np.ndarray | None = None
    ref_shape: tuple[int, ...] = ()
    ref_path = None
    for name, path in paths.items():
        data, affine = read_volume(path)
        if ref_affine is None:
            ref_affine, ref_shape, ref_path = affine, data.shape, path
        elif not on_grid(data.shape, affine, ref_shape, ref_affine):
            raise ValueError(f"{path}: not on the grid of {ref_path} (shape {data.shape} vs {ref_shape}); the "
                             "channels of this format must be co-registered")
        channels[name] = data
    assert ref_affine is not None
    return channels, ref_affine, ref_shape


# ------------------------------------------------------------------------------------------ ACDC


def read_acdc_info(path: str | Path) -> dict[str, str]:
    """Parse an ACDC ``Info.cfg`` (``key: value`` lines: ED, ES, Group, Height, NbFrame, Weight).

    Raises:
        FileNotFoundError: missing file.
        ValueError: a line without ``:``, or no integer ED / ES frame (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ACDC Info.cfg not found")
    parser = configparser.ConfigParser(delimiters=(":",))
    try:
        parser.read_string("[info]\n" + path.read_text())
    except configparser.Error as exc:
        raise ValueError(f"{path}: cannot parse Info.cfg ({exc})") from exc
    info = {k.upper() if k in ("ed", "es") else k: v.strip() for k, v in parser["info"].items()}
    for key in ("ED", "ES"):
        if not info.get(key, "").isdigit():
            raise ValueError(f"{path}: Info.cfg needs an integer {key} frame, got {info.get(key)!r}")
    return info


def convert_acdc(src_dir: str | Path, out_path: str | Path, *, frames: Sequence[str] = ("ED", "ES"),
                 subsets: Sequence[str] = ("training", "testing"), dataset: str | None = None, **slicing: Any) -> None:
    """ACDC (cine short-axis MRI, MICCAI 2017) -> slice store, one case per patient and frame.

    Layout: ``src_dir/<subset>/patientNNN/Info.cfg`` (ED and ES frame numbers) with
    ``patientNNN_frameFF.nii.gz`` and, where released, ``patientNNN_frameFF_gt.nii.gz`` (0 background,
    1 RV cavity, 2 myocardium, 3 LV cavity). Case ids are ``patientNNN_ED`` / ``patientNNN_ES``; the attribute
    ``frame`` keeps the frame number and ``subset`` the ACDC subset. The two frames of a patient are separate
    volumes: split them by patient (e.g. a ``fixed`` split, as config/experiments/kdmri.yaml does).

    Args:
        src_dir: the dataset folder.
        out_path: the slice store to write.
        frames: which labelled frames to keep, among ``ED`` and ``ES``.
        subsets: which ACDC subsets to read (``training``, ``testing``).
        dataset: store name.
        **slicing: :func:`slice_options`.

    Raises:
        FileNotFoundError: a subset folder or a frame file is missing (names it).
        ValueError: unknown frame or subset names, no patient, a bad Info.cfg, a label off the image grid.
    """
    src = Path(src_dir)
    frames = [str(f).upper() for f in frames]
    if not frames or not set(frames) <= {"ED", "ES"} or len(set(frames)) != len(frames):
        raise ValueError(f"frames must list ED and/or ES once each, got {list(frames)}")
    if not subsets or not set(subsets) <= {"training", "testing"}:
        raise ValueError(f"subsets must be a non-empty list of training / testing, got {list(subsets)}")
    opts = slice_options(channel_names=["cine"], **slicing)
    jobs: list[tuple[str, CaseLoader]] = []
    for subset in subsets:
        folder = _require_dir(src / subset, f"ACDC {subset} folder")
        for patient in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("patient")):
            info = read_acdc_info(patient / "Info.cfg")
            for frame_name in frames:
                number = int(info[frame_name])
                jobs.append((f"{patient.name}_{frame_name}",
                             _acdc_loader(patient, frame_name, number, subset, opts)))
    if not jobs:
        raise ValueError(f"{src}: no patientNNN folder under {list(subsets)} (ACDC layout)")
    write_converted(out_path, jobs, converter="convert_acdc", src_dir=src,
                    options={**opts.as_dict(), "frames": frames, "subsets": list(subsets)},
                    channel_names=["cine"], label_names=ACDC_LABELS, dataset=dataset)


def _acdc_loader(patient: Path, frame_name: str, number: int, subset: str, opts: SliceOptions) -> CaseLoader:
    def load() -> SliceCase | None:
        stem = f"{patient.name}_frame{number:02d}"
        image_path = _find_one(patient, stem, NIFTI_SUFFIXES)
        if image_path is None:
            raise FileNotFoundError(f"{patient / (stem + '.nii.gz')}: ACDC {frame_name} frame listed in Info.cfg "
                                    "is missing")
        data, affine = read_volume(image_path)
        label_path = _find_one(patient, f"{stem}_gt", NIFTI_SUFFIXES)
        label = None if label_path is None else load_label_on_grid(label_path, data.shape, affine, image_path,
                                                                   ACDC_LABELS)
        return volumes_to_case(f"{patient.name}_{frame_name}", {"cine": data}, affine, label, opts,
                               {"image": str(image_path), "label": label_path or ""},
                               {"frame": number, "frame_name": frame_name, "subset": subset})
    return load


# ------------------------------------------------------------------------------------------ MRBrainS13


def convert_mrbrains(src_dir: str | Path, out_path: str | Path, *,
                     modalities: Sequence[str] = ("T1", "T1_IR", "T2_FLAIR"),
                     label_file: str | None = "LabelsForTesting",
                     subsets: Sequence[str] = ("TrainingData", "TestData"), dataset: str | None = None,
                     **slicing: Any) -> None:
    """MRBrainS13 subject folders -> slice store.

    Layout: ``src_dir/<subset>/<n>/`` with ``T1``, ``T1_IR``, ``T2_FLAIR`` (registered, 0.958 x 0.958 x 3.0 mm,
    240 x 240 x 48), each as ``.nii``, ``.nii.gz`` or ``.mhd`` (+ ``.raw``, the original release), and for
    training subjects ``LabelsForTesting`` (0 background, 1 CSF, 2 GM, 3 WM; what the challenge scores) and
    ``LabelsForTraining`` (9 structures). Case ids ``<subset>_<n>`` (e.g. ``TrainingData_1``); subjects without
    the label file are stored unlabelled (all of TestData).

    Args:
        src_dir: the dataset folder.
        out_path: the slice store to write.
        modalities: file stems, in channel order (KD-MRI reconstructs one contrast: list it alone, or first,
            because the undersample stage reads channel 0).
        label_file: ``LabelsForTesting``, ``LabelsForTraining`` or None (no labels).
        subsets: subject folders to read.
        dataset: store name.
        **slicing: :func:`slice_options`.

    Raises:
        FileNotFoundError: a subset folder or a modality file is missing.
        ValueError: bad options, no subject, channels not co-registered, a label off the grid.
    """
    src = Path(src_dir)
    mods = [str(m) for m in modalities]
    if not mods:
        raise ValueError("modalities must name at least one MRBrainS13 image")
    if label_file is not None and label_file not in MRBRAINS_LABELS:
        raise ValueError(f"label_file must be one of {sorted(MRBRAINS_LABELS)} or null, got {label_file!r}")
    if not subsets:
        raise ValueError("subsets must name at least one of TrainingData, TestData")
    opts = slice_options(channel_names=mods, **slicing)
    suffixes = NIFTI_SUFFIXES + (".mhd", ".mha")
    label_names = MRBRAINS_LABELS[label_file] if label_file else {"0": "background"}
    jobs: list[tuple[str, CaseLoader]] = []
    for subset in subsets:
        folder = _require_dir(src / subset, f"MRBrainS13 {subset} folder")
        for subject in sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                              key=lambda d: _natural_key(d.name)):
            jobs.append((f"{subset}_{subject.name}", _mrbrains_loader(subject, subset, mods, label_file, suffixes,
                                                                      label_names, opts)))
    if not jobs:
        raise ValueError(f"{src}: no subject folder under {list(subsets)} (MRBrainS13 layout)")
    write_converted(out_path, jobs, converter="convert_mrbrains", src_dir=src,
                    options={**opts.as_dict(), "modalities": mods, "label_file": label_file, "subsets": list(subsets)},
                    channel_names=mods, label_names=label_names, dataset=dataset)


def _mrbrains_loader(subject: Path, subset: str, mods: list[str], label_file: str | None, suffixes: tuple,
                     label_names: Mapping[str, str], opts: SliceOptions) -> CaseLoader:
    def load() -> SliceCase | None:
        paths = {}
        for mod in mods:
            p = _find_one(subject, mod, suffixes)
            if p is None:
                raise FileNotFoundError(f"{subject / mod}.nii: missing MRBrainS13 image "
                                        "(also tried .nii.gz, .mhd, .mha)")
            paths[mod] = p
        channels, ref_affine, ref_shape = _same_grid_channels(paths)
        label_path = _find_one(subject, label_file, suffixes) if label_file else None
        label = None if label_path is None else load_label_on_grid(label_path, ref_shape, ref_affine,
                                                                   paths[mods[0]], label_names)
        return volumes_to_case(f"{subset}_{subject.name}", channels, ref_affine, label, opts,
                               {"image": ";".join(str(p) for p in paths.values()), "label": label_path or ""},
                               {"subset": subset})
    return load


# ------------------------------------------------------------------------------------------ Calgary-Campinas


def convert_cc359(src_dir: str | Path, out_path: str | Path, *, folder: str = "Original", dataset: str | None = None,
                  **slicing: Any) -> None:
    """Calgary-Campinas-359 T1 volumes (NIfTI, no labels) -> slice store.

    Layout: ``src_dir/<folder>/CC<nnnn>_<vendor>_<field>_<age>_<sex>.nii.gz``; the case id is the file name
    without ``.nii.gz``. KD-MRI's super-resolution experiment uses 256 x 256 slices; the slice axis is the
    config's choice (papers.md does not state it).

    Args:
        src_dir: the dataset folder.
        out_path: the slice store to write.
        folder: sub-folder holding the volumes.
        dataset: store name.
        **slicing: :func:`slice_options`.

    Raises:
        FileNotFoundError: the folder is missing.
        ValueError: no ``CC*.nii[.gz]`` file, bad options, unreadable volumes.
    """
    src = Path(src_dir)
    base = _require_dir(src / folder, "Calgary-Campinas volume folder")
    files = sorted(p for p in base.iterdir() if p.name.startswith("CC") and _has_suffix(p, NIFTI_SUFFIXES))
    if not files:
        raise ValueError(f"{base}: no CC*.nii.gz volume (Calgary-Campinas layout)")
    opts = slice_options(channel_names=["T1"], **slicing)

    def loader(path: Path) -> CaseLoader:
        def load() -> SliceCase | None:
            data, affine = read_volume(path)
            cid = _strip_suffix(path.name, NIFTI_SUFFIXES)
            return volumes_to_case(cid, {"T1": data}, affine, None, opts, {"image": str(path)})
        return load

    write_converted(out_path, [(_strip_suffix(p.name, NIFTI_SUFFIXES), loader(p)) for p in files],
                    converter="convert_cc359", src_dir=src, options={**opts.as_dict(), "folder": folder},
                    channel_names=["T1"], label_names={"0": "background"}, dataset=dataset)


def _strip_suffix(name: str, suffixes: Sequence[str]) -> str:
    for s in suffixes:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


# ------------------------------------------------------------------------------------------ knee (.mat)


def read_mat_array(path: str | Path, key: str) -> np.ndarray:
    """One array of a MATLAB file, v5 (``scipy.io.loadmat``) or v7.3 (HDF5, ``h5py``).

    v7.3 files store arrays transposed (MATLAB is column-major) and complex values as a compound type with
    ``real``/``imag`` fields; both are undone, so the result has MATLAB's own shape in either case.

    Raises:
        FileNotFoundError: missing file.
        ValueError: unreadable file, or ``key`` absent (the message lists the keys present).
    """
    import h5py
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: .mat file not found")
    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as fh:
                if key not in fh:
                    raise ValueError(f"{path}: no variable {key!r} (has {sorted(fh.keys())})")
                raw = fh[key][()]
        except OSError as exc:
            raise ValueError(f"{path}: cannot read MATLAB v7.3 file ({exc})") from exc
        if raw.dtype.names and {"real", "imag"} <= set(raw.dtype.names):
            raw = raw["real"] + 1j * raw["imag"]
        return np.asarray(raw).T
    try:
        content = scipy.io.loadmat(path, variable_names=[key])
    except (ValueError, OSError, NotImplementedError, TypeError) as exc:
        raise ValueError(f"{path}: cannot read MATLAB file ({exc})") from exc
    if key not in content:
        names = sorted(w[0] for w in scipy.io.whosmat(path))
        raise ValueError(f"{path}: no variable {key!r} (has {names})")
    return np.asarray(content[key])


def convert_knee_mat(src_dir: str | Path, out_path: str | Path, *, sequences: Sequence[str] = ("coronal_pd",),
                     mat_key: str = "reference", file_prefix: str = "espirit",
                     spacing_mm: Sequence[float] = (1.0, 1.0, 1.0), dataset: str | None = None, **slicing: Any) -> None:
    """Knee data of Hammernik et al. (MRM 2018, .mat per slice) -> slice store, one case per patient.

    Layout: ``src_dir/<sequence>/<patient>/<file_prefix><k>.mat`` with ``k`` = 1, 2, ... (slice order is the
    numeric order of ``k``); each file holds ``mat_key``, the complex coil-combined reference image
    (``espirit<k>.mat``: ``reference``, 640 x 368 for coronal PD). The stored image is its magnitude
    ``|reference|`` (KD-MRI simulates single-coil k-space from magnitude images). Case ids
    ``<sequence>_<patient>``. The files carry no geometry: rows follow the first MATLAB dimension (readout,
    640), columns the second (phase encoding, 368, the axis KD-MRI's knee masks sample), the identity
    orientation is used, and ``spacing_mm`` (row, column, slice; unknown from the data, default 1 mm) is
    recorded. Slices are stacked along axis 2, so keep ``axis: 2``.

    Args:
        src_dir: the dataset folder.
        out_path: the slice store to write.
        sequences: sequence folders to read (KD-MRI's is not stated; coronal_pd is medkd's choice).
        mat_key: variable holding the image.
        file_prefix: per-slice file prefix.
        spacing_mm: voxel size recorded in the affine.
        dataset: store name.
        **slicing: :func:`slice_options` (``axis`` must be 2).

    Raises:
        FileNotFoundError: a sequence folder is missing.
        ValueError: no patient with slice files, slices of different shapes or not 2-D, bad options.
    """
    src = Path(src_dir)
    if len(spacing_mm) != 3 or min(float(s) for s in spacing_mm) <= 0:
        raise ValueError(f"spacing_mm must be three positive numbers, got {list(spacing_mm)}")
    opts = slice_options(channel_names=["magnitude"], **slicing)
    if opts.axis != 2:
        raise ValueError(f"vn_knee_mat stacks the 2-D slices along axis 2; axis must be 2, got {opts.axis}")
    pattern = re.compile(rf"^{re.escape(file_prefix)}(\d+)\.mat$")
    jobs: list[tuple[str, CaseLoader]] = []
    for sequence in sequences:
        folder = _require_dir(src / sequence, f"knee sequence folder {sequence!r}")
        for patient in sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                              key=lambda d: _natural_key(d.name)):
            files = sorted(((int(m.group(1)), p) for p in patient.iterdir() if (m := pattern.match(p.name))))
            if files:
                jobs.append((f"{sequence}_{patient.name}", _knee_loader(f"{sequence}_{patient.name}", files, mat_key,
                                                                        spacing_mm, opts)))
    if not jobs:
        raise ValueError(f"{src}: no <sequence>/<patient>/{file_prefix}<k>.mat file for sequences {list(sequences)}")
    write_converted(out_path, jobs, converter="convert_knee_mat", src_dir=src,
                    options={**opts.as_dict(), "sequences": list(sequences), "mat_key": mat_key,
                             "file_prefix": file_prefix, "spacing_mm": [float(s) for s in spacing_mm]},
                    channel_names=["magnitude"], label_names={"0": "background"}, dataset=dataset)


def _knee_loader(case_id: str, files: list[tuple[int, Path]], key: str, spacing_mm: Sequence[float],
                 opts: SliceOptions) -> CaseLoader:
    def load() -> SliceCase | None:
        slices = []
        for _, path in files:
            arr = read_mat_array(path, key)
            if arr.ndim != 2:
                raise ValueError(f"{path}: {key!r} must be a 2-D image, got shape {arr.shape}")
            if slices and arr.shape != slices[0].shape:
                raise ValueError(f"{path}: {key!r} has shape {arr.shape}, other slices of {case_id} {slices[0].shape}")
            slices.append(np.abs(arr).astype(np.float32))
        volume = np.stack(slices, axis=2)
        affine = np.diag([float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]), 1.0])
        return volumes_to_case(case_id, {"magnitude": volume}, affine, None, opts,
                               {"image": ";".join(str(p) for _, p in files)},
                               {"slice_numbers": np.asarray([k for k, _ in files], dtype=np.int64)})
    return load


# ------------------------------------------------------------------------------------------ BUSI (PNG)


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source indices of PyTorch's ``interpolate(mode="nearest")`` along one axis.

    ``min(floor(i * scale), n_in - 1)`` with ``scale = n_in / n_out`` in float32, as ATen computes it;
    torchvision's ``Resize(..., NEAREST)`` on a tensor (P-CD's loader) reduces to this.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def resize_nearest(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes, PyTorch convention (:func:`nearest_indices`)."""
    rows = nearest_indices(image.shape[0], int(size[0]))
    cols = nearest_indices(image.shape[1], int(size[1]))
    return image[rows][:, cols]


_BUSI_NAME = re.compile(r"^(benign|malignant|normal) \((\d+)\)\.png$")


def busi_case_id(relative: str) -> str:
    """``"benign/benign (406).png"`` (a P-CD split entry or a file path) -> ``"benign_406"``.

    Raises:
        ValueError: not a BUSI image name.
    """
    name = Path(relative).name
    m = _BUSI_NAME.match(name)
    if not m:
        raise ValueError(f"{relative!r} is not a BUSI image name '<class> (<n>).png'")
    return f"{m.group(1)}_{m.group(2)}"


def _read_png(path: Path, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert(mode))
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"{path}: cannot read PNG ({exc})") from exc


def convert_busi(src_dir: str | Path, out_path: str | Path, *, interpolation: str = "nearest",
                 extra_masks: str = "ignore", mask_threshold: int = 255, spacing_mm: Sequence[float] = (1.0, 1.0),
                 dataset: str | None = None, **slicing: Any) -> None:
    """BUSI breast ultrasound PNG folders -> slice store, one case (of one slice) per image.

    Layout: ``src_dir/{benign,malignant,normal}/<class> (<n>).png`` with ``<class> (<n>)_mask.png`` (and, for
    multifocal lesions, ``_mask_1.png``, ``_mask_2.png``). As P-CD's loader does, the image is converted to
    RGB (3 channels ``R``, ``G``, ``B``; grey PNGs are replicated) and the label is channel 0 of the mask
    converted to RGB, foreground where it is ``>= mask_threshold`` (P-CD divides by 255 and truncates to an
    integer: only 255 counts, the default). Case ids ``<class>_<n>`` (``benign_406``; P-CD's split entries map
    to them with :func:`busi_case_id`); the attribute ``category`` keeps the folder.

    With ``interpolation="nearest"`` (P-CD: torchvision ``Resize(224, NEAREST)`` applied to the uint8 tensor)
    image and mask are resized by :func:`resize_nearest` *before* normalisation, reproducing P-CD's pixels
    exactly; ``"linear"`` resizes the normalised image like every other converter. Use ``normalise: window``
    with ``window: [0, 255]`` for P-CD's ``/ 255``. The images carry no geometry: identity orientation,
    rows = image rows, ``spacing_mm`` (row, column; default 1) scaled to the resized grid, slice 1 mm.

    Args:
        src_dir: the dataset folder.
        out_path: the slice store to write.
        interpolation: ``nearest`` (P-CD) or ``linear``.
        extra_masks: ``ignore`` (P-CD uses ``_mask.png`` only) or ``union`` (add ``_mask_<k>.png``).
        mask_threshold: foreground threshold on mask channel 0 (1..255).
        spacing_mm: pixel size (row, column) of the source images.
        dataset: store name.
        **slicing: :func:`slice_options` (``axis`` and ``min_foreground`` are meaningless for 2-D images and
            must keep their defaults 2 and 0).

    Raises:
        FileNotFoundError: a class folder or an image's ``_mask.png`` is missing (names it).
        ValueError: bad options, a file name that is not BUSI's, an unreadable PNG, a mask of another size.
    """
    src = Path(src_dir)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if extra_masks not in ("ignore", "union"):
        raise ValueError(f"extra_masks must be 'ignore' or 'union', got {extra_masks!r}")
    if not 1 <= int(mask_threshold) <= 255:
        raise ValueError(f"mask_threshold must lie in 1..255, got {mask_threshold}")
    if len(spacing_mm) != 2 or min(float(s) for s in spacing_mm) <= 0:
        raise ValueError(f"spacing_mm must be two positive numbers (row, column), got {list(spacing_mm)}")
    opts = slice_options(channel_names=["R", "G", "B"], **slicing)
    if opts.axis != 2 or opts.min_foreground != 0.0:
        raise ValueError("busi_png images are single slices: keep axis 2 and min_foreground 0")
    jobs: list[tuple[str, CaseLoader]] = []
    for category in BUSI_CLASSES:
        folder = _require_dir(src / category, f"BUSI class folder {category!r}")
        images = [p for p in folder.iterdir() if p.suffix.lower() == ".png" and "_mask" not in p.name]
        for image_path in sorted(images, key=lambda p: _natural_key(p.name)):
            cid = busi_case_id(image_path.name)
            jobs.append((cid, _busi_loader(cid, image_path, category, interpolation, extra_masks,
                                           int(mask_threshold), spacing_mm, opts)))
    write_converted(out_path, jobs, converter="convert_busi", src_dir=src,
                    options={**opts.as_dict(), "interpolation": interpolation, "extra_masks": extra_masks,
                             "mask_threshold": int(mask_threshold), "spacing_mm": [float(s) for s in spacing_mm]},
                    channel_names=["R", "G", "B"], label_names=BUSI_LABELS, dataset=dataset)


def _busi_loader(cid: str, image_path: Path, category: str, interpolation: str, extra_masks: str, threshold: int,
                 spacing_mm: Sequence[float], opts: SliceOptions) -> CaseLoader:
    def load() -> SliceCase | None:
        rgb = _read_png(image_path, "RGB")  # (H, W, 3) uint8
        mask_path = image_path.with_name(image_path.stem + "_mask.png")
        if not mask_path.is_file():
            raise FileNotFoundError(f"{mask_path}: mask of {image_path} not found")
        mask_paths = [mask_path]
        if extra_masks == "union":
            mask_paths += sorted(image_path.parent.glob(f"{glob_escape(image_path.stem)}_mask_*.png"))
        label = np.zeros(rgb.shape[:2], dtype=bool)
        for p in mask_paths:
            m = _read_png(p, "RGB")[..., 0]
            if m.shape != rgb.shape[:2]:
                raise ValueError(f"{p}: mask size {m.shape} differs from its image {rgb.shape[:2]} ({image_path})")
            label |= m >= threshold
        h, w = rgb.shape[:2]
        if interpolation == "nearest":
            rgb = resize_nearest(rgb, opts.size)
            label = resize_nearest(label, opts.size)
        channels = {name: rgb[..., i].astype(np.float32)[:, :, None] for i, name in enumerate(("R", "G", "B"))}
        affine = np.diag([float(spacing_mm[0]) * h / channels["R"].shape[0],
                          float(spacing_mm[1]) * w / channels["R"].shape[1], 1.0, 1.0])
        case = volumes_to_case(cid, channels, affine, label.astype(np.uint8)[:, :, None], opts,
                               {"image": str(image_path), "label": ";".join(str(p) for p in mask_paths)},
                               {"category": category, "source_size": np.asarray([h, w], dtype=np.int64)})
        if case is not None:
            case.attrs["original_shape"] = np.asarray([h, w, 1], dtype=np.int64)
        return case
    return load


def glob_escape(text: str) -> str:
    """Escape glob metacharacters (BUSI names contain parentheses only, but be safe)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


# ------------------------------------------------------------------------------------------ HECKTOR


def read_hecktor_bboxes(path: str | Path) -> dict[str, np.ndarray]:
    """``hecktor2021_bbox_training.csv`` -> patient id -> ``[x1, y1, z1, x2, y2, z2]`` (ITK/LPS mm).

    Raises:
        FileNotFoundError: missing file.
        ValueError: missing columns or non-numeric values (names the file and row).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: HECKTOR bounding-box CSV not found")
    cols = ("x1", "y1", "z1", "x2", "y2", "z2")
    out = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("PatientID",) + cols if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
        for i, row in enumerate(reader, start=2):
            try:
                box = np.asarray([float(row[c]) for c in cols], dtype=np.float64)
            except ValueError as exc:
                raise ValueError(f"{path}: row {i}: non-numeric bounding box ({exc})") from exc
            if not (box[3:] > box[:3]).all():
                raise ValueError(f"{path}: row {i}: bounding box {box.tolist()} has x2/y2/z2 <= x1/y1/z1")
            out[row["PatientID"]] = box
    return out


def bbox_grid(box_lps: np.ndarray, resolution_mm: Sequence[float]) -> tuple[tuple[int, int, int], np.ndarray]:
    """The HECKTOR organisers' crop grid of one bounding box, as (shape, canonical RAS affine).

    Their ``crop_and_resample`` script resamples onto an identity-direction ITK grid with origin
    ``(x1, y1, z1)`` (LPS), spacing ``resolution_mm`` and ``round((x2 - x1) / r)`` voxels per axis. In RAS
    that grid has axes 0 and 1 pointing Left and Posterior; the returned affine is its canonical (RAS+)
    form: voxel ``(i, j, k)`` sits at ``x_RAS = -(x1 + (n0 - 1 - i) r0)``, ``y_RAS = -(y1 + (n1 - 1 - j) r1)``,
    ``z = z1 + k r2``.
    """
    res = np.asarray(resolution_mm, dtype=np.float64)
    if res.shape != (3,) or (res <= 0).any():
        raise ValueError(f"resolution_mm must be three positive numbers, got {list(resolution_mm)}")
    shape = tuple(int(n) for n in np.round((box_lps[3:] - box_lps[:3]) / res).astype(int))
    if min(shape) < 1:
        raise ValueError(f"bounding box {box_lps.tolist()} is thinner than one voxel of {res.tolist()} mm")
    lps_grid = np.eye(4)
    lps_grid[:3, :3] = np.diag(res)
    lps_grid[:3, 3] = box_lps[:3]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_grid
    flip = np.eye(4)  # voxel i -> n0 - 1 - i on axes 0 and 1
    for a in (0, 1):
        flip[a, a] = -1.0
        flip[a, 3] = shape[a] - 1
    return shape, ras @ flip


def convert_hecktor(src_dir: str | Path, out_path: str | Path, *, modalities: Sequence[str] = ("CT", "PT"),
                    crop: str = "bbox", bbox_csv: str = "hecktor2021_bbox_training.csv",
                    resolution_mm: Sequence[float] = (1.0, 1.0, 1.0), image_order: int = 3,
                    dataset: str | None = None, **slicing: Any) -> None:
    """HECKTOR 2021 PET/CT (NIfTI) -> slice store.

    Layout: ``src_dir/hecktor_nii/<ID>_ct.nii.gz``, ``<ID>_pt.nii.gz`` (FDG-PET, SUV, coarser grid),
    ``<ID>_gtvt.nii.gz`` (primary tumour, on the CT grid), and ``src_dir/<bbox_csv>``. Channels are named
    ``CT`` and ``PT`` (file suffixes ``_ct``, ``_pt``).

    ``crop="bbox"`` (default, the organisers' ``crop_and_resample``): every volume is resampled onto the
    patient's 144 mm bounding-box grid at ``resolution_mm`` (:func:`bbox_grid`), images with a spline of
    ``image_order`` (3, as the organisers), the label with nearest neighbour; outside a volume the value is 0
    (ITK's default). ``crop="none"``: the CT grid is kept and PET is resampled onto it (linear), the label
    must already lie on it.

    Args:
        src_dir: the dataset folder.
        out_path: the slice store to write.
        modalities: channel names among ``CT``, ``PT``, in channel order.
        crop: ``bbox`` or ``none``.
        bbox_csv: bounding-box file (relative to ``src_dir``), used by ``crop="bbox"``.
        resolution_mm: output voxel size of the bbox grid.
        image_order: spline order for the images on the bbox grid (0..5).
        dataset: store name.
        **slicing: :func:`slice_options` (use ``modality_normalise`` for CT windowing vs PET z-score).

    Raises:
        FileNotFoundError: the image folder, the bbox CSV or a case file is missing.
        ValueError: bad options, a patient without a bounding box, unreadable files, label off the CT grid
            (``crop="none"``).
    """
    src = Path(src_dir)
    mods = [str(m) for m in modalities]
    if not mods or set(mods) - {"CT", "PT"} or len(set(mods)) != len(mods):
        raise ValueError(f"modalities must list CT and/or PT once each, got {mods}")
    if crop not in ("bbox", "none"):
        raise ValueError(f"crop must be 'bbox' or 'none', got {crop!r}")
    if not 0 <= int(image_order) <= 5:
        raise ValueError(f"image_order must lie in 0..5, got {image_order}")
    opts = slice_options(channel_names=mods, **slicing)
    folder = _require_dir(src / "hecktor_nii", "HECKTOR image folder hecktor_nii/")
    ids = sorted(p.name[: -len("_ct.nii.gz")] for p in folder.glob("*_ct.nii.gz"))
    if not ids:
        raise ValueError(f"{folder}: no <ID>_ct.nii.gz file (HECKTOR layout)")
    boxes = read_hecktor_bboxes(src / bbox_csv) if crop == "bbox" else {}
    missing = [i for i in ids if crop == "bbox" and i not in boxes]
    if missing:
        raise ValueError(f"{src / bbox_csv}: no bounding box for {missing[:10]}{' ...' if len(missing) > 10 else ''}")

    def loader(pid: str) -> CaseLoader:
        def load() -> SliceCase | None:
            paths = {m: folder / f"{pid}_{m.lower()}.nii.gz" for m in ("CT", "PT")}
            label_path = folder / f"{pid}_gtvt.nii.gz"
            for p in [paths[m] for m in mods] + [label_path]:
                if not p.is_file():
                    raise FileNotFoundError(f"{p}: HECKTOR file missing")
            ct, ct_affine = read_volume(paths["CT"])
            if crop == "bbox":
                shape, affine = bbox_grid(boxes[pid], resolution_mm)
                channels = {}
                for m in mods:
                    data, src_affine = (ct, ct_affine) if m == "CT" else read_volume(paths[m])
                    channels[m] = resample_to_grid(data, src_affine, shape, affine, order=int(image_order))
                raw_label, label_affine = read_volume(label_path)
                label = check_label_values(resample_to_grid(raw_label, label_affine, shape, affine, order=0),
                                           label_path, {int(k) for k in HECKTOR_LABELS})
            else:
                shape, affine = ct.shape, ct_affine
                channels = {}
                for m in mods:
                    if m == "CT":
                        channels[m] = ct
                    else:
                        data, src_affine = read_volume(paths[m])
                        channels[m] = resample_to_grid(data, src_affine, shape, affine, order=1)
                label = load_label_on_grid(label_path, shape, affine, paths["CT"], HECKTOR_LABELS)
            return volumes_to_case(pid, channels, affine, label, opts,
                                   {"image": ";".join(str(paths[m]) for m in mods), "label": str(label_path)})
        return load

    write_converted(out_path, [(i, loader(i)) for i in ids], converter="convert_hecktor", src_dir=src,
                    options={**opts.as_dict(), "modalities": mods, "crop": crop, "bbox_csv": bbox_csv,
                             "resolution_mm": [float(r) for r in resolution_mm], "image_order": int(image_order)},
                    channel_names=mods, label_names=HECKTOR_LABELS, dataset=dataset)


# ------------------------------------------------------------------------------------------ PI-CAI


def convert_picai(src_dir: str | Path, out_path: str | Path, *, modalities: Sequence[str] = ("t2w", "adc", "hbv"),
                  label_dir: str = "labels/csPCa_lesion_delineations/human_expert/resampled",
                  unlabelled: str = "skip", dataset: str | None = None, **slicing: Any) -> None:
    """PI-CAI bi-parametric prostate MRI (.mha) -> slice store, one case per study.

    Layout: ``src_dir/images/<patient>/<patient>_<study>_<modality>.mha`` and
    ``src_dir/<label_dir>/<patient>_<study>.nii.gz``. The first modality (``t2w``) defines the grid; the
    others (ADC, high-b DWI, on a coarser grid and sometimes another field of view) are resampled onto it
    linearly through world coordinates. The human-expert ``resampled`` labels lie on the T2w grid (checked);
    their values are 0 and the ISUP grade 2..5 of each csPCa lesion (1 is accepted for binary masks) - map
    them to one ``lesion`` class in the experiment. Case ids ``<patient>_<study>``.

    Args:
        src_dir: the dataset folder.
        out_path: the slice store to write.
        modalities: file suffixes, in channel order (the first is the reference grid).
        label_dir: label folder relative to ``src_dir`` (e.g. ``.../AI/Bosma22a`` for the AI-derived labels).
        unlabelled: ``skip`` studies without a label file (1295 of 1500 have human labels) or ``keep`` them
            unlabelled.
        dataset: store name.
        **slicing: :func:`slice_options`.

    Raises:
        FileNotFoundError: the images folder or a modality file of a study is missing.
        ValueError: bad options, no study, unreadable files, a label off the T2w grid.
    """
    src = Path(src_dir)
    mods = [str(m) for m in modalities]
    if not mods:
        raise ValueError("modalities must name at least one PI-CAI sequence")
    if unlabelled not in ("skip", "keep"):
        raise ValueError(f"unlabelled must be 'skip' or 'keep', got {unlabelled!r}")
    opts = slice_options(channel_names=mods, **slicing)
    images = _require_dir(src / "images", "PI-CAI images folder")
    labels = src / label_dir
    suffix = f"_{mods[0]}.mha"
    studies = sorted((p.parent, p.name[: -len(suffix)]) for p in images.glob(f"*/*{suffix}"))
    if not studies:
        raise ValueError(f"{images}: no <patient>/<patient>_<study>{suffix} file (PI-CAI layout)")
    jobs: list[tuple[str, CaseLoader]] = []
    not_labelled: list[str] = []
    for folder, study in studies:
        label_path = _find_one(labels, study, NIFTI_SUFFIXES) if labels.is_dir() else None
        if label_path is None:
            not_labelled.append(study)
            if unlabelled == "skip":
                continue
        jobs.append((study, _picai_loader(folder, study, mods, label_path, opts)))
    if not_labelled:
        log.info("%s: %d studies have no label in %s (%s)", src, len(not_labelled), labels,
                 "skipped" if unlabelled == "skip" else "kept unlabelled")
    if not jobs:
        raise ValueError(f"{labels}: no label file for any of the {len(studies)} studies (unlabelled: skip)")
    write_converted(out_path, jobs, converter="convert_picai", src_dir=src,
                    options={**opts.as_dict(), "modalities": mods, "label_dir": label_dir, "unlabelled": unlabelled},
                    channel_names=mods, label_names=PICAI_LABELS, dataset=dataset,
                    provenance_extra={"unlabelled_studies": not_labelled})


def _picai_loader(folder: Path, study: str, mods: list[str], label_path: Path | None, opts: SliceOptions) -> CaseLoader:
    def load() -> SliceCase | None:
        paths = {m: folder / f"{study}_{m}.mha" for m in mods}
        for p in paths.values():
            if not p.is_file():
                raise FileNotFoundError(f"{p}: PI-CAI sequence missing")
        ref, ref_affine = read_volume(paths[mods[0]])
        channels = {mods[0]: ref}
        for m in mods[1:]:
            data, affine = read_volume(paths[m])
            channels[m] = resample_to_grid(data, affine, ref.shape, ref_affine, order=1)
        label = None if label_path is None else load_label_on_grid(label_path, ref.shape, ref_affine, paths[mods[0]],
                                                                   PICAI_LABELS)
        return volumes_to_case(study, channels, ref_affine, label, opts,
                               {"image": ";".join(str(p) for p in paths.values()), "label": label_path or ""})
    return load


# ------------------------------------------------------------------------------------------ dispatch


CONVERTERS: dict[str, Callable[..., None]] = {
    "brats_nifti": convert_brats,
    "acdc_nifti": convert_acdc,
    "mrbrains13": convert_mrbrains,
    "cc359_nifti": convert_cc359,
    "vn_knee_mat": convert_knee_mat,
    "busi_png": convert_busi,
    "hecktor_nifti": convert_hecktor,
    "picai_mha": convert_picai,
}
"""``convert.format`` -> converter (``msd`` is :func:`medkd.data.convert.convert_msd`)."""

_SHARED = ("size", "normalise", "window", "axis", "min_foreground")
FORMAT_OPTIONS: dict[str, tuple[str, ...]] = {
    "msd": _SHARED + ("channels",),
    "brats_nifti": _SHARED + ("modality_normalise", "modalities", "label_suffix"),
    "acdc_nifti": _SHARED + ("frames", "subsets"),
    "mrbrains13": _SHARED + ("modality_normalise", "modalities", "label_file", "subsets"),
    "cc359_nifti": _SHARED + ("folder",),
    "vn_knee_mat": _SHARED + ("sequences", "mat_key", "file_prefix", "spacing_mm"),
    "busi_png": _SHARED + ("interpolation", "extra_masks", "mask_threshold", "spacing_mm"),
    "hecktor_nifti": _SHARED + ("modality_normalise", "modalities", "crop", "bbox_csv", "resolution_mm", "image_order"),
    "picai_mha": _SHARED + ("modality_normalise", "modalities", "label_dir", "unlabelled"),
}
"""Options each format accepts (the config schema lists their union)."""


def convert_dataset(fmt: str, src_dir: str | Path, out_path: str | Path, options: Mapping[str, Any],
                    dataset: str | None = None) -> None:
    """Convert ``src_dir`` with the converter of ``fmt`` (a config's ``convert`` entry).

    Args:
        fmt: ``msd`` or a key of :data:`CONVERTERS`.
        src_dir: the raw dataset folder (``data/<name>``).
        out_path: the slice store to write.
        options: the config's ``convert`` mapping (its ``format`` key, if present, must equal ``fmt``).
        dataset: store name.

    Raises:
        ValueError: unknown format, or an option the format does not use (names both).
        Any error of the converter.
    """
    if fmt not in FORMAT_OPTIONS:
        raise ValueError(f"unknown convert format {fmt!r}; known: {sorted(FORMAT_OPTIONS)}")
    opts = {k: v for k, v in options.items() if k != "format"}
    if options.get("format", fmt) != fmt:
        raise ValueError(f"convert options name format {options['format']!r}, but {fmt!r} was requested")
    unknown = sorted(set(opts) - set(FORMAT_OPTIONS[fmt]))
    if unknown:
        raise ValueError(f"convert format {fmt!r} does not use option(s) {unknown}; it accepts "
                         f"{sorted(FORMAT_OPTIONS[fmt])}")
    if "size" in opts:
        opts["size"] = tuple(opts["size"])
    if fmt == "msd":
        convert_msd(src_dir, out_path, dataset=dataset, **opts)
        return
    CONVERTERS[fmt](src_dir, out_path, dataset=dataset, **opts)
