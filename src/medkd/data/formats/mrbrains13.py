"""MRBrainS13 subject folders (format ``mrbrains13``).

Layout: ``src_dir/<subset>/<n>/`` with ``T1``, ``T1_IR``, ``T2_FLAIR`` (registered, 0.958 x 0.958 x 3.0 mm,
240 x 240 x 48), each as ``.nii``, ``.nii.gz`` or ``.mhd`` (+ ``.raw``, the original release), and for
training subjects ``LabelsForTesting`` (0 background, 1 CSF, 2 GM, 3 WM; what the challenge scores) and
``LabelsForTraining`` (9 structures). A subject missing a modality, a TrainingData subject missing the chosen label
file, and a label file without images are refused; subjects of other subsets (TestData) without it are stored
unlabelled with a warning recorded in ``source_warnings``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medkd.data.convert import (
    MODALITY_NORMALISE_SCHEMA,
    CaseLoader,
    MissingCaseFile,
    SliceOptions,
    find_one,
    load_label_on_grid,
    natural_key,
    refuse_orphans,
    require_dir,
    slice_options,
    volumes_to_case,
    warn_source,
    write_converted,
)
from medkd.data.formats import FORMATS, Format
from medkd.data.geometry import NIFTI_SUFFIXES, read_coregistered
from medkd.data.store import SliceCase

MRBRAINS_LABELS = {
    "LabelsForTesting": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"},
    "LabelsForTraining": {"0": "background", "1": "cortical_GM", "2": "basal_ganglia", "3": "WM",
                          "4": "WM_lesions", "5": "CSF", "6": "ventricles", "7": "cerebellum",
                          "8": "brainstem"},
}
SUFFIXES = NIFTI_SUFFIXES + (".mhd", ".mha")
LABELLED_SUBSETS = ("TrainingData",)
"""Subsets whose every subject must have ``label_file`` (when one is chosen); MRBrainS13 TestData has none."""


def convert_mrbrains(src_dir: str | Path, out_path: str | Path, *,
                     modalities: Sequence[str] = ("T1", "T1_IR", "T2_FLAIR"),
                     label_file: str | None = "LabelsForTesting",
                     subsets: Sequence[str] = ("TrainingData", "TestData"), dataset: str | None = None,
                     **slicing: Any) -> None:
    """MRBrainS13 subject folders -> slice store (layout in the module docstring).

    Case ids ``<subset>_<n>`` (e.g. ``TrainingData_1``). With a ``label_file``, every TrainingData subject needs
    it; subjects of other subsets without it (all of TestData) are stored unlabelled, with a recorded warning.

    Args:
        src_dir: the dataset folder.
        out_path: the slice store to write.
        modalities: file stems, in channel order (KD-MRI reconstructs one contrast: list it alone, or first,
            because the undersample stage reads channel 0).
        label_file: ``LabelsForTesting``, ``LabelsForTraining`` or None (no labels).
        subsets: subject folders to read.
        dataset: store name.
        **slicing: :func:`medkd.data.convert.slice_options`.

    Raises:
        FileNotFoundError: a subset folder is missing.
        MissingCaseFile: a modality file, or the label file of a TrainingData subject, is missing (names it).
        InputError: a label file without images, label values outside ``label_file``'s range, a 4-D volume, a
            label off the grid.
        ValueError: bad options, no subject, channels not co-registered.
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
    label_names = MRBRAINS_LABELS[label_file] if label_file else {"0": "background"}
    jobs: list[tuple[str, CaseLoader]] = []
    warnings: list[str] = []
    for subset in subsets:
        folder = require_dir(src / subset, f"MRBrainS13 {subset} folder")
        unlabelled = []
        for subject in sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                              key=lambda d: natural_key(d.name)):
            paths = {mod: find_one(subject, mod, SUFFIXES) for mod in mods}
            label_path = find_one(subject, label_file, SUFFIXES) if label_file else None
            if label_path is not None and not any(paths.values()):
                refuse_orphans([(label_path, subject / f"{mods[0]}.nii")], "MRBrainS13 label")
            for mod, p in paths.items():
                if p is None:
                    raise MissingCaseFile(f"{subject / mod}.nii: missing MRBrainS13 image {mod!r} of subject "
                                          f"{subset}/{subject.name} (also tried .nii.gz, .mhd, .mha)")
            if label_file and label_path is None:
                if subset in LABELLED_SUBSETS:
                    raise MissingCaseFile(f"{subject / label_file}.nii: missing MRBrainS13 label file of subject "
                                          f"{subset}/{subject.name} (also tried .nii.gz, .mhd, .mha); every "
                                          f"{subset} subject needs it with label_file: {label_file}")
                unlabelled.append(f"{subset}_{subject.name}")
            jobs.append((f"{subset}_{subject.name}",
                         _mrbrains_loader(subject, subset, paths, label_path, label_names, opts)))
        if unlabelled:
            warn_source(warnings, f"{folder}: {len(unlabelled)} subject(s) have no {label_file} and are stored "
                                  f"unlabelled: {', '.join(unlabelled)}")
    if not jobs:
        raise ValueError(f"{src}: no subject folder under {list(subsets)} (MRBrainS13 layout)")
    write_converted(out_path, jobs, converter=convert_mrbrains, src_dir=src,
                    options={**opts.as_dict(), "modalities": mods, "label_file": label_file, "subsets": list(subsets)},
                    channel_names=mods, label_names=label_names, dataset=dataset,
                    provenance_extra={"source_warnings": warnings})


def _mrbrains_loader(subject: Path, subset: str, paths: dict[str, Path], label_path: Path | None,
                     label_names: Mapping[str, str], opts: SliceOptions) -> CaseLoader:
    def load() -> SliceCase | None:
        mods = list(paths)
        channels, ref_affine, ref_shape = read_coregistered(paths)
        label = None if label_path is None else load_label_on_grid(label_path, ref_shape, ref_affine,
                                                                   paths[mods[0]], label_names)
        return volumes_to_case(f"{subset}_{subject.name}", channels, ref_affine, label, opts,
                               {"image": ";".join(str(p) for p in paths.values()), "label": label_path or ""},
                               {"subset": subset})
    return load


@FORMATS.register("mrbrains13")
class MrBrainS13(Format):
    """MRBrainS13 subject folders (NIfTI or the original .mhd/.raw)."""

    layout = ("*/*/T1.*",)

    summary = "MRBrainS13 subjects"
    options = {
        **MODALITY_NORMALISE_SCHEMA,
        "modalities": {"description": "image file stems in channel order (T1, T1_IR, T2_FLAIR)", "type": "array",
                       "items": {"type": "string"}, "minItems": 1},
        "label_file": {"description": "LabelsForTesting (CSF/GM/WM), LabelsForTraining (9 structures) or null",
                       "enum": ["LabelsForTesting", "LabelsForTraining", None]},
        "subsets": {"description": "subject folders to read ([TrainingData, TestData])", "type": "array",
                    "items": {"type": "string"}, "minItems": 1},
    }
    convert = staticmethod(convert_mrbrains)
