"""BraTS label conventions, evaluation regions and sequence selection."""

from __future__ import annotations

import numpy as np
import pytest

from medkd.brats import (BRATS_SEQUENCES, DEFAULT_THREE_SEQUENCES, brats_regions, contiguous_labels,
                         select_sequences)

T, F = True, False


def test_brats_convention_regions():
    label = np.array([[0, 1, 2, 4],
                      [4, 2, 1, 0]])
    regions = brats_regions(label, "brats")
    # WT: every tumour label (1, 2, 4); TC: NCR/NET (1) + ET (4); ET: 4
    np.testing.assert_array_equal(regions["WT"], [[F, T, T, T], [T, T, T, F]])
    np.testing.assert_array_equal(regions["TC"], [[F, T, F, T], [T, F, T, F]])
    np.testing.assert_array_equal(regions["ET"], [[F, F, F, T], [T, F, F, F]])
    assert all(r.dtype == bool and r.shape == label.shape for r in regions.values())


def test_msd_convention_regions():
    # MSD Task01: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour
    label = np.array([[0, 1, 2, 3],
                      [3, 3, 1, 0]])
    regions = brats_regions(label, "msd")
    np.testing.assert_array_equal(regions["WT"], [[F, T, T, T], [T, T, T, F]])
    np.testing.assert_array_equal(regions["TC"], [[F, F, T, T], [T, T, F, F]])
    np.testing.assert_array_equal(regions["ET"], [[F, F, F, T], [T, T, F, F]])


def test_brats2023_convention_regions():
    label = np.array([0, 1, 2, 3])
    regions = brats_regions(label, "brats2023")
    np.testing.assert_array_equal(regions["WT"], [F, T, T, T])
    np.testing.assert_array_equal(regions["TC"], [F, T, F, T])
    np.testing.assert_array_equal(regions["ET"], [F, F, F, T])


@pytest.mark.parametrize("convention,values", [("brats", [0, 1, 2, 4]), ("msd", [0, 1, 2, 3])])
def test_regions_are_nested(convention, values):
    label = np.random.default_rng(0).choice(values, size=(6, 7, 5))
    r = brats_regions(label, convention)
    assert not (r["ET"] & ~r["TC"]).any()
    assert not (r["TC"] & ~r["WT"]).any()


def test_integer_valued_floats_accepted():
    regions = brats_regions(np.array([0.0, 4.0]), "brats")
    np.testing.assert_array_equal(regions["ET"], [F, T])


def test_invalid_labels_rejected():
    with pytest.raises(ValueError, match=r"labels \[3\].*'brats'"):
        brats_regions(np.array([0, 3]), "brats")
    with pytest.raises(ValueError, match=r"labels \[4\].*'msd'"):
        brats_regions(np.array([0, 4]), "msd")
    with pytest.raises(ValueError, match="non-integer"):
        brats_regions(np.array([0.0, 1.5]), "brats")
    with pytest.raises(ValueError, match="convention"):
        brats_regions(np.array([0, 1]), "kits")


def test_contiguous_labels():
    np.testing.assert_array_equal(contiguous_labels(np.array([0, 1, 2, 4]), "brats"), [0, 1, 2, 3])
    np.testing.assert_array_equal(contiguous_labels(np.array([0, 1, 2, 3]), "msd"), [0, 1, 2, 3])
    assert contiguous_labels(np.array([4], dtype=np.uint8)).dtype == np.int64


def test_sequence_selection():
    assert BRATS_SEQUENCES == ("flair", "t1", "t1ce", "t2")  # MSD Task01 channel order
    assert select_sequences(DEFAULT_THREE_SEQUENCES) == [0, 2, 3]
    # MSD / BraTS 2023 spellings, any order
    assert select_sequences(("T2w", "FLAIR", "t1gd")) == [3, 0, 2]
    assert select_sequences(("t1n", "t1c", "t2f")) == [1, 2, 0]
    # a source ordered like the BraTS file suffixes t1, t1ce, t2, flair
    assert select_sequences(("flair", "t1", "t2"), available=("t1", "t1ce", "t2", "flair")) == [3, 0, 2]
    assert select_sequences(("t1ce",), n=None) == [2]


def test_sequence_selection_errors():
    with pytest.raises(ValueError, match="duplicate"):
        select_sequences(("flair", "FLAIR", "t2"))
    with pytest.raises(ValueError, match="expected 3"):
        select_sequences(("flair", "t2"))
    with pytest.raises(ValueError, match="unknown MR sequence"):
        select_sequences(("flair", "t2", "dwi"))
    with pytest.raises(ValueError, match="not among"):
        select_sequences(("flair", "t1", "t2"), available=("flair", "t1ce", "t2"))
    with pytest.raises(ValueError, match="string"):
        select_sequences("flair")
