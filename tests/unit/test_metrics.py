"""Golden-value tests of medkd.metrics: hand-counted overlaps, every empty-mask branch, HD95 against a
brute-force surface-distance computation, and PSNR/SSIM against scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medkd import metrics as M

# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _brute_surface(mask: np.ndarray) -> np.ndarray:
    """Independent surface definition: a foreground voxel with at least one face neighbour that is
    background or outside the array (no scipy.ndimage)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = np.ones_like(mask, dtype=bool)
    centre = tuple(slice(1, -1) for _ in range(mask.ndim))
    for axis in range(mask.ndim):
        for step in (-1, 1):
            shifted = list(centre)
            shifted[axis] = slice(1 + step, padded.shape[axis] - 1 + step)
            interior &= padded[tuple(shifted)]
    return mask & ~interior


def _brute_directed(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    sp = np.asarray(spacing, dtype=float)
    pa = np.argwhere(_brute_surface(a)) * sp
    pb = np.argwhere(_brute_surface(b)) * sp
    d = cdist(pa, pb)
    return d.min(axis=1), d.min(axis=0)


def _brute_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    d_ab, d_ba = _brute_directed(a, b, spacing)
    return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))


# A 3x4 pair with hand-counted confusion:
#   ref  = 1 1 0 0     pred = 0 1 1 0
#          1 1 0 0            0 1 1 0
#          0 0 0 0            0 0 0 1
# TP = (0,1),(1,1) = 2; FP = (0,2),(1,2),(2,3) = 3; FN = (0,0),(1,0) = 2; TN = 12 - 7 = 5.
REF = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
PRED = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=bool)


# ------------------------------------------------------------------------------------------------
# overlap metrics
# ------------------------------------------------------------------------------------------------


def test_binary_confusion_hand_counted():
    assert M.binary_confusion(PRED, REF) == {"tp": 2, "fp": 3, "fn": 2, "tn": 5}


def test_overlap_metrics_hand_counted():
    assert M.dice(PRED, REF) == pytest.approx(4 / 9)  # 2*2 / (2*2 + 3 + 2)
    assert M.iou(PRED, REF) == pytest.approx(2 / 7)  # 2 / (2 + 3 + 2)
    assert M.precision(PRED, REF) == pytest.approx(2 / 5)  # 2 / (2 + 3)
    assert M.recall(PRED, REF) == pytest.approx(2 / 4)  # 2 / (2 + 2)


def test_overlap_metrics_accept_01_integer_masks():
    assert M.dice(PRED.astype(np.uint8), REF.astype(np.int64)) == pytest.approx(4 / 9)


def test_overlap_metrics_perfect_prediction():
    assert M.dice(REF, REF) == 1.0
    assert M.iou(REF, REF) == 1.0
    assert M.precision(REF, REF) == 1.0
    assert M.recall(REF, REF) == 1.0
    assert M.hd95(REF, REF, (1.0, 1.0)) == 0.0


def test_both_empty_gives_nan_everywhere():
    empty = np.zeros((3, 4), dtype=bool)
    for fn in (M.dice, M.iou, M.precision, M.recall):
        assert math.isnan(fn(empty, empty)), fn.__name__
    assert math.isnan(M.hd95(empty, empty, (1.0, 1.0)))


def test_empty_prediction_nonempty_reference():
    empty = np.zeros_like(REF)
    assert M.dice(empty, REF) == 0.0
    assert M.iou(empty, REF) == 0.0
    assert M.recall(empty, REF) == 0.0  # 0 / (0 + 4)
    assert math.isnan(M.precision(empty, REF))  # 0 / 0: nothing predicted
    # worst case = diagonal of the 3x4 image at spacing (2, 1.5) mm: sqrt(6^2 + 6^2)
    assert M.hd95(empty, REF, (2.0, 1.5)) == pytest.approx(math.sqrt(72.0))


def test_empty_reference_nonempty_prediction():
    empty = np.zeros_like(REF)
    assert M.dice(PRED, empty) == 0.0
    assert M.iou(PRED, empty) == 0.0
    assert M.precision(PRED, empty) == 0.0  # 0 / (0 + 5)
    assert math.isnan(M.recall(PRED, empty))  # 0 / 0: nothing to find
    assert M.hd95(PRED, empty, (1.0, 1.0)) == pytest.approx(5.0)  # sqrt(3^2 + 4^2)


