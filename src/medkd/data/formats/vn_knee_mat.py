"""Knee data of Hammernik et al. (MRM 2018), one ``.mat`` file per slice (format ``vn_knee_mat``).

Layout: ``src_dir/<sequence>/<patient>/<file_prefix><k>.mat`` with ``k`` = 1, 2, ... (slice order is the
numeric order of ``k``); each file holds ``mat_key``, the complex coil-combined reference image
(``espirit<k>.mat``: ``reference``, 640 x 368 for coronal PD). The files carry no geometry. A patient whose slice
numbers have a gap, or an image that is not 2-D, is refused; a folder without slice files (``masks/``) is ignored
with a warning recorded in ``source_warnings``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medkd.data.convert import (
    CaseLoader,
    SliceOptions,
    natural_key,
    require_dir,
    slice_options,
    volumes_to_case,
    warn_source,
    write_converted,
)
from medkd.data.formats import FORMATS, Format
from medkd.data.store import SliceCase
from medkd.errors import InputError


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
    """Knee ``.mat`` slices -> slice store, one case per patient (layout in the module docstring).

    The stored image is the magnitude ``|reference|`` (KD-MRI simulates single-coil k-space from magnitude
    images). Case ids ``<sequence>_<patient>``. Rows follow the first MATLAB dimension (readout, 640),
    columns the second (phase encoding, 368, the axis KD-MRI's knee masks sample), the identity orientation is
    used, and ``spacing_mm`` (row, column, slice; unknown from the data, default 1 mm) is recorded. Slices are
    stacked along axis 2, so keep ``axis: 2``.

    Args:
        src_dir: the dataset folder.
        out_path: the slice store to write.
        sequences: sequence folders to read (KD-MRI's is not stated; coronal_pd is medkd's choice).
        mat_key: variable holding the image.
        file_prefix: per-slice file prefix.
        spacing_mm: voxel size recorded in the affine.
        dataset: store name.
        **slicing: :func:`medkd.data.convert.slice_options` (``axis`` must be 2).

    Raises:
        FileNotFoundError: a sequence folder is missing.
        InputError: a gap in a patient's slice numbers, slices of different shapes or not 2-D.
        ValueError: no patient with slice files, bad options.
    """
    src = Path(src_dir)
    if len(spacing_mm) != 3 or min(float(s) for s in spacing_mm) <= 0:
        raise ValueError(f"spacing_mm must be three positive numbers, got {list(spacing_mm)}")
    opts = slice_options(channel_names=["magnitude"], **slicing)
    if opts.axis != 2:
        raise ValueError(f"vn_knee_mat stacks the 2-D slices along axis 2; axis must be 2, got {opts.axis}")
    pattern = re.compile(rf"^{re.escape(file_prefix)}(\d+)\.mat$")
    jobs: list[tuple[str, CaseLoader]] = []
    warnings: list[str] = []
    for sequence in sequences:
        folder = require_dir(src / sequence, f"knee sequence folder {sequence!r}")
        for patient in sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                              key=lambda d: natural_key(d.name)):
            files = sorted(((int(m.group(1)), p) for p in patient.iterdir() if (m := pattern.match(p.name))))
            if not files:
                warn_source(warnings, f"{patient}: holds no {file_prefix}<k>.mat slice, not a patient folder; ignored")
                continue
            gaps = sorted(set(range(files[0][0], files[-1][0] + 1)) - {k for k, _ in files})
            if gaps:
                raise InputError(f"{patient}: slice file(s) {', '.join(f'{file_prefix}{k}.mat' for k in gaps)} missing "
                                 f"between {files[0][1].name} and {files[-1][1].name}; a volume with a gap is refused")
            jobs.append((f"{sequence}_{patient.name}", _knee_loader(f"{sequence}_{patient.name}", files, mat_key,
                                                                    spacing_mm, opts)))
    if not jobs:
        raise ValueError(f"{src}: no <sequence>/<patient>/{file_prefix}<k>.mat file for sequences {list(sequences)}")
    write_converted(out_path, jobs, converter=convert_knee_mat, src_dir=src,
                    options={**opts.as_dict(), "sequences": list(sequences), "mat_key": mat_key,
                             "file_prefix": file_prefix, "spacing_mm": [float(s) for s in spacing_mm]},
                    channel_names=["magnitude"], label_names={"0": "background"}, dataset=dataset,
                    provenance_extra={"source_warnings": warnings})


def _knee_loader(case_id: str, files: list[tuple[int, Path]], key: str, spacing_mm: Sequence[float],
                 opts: SliceOptions) -> CaseLoader:
    def load() -> SliceCase | None:
        slices = []
        for _, path in files:
            arr = read_mat_array(path, key)
            if arr.ndim != 2:
                raise InputError(f"{path}: {key!r} must be a 2-D image, got shape {arr.shape}")
            if slices and arr.shape != slices[0].shape:
                raise InputError(f"{path}: {key!r} has shape {arr.shape}, other slices of {case_id} {slices[0].shape}")
            slices.append(np.abs(arr).astype(np.float32))
        volume = np.stack(slices, axis=2)
        affine = np.diag([float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]), 1.0])
        return volumes_to_case(case_id, {"magnitude": volume}, affine, None, opts,
                               {"image": ";".join(str(p) for _, p in files)},
                               {"slice_numbers": np.asarray([k for k, _ in files], dtype=np.int64)})
    return load


@FORMATS.register("vn_knee_mat")
class VnKneeMat(Format):
    """Hammernik et al.'s knee data, one .mat per slice."""

    layout = ("*/*/*.mat",)

    summary = "Hammernik knee .mat"
    options = {
        "sequences": {"description": "sequence folders (coronal_pd, coronal_pd_fs, axial_t2, sagittal_pd, "
                                     "sagittal_t2)", "type": "array", "items": {"type": "string"}, "minItems": 1},
        "mat_key": {"description": "variable holding the image (reference)", "type": "string"},
        "file_prefix": {"description": "per-slice file prefix (espirit)", "type": "string"},
        "spacing_mm": {"description": "[row, col, slice] voxel size, absent from the files", "type": "array",
                       "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 3, "maxItems": 3},
    }
    convert = staticmethod(convert_knee_mat)
