"""medkd.data.kspace: FFT conventions, KD-MRI/fastMRI masks, single-coil simulation, SR truncation, store."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from medkd.data import kspace as K
from medkd.data.store import SliceCase, write_store

# ------------------------------------------------------------------------------------------ FFT


def test_fft_is_orthonormal_uncentred_and_numpy_matches_torch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 6, 10))
    k = K.fft2_ortho(x)
    # Parseval: the orthonormal transform preserves energy.
    assert np.isclose((np.abs(k) ** 2).sum(), (x**2).sum(), rtol=1e-12)
    # Un-centred: DC at [0, 0] equals sum / sqrt(H W).
    np.testing.assert_allclose(k[:, 0, 0].real, x.sum(axis=(1, 2)) / math.sqrt(60), rtol=1e-12)
    np.testing.assert_allclose(K.ifft2_ortho(k).real, x, atol=1e-12)
    kt = K.fft2_ortho(torch.from_numpy(x))
    np.testing.assert_allclose(kt.numpy(), k, atol=1e-12)
    assert torch.allclose((kt.abs() ** 2).sum(), torch.tensor((x**2).sum(), dtype=torch.float64))
    np.testing.assert_allclose(K.ifft2_ortho(kt).real.numpy(), x, atol=1e-12)


# ------------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("n,acc,lines", [(150, 4, 37), (150, 5, 30), (150, 8, 18),
                                         (240, 4, 60), (240, 5, 48), (240, 8, 30)])
def test_cartesian_vd_counts_match_kdmri_masks(n, acc, lines):
    # int(N/acc) lines in total including the 10 centre lines: int(150/4)=37, int(150/8)=18, int(240/8)=30.
    mask, facts = K.cartesian_vd_mask((n, n), acc, np.random.default_rng(3), centre_lines=10, axis=0)
    assert mask.dtype == np.float32 and mask.shape == (n, n)
    rows = mask[:, 0]
    assert (mask == rows[:, None]).all()  # whole rows
    assert int(rows.sum()) == lines == facts["sampled_lines"]
    assert facts["achieved_acceleration"] == pytest.approx(n / lines)
    assert facts["centre_lines"] == 10 and facts["axis"] == 0 and facts["kind"] == "cartesian_vd"
    assert facts["acceleration"] == acc and facts["total_lines"] == n
    # Un-centred like the shipped us_masks: centre lines at 0-4 and N-5..N-1.
    assert rows[:5].all() and rows[n - 5 :].all()


def test_cartesian_vd_columns_and_validation():
    mask, facts = K.cartesian_vd_mask((40, 150), 4, np.random.default_rng(0), axis=1)
    cols = mask[0]
    assert (mask == cols[None, :]).all() and int(cols.sum()) == 37 and facts["axis"] == 1
    assert cols[:5].all() and cols[-5:].all()
    with pytest.raises(ValueError, match="centre_lines"):
        K.cartesian_vd_mask((40, 40), 8, np.random.default_rng(0), centre_lines=10)  # int(40/8)=5 < 10
    with pytest.raises(ValueError, match="axis"):
        K.cartesian_vd_mask((40, 40), 4, np.random.default_rng(0), axis=2)
    with pytest.raises(ValueError, match="acceleration"):
        K.cartesian_vd_mask((40, 40), 0.5, np.random.default_rng(0))


def test_cartesian_vd_pdf_golden_values():
    # N = 150, acc = 4: s = 0.5 / 15^2 = 1/450, floor lambda/N = (150/8)/150 = 0.125.
    # Edge line i = 0 (d = 75): exp(-5625/450) + 0.125 = exp(-12.5) + 0.125 = 0.12500373;
    # first outer line i = 80 (d = 5): exp(-25/450) + 0.125 = 0.94596 + 0.125 = 1.07096.
    pdf = K.cartesian_vd_pdf(150, 4, centre_lines=10)
    assert pdf.sum() == pytest.approx(1.0)
    assert (pdf[70:80] == 0).all() and (pdf[:70] > 0).all() and (pdf[80:] > 0).all()
    assert pdf[80] / pdf[0] == pytest.approx((math.exp(-25 / 450) + 0.125) / (math.exp(-12.5) + 0.125), rel=1e-12)
    assert pdf[80] / pdf[0] == pytest.approx(8.5674, rel=1e-5)


def test_cartesian_vd_is_variable_density():
    # Lines near the centre are drawn more often than lines at the k-space edge (Gaussian pdf, see
    # the golden values above: about 8.6x more likely just outside the centre block than at the edge).
    counts = np.zeros(150)
    rng = np.random.default_rng(7)
    for _ in range(60):
        counts += K.cartesian_vd_mask((150, 8), 4, rng)[0][:, 0]
    near = counts[[5, 6, 7, 142, 143, 144]].mean()  # just outside the centre block (un-centred)
    edge = counts[70:80].mean()  # N/2 after ifftshift = highest frequencies
    assert near > 3 * edge


def test_random_mask_fastmri_semantics():
    # Knee-like 640x368 at 4x with centre fraction 0.08: n_low = round(29.44) = 29 centre columns,
    # un-centred at 0-14 and 354-367 (KD-MRI knee masks); outer columns kept with probability
    # p = (368/4 - 29) / (368 - 29) = 63/339, so the count is 29 + Binomial(339, p) (plus the few
    # uniform draws inside the centre that are already kept): expected 92, sd = sqrt(339 p (1-p)) = 7.2.
    rng = np.random.default_rng(11)
    counts = []
    for _ in range(100):
        mask, facts = K.random_mask((640, 368), 4, 0.08, rng)
        cols = mask[0]
        assert (mask == cols[None, :]).all()
        assert cols[:15].all() and cols[354:].all() and facts["centre_lines"] == 29
        assert facts["centre_fraction"] == 0.08 and facts["axis"] == 1
        assert abs(facts["sampled_lines"] - 92) <= 4 * 7.2  # single mask: within 4 sd
        counts.append(facts["sampled_lines"])
    # Mean of 100 masks: within 3 sd of the mean (3 * 7.2 / 10 = 2.2 lines) of N/acc = 92.
    assert abs(np.mean(counts) - 92) <= 2.2
    rows_mask, rows_facts = K.random_mask((100, 30), 4, 0.08, rng, axis=0)
    assert (rows_mask == rows_mask[:, :1]).all() and rows_facts["centre_lines"] == 8  # round(8.0)
    with pytest.raises(ValueError, match="centre lines exceed"):
        K.random_mask((100, 100), 8, 0.5, rng)


@pytest.mark.parametrize("acc,fraction", [(4, 0.08), (8, 0.04), (5, 0.08)])
def test_equispaced_mask_total_fraction(acc, fraction):
    n = 368
    rng = np.random.default_rng(5)
    for _ in range(10):
        mask, facts = K.equispaced_mask((16, n), acc, fraction, rng)
        n_low = round(n * fraction)
        assert facts["centre_lines"] == n_low
        cols = mask[0].astype(bool)
        centred = np.fft.fftshift(cols)
        pad = (n - n_low + 1) // 2
        assert centred[pad : pad + n_low].all()
        # Adjusted spacing: total (centre + outer) within 2 lines of N/acc.
        assert abs(facts["sampled_lines"] - n / acc) <= 2
        # Outside the centre block, sampled positions are equally spaced by the adjusted spacing
        # a' = acc (N - n_low) / (N - acc n_low), up to rounding (+-1).
        spacing = acc * (n - n_low) / (n - acc * n_low)
        outer = np.flatnonzero(centred)
        gaps = np.diff(outer[outer < pad - 1])
        assert gaps.size > 3 and (np.abs(gaps - spacing) <= 1).all()


def test_equispaced_mask_unadjusted_every_acc_th_line():
    # fastMRI 0.3 EquiSpacedMaskFunc: offset::acc in centred coordinates plus the centre block.
    mask, facts = K.equispaced_mask((4, 64), 4, 0.125, np.random.default_rng(0), adjust_acceleration=False)
    centred = np.fft.fftshift(mask[0].astype(bool))
    pad = (64 - 8 + 1) // 2  # 28; centre = 28..35
    outer = np.flatnonzero(centred)
    outer = outer[(outer < pad) | (outer >= pad + 8)]
    assert (np.diff(outer[outer < pad]) == 4).all()
    offset = outer[0]
    expected = set(range(offset, 64, 4)) | set(range(pad, pad + 8))
    assert set(np.flatnonzero(centred)) == expected and facts["sampled_lines"] == len(expected)
    with pytest.raises(ValueError, match="integer acceleration"):
        K.equispaced_mask((4, 64), 4.5, 0.125, np.random.default_rng(0), adjust_acceleration=False)


def test_mask_seed_and_make_mask_are_deterministic_per_case():
    assert K.mask_seed("case_001", 0) == K.mask_seed("case_001", 0)
    assert K.mask_seed("case_001", 0) != K.mask_seed("case_002", 0)
    assert K.mask_seed("case_001", 0) != K.mask_seed("case_001", 1)
    with pytest.raises(ValueError, match="non-negative"):
        K.mask_seed("a", -1)
    spec = {"kind": "cartesian_vd", "acceleration": 4, "centre_lines": 10, "axis": 0, "seed": 0}
    a1, f1 = K.make_mask(spec, (150, 150), "patient001")
    a2, _ = K.make_mask(dict(spec), (150, 150), "patient001")
    b, _ = K.make_mask(spec, (150, 150), "patient002")
    c, _ = K.make_mask({**spec, "seed": 1}, (150, 150), "patient001")
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, b) and not np.array_equal(a1, c)
    assert f1["sampled_lines"] == 37
    r1, rf = K.make_mask({"kind": "random", "acceleration": 4, "centre_fraction": 0.08}, (32, 368), "knee_7")
    r2, _ = K.make_mask({"kind": "random", "acceleration": 4, "centre_fraction": 0.08}, (32, 368), "knee_7")
    np.testing.assert_array_equal(r1, r2)
    assert rf["axis"] == 1  # fastMRI default: columns


def test_make_mask_rejects_bad_specs():
    with pytest.raises(ValueError, match="unknown"):
        K.make_mask({"kind": "radial", "acceleration": 4}, (8, 8), "a")
    with pytest.raises(ValueError, match="center_fraction"):  # typo of centre_fraction
        K.make_mask({"kind": "random", "acceleration": 4, "center_fraction": 0.08}, (8, 8), "a")
    with pytest.raises(ValueError, match="needs"):
        K.make_mask({"kind": "equispaced", "acceleration": 4}, (8, 8), "a")
    with pytest.raises(ValueError, match="no sampling mask"):
        K.make_mask({"kind": "sr_truncate", "factor": 4}, (8, 8), "a")


def test_load_mask_npy(tmp_path):
    # Hand-made cardiac-style mask: 20 rows, centre 0-4 and 15-19, plus rows 8 and 11 -> 12 lines.
    rows = np.zeros(20)
    rows[[0, 1, 2, 3, 4, 15, 16, 17, 18, 19, 8, 11]] = 1
    path = tmp_path / "mask_4x.npy"
    np.save(path, np.repeat(rows[:, None], 20, axis=1))  # float64 like the shipped cardiac masks
    mask, facts = K.load_mask_npy(path, shape=(20, 20))
    assert mask.dtype == np.float32
    assert facts == {"kind": "file", "acceleration": None, "achieved_acceleration": 20 / 12, "sampled_lines": 12,
                     "centre_lines": 10, "total_lines": 20, "axis": 0}
    spec = {"kind": "file", "path": str(path), "acceleration": 4}
    from_spec, spec_facts = K.make_mask(spec, (20, 20), "any")
    np.testing.assert_array_equal(from_spec, mask)
    assert spec_facts["acceleration"] == 4.0
    with pytest.raises(ValueError, match=r"mask_4x.npy.*does not match"):
        K.load_mask_npy(path, shape=(20, 24))
    np.save(tmp_path / "cube.npy", np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"cube.npy.*2-D"):
        K.load_mask_npy(tmp_path / "cube.npy")
    np.save(tmp_path / "soft.npy", np.full((4, 4), 0.5))
    with pytest.raises(ValueError, match=r"soft.npy.*0 or 1"):
        K.load_mask_npy(tmp_path / "soft.npy")
    np.save(tmp_path / "points.npy", np.eye(4))
    with pytest.raises(ValueError, match=r"points.npy.*whole rows or whole columns"):
        K.load_mask_npy(tmp_path / "points.npy")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        K.load_mask_npy(tmp_path / "missing.npy")


# ------------------------------------------------------------------------------------------ simulation


def _smooth_image(n: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n] / n
    img = np.exp(-((yy - 0.45) ** 2 + (xx - 0.5) ** 2) / 0.02) + 0.5 * np.exp(-((yy - 0.7) ** 2) / 0.005)
    return (img / img.max())[None]


def test_simulate_single_coil_full_mask_is_exact():
    target = np.random.default_rng(2).uniform(size=(2, 12, 10)).astype(np.float32)
    kspace, zf = K.simulate_single_coil(target, np.ones((12, 10), dtype=np.float32))
    assert kspace.dtype == np.complex64 and zf.dtype == np.float32 and zf.shape == target.shape
    np.testing.assert_allclose(zf, target, atol=1e-6)
    np.testing.assert_allclose(kspace, np.fft.fft2(target.astype(np.float64), norm="ortho"), atol=1e-6)


def test_simulate_single_coil_masks_kspace_and_psnr_falls_with_acceleration():
    target = _smooth_image(64)
    psnrs = []
    for acc in (2, 4, 8):
        mask, _ = K.cartesian_vd_mask((64, 64), acc, np.random.default_rng(0), centre_lines=4)
        kspace, zf = K.simulate_single_coil(target, mask)
        assert (kspace[:, mask == 0] == 0).all()
        np.testing.assert_allclose(kspace[:, mask == 1],
                                   np.fft.fft2(target, norm="ortho")[:, mask == 1], atol=1e-6)
        np.testing.assert_allclose(zf, np.abs(np.fft.ifft2(kspace.astype(np.complex128), norm="ortho")), atol=1e-6)
        psnrs.append(peak_signal_noise_ratio(target, zf.astype(np.float64), data_range=target.max()))
    assert psnrs[0] > psnrs[1] > psnrs[2]


def test_simulate_single_coil_rejects_bad_input():
    with pytest.raises(ValueError, match="3-D"):
        K.simulate_single_coil(np.zeros((4, 4)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="does not match"):
        K.simulate_single_coil(np.zeros((1, 4, 4)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        K.simulate_single_coil(np.full((1, 4, 4), np.nan), np.ones((4, 4)))


def test_normalise_slices_and_prepare_target():
    vol = np.array([[[0.0, 2.0], [1.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]], [[3.0, 1.5], [0.0, 0.0]]])
    out = K.normalise_slices(vol)
    # slice 0 / 4, slice 1 all zero stays zero, slice 2 / 3.
    np.testing.assert_array_equal(out, [[[0, 0.5], [0.25, 1]], [[0, 0], [0, 0]], [[1, 0.5], [0, 0]]])
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="negative"):
        K.normalise_slices(-vol)
    # z-scored case: shift by the case minimum (-2), then per-slice max:
    # slice 0 [-2, 0, 2, 0] -> [0, 2, 4, 2] / 4; slice 1 [-1, -1, 1, 1] -> [1, 1, 3, 3] / 3.
    z = np.array([[[-2.0, 0.0], [2.0, 0.0]], [[-1.0, -1.0], [1.0, 1.0]]])
    np.testing.assert_allclose(K.prepare_target(z), [[[0, 0.5], [1, 0.5]], [[1 / 3, 1 / 3], [1, 1]]], rtol=1e-6)


def test_kspace_truncate_keeps_a_64x64_centre_block():
    target = np.random.default_rng(4).uniform(size=(1, 256, 256))
    low = K.lowres_complex(target, 4)
    spectrum = np.fft.fftshift(np.fft.fft2(low, norm="ortho"), axes=(-2, -1))[0]
    nonzero = np.abs(spectrum) > 1e-9
    assert nonzero.sum() == 64 * 64
    assert nonzero[96:160, 96:160].all()  # KD-MRI: mask[128-32:128+32, 128-32:128+32]
    np.testing.assert_allclose(spectrum[96:160, 96:160],
                               np.fft.fftshift(np.fft.fft2(target[0], norm="ortho"))[96:160, 96:160], atol=1e-9)
    # KD-MRI's own recipe (no ifftshift before the inverse FFT) gives the same magnitude.
    kd_mask = np.zeros((256, 256))
    kd_mask[96:160, 96:160] = 1
    kd_lr = np.abs(np.fft.ifft2(kd_mask * np.fft.fftshift(np.fft.fft2(target[0], norm="ortho")), norm="ortho"))
    lr = K.kspace_truncate(target, 4)
    assert lr.dtype == np.float32 and lr.shape == target.shape
    np.testing.assert_allclose(lr[0], kd_lr, atol=1e-6)


def test_truncation_mask_other_sizes():
    # 30 x 20 at factor 4 keeps 7 x 5 coefficients; DC is always kept.
    keep = K.truncation_mask((30, 20), 4)
    assert keep.sum() == 7 * 5 and keep[0, 0] == 1
    with pytest.raises(ValueError, match="factor"):
        K.truncation_mask((3, 3), 4)


# ------------------------------------------------------------------------------------------ store


def _slice_store(path, n_cases: int = 2, size=(16, 12)):
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n_cases):
        image = rng.normal(size=(3, 2, *size)).astype(np.float32)  # z-scored, two channels
        cases.append(SliceCase(case_id=f"case{i}", image=image, label=None, spacing=(1.0, 1.25, 3.0),
                               affine=np.eye(4), attrs={"source_image": f"/src/{i}.nii.gz",
                                                        "original_shape": [*size, 3], "slice_indices": [0, 1, 2]}))
    write_store(path, cases, {"dataset": "toy", "channel_names": ["T1", "T2"], "label_names": {},
                              "provenance": {}, "size": list(size)})
    return cases


def test_write_and_read_undersample_store(tmp_path):
    src = tmp_path / "slices.h5"
    cases = _slice_store(src)
    spec = {"kind": "cartesian_vd", "acceleration": 4, "centre_lines": 4, "axis": 0, "seed": 3}
    out = tmp_path / "kspace" / "toy" / "vd4x.h5"
    summary = K.write_kspace_store(src, out, spec)
    assert summary == {"cases": 2, "slices": 6, "kind": "undersample", "acceleration": 4.0}  # int(16/4) = 4 rows
    assert sorted(p.name for p in out.parent.iterdir()) == ["vd4x.h5"]  # no temp file left
    with K.KspaceStore(out) as store:
        assert store.case_ids == ["case0", "case1"]
        assert store.attrs["kind"] == "undersample" and store.attrs["dataset"] == "toy"
        assert store.attrs["mask_spec"] == spec
        for original in cases:
            case = store.read_case(original.case_id)
            assert case["target"].dtype == np.float32 and case["target"].shape == (3, 16, 12)
            assert case["kspace"].dtype == np.complex64 and case["mask"].shape == (16, 12)
            np.testing.assert_allclose(case["target"], K.prepare_target(original.image[:, 0]))
            assert case["target"].max(axis=(1, 2)) == pytest.approx([1, 1, 1])
            mask, facts = K.make_mask(spec, (16, 12), original.case_id)
            np.testing.assert_array_equal(case["mask"], mask)
            np.testing.assert_allclose(case["image"], np.abs(np.fft.ifft2(case["kspace"], norm="ortho")), atol=1e-6)
            assert case["sampled_lines"] == 4 and case["centre_lines"] == 4 and case["acceleration"] == 4.0
            assert case["spacing"] == (1.0, 1.25, 3.0)
        with pytest.raises(KeyError, match="nope"):
            store.read_case("nope")
    # The training loader reads the store as batches of (N, 1, H, W) images and (N, H, W) k-space.
    from medkd.datasets import load_reconstruction

    data = load_reconstruction(out, ["case1"])
    assert data.tensors["image"].shape == (3, 1, 16, 12) and data.tensors["kspace"].dtype == torch.complex64
    assert data.tensors["mask"].shape == (3, 16, 12)


def test_write_sr_store_and_errors(tmp_path):
    src = tmp_path / "slices.h5"
    cases = _slice_store(src, n_cases=1, size=(16, 16))
    out = tmp_path / "sr.h5"
    summary = K.write_kspace_store(src, out, {"kind": "sr_truncate", "factor": 4}, channel=1)
    assert summary == {"cases": 1, "slices": 3, "kind": "sr_truncate"}
    with K.KspaceStore(out) as store:
        case = store.read_case("case0")
        assert "kspace" not in case and "mask" not in case and case["factor"] == 4
        target = K.prepare_target(cases[0].image[:, 1])
        np.testing.assert_allclose(case["image"], K.kspace_truncate(target, 4), atol=1e-6)
        assert json.loads(json.dumps(store.attrs["mask_spec"])) == {"kind": "sr_truncate", "factor": 4}
    with pytest.raises(ValueError, match="channel 2"):
        K.write_kspace_store(src, tmp_path / "bad.h5", {"kind": "sr_truncate"}, channel=2)
    assert not (tmp_path / "bad.h5").exists()
    with pytest.raises(FileNotFoundError):
        K.KspaceStore(tmp_path / "absent.h5")
    with pytest.raises(ValueError, match="not a k-space store"):
        K.KspaceStore(src)