def test_worst_case_distance_3d():
    # shape (4, 10, 20) at spacing (3, 1, 0.5) mm spans (12, 10, 10) mm: sqrt(144 + 100 + 100)
    assert M.worst_case_distance((4, 10, 20), (3.0, 1.0, 0.5)) == pytest.approx(math.sqrt(344.0))


def test_mask_errors():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        M.dice(PRED, REF.T)
    with pytest.raises(ValueError, match="binary"):
        M.dice(PRED.astype(int) * 2, REF)
    with pytest.raises(ValueError, match="one entry per array axis"):
        M.hd95(PRED, REF, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="> 0"):
        M.hd95(PRED, REF, (1.0, 0.0))


# ------------------------------------------------------------------------------------------------
# HD95
# ------------------------------------------------------------------------------------------------


def test_hd95_single_voxels_anisotropic_2d():
    a = np.zeros((8, 8), dtype=bool)
    b = np.zeros((8, 8), dtype=bool)
    a[1, 4] = True
    b[4, 4] = True
    # 3 rows apart at 2 mm per row = 6 mm; both directed sets are {6}
    assert M.hd95(a, b, (2.0, 1.0)) == pytest.approx(6.0)
    # with the spacing swapped the same offset is 3 mm
    assert M.hd95(a, b, (1.0, 2.0)) == pytest.approx(3.0)
    b2 = np.zeros((8, 8), dtype=bool)
    b2[4, 0] = True
    # 3 rows * 2 mm and 4 columns * 1 mm: sqrt(36 + 16)
    assert M.hd95(a, b2, (2.0, 1.0)) == pytest.approx(math.sqrt(52.0))


def test_hd95_single_voxels_3d():
    a = np.zeros((5, 4, 4), dtype=bool)
    b = np.zeros((5, 4, 4), dtype=bool)
    a[0, 1, 1] = True
    b[2, 1, 1] = True
    assert M.hd95(a, b, (2.5, 0.7, 0.7)) == pytest.approx(5.0)  # 2 slices * 2.5 mm


def test_hd95_square_vs_shifted_square_by_hand():
    # A = 3x3 square rows 2-4, cols 2-4; B = A shifted one column right (cols 3-5); spacing 1 mm.
    # Surfaces are the 8 border voxels of each square (centres (3,3) and (3,4) are interior).
    # A->B: (2,2),(3,2),(4,2) are 1 mm from B's left column; (3,4) is B's centre, 1 mm from (2,4);
    #       (2,3),(2,4),(4,3),(4,4) lie on B's surface -> four 0s and four 1s. B->A is the mirror image.
    # Union = 8 zeros + 8 ones; the 95th percentile sits at sorted index 0.95*15 = 14.25 -> 1.
    a = np.zeros((7, 8), dtype=bool)
    b = np.zeros((7, 8), dtype=bool)
    a[2:5, 2:5] = True
    b[2:5, 3:6] = True
    assert M.hd95(a, b, (1.0, 1.0)) == pytest.approx(1.0)
    assert M.hd95(a, b, (1.0, 1.0)) == pytest.approx(_brute_hd95(a, b, (1.0, 1.0)))


def test_hd95_union_percentile_not_max_of_directed():
    # A = one voxel at column 0; B = columns 3 and 4 of a 1x6 strip (every voxel is surface).
    # A->B = {3}; B->A = {3, 4}; union {3, 3, 4}: position 0.95*2 = 1.9 -> 3 + 0.9*(4 - 3) = 3.9 mm.
    # MONAI's max of directed 95th percentiles would be max(3, 3 + 0.95*1) = 3.95 mm.
    a = np.zeros((1, 6), dtype=bool)
    b = np.zeros((1, 6), dtype=bool)
    a[0, 0] = True
    b[0, 3:5] = True
    assert M.hd95(a, b, (1.0, 1.0)) == pytest.approx(3.9)
    assert M.hd95(b, a, (1.0, 1.0)) == pytest.approx(3.9)  # symmetric


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (2.0, 0.5), (0.8, 1.7)])
def test_hd95_square_vs_shifted_rectangle_brute_force(spacing):
    a = np.zeros((20, 24), dtype=bool)
    b = np.zeros((20, 24), dtype=bool)
    a[3:11, 4:12] = True  # 8x8 square
    b[6:17, 7:21] = True  # shifted, larger rectangle: asymmetric distance sets
    expected = _brute_hd95(a, b, spacing)
    assert M.hd95(a, b, spacing) == pytest.approx(expected, rel=1e-12)
    d_ab, d_ba = _brute_directed(a, b, spacing)
    monai_style = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    assert monai_style > expected + 1e-6  # the two definitions really differ here


