"""A multimodal MSD case (one 4-D NIfTI image, several MR sequences) converts with every channel aligned.

tests/unit/test_convert.py checks the channel order with constant channels; here every voxel of every
channel carries a value that encodes its channel and its on-disk voxel index, so any channel that is
reoriented, flipped, resized or sliced differently from the others or from the label is caught voxel by
voxel. The BraTS experiments (MSD Task01: FLAIR, T1w, T1gd, T2w in one 4-D file) and the embedded
dataset (T1-like and T2-like channels) rely on this.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from skimage.transform import resize

from medkd.brats import select_sequences
from medkd.data.formats.msd import convert_msd
from medkd.data.store import SliceStore

# disk voxel (i, j, k) -> world: x = -2 j + 40, y = 3 k - 20, z = -1 i + 30 (axes permuted and flipped)
PERMUTED_AFFINE = np.array([
    [0.0, -2.0, 0.0, 40.0],
    [0.0, 0.0, 3.0, -20.0],
    [-1.0, 0.0, 0.0, 30.0],
    [0.0, 0.0, 0.0, 1.0],
])
SHAPE = (4, 6, 5)  # disk (I, J, K)
TASK01_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


def write_msd(root, cases, modality=TASK01_MODALITY):
    """cases: {case_id: (image (I, J, K, C), label (I, J, K) or None, affine)}; writes the MSD layout."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for cid, (image, label, affine) in cases.items():
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{cid}.nii.gz")
        entry = {"image": f"./imagesTr/{cid}.nii.gz"}
        if label is not None:
            nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{cid}.nii.gz")
            entry["label"] = f"./labelsTr/{cid}.nii.gz"
        training.append(entry)
    meta = {"name": "multimodal", "modality": modality, "labels": LABELS, "numTraining": len(training),
            "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def coded_case(n_channels: int = 4):
    """Image value at disk voxel (i, j, k), channel c: 1000 (c + 1) + 100 i + 10 j + k (all > 0, all
    distinct); label (i + j + k) mod 4, a different pattern on every axis."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    code = 100 * i + 10 * j + k
    image = np.stack([1000.0 * (c + 1) + code for c in range(n_channels)], axis=-1).astype(np.float32)
    label = ((i + j + k) % 4).astype(np.uint8)
    return image, label


def decode(value: float) -> tuple[int, tuple[int, int, int]]:
    """(channel, disk voxel) of a coded value."""
    v = int(round(float(value)))
    code = v % 1000
    return v // 1000 - 1, (code // 100, (code // 10) % 10, code % 10)


def test_every_channel_and_the_label_sit_on_the_same_voxel(tmp_path):
    image, label = coded_case()
    src = write_msd(tmp_path / "msd", {"case": (image, label, PERMUTED_AFFINE)})
    out = tmp_path / "mm.h5"
    # canonical in-plane shape of axial slices is (J, K) = (6, 5): no resampling
    convert_msd(src, out, size=(6, 5), normalise="none", axis=2)
    with SliceStore(out) as store:
        assert store.attrs["channel_names"] == ["FLAIR", "T1w", "t1gd", "T2w"]
        case = store.read_case("case")
    assert case.image.shape == (4, 4, 6, 5) and case.label.shape == (4, 6, 5)
    seen = set()
    for s in range(case.image.shape[0]):
        z = int(case.attrs["slice_indices"][s])
        for r in range(6):
            for col in range(5):
                decoded = [decode(case.image[s, c, r, col]) for c in range(4)]
                assert [d[0] for d in decoded] == [0, 1, 2, 3]  # channel order kept
                voxels = {d[1] for d in decoded}
                assert len(voxels) == 1, (s, r, col, decoded)  # all four channels: one and the same voxel
                (i, j, k), = voxels
                assert case.label[s, r, col] == (i + j + k) % 4  # the label of that voxel too
                # and it is the voxel at this world position: disk affine vs the store's canonical affine
                np.testing.assert_allclose(PERMUTED_AFFINE @ [i, j, k, 1], case.affine @ [r, col, z, 1])
                seen.add((i, j, k))
    assert len(seen) == 4 * 6 * 5  # every disk voxel appears exactly once


def test_selecting_sequences_by_name_keeps_them_aligned(tmp_path):
    image, label = coded_case()
    src = write_msd(tmp_path / "msd", {"case": (image, label, PERMUTED_AFFINE)})
    channels = select_sequences(["t2", "flair", "t1ce"])  # BraTS names -> MSD Task01 indices
    assert channels == [3, 0, 2]
    convert_msd(src, tmp_path / "sel.h5", size=(6, 5), normalise="none", channels=channels)
    with SliceStore(tmp_path / "sel.h5") as store:
        assert store.attrs["channel_names"] == ["T2w", "FLAIR", "t1gd"]
        assert store.attrs["provenance"]["options"]["channels"] == [3, 0, 2]
        case = store.read_case("case")
    assert case.image.shape == (4, 3, 6, 5)
    for s, r, col in np.ndindex(4, 6, 5):
        decoded = [decode(case.image[s, c, r, col]) for c in range(3)]
        assert [d[0] for d in decoded] == [3, 0, 2]
        assert len({d[1] for d in decoded}) == 1
        i, j, k = decoded[0][1]
        assert case.label[s, r, col] == (i + j + k) % 4


def test_resized_zscored_channels_match_skimage_per_channel(tmp_path):
    rng = np.random.default_rng(3)
    # identity orientation (diagonal affine): the canonical volume is the disk volume
    image = rng.uniform(1.0, 2.0, size=(8, 6, 3, 2)).astype(np.float32)
    image[:2, :, :, 0] = 0.0  # channel 0 has a zero border (outside the "brain"), channel 1 does not
    image[..., 1] *= 50.0  # another intensity scale
    label = (rng.uniform(size=(8, 6, 3)) > 0.7).astype(np.uint8)
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    src = write_msd(tmp_path / "msd", {"c": (image, label, affine)}, modality={"0": "T1", "1": "T2"})
    convert_msd(src, tmp_path / "z.h5", size=(4, 12), normalise="zscore")
    case = SliceStore(tmp_path / "z.h5").read_case("c")
    assert case.image.shape == (3, 2, 4, 12)
    assert case.spacing == (3.0, 1.0, 2.5)  # 1.5 * 8 / 4, 2.0 * 6 / 12, slice 2.5
    for c in range(2):
        vol = image[..., c].astype(np.float64)
        nonzero = vol != 0
        # z-score per channel over the whole volume's non-zero voxels (population sd); zeros stay zero
        z = np.where(nonzero, (vol - vol[nonzero].mean()) / vol[nonzero].std(), 0.0)
        for s in range(3):
            want = resize(z[:, :, s], (4, 12), order=1, anti_aliasing=False, preserve_range=True)
            np.testing.assert_allclose(case.image[s, c], want, rtol=1e-5, atol=1e-5)
    for s in range(3):
        want = resize(label[:, :, s], (4, 12), order=0, anti_aliasing=False, preserve_range=True)
        np.testing.assert_array_equal(case.label[s], want.astype(np.uint8))


def test_min_foreground_reads_the_first_selected_channel(tmp_path):
    image = np.ones((4, 4, 3, 2), dtype=np.float32)
    image[..., 1:, 0] = 0.0  # channel 0: only axial slice 0 is non-zero
    label = np.zeros((4, 4, 3), dtype=np.uint8)
    label[1, 1, :] = 1
    src = write_msd(tmp_path / "msd", {"c": (image, label, np.eye(4))}, modality={"0": "A", "1": "B"})
    convert_msd(src, tmp_path / "a.h5", size=(4, 4), normalise="none", channels=[0, 1], min_foreground=0.5)
    case = SliceStore(tmp_path / "a.h5").read_case("c")
    np.testing.assert_array_equal(case.attrs["slice_indices"], [0])
    assert case.image.shape == (1, 2, 4, 4) and case.label.shape == (1, 4, 4)
    convert_msd(src, tmp_path / "b.h5", size=(4, 4), normalise="none", channels=[1, 0], min_foreground=0.5)
    case = SliceStore(tmp_path / "b.h5").read_case("c")
    np.testing.assert_array_equal(case.attrs["slice_indices"], [0, 1, 2])
    np.testing.assert_array_equal(case.image[:, 1].sum(axis=(1, 2)), [16.0, 0.0, 0.0])  # channel 0 now second
    np.testing.assert_array_equal(case.label[:, 1, 1], [1, 1, 1])


def test_bad_multimodal_cases_name_the_file(tmp_path):
    image, label = coded_case()
    short, _ = coded_case(n_channels=2)
    src = write_msd(tmp_path / "msd", {"a": (image, label, PERMUTED_AFFINE), "b": (short, label, PERMUTED_AFFINE)})
    out = tmp_path / "o.h5"
    with pytest.raises(ValueError, match=r"b\.nii\.gz: has 2 channel\(s\)"):
        convert_msd(src, out, size=(6, 5), normalise="none", channels=[0, 3])
    assert not out.exists()
    bad = image.copy()
    bad[1, 2, 3, 2] = np.nan
    src = write_msd(tmp_path / "msd2", {"a": (image, label, PERMUTED_AFFINE), "n": (bad, label, PERMUTED_AFFINE)})
    with pytest.raises(ValueError, match=r"n\.nii\.gz: channel 2 contains NaN"):
        convert_msd(src, out, size=(6, 5), normalise="none")
    assert not out.exists()
    convert_msd(src, out, size=(6, 5), normalise="none", channels=[3, 1])  # the NaN channel is not read
    with SliceStore(out) as store:
        assert store.case_ids == ["a", "n"]
