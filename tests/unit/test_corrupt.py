"""Robustness corruptions: monotone severity, determinism, range handling and hand-checked values."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from medkd.data.corrupt import CORRUPTIONS, SEVERITY_TABLES, corrupt, motion_kernel, robust_range

EXPECTED_NAMES = {
    "gaussian_noise",
    "speckle_noise",
    "gaussian_blur",
    "motion_blur",
    "contrast",
    "brightness",
    "bias_field",
    "kspace_ghosting",
}


def smooth_image(lo: float, hi: float, size: int = 64) -> np.ndarray:
    """(2, size, size) smooth test image (low-frequency sinusoids plus a ramp) rescaled to [lo, hi]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.5 + 0.25 * np.sin(2 * np.pi * 1.5 * xx) * np.cos(2 * np.pi * yy) + 0.2 * (xx - 0.5)
    img = np.stack([base, base[::-1].T])
    img = lo + (hi - lo) * (img - img.min()) / (img.max() - img.min())
    return img.astype(np.float32)


def test_suite_names_and_tables():
    assert set(CORRUPTIONS) == EXPECTED_NAMES
    assert set(SEVERITY_TABLES) == EXPECTED_NAMES
    assert all(len(table) == 5 for table in SEVERITY_TABLES.values())


@pytest.mark.parametrize("lo, hi", [(0.1, 0.9), (-200.0, 800.0)])
@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_psnr_strictly_falls_with_severity(name, lo, hi):
    clean = smooth_image(lo, hi)
    data_range = float(clean.max() - clean.min())
    psnr = [peak_signal_noise_ratio(clean, corrupt(clean, name, s, seed=3), data_range=data_range) for s in range(1, 6)]
    assert all(a > b for a, b in zip(psnr, psnr[1:])), psnr


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_deterministic_per_seed_and_shape_dtype_preserved(name):
    clean = smooth_image(0.0, 1.0, size=32)
    a = corrupt(clean, name, 3, seed=11)
    b = corrupt(clean, name, 3, seed=11)
    assert a.shape == clean.shape and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, clean)


@pytest.mark.parametrize("name", ["gaussian_noise", "speckle_noise", "bias_field", "motion_blur"])
def test_random_corruptions_change_with_the_seed(name):
    clean = smooth_image(0.0, 1.0, size=32)
    assert not np.array_equal(corrupt(clean, name, 3, seed=1), corrupt(clean, name, 3, seed=2))


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_affine_equivariance_outside_unit_range(name):
    # parameters are relative to the robust range, multiplicative ones act on x - P1, and nothing is clipped
    # outside [0, 1], so corrupt(a x + b) = a corrupt(x) + b for a > 0.
    x = smooth_image(2.0, 5.0, size=32)
    y = (10.0 * x.astype(np.float64) - 300.0).astype(np.float32)
    cx = corrupt(x, name, 4, seed=5).astype(np.float64)
    cy = corrupt(y, name, 4, seed=5).astype(np.float64)
    assert np.allclose(cy, 10.0 * cx - 300.0, atol=1e-3 * 30)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_unit_range_inputs_are_clipped_to_unit_range(name):
    clean = smooth_image(0.0, 1.0, size=32)
    out = corrupt(clean, name, 5, seed=0)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_other_ranges_are_not_clipped():
    clean = smooth_image(-200.0, 800.0, size=32)
    assert corrupt(clean, "brightness", 5).max() > 800.0
    assert corrupt(clean, "gaussian_noise", 5, seed=0).min() < -200.0


def test_robust_range_and_brightness_hand_values():
    # values 0..99: np.percentile (linear) gives P1 = 0.99, P99 = 98.01 -> scale 97.02; brightness severity 3
    # adds 0.3 * 97.02 = 29.106.
    img = (np.arange(100, dtype=np.float32).reshape(1, 10, 10) + 1000.0)
    floor, scale = robust_range(img)
    assert floor == pytest.approx(1000.99) and scale == pytest.approx(97.02)
    assert np.allclose(corrupt(img, "brightness", 3) - img, 29.106, atol=1e-3)
    # constant image: P99 - P1 = max - min = 0 -> scale 1
    assert robust_range(np.full((1, 4, 4), 7.0))[1] == 1.0