@pytest.mark.parametrize("threshold", [0.6, 0.2])
def test_hd95_random_3d_blobs_brute_force(threshold):
    # threshold 0.6: sparse, nearly every voxel is surface; 0.2: dense blobs with interior voxels and
    # concave corners, where face (connectivity 1) and full (connectivity 2/3) erosion differ
    rng = np.random.default_rng(7)
    a = rng.random((5, 9, 9)) > threshold
    b = rng.random((5, 9, 9)) > threshold
    spacing = (3.0, 0.9, 1.1)
    assert M.hd95(a, b, spacing) == pytest.approx(_brute_hd95(a, b, spacing), rel=1e-12)


def test_hd95_surface_uses_face_connectivity():
    # A = L shape (rows 1-5 x cols 1-3 plus rows 1-3 x cols 1-5, 21 voxels); B = A plus the inner
    # corner (4, 4). With face connectivity the interior of A is (2,2),(2,3),(2,4),(3,2),(3,3),(4,2), so A
    # has 15 surface voxels including (3,4) and (4,3); B's interior adds (3,4) and (4,3), leaving 14.
    # A->B: (3,4) and (4,3) are 1 mm from B's surface ((3,5), (5,3), (4,4)), the other 13 are on it: 0.
    # B->A: (4,4) is 1 mm from (3,4); the other 13 are shared: 0.
    # Union = 26 zeros + 3 ones; the 95th percentile sits at 0.95*28 = 26.6 -> sorted[26] = 1 -> 1 mm.
    # (8-connected erosion would make (3,3) surface of A and (3,4), (4,3) surface of B: 30 zeros and
    # 2 ones, 0.95*31 = 29.45 -> 0.45 mm.)
    a = np.zeros((7, 7), dtype=bool)
    a[1:6, 1:4] = True
    a[1:4, 1:6] = True
    b = a.copy()
    b[4, 4] = True
    assert _brute_surface(a).sum() == 15 and _brute_surface(b).sum() == 14
    assert _brute_hd95(a, b, (1.0, 1.0)) == pytest.approx(1.0)
    assert M.hd95(a, b, (1.0, 1.0)) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------
# per-case segmentation rows
# ------------------------------------------------------------------------------------------------


def test_segmentation_case_metrics_rows():
    spacing = (2.0, 1.0, 0.5)
    ref = np.zeros((2, 4, 4), dtype=np.int64)
    pred = np.zeros((2, 4, 4), dtype=np.uint8)
    ref[0, 0:2, 0:2] = 1  # csf: 4 voxels
    pred[0, 0:2, 0:2] = 1
    pred[0, 0, 2] = 1  # csf: one false positive next to the reference
    ref[1, 2:4, 2:4] = 2  # gm: in the reference only (missed)
    pred[1, 0, 0] = 3  # wm: in the prediction only (false positive)
    classes = {"background": 0, "csf": 1, "gm": 2, "wm": 3, "lesion": 4}
    rows = M.segmentation_case_metrics(pred, ref, classes, spacing)

    assert [(r["class"], r["metric"]) for r in rows] == [
        (c, m) for c in ("csf", "gm", "wm", "lesion") for m in ("dice", "iou", "precision", "recall", "hd95")
    ]
    got = {(r["class"], r["metric"]): r["value"] for r in rows}
    # csf: TP 4, FP 1, FN 0 -> dice 8/9, iou 4/5, precision 4/5, recall 1.
    # HD95: every voxel is surface (one slice thick); pred->ref = {0,0,0,0, 0.5} (the extra voxel is one
    # column = 0.5 mm away), ref->pred = {0,0,0,0}; union has 9 values, 0.95*8 = 7.6 -> 0 + 0.6*0.5.
    assert got[("csf", "dice")] == pytest.approx(8 / 9)
    assert got[("csf", "iou")] == pytest.approx(4 / 5)
    assert got[("csf", "precision")] == pytest.approx(4 / 5)
    assert got[("csf", "recall")] == pytest.approx(1.0)
    assert got[("csf", "hd95")] == pytest.approx(0.3)
    # worst case for the (2, 4, 4) volume at (2, 1, 0.5) mm: sqrt(4^2 + 4^2 + 2^2) = 6
    assert got[("gm", "dice")] == 0.0 and got[("gm", "iou")] == 0.0 and got[("gm", "recall")] == 0.0
    assert math.isnan(got[("gm", "precision")])
    assert got[("gm", "hd95")] == pytest.approx(6.0)
    assert got[("wm", "dice")] == 0.0 and got[("wm", "iou")] == 0.0 and got[("wm", "precision")] == 0.0
    assert math.isnan(got[("wm", "recall")])
    assert got[("wm", "hd95")] == pytest.approx(6.0)
    assert all(math.isnan(got[("lesion", m)]) for m in M.SEGMENTATION_METRICS)


