"""ACDC cine short-axis MRI, MICCAI 2017 (format ``acdc_nifti``).

Layout: ``src_dir/<subset>/patientNNN/Info.cfg`` (ED and ES frame numbers) with ``patientNNN_frameFF.nii.gz``
and, where released, ``patientNNN_frameFF_gt.nii.gz`` (0 background, 1 RV cavity, 2 myocardium, 3 LV cavity);
subsets ``training`` and ``testing``.
"""

from __future__ import annotations

import configparser
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medkd.data.convert import (
    CaseLoader,
    SliceOptions,
    find_one,
    load_label_on_grid,
    require_dir,
    slice_options,
    volumes_to_case,
    write_converted,
)
from medkd.data.formats import FORMATS, Format
from medkd.data.geometry import NIFTI_SUFFIXES, read_volume
from medkd.data.store import SliceCase

ACDC_LABELS = {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}


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
        folder = require_dir(src / subset, f"ACDC {subset} folder")
        for patient in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("patient")):
            info = read_acdc_info(patient / "Info.cfg")
            for frame_name in frames:
                number = int(info[frame_name])
                jobs.append((f"{patient.name}_{frame_name}",
                             _acdc_loader(patient, frame_name, number, subset, opts)))
    if not jobs:
        raise ValueError(f"{src}: no patientNNN folder under {list(subsets)} (ACDC layout)")
    write_converted(out_path, jobs, converter=convert_acdc, src_dir=src,
                    options={**opts.as_dict(), "frames": frames, "subsets": list(subsets)},
                    channel_names=["cine"], label_names=ACDC_LABELS, dataset=dataset)


def _acdc_loader(patient: Path, frame_name: str, number: int, subset: str, opts: SliceOptions) -> CaseLoader:
    def load() -> SliceCase | None:
        stem = f"{patient.name}_frame{number:02d}"
        image_path = find_one(patient, stem, NIFTI_SUFFIXES)
        if image_path is None:
            raise FileNotFoundError(f"{patient / (stem + '.nii.gz')}: ACDC {frame_name} frame listed in Info.cfg "
                                    "is missing")
        data, affine = read_volume(image_path)
        label_path = find_one(patient, f"{stem}_gt", NIFTI_SUFFIXES)
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
