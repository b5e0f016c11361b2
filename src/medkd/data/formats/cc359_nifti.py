"""Calgary-Campinas-359 T1 volumes, NIfTI without labels (format ``cc359_nifti``).

Layout: ``src_dir/<folder>/CC<nnnn>_<vendor>_<field>_<age>_<sex>.nii.gz``; the case id is the file name
without ``.nii.gz``. KD-MRI's super-resolution experiment uses 256 x 256 slices; the slice axis is the
config's choice (no source states it). Other files in the folder are ignored with a warning recorded in
``source_warnings``; a 4-D volume is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medkd.data.convert import CaseLoader, require_dir, slice_options, volumes_to_case, warn_source, write_converted
from medkd.data.formats import FORMATS, Format
from medkd.data.geometry import NIFTI_SUFFIXES, has_suffix, read_volume, strip_suffix
from medkd.data.store import SliceCase


def convert_cc359(src_dir: str | Path, out_path: str | Path, *, folder: str = "Original", dataset: str | None = None,
                  **slicing: Any) -> None:
    """Calgary-Campinas-359 -> slice store (layout in the module docstring).

    Args:
        src_dir: the dataset folder.
        out_path: the slice store to write.
        folder: sub-folder holding the volumes.
        dataset: store name.
        **slicing: :func:`medkd.data.convert.slice_options`.

    Raises:
        FileNotFoundError: the folder is missing.
        InputError: a volume that is not 3-D.
        ValueError: no ``CC*.nii[.gz]`` file, bad options, unreadable volumes.
    """
    src = Path(src_dir)
    base = require_dir(src / folder, "Calgary-Campinas volume folder")
    files, warnings = [], []
    for p in sorted(base.iterdir()):
        if p.name.startswith("CC") and has_suffix(p, NIFTI_SUFFIXES):
            files.append(p)
        elif not p.name.startswith("."):
            warn_source(warnings, f"{p}: not a CC*.nii[.gz] volume; ignored")
    if not files:
        raise ValueError(f"{base}: no CC*.nii.gz volume (Calgary-Campinas layout)")
    opts = slice_options(channel_names=["T1"], **slicing)

    def loader(path: Path) -> CaseLoader:
        def load() -> SliceCase | None:
            data, affine = read_volume(path)
            cid = strip_suffix(path.name, NIFTI_SUFFIXES)
            return volumes_to_case(cid, {"T1": data}, affine, None, opts, {"image": str(path)})
        return load

    write_converted(out_path, [(strip_suffix(p.name, NIFTI_SUFFIXES), loader(p)) for p in files],
                    converter=convert_cc359, src_dir=src, options={**opts.as_dict(), "folder": folder},
                    channel_names=["T1"], label_names={"0": "background"}, dataset=dataset,
                    provenance_extra={"source_warnings": warnings})


@FORMATS.register("cc359_nifti")
class Cc359Nifti(Format):
    """Calgary-Campinas-359 T1 volumes."""

    layout = ("*/CC*.nii.gz",)

    summary = "Calgary-Campinas"
    options = {
        "folder": {"description": "sub-folder holding the volumes (Original)", "type": "string"},
    }
    convert = staticmethod(convert_cc359)