def test_segmentation_case_metrics_skips_background_by_name_or_value_and_validates():
    ref = np.zeros((3, 3), dtype=np.int32)
    ref[1, 1] = 1
    rows = M.segmentation_case_metrics(ref, ref, {"bg": 0, "Background": 7, "tumour": 1}, (1.0, 1.0))
    assert {r["class"] for r in rows} == {"tumour"}
    with pytest.raises(ValueError, match="share the label value"):
        M.segmentation_case_metrics(ref, ref, {"a": 1, "b": 1}, (1.0, 1.0))
    with pytest.raises(ValueError, match="no foreground class"):
        M.segmentation_case_metrics(ref, ref, {"background": 0}, (1.0, 1.0))
    with pytest.raises(ValueError, match="integer label map"):
        M.segmentation_case_metrics(ref.astype(float), ref, {"tumour": 1}, (1.0, 1.0))
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(3, 4\)"):
        M.segmentation_case_metrics(ref, np.zeros((3, 4), np.int32), {"tumour": 1}, (1.0, 1.0))


# ------------------------------------------------------------------------------------------------
# paper conventions: MTMS pooled vs P-CD per image
# ------------------------------------------------------------------------------------------------


def _three_slices() -> list[tuple[np.ndarray, np.ndarray]]:
    # slice 1: ref 3 voxels, pred finds 2 of them            -> TP 2, FP 0, FN 1
    p1 = np.array([[1, 1, 0], [0, 0, 0]], dtype=bool)
    r1 = np.array([[1, 1, 1], [0, 0, 0]], dtype=bool)
    # slice 2: ref 1 voxel, pred 3 voxels including it       -> TP 1, FP 2, FN 0
    p2 = np.array([[0, 0, 0], [1, 1, 1]], dtype=bool)
    r2 = np.array([[0, 0, 0], [0, 1, 0]], dtype=bool)
    # slice 3: empty reference, one false-positive voxel     -> TP 0, FP 1, FN 0
    p3 = np.array([[0, 0, 1], [0, 0, 0]], dtype=bool)
    r3 = np.zeros((2, 3), dtype=bool)
    return [(p1, r1), (p2, r2), (p3, r3)]


def test_pooled_binary_metrics_hand_counted():
    got = M.pooled_binary_metrics(iter(_three_slices()))  # any iterable, consumed once
    # totals: TP 3, FP 3, FN 1
    assert (got["tp"], got["fp"], got["fn"]) == (3, 3, 1)
    assert got["iou"] == pytest.approx(3 / 7)
    assert got["dice"] == pytest.approx(6 / 10)
    assert got["recall"] == pytest.approx(3 / 4)
    assert got["precision"] == pytest.approx(3 / 6)


