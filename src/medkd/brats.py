"""BraTS label conventions, evaluation regions and MR-sequence selection.

Label conventions (``convention=``):

* ``"brats"``: the BraTS challenge files (2012-2021): 0 background, 1 necrotic and non-enhancing tumour
  core (NCR/NET; "necrotic tumour core" only from BraTS 2021 on), 2 peritumoral edema (ED), 4 enhancing
  tumour (ET). Label 3 is unused and rejected.
* ``"brats2023"``: BraTS 2023 glioma files, where the enhancing tumour is 3 instead of 4: 0 background,
  1 NCR, 2 edema (SNFH), 3 ET.
* ``"msd"``: Medical Segmentation Decathlon Task01_BrainTumour (its ``dataset.json``): 0 background,
  1 edema, 2 non-enhancing tumour, 3 enhancing tumour.

Evaluation regions (the challenge's nested sub-regions, the same in every convention):

* whole tumour (``"WT"``): every tumour label (edema + core + enhancing);
* tumour core (``"TC"``): the non-enhancing/necrotic core plus the enhancing tumour (edema excluded);
* enhancing tumour (``"ET"``): the enhancing label alone.

Hence ET ⊆ TC ⊆ WT voxel-wise.

MR sequences: the four BraTS sequences in the channel order of MSD Task01 (``dataset.json`` modality
``{"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}``), :data:`BRATS_SEQUENCES`. The BraTS seed
repository feeds 128x128x3 "RGB" inputs, i.e. three of the four sequences; which three is not stated, so
:data:`DEFAULT_THREE_SEQUENCES` (FLAIR, T1ce, T2) is the re-implementers' choice, and
:func:`select_sequences` maps any names (BraTS file suffixes, MSD modality names, BraTS 2023 suffixes) to
channel indices for :func:`medkd.data.formats.msd.convert_msd` ``channels=``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The four sequences, canonical names, in MSD Task01 channel order.
BRATS_SEQUENCES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")

#: Our choice of three sequences for the seed's 3-channel input (not stated by the seed).
DEFAULT_THREE_SEQUENCES: tuple[str, ...] = ("flair", "t1ce", "t2")

#: Accepted spellings (lower case) -> canonical name: BraTS 2018-2021 file suffixes, MSD Task01 modality
#: names and BraTS 2023 suffixes (t2f, t1n, t1c, t2w).
SEQUENCE_ALIASES: dict[str, str] = {
    "flair": "flair", "t2f": "flair", "t2-flair": "flair", "t2flair": "flair",
    "t1": "t1", "t1w": "t1", "t1n": "t1", "native": "t1",
    "t1ce": "t1ce", "t1gd": "t1ce", "t1c": "t1ce", "t1-gd": "t1ce", "t1-ce": "t1ce",
    "t2": "t2", "t2w": "t2",
}

#: Per convention: (all valid labels, tumour-core labels, enhancing-tumour label).
LABEL_CONVENTIONS: dict[str, tuple[frozenset[int], frozenset[int], int]] = {
    "brats": (frozenset({0, 1, 2, 4}), frozenset({1, 4}), 4),
    "brats2023": (frozenset({0, 1, 2, 3}), frozenset({1, 3}), 3),
    "msd": (frozenset({0, 1, 2, 3}), frozenset({2, 3}), 3),
}

REGIONS: tuple[str, ...] = ("WT", "TC", "ET")


def _check_labels(label: np.ndarray, convention: str) -> tuple[np.ndarray, frozenset[int], int]:
    if convention not in LABEL_CONVENTIONS:
        raise ValueError(f"unknown BraTS label convention {convention!r}; use one of {sorted(LABEL_CONVENTIONS)}")
    valid, core, enhancing = LABEL_CONVENTIONS[convention]
    arr = np.asarray(label)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise ValueError("label array must hold integer class values (found non-integer floats)")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"label array must be integer, got dtype {arr.dtype}")
    present = set(np.unique(arr).tolist())
    unexpected = present - valid
    if unexpected:
        raise ValueError(f"labels {sorted(unexpected)} are not valid in the {convention!r} convention "
                         f"(valid: {sorted(valid)})")
    return arr, core, enhancing


def brats_regions(label: np.ndarray, convention: str = "brats") -> dict[str, np.ndarray]:
    """The three BraTS evaluation regions of a label array.

    Args:
        label: integer label array of any shape (a slice ``(H, W)``, a volume, or a batch).
        convention: ``"brats"`` (0/1/2/4), ``"brats2023"`` (0/1/2/3, ET = 3) or ``"msd"`` (Task01:
            1 edema, 2 non-enhancing, 3 enhancing).

    Returns:
        ``{"WT": mask, "TC": mask, "ET": mask}``, boolean arrays of the label's shape.

    Raises:
        ValueError: unknown convention, non-integer labels, or a value the convention does not define
            (e.g. 3 under ``"brats"``, 4 under ``"msd"``).
    """
    arr, core, enhancing = _check_labels(label, convention)
    return {
        "WT": arr > 0,
        "TC": np.isin(arr, sorted(core)),
        "ET": arr == enhancing,
    }


def contiguous_labels(label: np.ndarray, convention: str = "brats") -> np.ndarray:
    """Map a label array to contiguous class indices 0..3 for training with cross-entropy.

    ``"brats"``: 0, 1, 2, 4 -> 0, 1, 2, 3 (only ET moves). ``"brats2023"`` and ``"msd"`` are already
    contiguous and are returned as int64 unchanged. The class meaning still follows the convention.

    Raises:
        ValueError: as :func:`brats_regions`.
    """
    arr, _, _ = _check_labels(label, convention)
    out = arr.astype(np.int64, copy=True)
    if convention == "brats":
        out[out == 4] = 3
    return out


def canonical_sequence(name: str) -> str:
    """Canonical sequence name (one of :data:`BRATS_SEQUENCES`) of any accepted spelling.

    Raises:
        ValueError: an unknown name (the message lists the accepted spellings).
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in SEQUENCE_ALIASES:
        raise ValueError(f"unknown MR sequence {name!r}; accepted: {sorted(SEQUENCE_ALIASES)}")
    return SEQUENCE_ALIASES[key]


def select_sequences(names: Sequence[str] = DEFAULT_THREE_SEQUENCES,
                     available: Sequence[str] = BRATS_SEQUENCES, n: int | None = 3) -> list[int]:
    """Channel indices of the named sequences, in the requested order.

    Args:
        names: sequence names in any accepted spelling, e.g. ``("FLAIR", "t1gd", "T2w")``.
        available: the source's channel order (default MSD Task01: FLAIR, T1, T1ce, T2); any accepted
            spellings.
        n: required number of names (3 for the seed's RGB-like input); ``None`` allows 1..4.

    Returns:
        Indices into ``available``; e.g. ``select_sequences(("flair", "t1ce", "t2"))`` is ``[0, 2, 3]``.

    Raises:
        ValueError: unknown or duplicate names, a name not in ``available``, or the wrong number.
    """
    if isinstance(names, str):
        raise ValueError(f"names must be a sequence of sequence names, got the string {names!r}")
    wanted = [canonical_sequence(x) for x in names]
    order = [canonical_sequence(x) for x in available]
    if n is not None and len(wanted) != n:
        raise ValueError(f"expected {n} sequence names, got {len(wanted)}: {list(names)}")
    if not wanted:
        raise ValueError("no sequence names given")
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"duplicate sequences in {list(names)}")
    missing = [w for w in wanted if w not in order]
    if missing:
        raise ValueError(f"sequences {missing} are not among the available channels {list(available)}")
    return [order.index(w) for w in wanted]
