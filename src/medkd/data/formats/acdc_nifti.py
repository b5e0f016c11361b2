"""ACDC cine short-axis MRI, MICCAI 2017 (format ``acdc_nifti``).

Layout: ``src_dir/<subset>/patientNNN/Info.cfg`` (ED and ES frame numbers) with ``patientNNN_frameFF.nii.gz``
and, where released, ``patientNNN_frameFF_gt.nii.gz`` (0 background, 1 RV cavity, 2 myocardium, 3 LV cavity);
subsets ``training`` and ``testing``. Every training frame needs its ``_gt``; a testing frame without one is
stored unlabelled with a warning recorded in ``source_warnings``; a ``_gt`` without its frame is refused.
"""

from __future__ import annotations

import configparser
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medkd.data.convert import (
    CaseLoader,
    MissingCaseFile,
    SliceOptions,
    find_one,
    load_label_on_grid,
    refuse_orphans,
    require_dir,
    slice_options,
    volumes_to_case,
    warn_source,
    write_converted,
)
from medkd.data.formats import FORMATS, Format
from medkd.data.geometry import NIFTI_SUFFIXES, read_volume
from medkd.data.store import SliceCase

ACDC_LABELS = {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}
LABELLED_SUBSETS = ("training",)
"""Subsets whose every ED / ES frame must have its ``_gt`` label (testing labels were released later)."""


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
    """ACDC -> slice store, one case per patient and frame (layout in the module docstring).

    Case ids are ``patientNNN_ED`` / ``patientNNN_ES``; the attribute ``frame`` keeps the frame number and
    ``subset`` the ACDC subset. The two frames of a patient are separate volumes: split them by patient (e.g.
    a ``fixed`` split, as config/experiments/kdmri.yaml does).

    Args:
        src_dir: the dataset folder.
        out_path: the slice store to write.
        frames: which labelled frames to keep, among ``ED`` and ``ES``.
        subsets: which ACDC subsets to read (``training``, ``testing``).
        dataset: store name.
        **slicing: :func:`medkd.data.convert.slice_options`.

    Raises:
        FileNotFoundError: a subset folder or Info.cfg is missing.
        MissingCaseFile: a frame listed in Info.cfg, or the ``_gt`` of a training frame, is missing (names it).
        InputError: a ``_gt`` without its frame, label values outside 0..3, a 4-D frame, a label off the image grid.
        ValueError: unknown frame or subset names, no patient, a bad Info.cfg.
    """
    src = Path(src_dir)
    frames = [str(f).upper() for f in frames]
    if not frames or not set(frames) <= {"ED", "ES"} or len(set(frames)) != len(frames):
        raise ValueError(f"frames must list ED and/or ES once each, got {list(frames)}")
    if not subsets or not set(subsets) <= {"training", "testing"}:
        raise ValueError(f"subsets must be a non-empty list of training / testing, got {list(subsets)}")
    opts = slice_options(channel_names=["cine"], **slicing)
    jobs: list[tuple[str, CaseLoader]] = []
    warnings: list[str] = []
    for subset in subsets:
        folder = require_dir(src / subset, f"ACDC {subset} folder")
        unlabelled = []
        for patient in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("patient")):
            info = read_acdc_info(patient / "Info.cfg")
            for frame_name in frames:
                number = int(info[frame_name])
                stem = f"{patient.name}_frame{number:02d}"
                image_path = find_one(patient, stem, NIFTI_SUFFIXES)
                if image_path is None:
                    raise MissingCaseFile(f"{patient / (stem + '.nii.gz')}: ACDC {frame_name} frame listed in "
                                          "Info.cfg is missing")
                label_path = find_one(patient, f"{stem}_gt", NIFTI_SUFFIXES)
                if label_path is None and subset in LABELLED_SUBSETS:
                    raise MissingCaseFile(f"{patient / (stem + '_gt.nii.gz')}: label of the ACDC {subset} "
                                          f"{frame_name} frame {image_path.name} is missing; every {subset} frame "
                                          "needs its _gt")
                if label_path is None:
                    unlabelled.append(f"{patient.name}_{frame_name}")
                jobs.append((f"{patient.name}_{frame_name}",
                             _acdc_loader(patient, frame_name, number, subset, image_path, label_path, opts)))
            refuse_orphans(((gt, gt.with_name(gt.name.replace("_gt.nii", ".nii")))
                            for gt in sorted(patient.glob(f"{patient.name}_frame*_gt.nii*"))), "ACDC label")
        if unlabelled:
            warn_source(warnings, f"{folder}: {len(unlabelled)} frame(s) have no _gt label and are stored "
                                  f"unlabelled: {', '.join(unlabelled)}")
    if not jobs:
        raise ValueError(f"{src}: no patientNNN folder under {list(subsets)} (ACDC layout)")
    write_converted(out_path, jobs, converter=convert_acdc, src_dir=src,
                    options={**opts.as_dict(), "frames": frames, "subsets": list(subsets)},
                    channel_names=["cine"], label_names=ACDC_LABELS, dataset=dataset,
                    provenance_extra={"source_warnings": warnings})


def _acdc_loader(patient: Path, frame_name: str, number: int, subset: str, image_path: Path,
                 label_path: Path | None, opts: SliceOptions) -> CaseLoader:
    def load() -> SliceCase | None:
        data, affine = read_volume(image_path)
        label = None if label_path is None else load_label_on_grid(label_path, data.shape, affine, image_path,
                                                                   ACDC_LABELS)
        return volumes_to_case(f"{patient.name}_{frame_name}", {"cine": data}, affine, label, opts,
                               {"image": str(image_path), "label": label_path or ""},
                               {"frame": number, "frame_name": frame_name, "subset": subset})
    return load


@FORMATS.register("acdc_nifti")
class AcdcNifti(Format):
    """ACDC patient folders with Info.cfg and ED/ES frames."""

    layout = ("*/patient*/Info.cfg", "*/patient*/patient*_frame??.nii.gz")

    summary = "ACDC frames"
    options = {
        "frames": {"description": "labelled frames to keep (one case per patient and frame)", "type": "array",
                   "items": {"enum": ["ED", "ES"]}, "minItems": 1},
        "subsets": {"description": "ACDC subset folders to read", "type": "array",
                    "items": {"enum": ["training", "testing"]}, "minItems": 1},
    }
    convert = staticmethod(convert_acdc)