def test_per_image_binary_metrics_hand_counted():
    s = 1e-4
    (p1, r1), (p2, r2), (p3, r3) = _three_slices()
    m1 = M.per_image_binary_metrics(p1, r1)
    assert m1["dice"] == pytest.approx((4 + s) / (2 + 3 + s))
    assert m1["iou"] == pytest.approx(2 / 3)
    assert m1["precision"] == pytest.approx(1.0)
    assert m1["recall"] == pytest.approx(2 / 3)
    m3 = M.per_image_binary_metrics(p3, r3)
    assert m3["dice"] == pytest.approx(s / (1 + s))
    assert m3["iou"] == 0.0
    assert m3["precision"] == 0.0
    assert m3["recall"] == 1.0  # 0/0 counts 1 (P-CD)


def test_per_image_both_empty_counts_one_and_smooth_zero():
    empty = np.zeros((4, 4), dtype=bool)
    both_empty = M.per_image_binary_metrics(empty, empty)
    assert both_empty == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    full = np.ones((4, 4), dtype=bool)
    # without smoothing an empty reference with a non-empty prediction gives exactly 0
    assert M.per_image_binary_metrics(full, empty, smooth=0.0)["dice"] == 0.0
    with pytest.raises(ValueError, match="smooth"):
        M.per_image_binary_metrics(full, empty, smooth=-1.0)


def test_pooled_and_per_image_differ_on_the_same_slices():
    s = 1e-4
    pooled = M.pooled_binary_metrics(_three_slices())
    mean = M.mean_per_image_binary_metrics(_three_slices())
    expected_dice = ((4 + s) / (5 + s) + (2 + s) / (4 + s) + s / (1 + s)) / 3
    assert mean["n"] == 3
    assert mean["dice"] == pytest.approx(expected_dice)
    assert mean["iou"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert mean["precision"] == pytest.approx((1 + 1 / 3 + 0) / 3)  # 4/9
    assert mean["recall"] == pytest.approx((2 / 3 + 1 + 1) / 3)  # 8/9
    # F1 from the mean precision and recall: 2 * (4/9)(8/9) / (12/9) = 16/27
    assert mean["f1"] == pytest.approx(16 / 27)
    assert pooled["dice"] == pytest.approx(0.6)
    assert abs(pooled["dice"] - mean["dice"]) > 0.1
    assert abs(pooled["recall"] - mean["recall"]) > 0.1


def test_paper_conventions_reject_empty_input():
    with pytest.raises(ValueError, match="at least one"):
        M.pooled_binary_metrics([])
    with pytest.raises(ValueError, match="at least one"):
        M.mean_per_image_binary_metrics([])


def test_pooled_all_empty_gives_nan():
    empty = np.zeros((2, 2), dtype=bool)
    got = M.pooled_binary_metrics([(empty, empty)])
    assert all(math.isnan(got[k]) for k in ("iou", "dice", "recall", "precision"))


# ------------------------------------------------------------------------------------------------
# reconstruction
# ------------------------------------------------------------------------------------------------


def _volume_pair(shape=(3, 13, 17), seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.random(shape)
    gt[1] *= 0.4  # slices with different maxima: the volume max is what counts
    pred = gt + 0.05 * rng.standard_normal(shape)
    return gt, pred


def test_nmse_and_psnr_by_hand():
    gt = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    pred = np.array([[[1.0, 2.0], [3.0, 2.0]]])
    # ||gt - pred||^2 = 2^2 = 4; ||gt||^2 = 1 + 4 + 9 + 16 = 30
    assert M.nmse(gt, pred) == pytest.approx(4 / 30)
    # MSE = 4/4 = 1; data_range = gt.max() = 4 -> 10 log10(16 / 1)
    assert M.psnr(gt, pred) == pytest.approx(10 * math.log10(16.0))
    assert M.psnr(gt, pred, data_range=2.0) == pytest.approx(10 * math.log10(4.0))


def test_psnr_matches_skimage_with_volume_max():
    gt, pred = _volume_pair()
    expected = peak_signal_noise_ratio(gt, pred, data_range=gt.max())
    assert M.psnr(gt, pred) == pytest.approx(expected, rel=1e-12)
    assert M.psnr(gt, gt) == math.inf


def test_ssim_matches_skimage_per_slice_mean():
    gt, pred = _volume_pair()
    n_slices = gt.shape[0]
    expected = np.mean([structural_similarity(gt[s], pred[s], data_range=gt.max()) for s in range(n_slices)])
    assert M.ssim(gt, pred) == pytest.approx(expected, rel=1e-10)
    # explicit data_range is honoured
    expected_r1 = np.mean([structural_similarity(gt[s], pred[s], data_range=1.0) for s in range(n_slices)])
    assert M.ssim(gt, pred, data_range=1.0) == pytest.approx(expected_r1, rel=1e-10)
    # the per-slice-max convention gives a different number (the volume max is the rule)
    per_slice_max = np.mean(
        [structural_similarity(gt[s], pred[s], data_range=gt[s].max()) for s in range(n_slices)]
    )
    assert abs(M.ssim(gt, pred) - per_slice_max) > 1e-4
    assert M.ssim(gt, gt) == pytest.approx(1.0)


def test_ssim_float32_input_is_computed_in_float64():
    gt, pred = _volume_pair(seed=3)
    gt32, pred32 = gt.astype(np.float32), pred.astype(np.float32)
    gt64, pred64 = gt32.astype(np.float64), pred32.astype(np.float64)
    peak = float(gt32.max())
    expected = np.mean([structural_similarity(gt64[s], pred64[s], data_range=peak) for s in range(3)])
    assert M.ssim(gt32, pred32) == pytest.approx(expected, rel=1e-10)


def test_reconstruction_case_metrics_rows():
    gt, pred = _volume_pair(shape=(2, 9, 9), seed=1)
    rows = M.reconstruction_case_metrics(gt, pred)
    assert [r["metric"] for r in rows] == ["psnr", "ssim", "nmse"]
    got = {r["metric"]: r["value"] for r in rows}
    assert got["psnr"] == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=gt.max()), rel=1e-12)
    assert got["ssim"] == pytest.approx(
        np.mean([structural_similarity(gt[s], pred[s], data_range=gt.max()) for s in range(2)]), rel=1e-10
    )
    assert got["nmse"] == pytest.approx(np.sum((gt - pred) ** 2) / np.sum(gt**2), rel=1e-12)


