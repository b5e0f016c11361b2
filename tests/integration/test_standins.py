"""Every paper dataset's stand-in (medkd.data.standins) goes through fetch -> convert -> split unchanged.

Per dataset: the fetch step writes the stand-in (config ``standin_data: true``) with the layout check of real
data, the raw files have the real format, dtype, matrix size, spacing and label values, the converter with
config/paper.yaml's ``convert:`` settings reads it, the store and fingerprint say ``standin``, and every
experiment of config/experiments/*.yaml on that dataset gets a split with non-empty train / val / test.
Cases taking more than ~10 s to write and convert are marked slow (HECKTOR, BraTS, PI-CAI).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medkd.config import load_config
from medkd.data import standins
from medkd.data.sources.fetch import fetch_dataset, read_marker
from medkd.data.sources.spec import load_datasets_yaml
from medkd.data.store import SliceStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def paper():
    return load_config(str(ROOT / "config" / "paper.yaml"))


@pytest.fixture(scope="module")
def specs():
    return load_datasets_yaml(ROOT / "config" / "datasets.yaml")


def _nii(path):
    img = nib.load(str(path))
    return img, np.asanyarray(img.dataobj)


# ------------------------------------------------------------------ raw-file checks, one per dataset


def _raw_msd_spleen(d: Path):
    meta = json.loads((d / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "spleen"} and meta["modality"] == {"0": "CT"}
    assert meta["numTraining"] == len(meta["training"]) == 5 and len(meta["test"]) == 2
    img, data = _nii(d / meta["training"][0]["image"])
    _, lab = _nii(d / meta["training"][0]["label"])
    assert data.dtype == np.int16 and data.shape[:2] == (512, 512) and 31 <= data.shape[2] <= 40
    assert data.min() <= -1000 and 100 < data.max() < 1000  # HU
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1}
    assert img.header.get_zooms()[2] == pytest.approx(5.0)


def _raw_busi(d: Path):
    from PIL import Image

    for category in ("benign", "malignant", "normal"):
        images = sorted(p for p in (d / category).glob("*.png") if "_mask" not in p.name)
        assert images
        for p in images:
            with Image.open(p) as im, Image.open(p.with_name(p.stem + "_mask.png")) as mask:
                assert im.mode == "RGB" and 450 <= im.size[1] <= 580 and 500 <= im.size[0] <= 640
                assert mask.size == im.size and mask.mode == "L"
                values = set(np.unique(np.asarray(mask)))
                assert values == ({0} if category == "normal" else {0, 255})
    assert (d / "benign" / "benign (2)_mask_1.png").is_file()


def _raw_picai(d: Path):
    import SimpleITK as sitk

    t2 = sitk.ReadImage(str(d / "images/10000/10000_1000000_t2w.mha"))
    adc = sitk.ReadImage(str(d / "images/10000/10000_1000000_adc.mha"))
    assert t2.GetSize()[:2] == (384, 384) and 19 <= t2.GetSize()[2] <= 24 and t2.GetSpacing() == (0.5, 0.5, 3.0)
    assert adc.GetSize()[:2] == (128, 120) and adc.GetSpacing() == (2.0, 2.0, 3.0)
    assert sitk.GetArrayViewFromImage(t2).dtype == np.int16
    _, lab = _nii(d / "labels/csPCa_lesion_delineations/human_expert/resampled/10000_1000000.nii.gz")
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 3}
    assert not (d / "labels/csPCa_lesion_delineations/human_expert/resampled/10005_1000005.nii.gz").exists()
    assert (d / "labels/clinical_information/marksheet.csv").read_text().startswith("patient_id,study_id,")


def _raw_acdc(d: Path):
    patient = d / "training" / "patient001"
    info = dict(line.split(": ") for line in (patient / "Info.cfg").read_text().splitlines())
    _, ed = _nii(patient / "patient001_frame01.nii.gz")
    _, gt = _nii(patient / "patient001_frame01_gt.nii.gz")
    img4, cine = _nii(patient / "patient001_4d.nii.gz")
    assert ed.dtype == np.int16 and ed.ndim == 3 and 8 <= ed.shape[2] <= 10 and ed.min() >= 0
    assert cine.shape == ed.shape + (int(info["NbFrame"]),) and np.array_equal(cine[..., 0], ed)
    assert (patient / f"patient001_frame{int(info['ES']):02d}_gt.nii.gz").is_file()
    assert gt.dtype == np.uint8 and set(np.unique(gt)) == {0, 1, 2, 3}
    assert img4.header.get_zooms()[2] == pytest.approx(10.0)
    assert (d / "testing" / "patient101" / "Info.cfg").is_file()


def _raw_mrbrains(d: Path):
    img, t1 = _nii(d / "TrainingData/1/T1.nii")
    _, lab = _nii(d / "TrainingData/1/LabelsForTesting.nii")
    assert t1.shape == (240, 240, 48) and t1.dtype == np.int16 and t1.min() >= 0
    assert img.header.get_zooms() == pytest.approx((0.958, 0.958, 3.0))
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    assert (d / "TestData/2/T2_FLAIR.nii").is_file() and not (d / "TestData/2/LabelsForTesting.nii").exists()


def _raw_calgary_campinas(d: Path):
    files = sorted((d / "Original").glob("CC*.nii.gz"))
    assert [p.name for p in files][0] == "CC0001_philips_15_55_M.nii.gz"
    img, data = _nii(files[0])
    assert data.dtype == np.int16 and data.shape[1:] == (256, 256) and 170 <= data.shape[0] <= 180
    assert img.header.get_zooms() == pytest.approx((1.0, 1.0, 1.0))


def _raw_knee_hammernik(d: Path):
    import scipy.io

    esp = scipy.io.loadmat(d / "coronal_pd/1/espirit1.mat")
    raw = scipy.io.loadmat(d / "coronal_pd/1/rawdata1.mat")
    assert esp["reference"].shape == (640, 368) and esp["reference"].dtype == np.complex64
    assert esp["sensitivities"].shape == (640, 368, 15)
    assert raw["rawdata"].shape == (640, 368, 15) and raw["rawdata"].dtype == np.complex64


def _raw_hecktor(d: Path):
    ct_img, ct = _nii(d / "hecktor_nii/CHGJ007_ct.nii.gz")
    pt_img, pt = _nii(d / "hecktor_nii/CHGJ007_pt.nii.gz")
    _, gt = _nii(d / "hecktor_nii/CHGJ007_gtvt.nii.gz")
    assert ct.dtype == np.int16 and ct.shape[:2] == (512, 512) and ct.min() <= -1000
    assert pt.dtype == np.float32 and pt.shape[:2] == (128, 128) and pt.min() >= 0 and pt.max() > 5  # SUV
    assert gt.shape == ct.shape and set(np.unique(gt)) == {0, 1}
    assert np.allclose(ct_img.affine, nib.load(str(d / "hecktor_nii/CHGJ007_gtvt.nii.gz")).affine)
    header = (d / "hecktor2021_bbox_training.csv").read_text().splitlines()[0]
    assert header == "PatientID,x1,y1,z1,x2,y2,z2"


def _raw_brats(d: Path):
    img, flair = _nii(d / "BraTS2021_00000/BraTS2021_00000_flair.nii.gz")
    _, seg = _nii(d / "BraTS2021_00000/BraTS2021_00000_seg.nii.gz")
    assert flair.shape == (240, 240, 155) and flair.dtype == np.int16 and flair.min() == 0
    assert img.header.get_zooms() == pytest.approx((1.0, 1.0, 1.0))
    assert seg.dtype == np.uint8 and set(np.unique(seg)) == {0, 1, 2, 4}


RAW_CHECKS = {name[len("_raw_"):]: fn for name, fn in globals().items() if name.startswith("_raw_")}

#: dataset -> (channels, labelled, label values in the store)
STORE = {
    "msd_spleen": (["CT"], True, {0, 1}), "busi": (["R", "G", "B"], True, {0, 1}),
    "picai": (["t2w", "adc", "hbv"], True, {0, 2, 3, 4, 5}), "acdc": (["cine"], True, {0, 1, 2, 3}),
    "mrbrains": (["T1"], False, set()), "calgary_campinas": (["T1"], False, set()),
    "knee_hammernik": (["magnitude"], False, set()), "hecktor": (["CT", "PT"], True, {0, 1}),
    "brats": (["flair", "t1ce", "t2"], True, {0, 1, 2, 4}),
}
SLOW = {"hecktor", "brats", "picai"}  # > ~10 s to write and convert on one core


def test_every_paper_dataset_has_a_standin(paper):
    sources = {d.get("source", n) for n, d in paper["datasets"].items() if d["kind"] in ("download", "manual")}
    assert sources == set(standins.GENERATORS) == set(RAW_CHECKS) == set(STORE)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(STORE)])
def test_standin_fetch_convert_split(name, tmp_path, paper, specs):
    from medkd.cli import main

    data_root = tmp_path / "data"
    t0 = time.perf_counter()
    target = fetch_dataset(name, specs[name], data_root, progress=False, standin=standins.identity(name))
    t_write = time.perf_counter() - t0
    marker = read_marker(target)
    assert marker["standin"] is True and marker["standin_seed"] == standins.DEFAULT_SEED
    assert marker["standin_generator"] == f"medkd.data.standins.{name}"
    RAW_CHECKS[name](target)

    convert = paper["datasets"][name]["convert"]
    store, fp = tmp_path / f"{name}.h5", tmp_path / f"{name}.json"
    t0 = time.perf_counter()
    main(["convert", "--dataset", name, "--convert-spec", json.dumps(convert), "--src", str(target),
          "--out", str(store), "--fingerprint", str(fp)])
    t_convert = time.perf_counter() - t0
    fingerprint = json.loads(fp.read_text())
    assert fingerprint["standin"] is True and fingerprint["standin_source"]["generator"] == marker["standin_generator"]
    channels, labelled, values = STORE[name]
    with SliceStore(store) as st:
        assert st.attrs["provenance"]["standin"] is True and st.attrs["channel_names"] == channels
        n_slices, n_labelled, seen = 0, 0, set()
        for cid in st.case_ids:
            case = st.read_case(cid)
            assert case.image.dtype == np.float32 and case.image.shape[1:] == (len(channels), *convert["size"])
            assert np.isfinite(case.image).all() and case.image.std() > 0
            n_slices += case.image.shape[0]
            assert (case.label is not None) == labelled
            if case.label is not None:
                seen |= set(np.unique(case.label).tolist())
                n_labelled += int((case.label.reshape(len(case.label), -1) > 0).any(axis=1).sum())
        assert seen == values
        if labelled and name != "busi":  # BUSI's normal images have no lesion by definition
            assert n_labelled > 0.4 * n_slices, (n_labelled, n_slices)
    print(f"\n{name}: {len(fingerprint['cases'])} cases, {n_slices} slices; write {t_write:.1f} s, "
          f"convert {t_convert:.1f} s")

    exps = {e: x for e, x in paper["experiments"].items() if x["dataset"] == name}
    assert exps
    for exp, x in exps.items():
        out = tmp_path / f"split_{exp}.json"
        main(["split", "--split-spec", json.dumps(x["split"]), "--fingerprint", str(fp), "--out", str(out)])
        split = json.loads(out.read_text())["splits"]
        wanted = set(x["split"].get("fixed") or {k for k, f in x["split"]["fractions"].items() if f > 0})
        assert set(split) >= wanted and all(split[k] for k in wanted), (exp, split)
    shutil.rmtree(data_root, ignore_errors=True)  # the knee k-space alone is ~0.7 GB
