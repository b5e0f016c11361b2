"""MSD NIfTI -> slice store: orientation, alignment, resizing, normalisation, channels and bad input."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
from skimage.transform import resize

from medkd.data.convert import normalise_volume
from medkd.data.formats.msd import convert_msd, read_msd_cases
from medkd.data.store import SliceStore

# on-disk voxel (i, j, k) -> world: x = -2 j + 40, y = 3 k - 20, z = -1 i + 30 (axes permuted and flipped)
PERMUTED_AFFINE = np.array([
    [0.0, -2.0, 0.0, 40.0],
    [0.0, 0.0, 3.0, -20.0],
    [-1.0, 0.0, 0.0, 30.0],
    [0.0, 0.0, 0.0, 1.0],
])


def _write_msd(root, cases, modality=None, labels=None):
    """cases: {case_id: (image array, label array or None, image affine, label affine or None)}."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for cid, (image, label, affine, label_affine) in cases.items():
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{cid}.nii.gz")
        entry = {"image": f"./imagesTr/{cid}.nii.gz"}
        if label is not None:
            lab_aff = affine if label_affine is None else label_affine
            nib.save(nib.Nifti1Image(label, lab_aff), root / "labelsTr" / f"{cid}.nii.gz")
            entry["label"] = f"./labelsTr/{cid}.nii.gz"
        training.append(entry)
    meta = {"name": "toy", "modality": modality or {"0": "CT"}, "labels": labels or {"0": "background", "1": "organ"},
            "numTraining": len(training), "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _asymmetric_case():
    """Disk array (I, J, K) = (4, 6, 5): background 10, an L-shaped object of value 100 labelled 1."""
    image = np.full((4, 6, 5), 10.0, dtype=np.float32)
    label = np.zeros((4, 6, 5), dtype=np.uint8)
    obj = [(1, 4, 1), (1, 5, 1), (1, 5, 2), (1, 5, 3), (2, 5, 1)]  # (i, j, k) disk voxels
    for v in obj:
        image[v] = 100.0
        label[v] = 1
    return image, label, obj


def test_canonical_orientation_alignment_and_geometry(tmp_path):
    image, label, obj = _asymmetric_case()
    src = _write_msd(tmp_path / "msd", {"case_a": (image, label, PERMUTED_AFFINE, None)})
    out = tmp_path / "toy.h5"
    # canonical in-plane shape is (J, K) = (6, 5): size (6, 5) means no resampling
    convert_msd(src, out, size=(6, 5), normalise="none")
    with SliceStore(out) as store:
        case = store.read_case("case_a")
        assert store.attrs["size"] == [6, 5] and store.attrs["dataset"] == "toy"
        assert store.attrs["channel_names"] == ["CT"]
    # canonical RAS grid: x <- j flipped (2 mm), y <- k (3 mm), z <- i flipped (1 mm); voxel (0, 0, 0) is
    # the disk voxel (i=3, j=5, k=0) at world (-2*5 + 40, -20, -3 + 30) = (30, -20, 27)
    expected_affine = np.array([[2.0, 0, 0, 30.0], [0, 3.0, 0, -20.0], [0, 0, 1.0, 27.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(case.affine, expected_affine)
    np.testing.assert_array_equal(case.attrs["original_shape"], [6, 5, 4])
    assert case.spacing == (2.0, 3.0, 1.0)
    assert case.image.shape == (4, 1, 6, 5) and case.label.shape == (4, 6, 5)
    np.testing.assert_array_equal(case.attrs["slice_indices"], [0, 1, 2, 3])
    # alignment: label 1 exactly where the image is bright
    np.testing.assert_array_equal(case.label == 1, case.image[:, 0] > 50)
    # position from the affine: world of each object voxel -> canonical index (world - origin) / spacing
    expected = set()
    for i, j, k in obj:
        world = PERMUTED_AFFINE @ [i, j, k, 1]
        x, y, z = np.rint(np.linalg.solve(expected_affine, world)[:3]).astype(int)
        expected.add((z, x, y))  # stored as (slice, row, col) for axis 2
    slices, rows, cols = np.nonzero(case.label)
    got = {(int(case.attrs["slice_indices"][s]), int(r), int(c)) for s, r, c in zip(slices, rows, cols)}
    assert got == expected
    # the object's disk j = 4, 5 give world x = 40 - 8 = 32 and 40 - 10 = 30, the most-Left (lowest x) part
    # of the volume (x spans 30..40), so it sits at the lowest rows (rows grow toward the patient's Right),
    # although it is at the highest j on disk; disk i = 1, 2 give z = 29, 28 -> canonical slices 2, 1
    assert rows.max() <= 1 and set(case.attrs["slice_indices"][slices].tolist()) == {1, 2}


def test_resize_matches_skimage_and_spacing(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, size=(8, 6, 3)).astype(np.float32) + 1.0
    label = (rng.uniform(size=(8, 6, 3)) > 0.5).astype(np.uint8)
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    src = _write_msd(tmp_path / "msd", {"c": (image, label, affine, None)})
    convert_msd(src, tmp_path / "toy.h5", size=(4, 12), normalise="none")
    case = SliceStore(tmp_path / "toy.h5").read_case("c")
    # spacing: 1.5 * 8 / 4 = 3.0 rows, 2.0 * 6 / 12 = 1.0 cols, slice 2.5 unchanged
    assert case.spacing == (3.0, 1.0, 2.5)
    assert case.image.shape == (3, 1, 4, 12) and case.image.dtype == np.float32
    for s in range(3):
        want = resize(image[:, :, s], (4, 12), order=1, anti_aliasing=False, preserve_range=True)
        np.testing.assert_allclose(case.image[s, 0], want, rtol=1e-6)
        want_label = resize(label[:, :, s], (4, 12), order=0, anti_aliasing=False, preserve_range=True)
        np.testing.assert_array_equal(case.label[s], want_label.astype(np.uint8))


def test_other_slice_axes(tmp_path):
    image = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) + 1
    src = _write_msd(tmp_path / "msd", {"c": (image, None, np.diag([1.0, 2.0, 3.0, 1.0]), None)})
    convert_msd(src, tmp_path / "sag.h5", size=(5, 6), normalise="none", axis=0)
    case = SliceStore(tmp_path / "sag.h5").read_case("c")
    assert case.label is None
    np.testing.assert_array_equal(case.image[:, 0], image)  # axis 0: slice s = volume[s]
    assert case.spacing == (2.0, 3.0, 1.0)
    convert_msd(src, tmp_path / "cor.h5", size=(4, 6), normalise="none", axis=1)
    case = SliceStore(tmp_path / "cor.h5").read_case("c")
    np.testing.assert_array_equal(case.image[:, 0], np.moveaxis(image, 1, 0))  # slice s = volume[:, s]
    assert case.spacing == (1.0, 3.0, 2.0)


def test_multimodal_channel_order_and_selection(tmp_path):
    image = np.zeros((5, 4, 3, 3), dtype=np.float32)
    for c in range(3):
        image[..., c] = 10.0 * (c + 1)
    label = np.zeros((5, 4, 3), dtype=np.uint8)
    modality = {"0": "FLAIR", "1": "T1w", "2": "T2w"}
    src = _write_msd(tmp_path / "msd", {"b": (image, label, np.eye(4), None)}, modality=modality)
    convert_msd(src, tmp_path / "all.h5", size=(5, 4), normalise="none")
    with SliceStore(tmp_path / "all.h5") as store:
        assert store.attrs["channel_names"] == ["FLAIR", "T1w", "T2w"]
        case = store.read_case("b")
    assert case.image.shape == (3, 3, 5, 4)
    np.testing.assert_array_equal(case.image[:, :, 0, 0], [[10.0, 20.0, 30.0]] * 3)
    convert_msd(src, tmp_path / "sel.h5", size=(5, 4), normalise="none", channels=[2, 0])
    with SliceStore(tmp_path / "sel.h5") as store:
        assert store.attrs["channel_names"] == ["T2w", "FLAIR"]
        np.testing.assert_array_equal(store.read_case("b").image[0, :, 0, 0], [30.0, 10.0])
    with pytest.raises(ValueError, match="channels"):
        convert_msd(src, tmp_path / "bad.h5", channels=[3])


def test_label_with_other_shape_or_affine_names_the_file(tmp_path):
    image, label, _ = _asymmetric_case()
    src = _write_msd(tmp_path / "shape", {"c": (image, label[:, :, :4], PERMUTED_AFFINE, None)})
    with pytest.raises(ValueError, match=r"labelsTr/c\.nii\.gz.*shape \(6, 4, 4\) vs image \(6, 5, 4\)"):
        convert_msd(src, tmp_path / "out.h5")
    shifted = PERMUTED_AFFINE.copy()
    shifted[0, 3] += 0.5
    src = _write_msd(tmp_path / "affine", {"c": (image, label, PERMUTED_AFFINE, shifted)})
    with pytest.raises(ValueError, match=r"labelsTr/c\.nii\.gz.*affine"):
        convert_msd(src, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_unlisted_or_fractional_label_values(tmp_path):
    image, label, _ = _asymmetric_case()
    label[0, 0, 0] = 7
    src = _write_msd(tmp_path / "a", {"c": (image, label, np.eye(4), None)})
    with pytest.raises(ValueError, match=r"c\.nii\.gz.*\[7\].*not listed"):
        convert_msd(src, tmp_path / "out.h5")
    src = _write_msd(tmp_path / "b", {"c": (image, label.astype(np.float32) * 0.5, np.eye(4), None)})
    with pytest.raises(ValueError, match=r"c\.nii\.gz.*non-integer"):
        convert_msd(src, tmp_path / "out.h5")


def test_corrupt_files_name_the_file_and_write_nothing(tmp_path):
    image, label, _ = _asymmetric_case()
    src = _write_msd(tmp_path / "msd", {"a": (image, label, np.eye(4), None), "b": (image, label, np.eye(4), None)})
    out = tmp_path / "out.h5"
    convert_msd(src, out, size=(6, 5))
    before = out.read_bytes()
    bad = src / "imagesTr" / "b.nii.gz"
    full = gzip.decompress(bad.read_bytes())
    bad.write_bytes(gzip.compress(full[: len(full) - 40]))  # truncated voxel data
    with pytest.raises(ValueError, match=r"imagesTr/b\.nii\.gz"):
        convert_msd(src, out, size=(6, 5))
    bad.write_bytes(b"not a nifti at all")
    with pytest.raises(ValueError, match=r"imagesTr/b\.nii\.gz"):
        convert_msd(src, out, size=(6, 5))
    assert out.read_bytes() == before  # the old store is untouched, no temp file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["msd", "out.h5"]
    (src / "labelsTr" / "a.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"labelsTr/a\.nii\.gz"):
        convert_msd(src, out)


def test_min_foreground_and_skipped_cases(tmp_path):
    image = np.zeros((4, 5, 3), dtype=np.float32)
    image[:, :, 0] = 1.0  # fraction 1.0
    image[:2, :, 1] = 1.0  # fraction 10 / 20 = 0.5
    image[0, 0, 2] = 1.0  # fraction 1 / 20 = 0.05
    empty = np.zeros((4, 5, 3), dtype=np.float32)
    cases = {"full": (image, None, np.eye(4), None), "empty": (empty, None, np.eye(4), None)}
    src = _write_msd(tmp_path / "msd", cases)
    convert_msd(src, tmp_path / "out.h5", size=(4, 5), normalise="none", min_foreground=0.5)
    with SliceStore(tmp_path / "out.h5") as store:
        assert store.case_ids == ["full"]
        assert store.attrs["provenance"]["skipped_cases"] == ["empty"]
        assert store.attrs["provenance"]["options"]["min_foreground"] == 0.5
        np.testing.assert_array_equal(store.read_case("full").attrs["slice_indices"], [0, 1])


def test_slice_step_keeps_every_kth_slice_and_scales_the_spacing(tmp_path):
    image = np.zeros((4, 5, 7), dtype=np.float32)
    image[:, :, :6] = 1.0          # slices 0-5 have foreground, slice 6 none
    label = np.zeros((4, 5, 7), dtype=np.uint8)
    label[1, 1, :] = 1
    affine = np.diag([1.5, 1.5, 2.5, 1.0])
    src = _write_msd(tmp_path / "msd", {"a": (image, label, affine, None)})
    convert_msd(src, tmp_path / "out.h5", size=(4, 5), normalise="none", min_foreground=0.5, slice_step=2)
    with SliceStore(tmp_path / "out.h5") as store:
        case = store.read_case("a")
        np.testing.assert_array_equal(case.attrs["slice_indices"], [0, 2, 4])  # 6 is on the step, no foreground
        assert case.image.shape[0] == 3 and case.label.shape[0] == 3
        assert case.spacing == pytest.approx((1.5, 1.5, 5.0))            # 2 x 2.5 mm between stored slices
        assert store.attrs["provenance"]["options"]["slice_step"] == 2
    with pytest.raises(ValueError, match="slice_step must be a positive integer"):
        convert_msd(src, tmp_path / "bad.h5", slice_step=0)
    assert not (tmp_path / "bad.h5").exists()


def test_normalisations_golden():
    v = np.array([0.0, 1.0, 2.0, 3.0], dtype=np.float32)
    # non-zero voxels 1, 2, 3: mean 2, population sd sqrt(2/3) = 0.816497
    np.testing.assert_allclose(normalise_volume(v, "zscore"), [0.0, -1.224745, 0.0, 1.224745], rtol=1e-5)
    np.testing.assert_allclose(normalise_volume(v, "minmax"), [0.0, 1 / 3, 2 / 3, 1.0], rtol=1e-6)
    hu = np.array([-1000.0, 0.0, 51.0, 300.0], dtype=np.float32)
    # MTMS effective window: clip HU to [0, 255], then / 255 -> 0, 0, 51/255 = 0.2, 1
    np.testing.assert_allclose(normalise_volume(hu, "window", [0, 255]), [0.0, 0.0, 0.2, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(normalise_volume(hu, "none"), hu)
    np.testing.assert_array_equal(normalise_volume(np.full(3, 5.0), "minmax"), [0, 0, 0])
    with pytest.raises(ValueError, match="window"):
        normalise_volume(hu, "window")
    with pytest.raises(ValueError, match="only used"):
        normalise_volume(hu, "zscore", [0, 255])
    with pytest.raises(ValueError, match="unknown"):
        normalise_volume(hu, "bogus")


def test_zscore_in_the_store_is_per_case_and_channel(tmp_path):
    rng = np.random.default_rng(1)
    image = np.zeros((6, 6, 4, 2), dtype=np.float32)
    image[1:5, 1:5, :, 0] = rng.normal(100, 20, size=(4, 4, 4))
    image[1:5, 1:5, :, 1] = rng.normal(-3, 0.5, size=(4, 4, 4))
    src = _write_msd(tmp_path / "msd", {"c": (image, None, np.eye(4), None)}, modality={"0": "A", "1": "B"})
    convert_msd(src, tmp_path / "out.h5", size=(6, 6))
    stored = SliceStore(tmp_path / "out.h5").read_case("c").image
    for c in range(2):
        values = stored[:, c][stored[:, c] != 0]
        assert values.size == 64
        assert abs(values.mean()) < 1e-5 and abs(values.std() - 1) < 1e-5
    assert (stored[:, :, 0, :] == 0).all()  # background stays exactly 0


def test_read_msd_cases(tmp_path):
    image, label, _ = _asymmetric_case()
    cases = {"spleen_2": (image, label, np.eye(4), None), "spleen_10": (image, None, np.eye(4), None)}
    src = _write_msd(tmp_path / "msd", cases)
    cases = read_msd_cases(src)
    assert cases == [("spleen_2", src / "imagesTr/spleen_2.nii.gz", src / "labelsTr/spleen_2.nii.gz"),
                     ("spleen_10", src / "imagesTr/spleen_10.nii.gz", None)]
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        read_msd_cases(tmp_path / "nowhere")


def test_embedded_dataset_converts(tmp_path):
    from medkd.data.embedded import generate_embedded

    src = generate_embedded(tmp_path / "embedded", n_cases=1, seed=1234, resolution_mm=8.0, lesion=True)
    convert_msd(src, tmp_path / "embedded.h5", size=(16, 16), min_foreground=0.05)
    with SliceStore(tmp_path / "embedded.h5") as store:
        assert store.attrs["channel_names"] == ["T1", "T2"]
        assert store.attrs["label_names"]["4"] == "lesion"
        case = store.read_case("emb_000")
    # 197x233x189 at 8 mm -> ceil: 25x30x24; rows 8 * 25 / 16 = 12.5 mm, cols 8 * 30 / 16 = 15 mm
    assert case.spacing == (12.5, 15.0, 8.0)
    assert case.image.shape[1:] == (2, 16, 16) and set(np.unique(case.label)) <= {0, 1, 2, 3, 4}