def test_reconstruction_errors():
    gt, pred = _volume_pair(shape=(2, 8, 8))
    with pytest.raises(ValueError, match=r"\(2, 8, 8\).*\(2, 8, 7\)"):
        M.psnr(gt, pred[..., :7])
    with pytest.raises(ValueError, match=r"\(2, 8, 8\).*\(2, 8, 7\)"):
        M.reconstruction_case_metrics(gt, pred[..., :7])
    zeros = np.zeros_like(gt)
    with pytest.raises(ValueError, match="all-zero"):
        M.psnr(zeros, pred)
    with pytest.raises(ValueError, match="all zero"):
        M.nmse(zeros, pred)
    with pytest.raises(ValueError, match="> 0"):
        M.ssim(zeros, pred)
    with pytest.raises(ValueError, match="complex"):
        M.psnr(gt.astype(np.complex64), pred)
    bad = pred.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        M.nmse(gt, bad)
    with pytest.raises(ValueError, match=r"\(S, H, W\)"):
        M.ssim(gt[0], pred[0])
    with pytest.raises(ValueError, match="smaller than"):
        M.ssim(gt[:, :5, :5], pred[:, :5, :5])


def test_mean_pm_2sd_sample_and_population():
    values = [1.0, 2.0, 3.0, 4.0]
    # mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5
    mean, two_sd = M.mean_pm_2sd(values)  # ddof=1 (runstats): sd = sqrt(5/3)
    assert mean == pytest.approx(2.5)
    assert two_sd == pytest.approx(2 * math.sqrt(5 / 3))
    _, two_sd_pop = M.mean_pm_2sd(values, ddof=0)  # np.std: sd = sqrt(5/4)
    assert two_sd_pop == pytest.approx(2 * math.sqrt(5 / 4))
    mean1, sd1 = M.mean_pm_2sd([7.0])
    assert mean1 == 7.0 and math.isnan(sd1)
    assert M.mean_pm_2sd([7.0], ddof=0) == (7.0, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        M.mean_pm_2sd([])
    with pytest.raises(ValueError, match="NaN"):
        M.mean_pm_2sd([1.0, float("nan")])
