"""BraTS case folders of NIfTI volumes (format ``brats_nifti``).

Layout: one folder per case under ``src_dir`` (e.g. ``BraTS2021_00000/``) holding
``<case>_<modality>.nii.gz`` for every modality and ``<case>_<label_suffix>.nii.gz``. A folder holding any
NIfTI file is a case and must hold all of them (a missing modality or label, or a label without its images, is
refused); a folder without NIfTI files is ignored with a warning recorded in ``source_warnings``, hidden ones
(``.archives``) silently. BraTS 2021 volumes are skull-stripped, co-registered, 240x240x155 at 1 mm; labels
0 background, 1 NCR/NET, 2 ED, 4 ET. BraTS 2023 numbers ET 3, also accepted, but not mixed with 4 in one
case or one dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medkd.data.convert import (
    MODALITY_NORMALISE_SCHEMA,
    CaseLoader,
    MissingCaseFile,
    find_one,
    label_values,
    load_label_on_grid,
    refuse_orphans,
    require_dir,
    slice_options,
    volumes_to_case,
    warn_source,
    write_converted,
)
from medkd.data.formats import FORMATS, Format
from medkd.data.geometry import NIFTI_SUFFIXES, has_suffix, read_coregistered
from medkd.data.store import SliceCase
from medkd.errors import InputError

BRATS_LABELS = {"0": "background", "1": "NCR_NET", "2": "ED", "3": "ET_2023", "4": "ET"}
"""Source label value -> name; stored labels keep the source values."""
ET_CONVENTIONS = {4: "BraTS 2021 (4 = ET)", 3: "BraTS 2023 (3 = ET)"}
"""The two numberings of the enhancing tumour; a dataset must use one."""


def convert_brats(src_dir: str | Path, out_path: str | Path, *,
                  modalities: Sequence[str] = ("flair", "t1", "t1ce", "t2"), label_suffix: str = "seg",
                  dataset: str | None = None, **slicing: Any) -> None:
    """BraTS case folders -> slice store (layout in the module docstring).

    Every case needs every modality and its label. Label values must be among 0, 1, 2 and the enhancing
    tumour numbered 4 (BraTS 2021) or 3 (BraTS 2023), one convention for the whole dataset.

    Args:
        src_dir: the dataset folder.
        out_path: the slice store to write.
        modalities: file suffixes, in channel order (BraTS 2023 uses ``t2f``, ``t1n``, ``t1c``, ``t2w``).
        label_suffix: suffix of the label file.
        dataset: store name (default: the stem of ``out_path``).
        **slicing: :func:`medkd.data.convert.slice_options` (size, normalise, window, axis, min_foreground,
            modality_normalise).

    Raises:
        FileNotFoundError: ``src_dir`` missing.
        MissingCaseFile: a case folder lacks a modality or its label file (names it).
        InputError: a label without its images, label values outside the convention or mixing 3 and 4 (names
            the file and the values), a 4-D image.
        ValueError: no case folder, bad options, unreadable files, a modality or label on another grid.
    """
    src = require_dir(Path(src_dir), "BraTS folder")
    mods = [str(m) for m in modalities]
    if not mods:
        raise ValueError("modalities must name at least one BraTS sequence")
    opts = slice_options(channel_names=mods, **slicing)
    warnings: list[str] = []
    cases: list[tuple[str, dict[str, Path], Path]] = []
    for folder in sorted((d for d in src.iterdir() if d.is_dir() and not d.name.startswith(".")),
                         key=lambda d: d.name):
        if not any(has_suffix(f, NIFTI_SUFFIXES) for f in folder.iterdir()):
            warn_source(warnings, f"{folder}: holds no NIfTI file, not a BraTS case folder; ignored")
            continue
        cases.append(_case_files(folder, mods, label_suffix))
    if not cases:
        raise ValueError(f"{src}: no case folder <case>/<case>_{mods[0]}.nii.gz found (BraTS layout)")
    et_seen: dict[int, Path] = {}  # ET value -> the first label holding it

    def loader(name: str, paths: dict[str, Path], label_path: Path) -> CaseLoader:
        def load() -> SliceCase | None:
            channels, ref_affine, ref_shape = read_coregistered(paths)
            label = load_label_on_grid(label_path, ref_shape, ref_affine, paths[mods[0]], BRATS_LABELS)
            _check_et_convention(label_path, label_values(label), et_seen)
            return volumes_to_case(name, channels, ref_affine, label, opts,
                                   {"image": ";".join(str(p) for p in paths.values()), "label": label_path})
        return load

    write_converted(out_path, [(name, loader(name, paths, label)) for name, paths, label in cases],
                    converter=convert_brats, src_dir=src,
                    options={**opts.as_dict(), "modalities": mods, "label_suffix": label_suffix},
                    channel_names=mods, label_names=BRATS_LABELS, dataset=dataset,
                    provenance_extra={"source_warnings": warnings})


def _case_files(folder: Path, mods: list[str], label_suffix: str) -> tuple[str, dict[str, Path], Path]:
    """(case id, modality -> file, label file) of one case folder, every file present.

    Raises:
        InputError: the label is there but no modality (an orphan label).
        MissingCaseFile: a modality or the label is missing.
    """
    def expected(suffix: str) -> Path:
        return find_one(folder, f"{folder.name}_{suffix}", NIFTI_SUFFIXES) or folder / f"{folder.name}_{suffix}.nii.gz"

    paths = {m: expected(m) for m in mods}
    label = expected(label_suffix)
    if label.is_file() and not any(p.is_file() for p in paths.values()):
        refuse_orphans([(label, paths[mods[0]])], "BraTS label")
    for mod, path in paths.items():
        if not path.is_file():
            raise MissingCaseFile(f"{path}: missing BraTS modality {mod!r} of case {folder.name}; every case needs "
                                  f"{[*mods, label_suffix]}")
    if not label.is_file():
        raise MissingCaseFile(f"{label}: missing BraTS label ({label_suffix!r}) of case {folder.name}; a case "
                              "without its label is refused, not stored unlabelled")
    return folder.name, paths, label


def _check_et_convention(path: Path, values: set[int], et_seen: dict[int, Path]) -> None:
    """Refuse a label holding both ET numberings, or one whose numbering differs from an earlier label's."""
    shown = "{" + ", ".join(str(v) for v in sorted(values)) + "}"
    if {3, 4} <= values:
        raise InputError(f"{path}: label values {shown} mix {ET_CONVENTIONS[4]} and {ET_CONVENTIONS[3]} "
                         "conventions")
    for et, other in ((4, 3), (3, 4)):
        if et in values:
            if other in et_seen:
                raise InputError(f"{path}: label values {shown} follow {ET_CONVENTIONS[et]} but {et_seen[other]} "
                                 f"follows {ET_CONVENTIONS[other]}: the dataset mixes the two conventions")
            et_seen.setdefault(et, path)


@FORMATS.register("brats_nifti")
class BratsNifti(Format):
    """BraTS case folders."""

    layout = ("*/*.nii.gz",)

    summary = "BraTS case folders"
    options = {
        **MODALITY_NORMALISE_SCHEMA,
        "modalities": {"description": "file suffixes in channel order (BraTS 2021: flair, t1, t1ce, t2)",
                       "type": "array", "items": {"type": "string"}, "minItems": 1},
        "label_suffix": {"description": "label file suffix (seg)", "type": "string"},
    }
    convert = staticmethod(convert_brats)
