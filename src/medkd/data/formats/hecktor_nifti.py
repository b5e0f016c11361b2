"""HECKTOR 2021 PET/CT, NIfTI (format ``hecktor_nifti``).

Layout: ``src_dir/hecktor_nii/<ID>_ct.nii.gz``, ``<ID>_pt.nii.gz`` (FDG-PET, SUV, coarser grid),
``<ID>_gtvt.nii.gz`` (primary tumour, on the CT grid), and ``src_dir/<bbox_csv>`` (the organisers'
``hecktor2021_bbox_training.csv``: one 144 mm box per patient, ITK/LPS mm). Channels are named ``CT`` and
``PT`` (file suffixes ``_ct``, ``_pt``). A patient missing a converted image or its GTVt, a PET or GTVt file without
its CT, and a GTVt that is not binary (0 / 1, checked on the whole file before cropping) are refused.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medkd.data.convert import (
    MODALITY_NORMALISE_SCHEMA,
    CaseLoader,
    MissingCaseFile,
    check_label_values,
    load_label_on_grid,
    refuse_orphans,
    require_dir,
    slice_options,
    volumes_to_case,
    write_converted,
)
from medkd.data.formats import FORMATS, Format
from medkd.data.geometry import read_volume, resample_to_grid
from medkd.data.store import SliceCase

HECKTOR_LABELS = {"0": "background", "1": "GTVt"}
LABELS_LISTED_IN = "HECKTOR's binary GTVt convention"


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
    """HECKTOR 2021 PET/CT -> slice store (layout in the module docstring).

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
        **slicing: :func:`medkd.data.convert.slice_options` (use ``modality_normalise`` for CT windowing vs
            PET z-score).

    Raises:
        FileNotFoundError: the image folder or the bbox CSV is missing.
        MissingCaseFile: a converted image or the GTVt of a patient is missing (names it).
        InputError: a PET or GTVt without its CT, a GTVt with values other than 0 and 1, a 4-D volume, a label
            off the CT grid (``crop="none"``).
        ValueError: bad options, a patient without a bounding box, unreadable files.
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
    folder = require_dir(src / "hecktor_nii", "HECKTOR image folder hecktor_nii/")
    ids = sorted(p.name[: -len("_ct.nii.gz")] for p in folder.glob("*_ct.nii.gz"))
    if not ids:
        raise ValueError(f"{folder}: no <ID>_ct.nii.gz file (HECKTOR layout)")
    for kind in ("pt", "gtvt"):
        refuse_orphans(((p, p.with_name(p.name[: -len(f"_{kind}.nii.gz")] + "_ct.nii.gz"))
                        for p in sorted(folder.glob(f"*_{kind}.nii.gz"))), f"HECKTOR {kind.upper()} file")
    needed = [m.lower() for m in mods] + ["gtvt"]
    for pid in ids:
        for kind in needed:
            if not (folder / f"{pid}_{kind}.nii.gz").is_file():
                raise MissingCaseFile(f"{folder / f'{pid}_{kind}.nii.gz'}: HECKTOR file missing for patient {pid}; "
                                      f"every patient needs _{', _'.join(needed)} (and _ct)")
    boxes = read_hecktor_bboxes(src / bbox_csv) if crop == "bbox" else {}
    missing = [i for i in ids if crop == "bbox" and i not in boxes]
    if missing:
        raise ValueError(f"{src / bbox_csv}: no bounding box for {missing[:10]}{' ...' if len(missing) > 10 else ''}")

    def loader(pid: str) -> CaseLoader:
        def load() -> SliceCase | None:
            paths = {m: folder / f"{pid}_{m.lower()}.nii.gz" for m in ("CT", "PT")}
            label_path = folder / f"{pid}_gtvt.nii.gz"
            ct, ct_affine = read_volume(paths["CT"])
            if crop == "bbox":
                shape, affine = bbox_grid(boxes[pid], resolution_mm)
                channels = {}
                for m in mods:
                    data, src_affine = (ct, ct_affine) if m == "CT" else read_volume(paths[m])
                    channels[m] = resample_to_grid(data, src_affine, shape, affine, order=int(image_order))
                raw_label, label_affine = read_volume(label_path)
                raw_label = check_label_values(raw_label, label_path, {int(k) for k in HECKTOR_LABELS},
                                               LABELS_LISTED_IN)  # the whole file, not only the box
                label = resample_to_grid(raw_label, label_affine, shape, affine, order=0)
            else:
                shape, affine = ct.shape, ct_affine
                channels = {}
                for m in mods:
                    if m == "CT":
                        channels[m] = ct
                    else:
                        data, src_affine = read_volume(paths[m])
                        channels[m] = resample_to_grid(data, src_affine, shape, affine, order=1)
                label = load_label_on_grid(label_path, shape, affine, paths["CT"], HECKTOR_LABELS, LABELS_LISTED_IN)
            return volumes_to_case(pid, channels, affine, label, opts,
                                   {"image": ";".join(str(paths[m]) for m in mods), "label": str(label_path)})
        return load

    write_converted(out_path, [(i, loader(i)) for i in ids], converter=convert_hecktor, src_dir=src,
                    options={**opts.as_dict(), "modalities": mods, "crop": crop, "bbox_csv": bbox_csv,
                             "resolution_mm": [float(r) for r in resolution_mm], "image_order": int(image_order)},
                    channel_names=mods, label_names=HECKTOR_LABELS, dataset=dataset)


@FORMATS.register("hecktor_nifti")
class HecktorNifti(Format):
    """HECKTOR 2021 CT + PET with the organisers' bounding boxes."""

    layout = ("hecktor_nii/*_ct.nii.gz", "hecktor_nii/*_pt.nii.gz")

    summary = "HECKTOR CT+PET"
    options = {
        **MODALITY_NORMALISE_SCHEMA,
        "modalities": {"description": "channels in order, among CT and PT", "type": "array",
                       "items": {"enum": ["CT", "PT"]}, "minItems": 1},
        "crop": {"description": "bbox (the organisers' 144 mm box resampled to resolution_mm) or none (CT grid)",
                 "enum": ["bbox", "none"]},
        "bbox_csv": {"description": "bounding-box CSV relative to data/<source>", "type": "string"},
        "resolution_mm": {"description": "voxel size of the bbox grid", "type": "array",
                          "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 3, "maxItems": 3},
        "image_order": {"description": "spline order of the image resampling onto the bbox grid (3 as the organisers)",
                        "type": "integer", "minimum": 0, "maximum": 5},
    }
    convert = staticmethod(convert_hecktor)
