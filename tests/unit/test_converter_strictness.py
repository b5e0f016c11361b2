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


# ------------------------------------------------------------------------------------------ BUSI


@pytest.fixture
def busi(tmp_path):
    src = tmp_path / "busi"
    _busi(src)  # benign (2): RGB with _mask and _mask_1; malignant (10), normal (1): grey
    return src, tmp_path / "busi.h5"


def _convert_busi(src, out, **options):
    return lambda: busi_png.convert_busi(src, out, **{"size": [4, 4], **NONE, **options})


def _rgb_with(path, mode):
    """Rewrite the RGB PNG at ``path`` in another PIL mode; return it."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    if mode == "RGBA":
        Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "RGBA").save(path)
    elif mode == "I;16":
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(path)
    else:
        Image.fromarray(rgb).convert(mode).save(path)
    return path


BENIGN = "benign/benign (2).png"


def test_busi_image_without_its_mask_is_refused(busi):
    src, out = busi
    (src / "normal/normal (1)_mask.png").unlink()
    refused(_convert_busi(src, out), out, src / "normal/normal (1)_mask.png", "mask of normal (1).png not found",
            "not stored unlabelled", error=MissingCaseFile)


@pytest.mark.parametrize("name", ["benign (7)_mask.png", "benign (7)_mask_1.png"])
def test_busi_orphan_mask_is_refused(busi, name):
    src, out = busi
    _png(src / "benign" / name, np.zeros((10, 7), np.uint8))
    refused(_convert_busi(src, out), out, src / "benign" / name, "BUSI mask without its image benign (7).png",
            "(orphan)")


def test_busi_mask_values_other_than_0_and_255_are_refused(busi):
    src, out = busi
    path = src / "benign/benign (2)_mask.png"
    mask = np.array(Image.open(path))
    mask[0, 0] = 128
    _png(path, mask)
    refused(_convert_busi(src, out), out, path, "not listed in BUSI's binary mask convention [0, 255]",
            "values found: [0, 128, 255]")


def test_busi_non_binary_mask_with_a_chosen_threshold_is_warned_and_recorded(tmp_path):
    src, out = tmp_path / "busi", tmp_path / "busi.h5"
    _busi(src, partial=True)
    _convert_busi(src, out, mask_threshold=128)()
    path = src / "benign/benign (2)_mask.png"
    assert f"{path}: mask values [0, 128, 255] are not binary; foreground where channel 0 >= 128 " \
           "(mask_threshold)" in source_warnings(out)


@pytest.mark.parametrize("file", [BENIGN, "benign/benign (2)_mask.png"])
def test_busi_16_bit_png_is_refused(busi, file):
    src, out = busi
    path = _rgb_with(src / file, "I;16")
    refused(_convert_busi(src, out), out, path, "16-bit")


def test_busi_png_with_transparent_pixels_is_refused(busi):
    src, out = busi
    path = src / BENIGN
    rgba = np.dstack([np.array(Image.open(path)), np.full((10, 7), 255, np.uint8)])
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, "RGBA").save(path)
    refused(_convert_busi(src, out), out, path, "8-bit RGBA PNG with 1 transparent pixel(s)")


@pytest.mark.parametrize(("mode", "kind"), [("L", "8-bit grey PNG"), ("P", "8-bit palette PNG"),
                                            ("RGBA", "8-bit RGBA PNG")])
def test_busi_grey_palette_or_opaque_alpha_png_is_converted_with_a_warning(busi, mode, kind):
    src, out = busi
    path = _rgb_with(src / BENIGN, mode)
    expected = np.asarray(Image.open(path).convert("RGB"))
    _convert_busi(src, out, size=[10, 7], normalise="none")()
    assert f"{path}: {kind}, not 8-bit RGB; converted to RGB as P-CD's convert('RGB') does" in source_warnings(out)
    np.testing.assert_array_equal(np.moveaxis(read_store(out)[1]["benign_2"].image[0], 0, 2), expected)


def test_busi_warnings_reach_the_fingerprint(busi):
    from medkd.cli import main

    src, out = busi
    fp = out.with_suffix(".json")
    main(["convert", "--dataset", "busi", "--convert-spec", json.dumps({"format": "busi_png", "size": [8, 8]}),
          "--src", str(src), "--out", str(out), "--fingerprint", str(fp)])
    assert json.loads(fp.read_text())["source_warnings"] == source_warnings(out) != []


def test_busi_ignored_extra_mask_is_warned_and_recorded(busi):
    src, out = busi
    _convert_busi(src, out)()
    assert f"{src / 'benign/benign (2)_mask_1.png'}: extra lesion mask ignored (extra_masks: ignore, as P-CD's " \
           "loader); its lesion is background in case benign_2" in source_warnings(out)


def test_busi_non_png_file_is_warned_and_recorded(busi):
    src, out = busi
    Image.open(src / BENIGN).save(src / "benign/benign (3).jpg")
    _convert_busi(src, out)()
    assert f"{src / 'benign/benign (3).jpg'}: not a PNG file; ignored" in source_warnings(out)


# ------------------------------------------------------------------------------------------ ACDC


@pytest.fixture
def acdc(tmp_path):
    src = tmp_path / "acdc"
    _acdc_patient(src, "training", "patient001", ed=1, es=3)
    _acdc_patient(src, "testing", "patient101", ed=1, es=3)
    return src, tmp_path / "acdc.h5"


def _convert_acdc(src, out):
    return lambda: acdc_nifti.convert_acdc(src, out, size=[5, 4], **NONE)


def test_acdc_frame_listed_in_info_cfg_missing_is_refused(acdc):
    src, out = acdc
    path = src / "training/patient001/patient001_frame03.nii.gz"
    path.unlink()
    refused(_convert_acdc(src, out), out, path, "ACDC ES frame listed in Info.cfg is missing", error=MissingCaseFile)


def test_acdc_training_frame_without_its_label_is_refused(acdc):
    src, out = acdc
    path = src / "training/patient001/patient001_frame03_gt.nii.gz"
    path.unlink()
    refused(_convert_acdc(src, out), out, path, "label of the ACDC training ES frame patient001_frame03.nii.gz is "
            "missing", error=MissingCaseFile)


def test_acdc_testing_frame_without_its_label_is_stored_unlabelled_with_a_warning(acdc):
    src, out = acdc
    (src / "testing/patient101/patient101_frame01_gt.nii.gz").unlink()
    _convert_acdc(src, out)()
    assert source_warnings(out) == [f"{src / 'testing'}: 1 frame(s) have no _gt label and are stored unlabelled: "
                                    "patient101_ED"]
    cases = read_store(out)[1]
    assert cases["patient101_ED"].label is None and cases["patient101_ES"].label is not None


def test_acdc_orphan_label_is_refused(acdc):
    src, out = acdc
    path = save_nii(src / "training/patient001/patient001_frame05_gt.nii.gz", np.zeros((5, 4, 3), np.uint8))
    refused(_convert_acdc(src, out), out, path, "ACDC label without its image patient001_frame05.nii.gz (orphan)")


def test_acdc_label_value_outside_0_to_3_is_refused(acdc):
    src, out = acdc
    path = src / "training/patient001/patient001_frame01_gt.nii.gz"
    label = np.zeros((5, 4, 3), np.uint8)
    label[0, 0, 0] = 4
    save_nii(path, label, np.diag([1.5, 1.5, 10.0, 1.0]))
    refused(_convert_acdc(src, out), out, path, "label values [4] are not listed", "values found: [0, 4]")


def test_acdc_4d_frame_is_refused(acdc):
    src, out = acdc
    path = save_nii(src / "training/patient001/patient001_frame01.nii.gz", np.ones((5, 4, 3, 2), np.float32))
    refused(_convert_acdc(src, out), out, path, "expected a 3-D volume, got shape (5, 4, 3, 2)")


# ------------------------------------------------------------------------------------------ HECKTOR


HECKTOR_ID = "CHGJ007"


@pytest.fixture
def hecktor(tmp_path):
    src = tmp_path / "hecktor"
    _hecktor(src, HECKTOR_ID)
    return src, tmp_path / "hecktor.h5"


def _convert_hecktor(src, out, **options):
    return lambda: hecktor_nifti.convert_hecktor(src, out, **{"image_order": 1, "size": [4, 4], **NONE, **options})


@pytest.mark.parametrize("kind", ["pt", "gtvt"])
def test_hecktor_patient_missing_pet_or_gtvt_is_refused(hecktor, kind):
    src, out = hecktor
    path = src / "hecktor_nii" / f"{HECKTOR_ID}_{kind}.nii.gz"
    path.unlink()
    refused(_convert_hecktor(src, out), out, path, f"HECKTOR file missing for patient {HECKTOR_ID}",
            error=MissingCaseFile)


@pytest.mark.parametrize("kind", ["pt", "gtvt"])
def test_hecktor_pet_or_gtvt_without_its_ct_is_refused(hecktor, kind):
    src, out = hecktor
    path = src / "hecktor_nii" / f"CHGJ008_{kind}.nii.gz"
    save_nii(path, np.zeros((4, 4, 3), np.uint8))
    refused(_convert_hecktor(src, out), out, path, f"HECKTOR {kind.upper()} file without its image "
            "CHGJ008_ct.nii.gz (orphan)")


@pytest.mark.parametrize("crop", ["bbox", "none"])
def test_hecktor_gtvt_that_is_not_binary_is_refused(hecktor, crop):
    src, out = hecktor
    path = src / "hecktor_nii" / f"{HECKTOR_ID}_gtvt.nii.gz"
    gt = np.asarray(nib.load(path).dataobj).copy()
    gt[0, 0, 0] = 2  # outside the bounding box: bbox used to crop it away unseen
    save_nii(path, gt)
    refused(_convert_hecktor(src, out, crop=crop), out, path,
            "label values [2] are not listed in HECKTOR's binary GTVt convention [0, 1] (values found: [0, 1, 2])")


def test_hecktor_4d_ct_is_refused(hecktor):
    src, out = hecktor
    path = save_nii(src / "hecktor_nii" / f"{HECKTOR_ID}_ct.nii.gz", np.zeros((10, 9, 6, 2), np.float32))
    refused(_convert_hecktor(src, out), out, path, "expected a 3-D volume, got shape (10, 9, 6, 2)")


# ------------------------------------------------------------------------------------------ PI-CAI


PICAI_LABELS = "labels/csPCa_lesion_delineations/human_expert/resampled"


def _picai_study(src, patient, study, isup=2, label=True):
    stem = f"{patient}_{study}"
    for m in ("t2w", "adc", "hbv"):
        save_mha(src / "images" / str(patient) / f"{stem}_{m}.mha", np.full((6, 6, 3), 10.0, np.float32))
    if label:
        _, affine = picai_mha.read_volume(src / "images" / str(patient) / f"{stem}_t2w.mha")
        lesion = np.zeros((6, 6, 3), np.uint8)
        lesion[2, 2, 1] = isup
        save_nii(src / PICAI_LABELS / f"{stem}.nii.gz", lesion, affine)


@pytest.fixture
def picai(tmp_path):
    src = tmp_path / "picai"
    _picai_study(src, 10000, 1000000)
    _picai_study(src, 10001, 1000001, isup=5)
    return src, tmp_path / "picai.h5"


def _convert_picai(src, out, **options):
    return lambda: picai_mha.convert_picai(src, out, **{"size": [6, 6], **NONE, **options})


def test_picai_study_missing_a_sequence_is_refused(picai):
    src, out = picai
    path = src / "images/10001/10001_1000001_adc.mha"
    path.unlink()
    refused(_convert_picai(src, out), out, path, "PI-CAI sequence 'adc' of study 10001_1000001 missing",
            error=MissingCaseFile)


def test_picai_sequence_without_the_reference_t2w_is_refused(picai):
    src, out = picai
    (src / "images/10001/10001_1000001_t2w.mha").unlink()  # the study used to vanish
    refused(_convert_picai(src, out), out, src / "images/10001/10001_1000001_adc.mha",
            "PI-CAI adc sequence without its image 10001_1000001_t2w.mha (orphan)")


def test_picai_orphan_label_is_refused(picai):
    src, out = picai
    path = save_nii(src / PICAI_LABELS / "10009_1000009.nii.gz", np.zeros((6, 6, 3), np.uint8))
    refused(_convert_picai(src, out), out, path, "PI-CAI label without its image 10009_1000009_t2w.mha (orphan)")


@pytest.mark.parametrize(("option", "verb"), [("skip", "skipped"), ("keep", "kept unlabelled")])
def test_picai_unlabelled_study_follows_the_option_with_a_warning(tmp_path, picai, option, verb):
    src, out = picai
    _picai_study(src, 10002, 1000002, label=False)
    _convert_picai(src, out, unlabelled=option)()
    assert source_warnings(out) == [f"{src / PICAI_LABELS}: 1 of 3 studies have no label file and were {verb} "
                                    f"(unlabelled: {option}): 10002_1000002"]
    assert ("10002_1000002" in read_store(out)[1]) == (option == "keep")


def test_picai_label_value_outside_0_to_5_is_refused(picai):
    src, out = picai
    _picai_study(src, 10001, 1000001, isup=6)
    refused(_convert_picai(src, out), out, src / PICAI_LABELS / "10001_1000001.nii.gz", "label values [6] are not "
            "listed", "values found: [0, 6]")


def test_picai_multi_component_image_is_refused(picai):
    import SimpleITK as sitk

    src, out = picai
    path = src / "images/10001/10001_1000001_hbv.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 6, 6, 2), np.float32)), str(path))
    refused(_convert_picai(src, out), out, path, "expected a 3-D single-component image, got dimension 3 with 2 "
            "component(s)")


# ------------------------------------------------------------------------------------------ MRBrainS13


def _mrbrains_subject(src, subset, n, label=True):
    for mod in ("T1", "T1_IR", "T2_FLAIR"):
        save_nii(src / subset / str(n) / f"{mod}.nii", np.full((4, 4, 3), 5.0, np.float32))
    if label:
        lab = np.zeros((4, 4, 3), np.uint8)
        lab[1, 1, 1] = 3
        save_nii(src / subset / str(n) / "LabelsForTesting.nii", lab)


@pytest.fixture
def mrbrains(tmp_path):
    src = tmp_path / "mrbrains"
    _mrbrains_subject(src, "TrainingData", 1)
    _mrbrains_subject(src, "TestData", 1, label=False)
    return src, tmp_path / "mrbrains.h5"


def _convert_mrbrains(src, out, **options):
    return lambda: mrbrains13.convert_mrbrains(src, out, **{"size": [4, 4], **NONE, **options})


def test_mrbrains_subject_missing_a_modality_is_refused(mrbrains):
    src, out = mrbrains
    (src / "TestData/1/T1_IR.nii").unlink()
    refused(_convert_mrbrains(src, out), out, src / "TestData/1/T1_IR.nii",
            "missing MRBrainS13 image 'T1_IR' of subject TestData/1", error=MissingCaseFile)


def test_mrbrains_training_subject_missing_its_label_file_is_refused(mrbrains):
    src, out = mrbrains
    (src / "TrainingData/1/LabelsForTesting.nii").unlink()
    refused(_convert_mrbrains(src, out), out, src / "TrainingData/1/LabelsForTesting.nii",
            "missing MRBrainS13 label file of subject TrainingData/1", error=MissingCaseFile)
    _convert_mrbrains(src, out, label_file=None)()  # reconstruction needs no labels: nothing to miss
    assert source_warnings(out) == []


def test_mrbrains_test_subject_without_labels_is_stored_unlabelled_with_a_warning(mrbrains):
    src, out = mrbrains
    _convert_mrbrains(src, out)()
    assert source_warnings(out) == [f"{src / 'TestData'}: 1 subject(s) have no LabelsForTesting and are stored "
                                    "unlabelled: TestData_1"]
    assert read_store(out)[1]["TestData_1"].label is None


def test_mrbrains_orphan_label_file_is_refused(mrbrains):
    src, out = mrbrains
    for mod in ("T1", "T1_IR", "T2_FLAIR"):
        (src / "TrainingData/1" / f"{mod}.nii").unlink()
    refused(_convert_mrbrains(src, out), out, src / "TrainingData/1/LabelsForTesting.nii",
            "MRBrainS13 label without its image T1.nii (orphan)")


def test_mrbrains_label_value_outside_the_label_file_range_is_refused(mrbrains):
    src, out = mrbrains
    lab = np.zeros((4, 4, 3), np.uint8)
    lab[0, 0, 0] = 5  # a LabelsForTraining value in LabelsForTesting (0-3)
    path = save_nii(src / "TrainingData/1/LabelsForTesting.nii", lab)
    refused(_convert_mrbrains(src, out), out, path, "label values [5] are not listed", "values found: [0, 5]")


def test_mrbrains_4d_image_is_refused(mrbrains):
    src, out = mrbrains
    path = save_nii(src / "TrainingData/1/T2_FLAIR.nii", np.ones((4, 4, 3, 2), np.float32))
    refused(_convert_mrbrains(src, out), out, path, "expected a 3-D volume, got shape (4, 4, 3, 2)")


# ------------------------------------------------------------------------------------------ Calgary-Campinas


@pytest.fixture
def cc359(tmp_path):
    src = tmp_path / "cc"
    save_nii(src / "Original/CC0001_philips_15_55_M.nii.gz", np.full((6, 6, 5), 3.0, np.float32))
    return src, tmp_path / "cc.h5"


def test_cc359_4d_volume_is_refused(cc359):
    src, out = cc359
    path = save_nii(src / "Original/CC0002_ge_3_45_F.nii.gz", np.ones((6, 6, 5, 2), np.float32))
    refused(lambda: cc359_nifti.convert_cc359(src, out, size=[6, 6], **NONE), out, path,
            "expected a 3-D volume, got shape (6, 6, 5, 2)")


def test_cc359_other_file_is_warned_and_recorded(cc359):
    src, out = cc359
    path = src / "Original/CC0002_ge_3_45_F.mnc"
    path.write_bytes(b"MINC")
    cc359_nifti.convert_cc359(src, out, size=[6, 6], **NONE)
    assert source_warnings(out) == [f"{path}: not a CC*.nii[.gz] volume; ignored"]


# ------------------------------------------------------------------------------------------ knee .mat


@pytest.fixture
def knee(tmp_path):
    src = tmp_path / "knee"
    for k in (1, 2, 3):
        (src / "coronal_pd/1").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(src / "coronal_pd/1" / f"espirit{k}.mat", {"reference": np.full((8, 4), 1.0 + k)})
    return src, tmp_path / "knee.h5"


def _convert_knee(src, out):
    return lambda: vn_knee_mat.convert_knee_mat(src, out, size=[8, 4], **NONE)


def test_knee_patient_with_a_slice_gap_is_refused(knee):
    src, out = knee
    (src / "coronal_pd/1/espirit2.mat").unlink()
    refused(_convert_knee(src, out), out, src / "coronal_pd/1", "slice file(s) espirit2.mat missing between "
            "espirit1.mat and espirit3.mat")


def test_knee_image_that_is_not_2d_is_refused(knee):
    src, out = knee
    path = src / "coronal_pd/1/espirit2.mat"
    scipy.io.savemat(path, {"reference": np.ones((8, 4, 2))})
    refused(_convert_knee(src, out), out, path, "'reference' must be a 2-D image, got shape (8, 4, 2)")


def test_knee_folder_without_slices_is_warned_and_recorded(knee):
    src, out = knee
    (src / "coronal_pd/masks").mkdir()
    _convert_knee(src, out)()
    assert source_warnings(out) == [f"{src / 'coronal_pd/masks'}: holds no espirit<k>.mat slice, not a patient "
                                    "folder; ignored"]


# ------------------------------------------------------------------------------------------ MSD (the reference)


@pytest.fixture
def msd_set(tmp_path):
    from test_convert_hardening import _case, _write

    return _write(tmp_path / "msd", {"a": _case(), "b": _case()}), tmp_path / "msd.h5"


def test_msd_listed_file_missing_is_refused(msd_set):
    src, out = msd_set
    (src / "labelsTr/b.nii.gz").unlink()
    refused(lambda: msd.convert_msd(src, out, size=(6, 6)), out, src / "labelsTr/b.nii.gz",
            "listed in", "but missing", error=MissingCaseFile)


def test_msd_label_value_not_in_dataset_json_is_refused(msd_set):
    src, out = msd_set
    label = np.zeros((6, 6, 4), np.uint8)
    label[0, 0, 0] = 3
    path = save_nii(src / "labelsTr/b.nii.gz", label)
    refused(lambda: msd.convert_msd(src, out, size=(6, 6)), out, path,
            "label values [3] are not listed in dataset.json 'labels' [0, 1] (values found: [0, 3])")


def test_every_row_of_the_docs_table_names_a_test_of_this_file():
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "datasets.md").read_text()
    table = text.split("### What each converter refuses", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named = [row.rstrip(" |").rsplit("`", 2)[-2] for row in rows]
    assert len(named) == len(rows) > 40
    missing = [n for n in named if not callable(globals().get(n))]
    assert not missing, missing
    untabled = sorted(n for n in globals() if n.startswith("test_") and n not in named
                      and n != "test_every_row_of_the_docs_table_names_a_test_of_this_file")
    assert not untabled, untabled
