"""Converters of the non-MSD formats (medkd.data.formats.<format>), each on a tiny fixture written in its layout;
the shared geometry (medkd.data.geometry) and options (medkd.data.convert); dispatch and schema."""

from __future__ import annotations

import inspect
import json

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io
import SimpleITK as sitk
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from medkd.data import convert, formats, geometry
from medkd.data.formats import (
    acdc_nifti,
    brats_nifti,
    busi_png,
    cc359_nifti,
    hecktor_nifti,
    mrbrains13,
    picai_mha,
    vn_knee_mat,
)
from medkd.data.store import SliceStore

RNG = np.random.default_rng(0)


def save_nii(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)
    return path


def save_mha(path, data_xyz, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    """An ITK image whose index (x, y, z) holds data_xyz[x, y, z]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.transpose(np.asarray(data_xyz), (2, 1, 0)))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return path


def read_store(path):
    with SliceStore(path) as store:
        cases = {cid: store.read_case(cid) for cid in store.case_ids}
        return dict(store.attrs), cases


NONE = {"normalise": "none"}


# ------------------------------------------------------------------------------------------ geometry


def test_read_volume_itk_identity_direction_is_flipped_to_ras(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    path = save_mha(tmp_path / "v.mha", data, spacing=(0.5, 2.0, 3.0), origin=(10.0, 20.0, 30.0))
    out, affine = geometry.read_volume(path)
    # ITK identity direction is LPS: +x points Left, +y Posterior; RAS canonical reverses axes 0 and 1.
    np.testing.assert_array_equal(out, data[::-1, ::-1, :])
    # canonical voxel (0, 0, 0) is ITK index (1, 2, 0): LPS (10 + 1*0.5, 20 + 2*2, 30) = (10.5, 24, 30)
    # -> RAS (-10.5, -24, 30); axis steps +0.5, +2 (R, A) and +3 (S).
    np.testing.assert_allclose(affine, [[0.5, 0, 0, -10.5], [0, 2.0, 0, -24.0], [0, 0, 3.0, 30.0], [0, 0, 0, 1]])


def test_read_volume_nifti_matches_nibabel_canonical(tmp_path):
    data = RNG.random((3, 4, 5)).astype(np.float32)
    flip_x = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS storage: canonical flips axis 0
    out, affine = geometry.read_volume(save_nii(tmp_path / "v.nii.gz", data, flip_x))
    np.testing.assert_array_equal(out, data[::-1])
    assert affine[0, 0] == 1.0 and affine[0, 3] == -2.0  # voxel 0 of the canonical axis is old voxel 2 at x = -2


def test_read_volume_rejects_unknown_and_corrupt(tmp_path):
    (tmp_path / "v.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported volume format"):
        geometry.read_volume(tmp_path / "v.png")
    (tmp_path / "bad.mha").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.mha: cannot read image"):
        geometry.read_volume(tmp_path / "bad.mha")


def test_resample_to_grid_shift_and_identity():
    data = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    eye = np.eye(4)
    assert geometry.resample_to_grid(data, eye, data.shape, eye) is data  # already on the grid
    shifted = eye.copy()
    shifted[0, 3] = 1.0  # target voxel i sits at x = i + 1 = source voxel i + 1
    out = geometry.resample_to_grid(data, eye, (3, 3, 2), shifted, order=1)
    np.testing.assert_allclose(out, data[1:])
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])  # a 2 mm grid: target voxel i -> source voxel 2i
    np.testing.assert_array_equal(geometry.resample_to_grid(data, eye, (2, 2, 1), coarse, order=0), data[::2, ::2, ::2])


def test_nearest_indices_match_torch_interpolate():
    for n_in, n_out in [(500, 224), (471, 224), (224, 224), (37, 224), (1000, 3), (599, 224)]:
        x = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in, 1)
        expected = F.interpolate(x, size=(n_out, 1), mode="nearest").view(-1).long().numpy()
        np.testing.assert_array_equal(geometry.nearest_indices(n_in, n_out), expected, err_msg=f"{n_in}->{n_out}")


def test_bbox_grid_is_the_organisers_lps_grid_in_ras():
    # LPS box x 0..4, y 0..3, z 0..2 at 1 mm: shape (4, 3, 2). Canonical voxel (0, 0, 0) is the LPS corner
    # (x, y) = (3, 2) -> RAS (-3, -2, 0); RAS axes then grow by +1 mm.
    shape, affine = hecktor_nifti.bbox_grid(np.array([0, 0, 0, 4, 3, 2.0]), (1, 1, 1))
    assert shape == (4, 3, 2)
    np.testing.assert_allclose(affine, [[1, 0, 0, -3], [0, 1, 0, -2], [0, 0, 1, 0], [0, 0, 0, 1]])
    with pytest.raises(ValueError, match="resolution_mm"):
        hecktor_nifti.bbox_grid(np.array([0, 0, 0, 4, 3, 2.0]), (1, 1))


def test_slice_options_validation():
    opts = convert.slice_options(size=[8, 6], modality_normalise={"CT": {"normalise": "window", "window": [-1, 1]}},
                                 channel_names=["CT", "PT"])
    assert opts.method_for("CT") == ("window", [-1, 1]) and opts.method_for("PT") == ("zscore", None)
    with pytest.raises(ValueError, match="not among the converted channels"):
        convert.slice_options(modality_normalise={"MR": {}}, channel_names=["CT"])
    with pytest.raises(ValueError, match="window"):
        convert.slice_options(modality_normalise={"CT": {"normalise": "window"}}, channel_names=["CT"])
    with pytest.raises(ValueError, match="axis"):
        convert.slice_options(axis=3)


# ------------------------------------------------------------------------------------------ BraTS


def _brats_case(root, cid, shape=(6, 5, 4), label=True, offset=0.0):
    vols = {}
    for i, mod in enumerate(("flair", "t1", "t1ce", "t2")):
        vols[mod] = np.full(shape, 10.0 * (i + 1) + offset, dtype=np.float32)
        save_nii(root / cid / f"{cid}_{mod}.nii.gz", vols[mod])
    seg = np.zeros(shape, dtype=np.uint8)
    seg[1:3, 1:3, 1] = 1
    seg[3, 3, 2] = 2
    seg[4, 1, 3] = 4
    if label:
        save_nii(root / cid / f"{cid}_seg.nii.gz", seg)
    return vols, seg


def test_convert_brats(tmp_path):
    src = tmp_path / "brats"
    _, seg = _brats_case(src, "BraTS2021_00000")
    _brats_case(src, "BraTS2021_00001", offset=1.0)
    (src / ".archives").mkdir()
    out = tmp_path / "brats.h5"
    brats_nifti.convert_brats(src, out, modalities=["t2", "flair"], size=[6, 5], **NONE)
    attrs, cases = read_store(out)
    assert attrs["channel_names"] == ["t2", "flair"] and attrs["label_names"]["4"] == "ET"
    assert sorted(cases) == ["BraTS2021_00000", "BraTS2021_00001"]
    c = cases["BraTS2021_00000"]
    assert c.image.shape == (4, 2, 6, 5)  # 4 axial slices, 2 channels
    np.testing.assert_array_equal(c.image[:, 0], 40.0)  # t2 first
    np.testing.assert_array_equal(c.image[:, 1], 10.0)
    np.testing.assert_array_equal(c.label, np.moveaxis(seg, 2, 0))
    assert attrs["provenance"]["source_warnings"] == []  # the hidden .archives folder is no case


def test_convert_brats_errors_name_the_file(tmp_path):
    src = tmp_path / "brats"
    _brats_case(src, "BraTS2021_00000")
    (src / "BraTS2021_00000" / "BraTS2021_00000_t1ce.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="BraTS2021_00000_t1ce.nii.gz"):
        brats_nifti.convert_brats(src, tmp_path / "o.h5", **NONE)
    _brats_case(src, "BraTS2021_00000")
    save_nii(src / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz", np.zeros((6, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="not on the grid"):
        brats_nifti.convert_brats(src, tmp_path / "o.h5", **NONE)
    assert not (tmp_path / "o.h5").exists()


# ------------------------------------------------------------------------------------------ ACDC


def _acdc_patient(root, subset, pid, ed=1, es=3, gt=True, shape=(5, 4, 3)):
    folder = root / subset / pid
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: 10\nWeight: 80.0\n")
    spacing = np.diag([1.5, 1.5, 10.0, 1.0])
    for frame in (ed, es):
        save_nii(folder / f"{pid}_frame{frame:02d}.nii.gz", np.full(shape, float(frame), np.float32), spacing)
        if gt:
            lab = np.zeros(shape, np.uint8)
            lab[2, 2, :] = 3
            save_nii(folder / f"{pid}_frame{frame:02d}_gt.nii.gz", lab, spacing)


def test_convert_acdc(tmp_path):
    src = tmp_path / "acdc"
    _acdc_patient(src, "training", "patient001", ed=1, es=12)
    _acdc_patient(src, "testing", "patient101", ed=1, es=9, gt=False)
    out = tmp_path / "acdc.h5"
    acdc_nifti.convert_acdc(src, out, size=[5, 4], **NONE)
    attrs, cases = read_store(out)
    assert sorted(cases) == ["patient001_ED", "patient001_ES", "patient101_ED", "patient101_ES"]
    es = cases["patient001_ES"]
    np.testing.assert_array_equal(es.image, 12.0)  # frame 12 is ES (Info.cfg)
    assert es.attrs["frame"] == 12 and es.attrs["subset"] == "training"
    assert es.label is not None and int(es.label.max()) == 3
    assert cases["patient101_ED"].label is None
    np.testing.assert_allclose(es.spacing, (1.5, 1.5, 10.0))
    acdc_nifti.convert_acdc(src, out, frames=["ED"], subsets=["training"], size=[5, 4], **NONE)
    assert sorted(read_store(out)[1]) == ["patient001_ED"]
    with pytest.raises(ValueError, match="frames"):
        acdc_nifti.convert_acdc(src, out, frames=["mid"], **NONE)


def test_acdc_missing_frame_and_bad_info(tmp_path):
    src = tmp_path / "acdc"
    _acdc_patient(src, "training", "patient001")
    (src / "training/patient001/patient001_frame03.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="patient001_frame03.nii.gz"):
        acdc_nifti.convert_acdc(src, tmp_path / "o.h5", subsets=["training"], **NONE)
    (src / "training/patient001/Info.cfg").write_text("ED: one\n")
    with pytest.raises(ValueError, match="Info.cfg needs an integer ED"):
        acdc_nifti.convert_acdc(src, tmp_path / "o.h5", subsets=["training"], **NONE)


# ------------------------------------------------------------------------------------------ MRBrainS13


def test_convert_mrbrains_nifti_and_mhd(tmp_path):
    src = tmp_path / "mrbrains"
    shape = (4, 4, 3)
    for mod, value in (("T1", 1.0), ("T1_IR", 2.0), ("T2_FLAIR", 3.0)):
        save_nii(src / "TrainingData/1" / f"{mod}.nii", np.full(shape, value, np.float32))
        save_mha(src / "TestData/1" / f"{mod}.mhd", np.full(shape, value + 10, np.float32))
    lab = np.zeros(shape, np.uint8)
    lab[1, 1, 1] = 2
    save_nii(src / "TrainingData/1/LabelsForTesting.nii", lab)
    out = tmp_path / "mrb.h5"
    mrbrains13.convert_mrbrains(src, out, modalities=["T2_FLAIR", "T1"], size=[4, 4], **NONE)
    attrs, cases = read_store(out)
    assert attrs["channel_names"] == ["T2_FLAIR", "T1"] and attrs["label_names"]["3"] == "WM"
    train, test = cases["TrainingData_1"], cases["TestData_1"]
    np.testing.assert_array_equal(train.image[:, 0], 3.0)
    np.testing.assert_array_equal(test.image[:, 1], 11.0)  # read through SimpleITK (.mhd + .raw)
    assert test.label is None and int(train.label.sum()) == 2
    with pytest.raises(ValueError, match="label_file"):
        mrbrains13.convert_mrbrains(src, out, label_file="Labels", **NONE)


# ------------------------------------------------------------------------------------------ CC-359


def test_convert_cc359(tmp_path):
    src = tmp_path / "cc"
    vol = RNG.random((6, 6, 5)).astype(np.float32) * 1000
    save_nii(src / "Original/CC0001_philips_15_55_M.nii.gz", vol)
    save_nii(src / "Original/CC0002_ge_3_45_F.nii.gz", vol + 1)
    out = tmp_path / "cc.h5"
    cc359_nifti.convert_cc359(src, out, size=[3, 3], normalise="minmax", axis=0)
    attrs, cases = read_store(out)
    assert sorted(cases) == ["CC0001_philips_15_55_M", "CC0002_ge_3_45_F"]
    c = cases["CC0001_philips_15_55_M"]
    assert c.image.shape == (6, 1, 3, 3) and c.label is None  # 6 sagittal slices, resized 6x5 -> 3x3
    assert 0.0 <= c.image.min() and c.image.max() <= 1.0
    np.testing.assert_allclose(c.spacing, (2.0, 5 / 3, 1.0))  # (6 * 1 mm / 3, 5 * 1 mm / 3, slice 1 mm)
    with pytest.raises(FileNotFoundError, match="Calgary"):
        cc359_nifti.convert_cc359(src, out, folder="Missing")


# ------------------------------------------------------------------------------------------ knee .mat


def test_read_mat_array_v5_and_v73(tmp_path):
    ref = (RNG.random((5, 3)) + 1j * RNG.random((5, 3))).astype(np.complex64)
    scipy.io.savemat(tmp_path / "a.mat", {"reference": ref, "other": np.ones(2)})
    np.testing.assert_array_equal(vn_knee_mat.read_mat_array(tmp_path / "a.mat", "reference"), ref)
    with h5py.File(tmp_path / "b.mat", "w") as fh:  # v7.3: HDF5, column-major, complex as a compound
        comp = np.zeros((3, 5), dtype=[("real", "<f4"), ("imag", "<f4")])
        comp["real"], comp["imag"] = ref.real.T, ref.imag.T
        fh.create_dataset("reference", data=comp)
    np.testing.assert_allclose(vn_knee_mat.read_mat_array(tmp_path / "b.mat", "reference"), ref)
    with pytest.raises(ValueError, match=r"no variable 'rawdata' \(has \['other', 'reference'\]\)"):
        vn_knee_mat.read_mat_array(tmp_path / "a.mat", "rawdata")


def test_convert_knee_mat(tmp_path):
    src = tmp_path / "knee"
    patient = src / "coronal_pd" / "1"
    patient.mkdir(parents=True)
    slices = []
    for k in range(1, 11):  # numeric slice order: 1, 2, ..., 10 (not 1, 10, 2); a gap would be refused
        ref = np.full((8, 4), 3.0 * k, dtype=np.float64) * np.exp(1j * 0.3)
        ref[0, 0] = 0.0
        slices.append(np.abs(ref))
        scipy.io.savemat(patient / f"espirit{k}.mat", {"reference": ref})
    (src / "coronal_pd/1/rawdata1.mat").write_bytes(b"ignored")
    out = tmp_path / "knee.h5"
    vn_knee_mat.convert_knee_mat(src, out, size=[8, 4], spacing_mm=[0.5, 0.4, 3.0], **NONE)
    attrs, cases = read_store(out)
    c = cases["coronal_pd_1"]
    assert c.image.shape == (10, 1, 8, 4)
    np.testing.assert_allclose(c.image[:, 0], np.stack(slices), rtol=1e-6)  # |reference|, slices 1, 2, ..., 10
    np.testing.assert_array_equal(c.attrs["slice_numbers"], list(range(1, 11)))
    np.testing.assert_allclose(c.spacing, (0.5, 0.4, 3.0))
    with pytest.raises(ValueError, match="axis must be 2"):
        vn_knee_mat.convert_knee_mat(src, out, axis=0, **NONE)


# ------------------------------------------------------------------------------------------ BUSI


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def _busi(root, partial=False):
    """partial: one mask pixel of 128 (refused with the default mask_threshold 255, thresholded with a lower one)."""
    rgb = RNG.integers(0, 256, size=(10, 7, 3)).astype(np.uint8)
    mask = np.zeros((10, 7), np.uint8)
    mask[2:6, 1:4] = 255
    if partial:
        mask[8, 6] = 128
    _png(root / "benign/benign (2).png", rgb)
    _png(root / "benign/benign (2)_mask.png", mask)
    extra = np.zeros((10, 7), np.uint8)
    extra[9, 0] = 255
    _png(root / "benign/benign (2)_mask_1.png", extra)
    grey = RNG.integers(0, 256, size=(6, 9)).astype(np.uint8)
    _png(root / "malignant/malignant (10).png", grey)
    _png(root / "malignant/malignant (10)_mask.png", np.zeros((6, 9), np.uint8))
    _png(root / "normal/normal (1).png", grey[:5])
    _png(root / "normal/normal (1)_mask.png", np.zeros((5, 9), np.uint8))
    return rgb, mask, grey


def test_convert_busi_reproduces_pcd_loader(tmp_path):
    src = tmp_path / "busi"
    rgb, mask, grey = _busi(src)
    out = tmp_path / "busi.h5"
    busi_png.convert_busi(src, out, size=[4, 4], normalise="window", window=[0, 255])
    attrs, cases = read_store(out)
    assert sorted(cases) == ["benign_2", "malignant_10", "normal_1"]
    assert attrs["channel_names"] == ["R", "G", "B"]
    c = cases["benign_2"]
    # P-CD: PILToTensor -> Resize((4, 4), NEAREST) on the tensor -> / 255
    t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    expected = F.interpolate(t, size=(4, 4), mode="nearest")[0] / 255.0
    np.testing.assert_allclose(c.image[0], expected.numpy(), rtol=1e-6)
    m = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=(4, 4), mode="nearest")[0, 0]
    np.testing.assert_array_equal(c.label[0], (m.numpy() / 255).astype(np.int64))
    assert c.attrs["category"] == "benign"
    np.testing.assert_array_equal(c.attrs["original_shape"], [10, 7, 1])
    np.testing.assert_allclose(c.spacing, (10 / 4, 7 / 4, 1.0))
    mal = cases["malignant_10"]  # grey PNG replicated to RGB
    np.testing.assert_array_equal(mal.image[0, 0], mal.image[0, 2])
    assert int(mal.label.sum()) == 0


def test_convert_busi_options(tmp_path):
    src = tmp_path / "busi"
    _busi(src, partial=True)
    out = tmp_path / "busi.h5"
    busi_png.convert_busi(src, out, size=[10, 7], extra_masks="union", mask_threshold=128, **NONE)
    label = read_store(out)[1]["benign_2"].label[0]
    assert label[9, 0] == 1 and label[8, 6] == 1 and int(label.sum()) == 4 * 3 + 2
    (src / "normal/normal (1)_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"normal \(1\)_mask.png"):
        busi_png.convert_busi(src, out, **NONE)
    (src / "normal/normal (1)_mask.png").write_bytes(b"")
    _png(src / "normal/other.png", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not a BUSI image name"):
        busi_png.convert_busi(src, out, **NONE)


def test_busi_case_id_maps_pcd_split_entries():
    assert busi_png.busi_case_id("benign/benign (406).png") == "benign_406"
    assert busi_png.busi_case_id("normal (38).png") == "normal_38"
    with pytest.raises(ValueError):
        busi_png.busi_case_id("benign/benign (406)_mask.png")


# ------------------------------------------------------------------------------------------ HECKTOR


def _hecktor(root, pid="CHGJ007"):
    folder = root / "hecktor_nii"
    x, y, z = np.meshgrid(np.arange(10), np.arange(9), np.arange(6), indexing="ij")
    ct = (100 * x + 10 * y + z).astype(np.float32)  # RAS identity: voxel (i, j, k) at (i, j, k) mm
    save_nii(folder / f"{pid}_ct.nii.gz", ct)
    pt = 2.0 * np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 5, 3), np.float32)
    save_nii(folder / f"{pid}_pt.nii.gz", pt, np.diag([2.0, 2.0, 2.0, 1.0]))  # PET value = x (mm), 2 mm grid
    gt = np.zeros(ct.shape, np.uint8)
    gt[4, 3, 2] = 1
    save_nii(folder / f"{pid}_gtvt.nii.gz", gt)
    # LPS box: x in [-6, -2], y in [-5, -1], z in [1, 4] -> RAS x 3..6, y 2..5, z 1..3 (see bbox_grid)
    (root / "hecktor2021_bbox_training.csv").write_text("PatientID,x1,x2,y1,y2,z1,z2\n"
                                                        f"{pid},-6,-2,-5,-1,1,4\n")
    return ct, gt


def test_convert_hecktor_bbox_crop(tmp_path):
    src = tmp_path / "hecktor"
    ct, gt = _hecktor(src)
    out = tmp_path / "h.h5"
    hecktor_nifti.convert_hecktor(src, out, image_order=1, size=[4, 4], **NONE)
    attrs, cases = read_store(out)
    c = cases["CHGJ007"]
    assert attrs["channel_names"] == ["CT", "PT"] and c.image.shape == (3, 2, 4, 4)
    np.testing.assert_allclose(c.image[:, 0], np.moveaxis(ct[3:7, 2:6, 1:4], 2, 0))
    x_mm = np.arange(3, 7, dtype=np.float32)[None, :, None] * np.ones((3, 4, 4), np.float32)
    np.testing.assert_allclose(c.image[:, 1], x_mm, atol=1e-5)  # PET resampled onto the box: value = x
    np.testing.assert_array_equal(c.label, np.moveaxis(gt[3:7, 2:6, 1:4], 2, 0))
    assert int(c.label.sum()) == 1
    hecktor_nifti.convert_hecktor(src, out, image_order=3, size=[4, 4], **NONE)  # the organisers' cubic B-spline
    np.testing.assert_allclose(read_store(out)[1]["CHGJ007"].image[:, 0], np.moveaxis(ct[3:7, 2:6, 1:4], 2, 0),
                               atol=1e-2)


def test_convert_hecktor_no_crop_and_errors(tmp_path):
    src = tmp_path / "hecktor"
    ct, _ = _hecktor(src)
    out = tmp_path / "h.h5"
    hecktor_nifti.convert_hecktor(src, out, crop="none", modalities=["PT"], size=[10, 9],
                            modality_normalise={"PT": {"normalise": "none"}})
    c = read_store(out)[1]["CHGJ007"]
    assert c.image.shape == (6, 1, 10, 9)
    np.testing.assert_allclose(c.image[0, 0, :9, 0], np.arange(9), atol=1e-5)  # x mm inside the PET field
    (src / "hecktor2021_bbox_training.csv").write_text("PatientID,x1,x2,y1,y2,z1,z2\nOTHER,0,1,0,1,0,1\n")
    with pytest.raises(ValueError, match="no bounding box for"):
        hecktor_nifti.convert_hecktor(src, out, **NONE)
    with pytest.raises(ValueError, match="modalities"):
        hecktor_nifti.convert_hecktor(src, out, modalities=["MR"], **NONE)


# ------------------------------------------------------------------------------------------ PI-CAI


def test_convert_picai(tmp_path):
    src = tmp_path / "picai"
    folder = src / "images/10001"
    t2 = RNG.random((6, 6, 3)).astype(np.float32)
    save_mha(folder / "10001_1000001_t2w.mha", t2, spacing=(0.5, 0.5, 3.0))
    adc = np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, 3, 3), np.float32)
    save_mha(folder / "10001_1000001_adc.mha", adc, spacing=(1.0, 1.0, 3.0))  # same origin, 2x coarser
    save_mha(folder / "10001_1000001_hbv.mha", adc + 5, spacing=(1.0, 1.0, 3.0))
    for m in ("t2w", "adc", "hbv"):
        save_mha(src / "images/10002" / f"10002_1000002_{m}.mha", t2)
    canon_t2, affine = geometry.read_volume(folder / "10001_1000001_t2w.mha")
    label = np.zeros(canon_t2.shape, np.uint8)
    label[1, 2, 0] = 3  # ISUP 3
    save_nii(src / "labels/csPCa_lesion_delineations/human_expert/resampled/10001_1000001.nii.gz", label, affine)
    out = tmp_path / "p.h5"
    picai_mha.convert_picai(src, out, size=[6, 6], **NONE)
    attrs, cases = read_store(out)
    assert list(cases) == ["10001_1000001"]  # 10002 has no label: skipped
    c = cases["10001_1000001"]
    np.testing.assert_allclose(c.image[:, 0], np.moveaxis(canon_t2, 2, 0))
    np.testing.assert_array_equal(c.label, np.moveaxis(label, 2, 0))
    # ADC value = its index x = LPS x in mm. The T2w voxel of ITK index (i, j) sits at LPS (0.5 i, 0.5 j) and
    # gets ADC value 0.5 i; canonical (RAS) axes run backwards: row r is index i = 5 - r, column c is j = 5 - c.
    # Column 5 (j = 0) lies inside the ADC field; row 0 (x = 2.5 mm) lies beyond its last voxel (2 mm): 0.
    np.testing.assert_allclose(c.image[0, 1, :, 5], [0.0, 2.0, 1.5, 1.0, 0.5, 0.0], atol=1e-5)
    np.testing.assert_allclose(c.image[0, 1, :, 0], 0.0)  # j = 5: y = 2.5 mm, outside the ADC field
    prov = json.loads(json.dumps(attrs["provenance"]))
    assert prov["unlabelled_studies"] == ["10002_1000002"]
    picai_mha.convert_picai(src, out, unlabelled="keep", size=[6, 6], **NONE)
    assert read_store(out)[1]["10002_1000002"].label is None
    save_nii(src / "labels/csPCa_lesion_delineations/human_expert/resampled/10001_1000001.nii.gz", label)
    with pytest.raises(ValueError, match="not on the grid"):
        picai_mha.convert_picai(src, out, **NONE)


# ------------------------------------------------------------------------------------------ dispatch


def test_convert_dataset_dispatch_and_option_check(tmp_path):
    src = tmp_path / "cc"
    save_nii(src / "Original/CC0001_x.nii.gz", RNG.random((4, 4, 2)).astype(np.float32))
    out = tmp_path / "cc.h5"
    formats.convert_dataset("cc359_nifti", src, out, {"format": "cc359_nifti", "size": [4, 4], "normalise": "none",
                                                      "axis": 2, "min_foreground": 0.0, "window": None},
                            dataset="calgary")
    assert read_store(out)[0]["dataset"] == "calgary"
    with pytest.raises(ValueError, match=r"does not use option\(s\) \['frames'\]"):
        formats.convert_dataset("cc359_nifti", src, out, {"frames": ["ED"]})
    with pytest.raises(ValueError, match="unknown convert format"):
        formats.convert_dataset("dicom", src, out, {})
    assert formats.FORMATS.names() == ["acdc_nifti", "brats_nifti", "busi_png", "cc359_nifti", "hecktor_nifti",
                                       "mrbrains13", "msd", "picai_mha", "vn_knee_mat"]


def test_every_datasets_yaml_converter_exists():
    from medkd.config import REPO_ROOT
    from medkd.data.sources.spec import load_datasets_yaml

    specs = load_datasets_yaml(REPO_ROOT / "config" / "datasets.yaml")
    assert {s["converter"] for s in specs.values()} <= set(formats.FORMATS.names())


def test_cli_convert_uses_the_configured_format(tmp_path):
    from medkd.cli import main

    src = tmp_path / "mrbrains"
    shape = (4, 4, 3)
    for mod in ("T1", "T1_IR", "T2_FLAIR", "LabelsForTesting"):
        save_nii(src / "TrainingData/2" / f"{mod}.nii", np.ones(shape, np.uint8 if mod.startswith("Labels") else np.float32))
    spec = {"format": "mrbrains13", "modalities": ["T1"], "label_file": None, "subsets": ["TrainingData"],
            "size": [8, 8], "normalise": "none", "axis": 2, "min_foreground": 0.0}
    out, fp = tmp_path / "mrb.h5", tmp_path / "mrb.json"
    rc = main(["convert", "--dataset", "mrbrains", "--convert-spec", json.dumps(spec), "--src", str(src),
               "--out", str(out), "--fingerprint", str(fp)])
    assert rc == 0
    fingerprint = json.loads(fp.read_text())
    assert fingerprint["cases"] == ["TrainingData_2"] and fingerprint["n_slices"] == 3
    assert fingerprint["channel_names"] == ["T1"] and fingerprint["label_names"] == {"0": "background"}
    assert read_store(out)[1]["TrainingData_2"].label is None  # label_file null: no labels
    spec["frames"] = ["ED"]
    assert main(["convert", "--dataset", "mrbrains", "--convert-spec", json.dumps(spec), "--src", str(src),
                 "--out", str(out), "--fingerprint", str(fp)]) == 2  # an option mrbrains13 does not use


def _schema_convert():
    from medkd.config import load_schema

    return load_schema()["$defs"]["dataset"]["properties"]["convert"]


def test_schema_lists_exactly_the_converter_options():
    """Every registered format's options are allowed for that format in the config schema, and vice versa."""
    convert = _schema_convert()
    assert convert["properties"]["format"]["enum"] == formats.FORMATS.names()
    shared = set(convert["properties"]) - {"format"}
    in_schema = {}
    for branch in convert["allOf"]:
        name = branch["if"]["properties"]["format"]["const"]
        assert name not in in_schema, f"format {name} has two branches in the schema"
        in_schema[name] = shared | set(branch["then"]["properties"])
        # the branch closes the object: exactly format, the shared options and its own are accepted
        assert set(branch["then"]["propertyNames"]["enum"]) == in_schema[name] | {"format"}, name
    assert "additionalProperties" not in convert and "unevaluatedProperties" not in convert
    assert in_schema == {name: set(opts) for name, opts in formats.format_options().items()}


def test_schema_convert_object_is_generated_from_the_format_modules():
    """The schema's convert object equals what the modules declare (types, enums, descriptions too)."""
    convert, generated = _schema_convert(), formats.convert_schema()
    differing = [k for k in set(convert) | set(generated) if k != "allOf" and convert.get(k) != generated.get(k)]
    branches = {b["if"]["properties"]["format"]["const"]: b for b in convert.get("allOf", [])}
    differing += [f"allOf/{b['if']['properties']['format']['const']}" for b in generated["allOf"]
                  if branches.get(b["if"]["properties"]["format"]["const"]) != b]
    assert convert == generated, (
        f"workflow/schemas/config.schema.yaml differs from the format modules at {sorted(differing)}; paste the "
        "output of `python -m medkd.data.formats` over $defs/dataset/properties/convert")


def test_declared_options_are_the_converter_keywords():
    for name in formats.FORMATS.names():
        params = inspect.signature(formats.FORMATS.get(name).convert).parameters
        keywords = {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY} - {"dataset"}
        shared = set(convert.SLICE_OPTIONS_SCHEMA)
        assert keywords - shared == set(formats.FORMATS.get(name).options) - {"modality_normalise"}, name
        takes_slicing = any(v.kind is inspect.Parameter.VAR_KEYWORD for v in params.values())
        assert takes_slicing or shared <= keywords, name


def test_schema_refuses_an_option_of_another_format():
    from medkd.config import ConfigError, REPO_ROOT, load_config

    raw = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    name = next(iter(raw["datasets"]))
    raw["datasets"][name]["convert"]["frames"] = ["ED"]  # an acdc_nifti option on an msd dataset
    with pytest.raises(ConfigError, match=rf"datasets/{name}/convert': 'frames' is not one of .*'channels'"):
        load_config(raw)
    raw["datasets"][name]["convert"]["format"] = "acdc_nifti"
    assert load_config(raw)["datasets"][name]["convert"]["frames"] == ["ED"]
    raw["datasets"][name]["convert"]["frames"] = ["mid"]
    with pytest.raises(ConfigError, match=rf"datasets/{name}/convert/frames/0"):
        load_config(raw)
