"""Every converter refuses broken cases (docs/datasets.md, "What each converter refuses"): one test per
(format, check). Each builds a tiny dataset in its format's layout (the builders of test_formats.py), breaks
one thing, and asserts the InputError names the file and the defect and that nothing was written; the
warn-and-convert rows assert the warning is in the store's provenance (``source_warnings``, which
``medkd convert`` copies into the fingerprint JSON)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import scipy.io
from PIL import Image
from test_formats import NONE, _acdc_patient, _brats_case, _busi, _hecktor, _png, read_store, save_mha, save_nii

from medkd.data.convert import MissingCaseFile
from medkd.data.formats import (
    acdc_nifti,
    brats_nifti,
    busi_png,
    cc359_nifti,
    hecktor_nifti,
    mrbrains13,
    msd,
    picai_mha,
    vn_knee_mat,
)
from medkd.errors import InputError


def refused(convert, out, *fragments, error=InputError) -> str:
    """Run ``convert()``; it must raise ``error`` with a one-line message holding every fragment, and write
    nothing at ``out``."""
    with pytest.raises(error) as info:
        convert()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in {message!r}"
    assert not out.exists()
    return message


def source_warnings(out) -> list[str]:
    return read_store(out)[0]["provenance"]["source_warnings"]


# ------------------------------------------------------------------------------------------ BraTS


BRATS_CASE = "BraTS2021_00000"


@pytest.fixture
def brats(tmp_path):
    src = tmp_path / "brats"
    _brats_case(src, BRATS_CASE)
    _brats_case(src, "BraTS2021_00001")
    return src, tmp_path / "brats.h5"


def _convert_brats(src, out):
    return lambda: brats_nifti.convert_brats(src, out, size=[6, 5], **NONE)


@pytest.mark.parametrize("modality", ["flair", "t1ce"])  # the first one used to hide the case
def test_brats_case_missing_a_modality_is_refused(brats, modality):
    src, out = brats
    path = src / BRATS_CASE / f"{BRATS_CASE}_{modality}.nii.gz"
    path.unlink()
    refused(_convert_brats(src, out), out, path, f"missing BraTS modality {modality!r} of case {BRATS_CASE}",
            error=MissingCaseFile)


def test_brats_case_missing_its_label_is_refused(brats):
    src, out = brats
    path = src / BRATS_CASE / f"{BRATS_CASE}_seg.nii.gz"
    path.unlink()
    refused(_convert_brats(src, out), out, path, "missing BraTS label", "not stored unlabelled", error=MissingCaseFile)


def test_brats_orphan_label_is_refused(brats):
    src, out = brats
    for mod in ("flair", "t1", "t1ce", "t2"):
        (src / BRATS_CASE / f"{BRATS_CASE}_{mod}.nii.gz").unlink()
    refused(_convert_brats(src, out), out, src / BRATS_CASE / f"{BRATS_CASE}_seg.nii.gz",
            "BraTS label without its image", "(orphan)")


def test_brats_label_value_outside_the_convention_is_refused(brats):
    src, out = brats
    path = src / BRATS_CASE / f"{BRATS_CASE}_seg.nii.gz"
    seg = np.zeros((6, 5, 4), np.uint8)
    seg[1, 1, 1], seg[2, 2, 2] = 2, 5
    save_nii(path, seg)
    refused(_convert_brats(src, out), out, path, "label values [5] are not listed", "values found: [0, 2, 5]")


def test_brats_label_mixing_2021_and_2023_in_one_case_is_refused(brats):
    src, out = brats
    path = src / BRATS_CASE / f"{BRATS_CASE}_seg.nii.gz"
    seg = np.asarray(nib.load(path).dataobj)
    seg[0, 0, 0] = 3  # the case already holds 4
    save_nii(path, seg)
    refused(_convert_brats(src, out), out,
            f"{path}: label values {{0, 1, 2, 3, 4}} mix BraTS 2021 (4 = ET) and BraTS 2023 (3 = ET) conventions")


def test_brats_dataset_mixing_2021_and_2023_is_refused(brats):
    src, out = brats
    path = src / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz"
    seg = np.asarray(nib.load(path).dataobj)
    seg[seg == 4] = 3  # this case numbers ET 3 (2023), BraTS2021_00000 numbers it 4 (2021)
    save_nii(path, seg)
    refused(_convert_brats(src, out), out, path, "follow BraTS 2023 (3 = ET)",
            f"{src / BRATS_CASE / (BRATS_CASE + '_seg.nii.gz')} follows BraTS 2021 (4 = ET)",
            "the dataset mixes the two conventions")
    other = src / BRATS_CASE / f"{BRATS_CASE}_seg.nii.gz"  # 2023 throughout is fine
    seg = np.asarray(nib.load(other).dataobj)
    seg[seg == 4] = 3
    save_nii(other, seg)
    _convert_brats(src, out)()
    assert {int(v) for v in np.unique(read_store(out)[1][BRATS_CASE].label)} == {0, 1, 2, 3}


def test_brats_4d_image_is_refused(brats):
    src, out = brats
    path = src / BRATS_CASE / f"{BRATS_CASE}_t2.nii.gz"
    save_nii(path, np.ones((6, 5, 4, 2), np.float32))
    refused(_convert_brats(src, out), out, path, "expected a 3-D volume, got shape (6, 5, 4, 2)")


def test_brats_folder_without_nifti_is_warned_and_recorded(brats):
    src, out = brats
    (src / "docs").mkdir()
    (src / "docs" / "README.txt").write_text("not a case")
    _convert_brats(src, out)()
    assert source_warnings(out) == [f"{src / 'docs'}: holds no NIfTI file, not a BraTS case folder; ignored"]
    assert sorted(read_store(out)[1]) == [BRATS_CASE, "BraTS2021_00001"]
