"""Converter hardening: dataset.json paths must stay inside the dataset folder; constant images are flagged."""

from __future__ import annotations

import json
import logging
import os

import nibabel as nib
import numpy as np
import pytest

from medkd.data.formats.msd import PathOutsideDataset, convert_msd, read_msd_cases
from medkd.data.store import SliceStore
from medkd.errors import InputError


def _case(value=None):
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, size=(6, 6, 4)).astype(np.float32) if value is None else np.full((6, 6, 4), value, np.float32)
    label = np.zeros((6, 6, 4), np.uint8)
    label[2:4, 2:4, :] = 1
    return image, label


def _write(root, cases, entries=None):
    """cases: {cid: (image, label)}; entries: dataset.json training list (default the usual ./imagesTr/...)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for cid, (image, label) in cases.items():
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"{cid}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"{cid}.nii.gz")
    if entries is None:
        entries = [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases]
    meta = {"name": "toy", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"}, "training": entries}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def outside(tmp_path):
    """A valid case outside the dataset folder (tmp/elsewhere/)."""
    other = _write(tmp_path / "elsewhere", {"x": _case()})
    return other / "imagesTr" / "x.nii.gz", other / "labelsTr" / "x.nii.gz"


def test_dotdot_path_is_refused(tmp_path, outside):
    src = _write(tmp_path / "ds", {"a": _case()},
                 entries=[{"image": "./imagesTr/../../elsewhere/imagesTr/x.nii.gz", "label": "./labelsTr/a.nii.gz"}])
    with pytest.raises(PathOutsideDataset, match=r"training entry 0 'image' '\./imagesTr/\.\./\.\./elsewhere.*leaves the "
                                                 r"dataset folder"):
        read_msd_cases(src)


def test_absolute_path_is_refused(tmp_path, outside):
    src = _write(tmp_path / "ds", {"a": _case()}, entries=[{"image": "./imagesTr/a.nii.gz", "label": str(outside[1])}])
    with pytest.raises(PathOutsideDataset, match="training entry 0 'label' .* is an absolute path") as info:
        read_msd_cases(src)
    assert isinstance(info.value, InputError) and str(src / "dataset.json") in str(info.value)
    src2 = _write(tmp_path / "ds2", {"a": _case()}, entries=[{"image": "C:\\data\\a.nii.gz"}])
    with pytest.raises(PathOutsideDataset, match="absolute path"):
        read_msd_cases(src2)


def test_symlink_pointing_out_is_refused_and_inside_is_fine(tmp_path, outside):
    src = _write(tmp_path / "ds", {"a": _case()},
                 entries=[{"image": "./imagesTr/link.nii.gz", "label": "./labelsTr/a.nii.gz"}])
    os.symlink(outside[0], src / "imagesTr" / "link.nii.gz")
    with pytest.raises(PathOutsideDataset, match="resolves to .*elsewhere"):
        read_msd_cases(src)
    with pytest.raises(PathOutsideDataset):
        convert_msd(src, tmp_path / "out.h5", size=(6, 6))
    assert not (tmp_path / "out.h5").exists()
    # a symlink that stays inside the folder is accepted
    (src / "imagesTr" / "link.nii.gz").unlink()
    os.symlink(src / "imagesTr" / "a.nii.gz", src / "imagesTr" / "link.nii.gz")
    assert read_msd_cases(src)[0][1] == src / "imagesTr" / "link.nii.gz"


def test_dataset_folder_behind_a_symlink_is_fine(tmp_path):
    real = _write(tmp_path / "real", {"a": _case()})
    os.symlink(real, tmp_path / "alias")
    assert [c for c, _, _ in read_msd_cases(tmp_path / "alias")] == ["a"]


def test_constant_and_empty_images_are_flagged(tmp_path, caplog):
    src = _write(tmp_path / "ds", {"ok": _case(), "flat": _case(7.0), "zeros": _case(0.0)})
    with caplog.at_level(logging.WARNING, logger="medkd"):
        convert_msd(src, tmp_path / "out.h5", size=(6, 6))
    with SliceStore(tmp_path / "out.h5") as store:
        flagged = store.attrs["provenance"]["constant_images"]
        assert sorted(store.case_ids) == ["flat", "ok", "zeros"]  # flagged, not dropped
    assert flagged == [{"case": "flat", "channels": [{"channel": "0", "value": 7.0}]},
                       {"case": "zeros", "channels": [{"channel": "0", "value": 0.0}]}]
    text = caplog.text
    assert "is constant (every voxel 7)" in text and "an empty image" in text and "ok.nii.gz" not in text


def test_fingerprint_json_carries_the_flag(tmp_path):
    from medkd.cli import main

    src = _write(tmp_path / "ds", {"ok": _case(), "flat": _case(3.0)})
    fp = tmp_path / "fp.json"
    main(["convert", "--dataset", "toy", "--convert-spec", json.dumps({"format": "msd", "size": [8, 8]}),
          "--src", str(src), "--out", str(tmp_path / "out.h5"), "--fingerprint", str(fp)])
    data = json.loads(fp.read_text())
    assert data["constant_images"] == [{"case": "flat", "channels": [{"channel": "0", "value": 3.0}]}]
    # a clean dataset has an empty list
    src2 = _write(tmp_path / "ds2", {"ok": _case()})
    main(["convert", "--dataset", "toy", "--convert-spec", json.dumps({"format": "msd", "size": [8, 8]}),
          "--src", str(src2), "--out", str(tmp_path / "out2.h5"), "--fingerprint", str(fp)])
    assert json.loads(fp.read_text())["constant_images"] == []


# --- the last bad inputs of the held-out gauntlet: complex images, zero spacing, numTraining --------------------


def test_complex_valued_image_is_refused_naming_the_file(tmp_path):
    src = _write(tmp_path / "ds", {"a": _case()})
    image = _case()[0].astype(np.complex64) * (1 + 1j)
    nib.save(nib.Nifti1Image(image, np.eye(4)), src / "imagesTr" / "a.nii.gz")
    with pytest.raises(ValueError, match=r"a\.nii\.gz: the image is complex-valued \(complex64\); medkd converts real"):
        convert_msd(src, tmp_path / "out.h5", size=(6, 6))
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("spacing", [0.0, -1.0])
def test_zero_or_negative_spacing_is_named_as_such(tmp_path, spacing):
    src = _write(tmp_path / "ds", {"a": _case()})
    import gzip
    import struct

    path = src / "imagesTr" / "a.nii.gz"  # nibabel fixes pixdim when it writes: patch the bytes (pixdim[2] at 84)
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[84:88] = struct.pack("<f", spacing)
    path.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(ValueError, match=r"a\.nii\.gz: voxel spacing \(1\.0, -?[01]\.0, 1\.0\) mm \(header "
                                         r"pixdim\[1:4\].*\) has a zero, negative or non-finite size") as info:
        convert_msd(src, tmp_path / "out.h5", size=(6, 6))
    assert "not on the grid" not in str(info.value)
    assert not (tmp_path / "out.h5").exists()


def test_num_training_mismatch_is_warned_and_fingerprinted(tmp_path, capsys):
    from medkd.cli import main

    src = _write(tmp_path / "ds", {"a": _case(), "b": _case()})
    meta = json.loads((src / "dataset.json").read_text())
    meta["numTraining"] = 3
    (src / "dataset.json").write_text(json.dumps(meta))
    fp = tmp_path / "fp.json"
    main(["convert", "--dataset", "toy", "--convert-spec", json.dumps({"format": "msd", "size": [8, 8]}),
          "--src", str(src), "--out", str(tmp_path / "out.h5"), "--fingerprint", str(fp)])
    expected = f"{src / 'dataset.json'}: numTraining is 3 but 'training' lists 2 cases; the 2 listed cases were converted"
    assert f"WARNING medkd.data.formats.msd: {expected}" in capsys.readouterr().err
    assert json.loads(fp.read_text())["source_warnings"] == [expected]
    with SliceStore(tmp_path / "out.h5") as store:
        assert sorted(store.case_ids) == ["a", "b"] and store.attrs["provenance"]["source_warnings"] == [expected]
    meta["numTraining"] = 2  # agreeing: no warning, no key
    (src / "dataset.json").write_text(json.dumps(meta))
    main(["convert", "--dataset", "toy", "--convert-spec", json.dumps({"format": "msd", "size": [8, 8]}),
          "--src", str(src), "--out", str(tmp_path / "out2.h5"), "--fingerprint", str(fp)])
    assert "source_warnings" not in json.loads(fp.read_text())
