"""PI-CAI bi-parametric prostate MRI, ``.mha`` images and NIfTI labels (format ``picai_mha``).

Layout: ``src_dir/images/<patient>/<patient>_<study>_<modality>.mha`` and
``src_dir/<label_dir>/<patient>_<study>.nii.gz``. The human-expert ``resampled`` labels lie on the T2w grid;
their values are 0 and the ISUP grade 2..5 of each csPCa lesion (1 is accepted for binary masks). A study
missing a converted sequence, a sequence or label without the study's first sequence, and label values outside
0..5 are refused; studies without a label are skipped or kept (``unlabelled``) with a recorded warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medkd.data.convert import (
    MODALITY_NORMALISE_SCHEMA,
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
from medkd.data.geometry import NIFTI_SUFFIXES, has_suffix, read_volume, resample_to_grid, strip_suffix
from medkd.data.store import SliceCase

PICAI_LABELS = {"0": "background", "1": "lesion", "2": "ISUP2", "3": "ISUP3", "4": "ISUP4", "5": "ISUP5"}


def convert_picai(src_dir: str | Path, out_path: str | Path, *, modalities: Sequence[str] = ("t2w", "adc", "hbv"),
                  label_dir: str = "labels/csPCa_lesion_delineations/human_expert/resampled",
                  unlabelled: str = "skip", dataset: str | None = None, **slicing: Any) -> None:
    """PI-CAI -> slice store, one case per study (layout in the module docstring).

    The first modality (``t2w``) defines the grid; the others (ADC, high-b DWI, on a coarser grid and
    sometimes another field of view) are resampled onto it linearly through world coordinates. Labels must lie
    on the T2w grid (checked); map their values to one ``lesion`` class in the experiment. Case ids
    ``<patient>_<study>``.

    Args:
        src_dir: the dataset folder.
        out_path: the slice store to write.
        modalities: file suffixes, in channel order (the first is the reference grid).
        label_dir: label folder relative to ``src_dir`` (e.g. ``.../AI/Bosma22a`` for the AI-derived labels).
        unlabelled: ``skip`` studies without a label file (1295 of 1500 have human labels) or ``keep`` them
            unlabelled.
        dataset: store name.
        **slicing: :func:`medkd.data.convert.slice_options`.

    Raises:
        FileNotFoundError: the images folder is missing.
        MissingCaseFile: a study lacks one of ``modalities`` (names the file).
        InputError: a sequence or a label without the study's first modality, label values outside 0..5, a 4-D
            volume, a label off the T2w grid.
        ValueError: bad options, no study, unreadable files.
    """
    src = Path(src_dir)
    mods = [str(m) for m in modalities]
    if not mods:
        raise ValueError("modalities must name at least one PI-CAI sequence")
    if unlabelled not in ("skip", "keep"):
        raise ValueError(f"unlabelled must be 'skip' or 'keep', got {unlabelled!r}")
    opts = slice_options(channel_names=mods, **slicing)
    images = require_dir(src / "images", "PI-CAI images folder")
    labels = src / label_dir
    suffix = f"_{mods[0]}.mha"
    studies = sorted((p.parent, p.name[: -len(suffix)]) for p in images.glob(f"*/*{suffix}"))
    if not studies:
        raise ValueError(f"{images}: no <patient>/<patient>_<study>{suffix} file (PI-CAI layout)")
    for m in mods[1:]:
        refuse_orphans(((p, p.with_name(p.name[: -len(f"_{m}.mha")] + suffix))
                        for p in sorted(images.glob(f"*/*_{m}.mha"))), f"PI-CAI {m} sequence")
    label_files = sorted(p for p in labels.iterdir() if has_suffix(p, NIFTI_SUFFIXES)) if labels.is_dir() else []
    refuse_orphans(((p, images / p.name.split("_")[0] / (strip_suffix(p.name, NIFTI_SUFFIXES) + suffix))
                    for p in label_files), "PI-CAI label")
    jobs: list[tuple[str, CaseLoader]] = []
    not_labelled: list[str] = []
    warnings: list[str] = []
    for folder, study in studies:
        for m in mods:
            if not (folder / f"{study}_{m}.mha").is_file():
                raise MissingCaseFile(f"{folder / f'{study}_{m}.mha'}: PI-CAI sequence {m!r} of study {study} "
                                      f"missing; every study needs {mods}")
        label_path = find_one(labels, study, NIFTI_SUFFIXES) if labels.is_dir() else None
        if label_path is None:
            not_labelled.append(study)
            if unlabelled == "skip":
                continue
        jobs.append((study, _picai_loader(folder, study, mods, label_path, opts)))
    if not_labelled:
        warn_source(warnings, f"{labels}: {len(not_labelled)} of {len(studies)} studies have no label file and were "
                              f"{'skipped' if unlabelled == 'skip' else 'kept unlabelled'} (unlabelled: "
                              f"{unlabelled}): {', '.join(not_labelled)}")
    if not jobs:
        raise ValueError(f"{labels}: no label file for any of the {len(studies)} studies (unlabelled: skip)")
    write_converted(out_path, jobs, converter=convert_picai, src_dir=src,
                    options={**opts.as_dict(), "modalities": mods, "label_dir": label_dir, "unlabelled": unlabelled},
                    channel_names=mods, label_names=PICAI_LABELS, dataset=dataset,
                    provenance_extra={"unlabelled_studies": not_labelled, "source_warnings": warnings})


def _picai_loader(folder: Path, study: str, mods: list[str], label_path: Path | None, opts: SliceOptions) -> CaseLoader:
    def load() -> SliceCase | None:
        paths = {m: folder / f"{study}_{m}.mha" for m in mods}
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


@FORMATS.register("picai_mha")
class PicaiMha(Format):
    """PI-CAI .mha studies with NIfTI lesion labels."""

    layout = ("images/*/*.mha",)

    summary = "PI-CAI .mha"
    options = {
        **MODALITY_NORMALISE_SCHEMA,
        "modalities": {"description": "file suffixes in channel order; the first is the reference grid "
                                      "([t2w, adc, hbv])", "type": "array", "items": {"type": "string"},
                       "minItems": 1},
        "label_dir": {"description": "label folder relative to data/<source>", "type": "string"},
        "unlabelled": {"description": "skip studies without a label file, or keep them unlabelled",
                       "enum": ["skip", "keep"]},
    }
    convert = staticmethod(convert_picai)
