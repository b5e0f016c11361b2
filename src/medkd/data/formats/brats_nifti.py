"""BraTS case folders of NIfTI volumes (format ``brats_nifti``).

Layout: one folder per case under ``src_dir`` (e.g. ``BraTS2021_00000/``) holding
``<case>_<modality>.nii.gz`` for every modality and ``<case>_<label_suffix>.nii.gz``; folders without the first
modality's file are ignored (e.g. ``.archives``). BraTS 2021 volumes are skull-stripped, co-registered,
240x240x155 at 1 mm; labels 0 background, 1 NCR/NET, 2 ED, 4 ET (BraTS 2023 numbers ET 3, also accepted).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medkd.data.convert import (
    MODALITY_NORMALISE_SCHEMA,
    CaseLoader,
    find_one,
    load_label_on_grid,
    require_dir,
    slice_options,
    volumes_to_case,
    write_converted,
)
from medkd.data.formats import FORMATS, Format
from medkd.data.geometry import NIFTI_SUFFIXES, read_coregistered
from medkd.data.store import SliceCase

BRATS_LABELS = {"0": "background", "1": "NCR_NET", "2": "ED", "3": "ET_2023", "4": "ET"}
"""Source label value -> name; stored labels keep the source values."""


def convert_brats(src_dir: str | Path, out_path: str | Path, *,
                  modalities: Sequence[str] = ("flair", "t1", "t1ce", "t2"), label_suffix: str = "seg",
                  dataset: str | None = None, **slicing: Any) -> None:
    """BraTS case folders -> slice store (layout in the module docstring).

    A case without a label file is stored unlabelled.

    Args:
        src_dir: the dataset folder.
        out_path: the slice store to write.
        modalities: file suffixes, in channel order (BraTS 2023 uses ``t2f``, ``t1n``, ``t1c``, ``t2w``).
        label_suffix: suffix of the label file.
        dataset: store name (default: the stem of ``out_path``).
        **slicing: :func:`medkd.data.convert.slice_options` (size, normalise, window, axis, min_foreground,
            modality_normalise).

    Raises:
        FileNotFoundError: ``src_dir`` missing, or a case folder lacks a modality file (names it).
        ValueError: no case folder, bad options, unreadable files, a modality or label on another grid.
    """
    src = require_dir(Path(src_dir), "BraTS folder")
    mods = [str(m) for m in modalities]
    if not mods:
        raise ValueError("modalities must name at least one BraTS sequence")
    opts = slice_options(channel_names=mods, **slicing)
    folders = sorted((d for d in src.iterdir() if d.is_dir() and not d.name.startswith(".")
                      and find_one(d, f"{d.name}_{mods[0]}", NIFTI_SUFFIXES)), key=lambda d: d.name)
    if not folders:
        raise ValueError(f"{src}: no case folder <case>/<case>_{mods[0]}.nii.gz found (BraTS layout)")

    def loader(folder: Path) -> CaseLoader:
        def load() -> SliceCase | None:
            paths = {}
            for mod in mods:
                p = find_one(folder, f"{folder.name}_{mod}", NIFTI_SUFFIXES)
                if p is None:
                    raise FileNotFoundError(f"{folder / (folder.name + '_' + mod + '.nii.gz')}: missing BraTS modality")
                paths[mod] = p
            channels, ref_affine, ref_shape = read_coregistered(paths)
            label_path = find_one(folder, f"{folder.name}_{label_suffix}", NIFTI_SUFFIXES)
            label = None if label_path is None else load_label_on_grid(
                label_path, ref_shape, ref_affine, paths[mods[0]], BRATS_LABELS)
            return volumes_to_case(folder.name, channels, ref_affine, label, opts,
                                   {"image": ";".join(str(p) for p in paths.values()), "label": label_path or ""})
        return load

    write_converted(out_path, [(d.name, loader(d)) for d in folders], converter=convert_brats, src_dir=src,
                    options={**opts.as_dict(), "modalities": mods, "label_suffix": label_suffix},
                    channel_names=mods, label_names=BRATS_LABELS, dataset=dataset)


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