def test_contrast_hand_values():
    img = np.array([[[2.0, 4.0], [6.0, 8.0]]], dtype=np.float32)  # mean 5
    # severity 3: c = 0.2 -> 5 + 0.2 * (x - 5) = 4.4, 4.8, 5.2, 5.6
    assert np.allclose(corrupt(img, "contrast", 3), [[[4.4, 4.8], [5.2, 5.6]]])


def test_gaussian_noise_standard_deviation():
    # ramp 0..4095 (1 x 64 x 64): P1 = 40.95, P99 = 4054.05 -> scale 4013.1; severity 3 -> sd 0.18 * 4013.1 = 722.4
    img = np.arange(64 * 64, dtype=np.float32).reshape(1, 64, 64)
    noise = corrupt(img, "gaussian_noise", 3, seed=0).astype(np.float64) - img
    assert noise.std() == pytest.approx(0.18 * 4013.1, rel=0.05)
    assert abs(noise.mean()) < 0.05 * 722.4


def test_motion_kernel_is_one_sided_and_normalised():
    k = motion_kernel(4.0, 2.0, angle_deg=0.0)
    assert k.shape == (9, 9) and k.sum() == pytest.approx(1.0)
    # angle 0 -> taps on the centre row, from the centre to the right only
    assert np.count_nonzero(k[[0, 1, 2, 3, 5, 6, 7, 8]]) == 0
    assert np.count_nonzero(k[4, :4]) == 0 and np.all(k[4, 4:] > 0)
    assert np.all(np.diff(k[4, 4:]) < 0)  # Gaussian fall-off along the trail
    with pytest.raises(ValueError):
        motion_kernel(0.0, 1.0, 0.0)


def test_kspace_ghosting_impulse_response():
    # A 16 x 16 impulse of height 2 (not in [0, 1], so no clipping) at (8, 8). Severity 5: period 4, strength 1
    # removes the k-space lines with |k| % 4 == 0, k != 0, i.e. k in {4, -4, -8} (3 of 16) along the
    # phase-encode axis. Along that axis the removed component at offset r from the impulse is
    # 2/16 * sum_k exp(2 pi i k r / 16): r = 0 -> 2*3/16, r = +-4 -> 2*(1 + 1 + 1)/16 (ghosts),
    # r = 2 -> 2*(-1 - 1 + 1)/16.
    img = np.zeros((1, 16, 16), dtype=np.float32)
    img[0, 8, 8] = 2.0
    out = corrupt(img, "kspace_ghosting", 5, seed=0)[0]
    axis_profile = out[:, 8] if abs(out[4, 8]) > 1e-6 else out[8, :]
    other_profile = out[8, :] if abs(out[4, 8]) > 1e-6 else out[:, 8]
    assert axis_profile[8] == pytest.approx(2 - 6 / 16, abs=1e-5)
    assert axis_profile[4] == pytest.approx(-6 / 16, abs=1e-5)
    assert axis_profile[12] == pytest.approx(-6 / 16, abs=1e-5)
    assert axis_profile[0] == pytest.approx(-6 / 16, abs=1e-5)
    assert axis_profile[10] == pytest.approx(2 / 16, abs=1e-5)
    assert np.count_nonzero(np.abs(np.delete(other_profile, 8)) > 1e-6) == 0  # nothing along the other axis
    assert out.mean() == pytest.approx(img.mean(), abs=1e-6)  # DC line kept


@pytest.mark.parametrize(
    "args, match",
    [
        (("fog", 1), "unknown corruption 'fog'; valid: gaussian_noise"),
        (("contrast", 0), "valid: 1, 2, 3, 4, 5"),
        (("contrast", 6), "valid: 1, 2, 3, 4, 5"),
        (("contrast", 2.0), "unknown severity"),
    ],
)
def test_unknown_name_or_severity_lists_valid_values(args, match):
    with pytest.raises(ValueError, match=match):
        corrupt(smooth_image(0, 1, 16), *args)


def test_bad_images_raise():
    with pytest.raises(ValueError, match="C, H, W"):
        corrupt(np.zeros((16, 16), dtype=np.float32), "contrast", 1)
    bad = smooth_image(0, 1, 16)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        corrupt(bad, "contrast", 1)
