"""Evaluation metrics for segmentation and MRI reconstruction, with every convention pinned down.

"The metric owner owns the number": nnU-Net, MONAI, fastMRI and the reproduced papers each compute Dice,
HD95 or SSIM slightly differently. This module fixes one definition of each and states it here; the unit
tests check every branch against hand-counted values, brute force or scikit-image.

Segmentation, per case (the ``evaluate`` stage re-stacks a case's 2-D slices into its 3-D volume first)
-------------------------------------------------------------------------------------------------------
Masks are boolean arrays of one shape (3-D volumes, or 2-D images); ``TP, FP, FN, TN`` are voxel counts.

* Dice ``2TP / (2TP + FP + FN)``; IoU ``TP / (TP + FP + FN)``; precision ``TP / (TP + FP)``;
  recall ``TP / (TP + FN)``. No smoothing term.
* Empty-mask policy:

  - prediction and reference both empty: Dice, IoU and HD95 are NaN (nnU-Net's convention). Such a case
    is excluded from the per-class mean, so tables must report ``n`` (the number of non-NaN cases).
  - exactly one of them empty: Dice = IoU = 0 and HD95 = the worst case, the length of the volume's
    diagonal in mm, ``sqrt(sum_i (shape_i * spacing_i)^2)`` (the physical extent of the field of view,
    which no distance inside the volume can exceed). MONAI instead returns NaN or inf here and then
    drops the case from its mean (MONAI issue #9095), so a missed structure *improves* its mean HD95; we
    penalise it instead.
  - precision is NaN when the prediction is empty (``TP + FP = 0``); recall is NaN when the reference is
    empty (``TP + FN = 0``). With a non-empty prediction and an empty reference, precision is 0.

* HD95 (MedPy's ``hd95`` definition): the surface of a mask is the mask minus its binary erosion
  (``scipy.ndimage.binary_erosion`` with connectivity 1, i.e. face neighbours only, ``border_value=0``
  so voxels on the array border are surface voxels). For each surface voxel of A the Euclidean distance
  in mm to the nearest surface voxel of B is read from ``scipy.ndimage.distance_transform_edt`` with
  ``sampling=spacing``, and vice versa; HD95 is ``numpy.percentile(union of both directed distance
  sets, 95)`` with linear interpolation. MONAI's ``HausdorffDistanceMetric(percentile=95)`` instead
  takes the maximum of the two directed 95th percentiles, which is never smaller; the two differ when
  the shapes are asymmetric.
* ``spacing[i]`` is the voxel size along array axis ``i`` in mm; a 2-D mask takes a length-2 spacing.

Paper conventions (reported beside the per-case numbers, never instead of them)
------------------------------------------------------------------------------
* MTMS (thesis Tab. 4.2, ``metrics.py``): ``pooled_binary_metrics`` accumulates TP/FP/FN over every pixel
  of every test slice, then computes IoU, Dice, recall and precision once from the pooled counts
  (micro average; empty slices contribute only through their false positives). 0/0 gives NaN.
* P-CD (``core/test.py`` + ``metrics/metrics.py``): ``per_image_binary_metrics`` per 2-D image, then the
  plain mean over images *including* images with an empty reference (BUS "normal" images):
  Dice ``(2|P∩G| + 1e-4) / (|P| + |G| + 1e-4)`` (so 1 when both are empty, about 0 when only one is);
  IoU ``|P∩G| / |P∪G|`` with an empty union counting 1; precision and recall with 0/0 counting 1; F1 from
  the *mean* precision and the *mean* recall (``mean_per_image_binary_metrics``).

Reconstruction, per volume (fastMRI ``evaluate.py`` and KD-MRI ``evaluate.py`` conventions)
------------------------------------------------------------------------------------------
Volumes are real ``(S, H, W)`` arrays (slices along axis 0); everything is computed in float64.

* NMSE ``||gt - pred||^2 / ||gt||^2`` over the whole volume (unitless, not in dB).
* PSNR ``10 log10(data_range^2 / MSE)`` in dB with the MSE over the whole volume and
  ``data_range = gt.max()`` of the *volume* (not of each slice, not ``max - min``); identical volumes give
  ``inf``.
* SSIM: 2-D SSIM of each slice, averaged over the slices, with scikit-image's defaults (the ones KD-MRI's
  ``compare_ssim`` of skimage <= 0.14 and fastMRI use): a 7x7 uniform window, K1 = 0.01, K2 = 0.03,
  sample covariances (normalised by N - 1 = 48), and the SSIM map averaged after cropping 3 pixels
  from every border (so only windows lying wholly inside the image count and the filter's border mode
  never enters the result); ``data_range = gt.max()`` of the volume for every slice. Slices must be at
  least 7x7. This is not MONAI's ``SSIMMetric`` (11x11 Gaussian window, sigma 1.5), whose numbers are not
  comparable.
* Spread: ``mean_pm_2sd`` gives the papers' "mean +/- 2 sd" over volumes. Both KD-MRI's and fastMRI's
  ``evaluate.py`` push per-volume values into ``runstats.Statistics``, whose ``stddev()`` is the
  *sample* standard deviation (``ddof=1``); that is the default here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "SEGMENTATION_METRICS",
    "RECONSTRUCTION_METRICS",
    "binary_confusion",
    "dice",
    "iou",
    "precision",
    "recall",
    "hd95",
    "worst_case_distance",
    "segmentation_case_metrics",
    "pooled_binary_metrics",
    "per_image_binary_metrics",
    "mean_per_image_binary_metrics",
    "nmse",
    "psnr",
    "ssim",
    "reconstruction_case_metrics",
    "mean_pm_2sd",
]

SEGMENTATION_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "hd95")
"""Metric names of the per-case segmentation rows, in row order."""

RECONSTRUCTION_METRICS: tuple[str, ...] = ("psnr", "ssim", "nmse")
"""Metric names of the per-volume reconstruction rows, in row order."""

SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03

_BACKGROUND_NAME = "background"


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------


def _as_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """Return ``mask`` as a bool array; accept bool arrays or numeric arrays holding only 0 and 1."""
    arr = np.asarray(mask)
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be a boolean mask, got dtype {arr.dtype}")
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(
            f"{name} must be a binary mask (bool, or only 0/1 values); got values "
            f"{np.unique(arr)[:10].tolist()}. Select one class first (labels == k)."
        )
    return arr.astype(bool)


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {name_a} has shape {a.shape}, {name_b} has shape {b.shape}")


def _mask_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = _as_mask(pred, "pred")
    r = _as_mask(ref, "ref")
    _check_same_shape(p, r, "pred", "ref")
    return p, r


def _as_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """Validate a voxel spacing (mm per array axis) for an array of ``ndim`` dimensions."""
    values = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing, dtype=float)))
    if len(values) != ndim:
        raise ValueError(f"spacing must have one entry per array axis ({ndim}), got {len(values)}: {values}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing entries must be finite and > 0 (mm), got {values}")
    return values


def _as_real_volume(arr: np.ndarray, name: str) -> np.ndarray:
    """Return ``arr`` as float64 after checking it is real-valued and finite."""
    a = np.asarray(arr)
    if np.iscomplexobj(a):
        raise ValueError(f"{name} is complex ({a.dtype}); pass the magnitude image (np.abs) instead")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains {int(np.sum(~np.isfinite(a)))} non-finite values (NaN or inf)")
    return a


def _volume_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g = _as_real_volume(gt, "gt")
    p = _as_real_volume(pred, "pred")
    _check_same_shape(g, p, "gt", "pred")
    return g, p


def _resolve_data_range(gt: np.ndarray, data_range: float | None) -> float:
    """``data_range`` if given, else ``gt.max()`` of the whole volume; must be > 0."""
    value = float(gt.max()) if data_range is None else float(data_range)
    if not (math.isfinite(value) and value > 0):
        source = "gt.max()" if data_range is None else "data_range"
        raise ValueError(
            f"{source} = {value} but must be > 0; an all-zero (or non-positive) ground truth has no peak "
            "signal, so PSNR/SSIM are undefined"
        )
    return value


def _ratio(num: float, den: float, zero_over_zero: float) -> float:
    """``num / den`` with ``0 / 0`` mapped to ``zero_over_zero`` (den is a non-negative count)."""
    if den == 0:
        return zero_over_zero
    return float(num) / float(den)


# --------------------------------------------------------------------------------------------------
# segmentation: overlap
# --------------------------------------------------------------------------------------------------


def binary_confusion(pred: np.ndarray, ref: np.ndarray) -> dict[str, int]:
    """Voxel counts of the binary confusion matrix.

    Args:
        pred: predicted mask, any shape; bool, or numeric with only 0/1 values.
        ref: reference mask of the same shape.

    Returns:
        ``{"tp", "fp", "fn", "tn"}`` as Python ints (TP: pred and ref; FP: pred only; FN: ref only;
        TN: neither).

    Raises:
        ValueError: if the shapes differ or a mask is not binary.
    """
    p, r = _mask_pair(pred, ref)
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p & ~r))
    fn = int(np.count_nonzero(~p & r))
    tn = int(p.size - tp - fp - fn)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient ``2TP / (2TP + FP + FN)``; NaN when both masks are empty, 0 when only one is.

    Args:
        pred: predicted mask (bool or 0/1), any shape.
        ref: reference mask of the same shape.

    Returns:
        Dice in ``[0, 1]``, or NaN if ``TP + FP + FN = 0``.

    Raises:
        ValueError: if the shapes differ or a mask is not binary.
    """
    c = binary_confusion(pred, ref)
    return _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"], math.nan)


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """Intersection over union (Jaccard) ``TP / (TP + FP + FN)``; NaN when both masks are empty.

    Args:
        pred: predicted mask (bool or 0/1), any shape.
        ref: reference mask of the same shape.

    Returns:
        IoU in ``[0, 1]``, or NaN if ``TP + FP + FN = 0``.

    Raises:
        ValueError: if the shapes differ or a mask is not binary.
    """
    c = binary_confusion(pred, ref)
    return _ratio(c["tp"], c["tp"] + c["fp"] + c["fn"], math.nan)


def precision(pred: np.ndarray, ref: np.ndarray) -> float:
    """Precision (positive predictive value) ``TP / (TP + FP)``; NaN when the prediction is empty.

    Args:
        pred: predicted mask (bool or 0/1), any shape.
        ref: reference mask of the same shape.

    Returns:
        Precision in ``[0, 1]``, or NaN if ``TP + FP = 0``.

    Raises:
        ValueError: if the shapes differ or a mask is not binary.
    """
    c = binary_confusion(pred, ref)
    return _ratio(c["tp"], c["tp"] + c["fp"], math.nan)


def recall(pred: np.ndarray, ref: np.ndarray) -> float:
    """Recall (sensitivity) ``TP / (TP + FN)``; NaN when the reference is empty.

    Args:
        pred: predicted mask (bool or 0/1), any shape.
        ref: reference mask of the same shape.

    Returns:
        Recall in ``[0, 1]``, or NaN if ``TP + FN = 0``.

    Raises:
        ValueError: if the shapes differ or a mask is not binary.
    """
    c = binary_confusion(pred, ref)
    return _ratio(c["tp"], c["tp"] + c["fn"], math.nan)


# --------------------------------------------------------------------------------------------------
# segmentation: surface distance
# --------------------------------------------------------------------------------------------------


def worst_case_distance(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the diagonal of a volume: ``sqrt(sum_i (shape_i * spacing_i)^2)``.

    This is the HD95 assigned when exactly one of prediction and reference is empty.

    Args:
        shape: array shape (voxels per axis).
        spacing: voxel size in mm per axis, same length as ``shape``.

    Returns:
        The diagonal in mm.

    Raises:
        ValueError: if ``spacing`` does not match ``shape`` or is not positive.
    """
    sp = _as_spacing(spacing, len(shape))
    return float(math.sqrt(sum((int(n) * s) ** 2 for n, s in zip(shape, sp))))


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel, grown by ``margin`` and clipped to the array.

    Cropping both masks to their joint box (with a 1-voxel margin) leaves every surface voxel and every
    surface-to-surface distance unchanged, and makes the distance transforms cheap on large volumes.
    """
    coords = np.argwhere(mask)
    lo = np.maximum(coords.min(axis=0) - margin, 0)
    hi = np.minimum(coords.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its erosion (face connectivity, voxels outside the array = 0)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    eroded = ndimage.binary_erosion(mask, structure=structure, iterations=1, border_value=0)
    return mask & ~eroded


def _directed_surface_distances(
    surface_from: np.ndarray, surface_to: np.ndarray, spacing: tuple[float, ...]
) -> np.ndarray:
    """Distance in mm from each voxel of ``surface_from`` to the nearest voxel of ``surface_to``."""
    distance_to = ndimage.distance_transform_edt(~surface_to, sampling=spacing)
    return distance_to[surface_from]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (MedPy's definition).

    The 95th percentile (``numpy.percentile``, linear interpolation) of the union of the distances from
    every surface voxel of ``pred`` to the nearest surface voxel of ``ref`` and from every surface voxel
    of ``ref`` to the nearest surface voxel of ``pred``. Surfaces and the distance transform are defined
    in the module docstring. MONAI's alternative, ``max`` of the two directed 95th percentiles, is not
    used.

    Args:
        pred: predicted mask (bool or 0/1), 2-D ``(H, W)`` or 3-D ``(D, H, W)``.
        ref: reference mask of the same shape.
        spacing: voxel size in mm per array axis (length 2 or 3, matching the masks).

    Returns:
        HD95 in mm; NaN if both masks are empty; ``worst_case_distance(shape, spacing)`` if exactly one
        is empty.

    Raises:
        ValueError: if the shapes differ, a mask is not binary, or the spacing does not match.
    """
    p, r = _mask_pair(pred, ref)
    sp = _as_spacing(spacing, p.ndim)
    p_empty, r_empty = not p.any(), not r.any()
    if p_empty and r_empty:
        return math.nan
    if p_empty or r_empty:
        return worst_case_distance(p.shape, sp)
    box = _bounding_box(p | r, margin=1)
    surface_p, surface_r = _surface(p[box]), _surface(r[box])
    distances = np.concatenate(
        [
            _directed_surface_distances(surface_p, surface_r, sp),
            _directed_surface_distances(surface_r, surface_p, sp),
        ]
    )
    return float(np.percentile(distances, 95))


# --------------------------------------------------------------------------------------------------
# segmentation: per case
# --------------------------------------------------------------------------------------------------


def _as_label_map(labels: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")
    return arr


def _foreground_classes(classes: Mapping[str, int]) -> list[tuple[str, int]]:
    """``classes`` without the background (value 0 or name "background"), in the given order."""
    seen: dict[int, str] = {}
    for name, value in classes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"class {name!r} must map to an integer label value, got {value!r}")
        if int(value) in seen:
            raise ValueError(f"classes {seen[int(value)]!r} and {name!r} share the label value {int(value)}")
        seen[int(value)] = name
    return [(n, int(v)) for n, v in classes.items() if int(v) != 0 and n.lower() != _BACKGROUND_NAME]


def segmentation_case_metrics(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    classes: Mapping[str, int],
    spacing: Sequence[float],
) -> list[dict]:
    """Per-class metrics of one case (one re-stacked volume), as long-format rows.

    For every foreground class (skipping label value 0 and the name "background") the binary masks
    ``pred_labels == value`` and ``ref_labels == value`` are scored with ``dice``, ``iou``,
    ``precision``, ``recall`` and ``hd95`` under the module's empty-mask policy (NaN values are kept in the
    rows; the tables average with ``nanmean`` and report n).

    Args:
        pred_labels: predicted integer label map, ``(D, H, W)`` (or ``(H, W)``).
        ref_labels: reference integer label map of the same shape.
        classes: class name -> label value, e.g. ``{"background": 0, "csf": 1, "gm": 2, "wm": 3}``.
        spacing: voxel size in mm per array axis.

    Returns:
        Rows ``{"class": name, "metric": m, "value": float}``, classes in the order of ``classes`` and
        metrics in the order of ``SEGMENTATION_METRICS``.

    Raises:
        ValueError: if the shapes differ, a label map is not integer, the spacing does not match, two
            classes share a value, or there is no foreground class.
    """
    pred_arr = _as_label_map(pred_labels, "pred_labels")
    ref_arr = _as_label_map(ref_labels, "ref_labels")
    _check_same_shape(pred_arr, ref_arr, "pred_labels", "ref_labels")
    sp = _as_spacing(spacing, pred_arr.ndim)
    foreground = _foreground_classes(classes)
    if not foreground:
        raise ValueError(
            f"classes has no foreground class (all are value 0 or 'background'): {dict(classes)}"
        )
    rows: list[dict] = []
    for name, value in foreground:
        p, r = pred_arr == value, ref_arr == value
        values = {
            "dice": dice(p, r),
            "iou": iou(p, r),
            "precision": precision(p, r),
            "recall": recall(p, r),
            "hd95": hd95(p, r, sp),
        }
        rows.extend({"class": name, "metric": m, "value": float(values[m])} for m in SEGMENTATION_METRICS)
    return rows


# --------------------------------------------------------------------------------------------------
# segmentation: paper conventions
# --------------------------------------------------------------------------------------------------


def pooled_binary_metrics(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float | int]:
    """MTMS's pooled (micro-averaged) metrics over a whole test set.

    TP, FP and FN are summed over every pixel of every ``(pred, ref)`` pair (slices may differ in shape
    between pairs), then IoU ``TP/(TP+FP+FN)``, Dice ``2TP/(2TP+FP+FN)``, recall ``TP/(TP+FN)`` and
    precision ``TP/(TP+FP)`` are computed once from the totals, without smoothing. An empty slice
    contributes only its false positives. Any 0/0 gives NaN.

    Args:
        pairs: iterable of ``(pred, ref)`` binary masks of matching shape (bool or 0/1).

    Returns:
        ``{"iou", "dice", "recall", "precision"}`` as floats and ``{"tp", "fp", "fn"}`` as ints.

    Raises:
        ValueError: if ``pairs`` is empty, or a pair has mismatched shapes or non-binary values.
    """
    tp = fp = fn = 0
    n_pairs = 0
    for pred, ref in pairs:
        c = binary_confusion(pred, ref)
        tp, fp, fn = tp + c["tp"], fp + c["fp"], fn + c["fn"]
        n_pairs += 1
    if n_pairs == 0:
        raise ValueError("pooled_binary_metrics needs at least one (pred, ref) pair, got none")
    return pooled_from_counts(tp, fp, fn)


def pooled_from_counts(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    """:func:`pooled_binary_metrics` from summed counts (a test set scored one case at a time)."""
    return {
        "iou": _ratio(tp, tp + fp + fn, math.nan),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, math.nan),
        "recall": _ratio(tp, tp + fn, math.nan),
        "precision": _ratio(tp, tp + fp, math.nan),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def per_image_binary_metrics(pred: np.ndarray, ref: np.ndarray, smooth: float = 1e-4) -> dict[str, float]:
    """P-CD's per-image metrics (``core/test.py``), for one 2-D image and one class.

    * Dice ``(2|P∩G| + smooth) / (|P| + |G| + smooth)``: 1 when both are empty, ``smooth/(|P|+smooth)``
      (about 0) when only the reference is empty.
    * IoU ``|P∩G| / |P∪G|``, 1 when the union is empty (no smoothing).
    * precision ``TP/(TP+FP)`` and recall ``TP/(TP+FN)``, each 1 when 0/0.

    Args:
        pred: predicted mask (bool or 0/1), any shape.
        ref: reference mask of the same shape.
        smooth: additive smoothing of the Dice numerator and denominator (P-CD: 1e-4); must be >= 0.

    Returns:
        ``{"dice", "iou", "precision", "recall"}``; never NaN when ``smooth > 0``.

    Raises:
        ValueError: if the shapes differ, a mask is not binary, or ``smooth`` is negative.
    """
    if not (math.isfinite(smooth) and smooth >= 0):
        raise ValueError(f"smooth must be finite and >= 0, got {smooth}")
    c = binary_confusion(pred, ref)
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    dice_den = (tp + fp) + (tp + fn) + smooth
    return {
        "dice": (2 * tp + smooth) / dice_den if dice_den > 0 else math.nan,
        "iou": _ratio(tp, tp + fp + fn, 1.0),
        "precision": _ratio(tp, tp + fp, 1.0),
        "recall": _ratio(tp, tp + fn, 1.0),
    }


def mean_per_image_binary_metrics(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]], smooth: float = 1e-4
) -> dict[str, float | int]:
    """P-CD's test-set summary: the plain mean of ``per_image_binary_metrics`` over images.

    Images with an empty reference are included. F1 is computed from the *mean* precision and the
    *mean* recall, ``2 P R / (P + R)`` (NaN if both means are 0), as P-CD's ``core/test.py`` does; it is
    not the mean of per-image F1 scores.

    Args:
        pairs: iterable of ``(pred, ref)`` binary 2-D masks.
        smooth: Dice smoothing passed to ``per_image_binary_metrics``.

    Returns:
        ``{"dice", "iou", "precision", "recall", "f1"}`` as floats and ``{"n": number of images}``.

    Raises:
        ValueError: if ``pairs`` is empty or any pair is invalid.
    """
    per_image = [per_image_binary_metrics(p, r, smooth=smooth) for p, r in pairs]
    if not per_image:
        raise ValueError("mean_per_image_binary_metrics needs at least one (pred, ref) pair, got none")
    means = {k: float(np.mean([m[k] for m in per_image])) for k in ("dice", "iou", "precision", "recall")}
    p, r = means["precision"], means["recall"]
    means["f1"] = 2 * p * r / (p + r) if (p + r) > 0 else math.nan
    return {**means, "n": len(per_image)}


# --------------------------------------------------------------------------------------------------
# reconstruction
# --------------------------------------------------------------------------------------------------


def nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Normalised mean squared error ``||gt - pred||^2 / ||gt||^2`` over the whole volume.

    Args:
        gt: reference volume, real, any shape (normally ``(S, H, W)``).
        pred: reconstruction of the same shape.

    Returns:
        NMSE (unitless, >= 0; not in dB).

    Raises:
        ValueError: on a shape mismatch, complex or non-finite input, or an all-zero ``gt``.
    """
    g, p = _volume_pair(gt, pred)
    energy = float(np.sum(g * g))
    if energy == 0:
        raise ValueError("gt is all zero: NMSE (normalised by ||gt||^2) is undefined")
    return float(np.sum((g - p) ** 2) / energy)


def psnr(gt: np.ndarray, pred: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB over the whole volume.

    Matches ``skimage.metrics.peak_signal_noise_ratio(gt, pred, data_range=gt.max())`` as called by
    fastMRI and KD-MRI (computed in float64).

    Args:
        gt: reference volume, real, any shape (normally ``(S, H, W)``).
        pred: reconstruction of the same shape.
        data_range: peak value; defaults to ``gt.max()`` of the whole volume.

    Returns:
        PSNR in dB; ``inf`` when ``pred == gt`` exactly.

    Raises:
        ValueError: on a shape mismatch, complex or non-finite input, or a data range <= 0 (e.g. an
            all-zero ``gt``).
    """
    g, p = _volume_pair(gt, pred)
    peak = _resolve_data_range(g, data_range)
    mse = float(np.mean((g - p) ** 2))
    if mse == 0:
        return math.inf
    return float(10.0 * math.log10(peak * peak / mse))


def _ssim_slice(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Mean SSIM of two 2-D float64 images: scikit-image's ``structural_similarity`` with its defaults
    spelled out (7x7 uniform window, K1 0.01, K2 0.03, sample covariance, 3-pixel border crop)."""
    from skimage.metrics import structural_similarity  # imported here: only reconstruction pays for it

    return float(structural_similarity(x, y, win_size=SSIM_WINDOW, data_range=data_range, gaussian_weights=False,
                                       use_sample_covariance=True, K1=SSIM_K1, K2=SSIM_K2))


def ssim(gt: np.ndarray, pred: np.ndarray, data_range: float | None = None) -> float:
    """Structural similarity of a volume: the mean over slices (axis 0) of 2-D SSIM.

    Each slice uses a 7x7 uniform window, K1 = 0.01, K2 = 0.03, sample covariances and a 3-pixel border
    crop of the SSIM map (scikit-image's ``structural_similarity`` defaults, used by
    fastMRI and by KD-MRI's ``compare_ssim``), with one ``data_range`` for every slice.

    Args:
        gt: reference volume ``(S, H, W)``, real; use ``gt[None]`` for a single image.
        pred: reconstruction of the same shape.
        data_range: dynamic range; defaults to ``gt.max()`` of the whole volume (not per slice).

    Returns:
        SSIM, at most 1 (1 for identical volumes).

    Raises:
        ValueError: on a shape mismatch, a volume that is not 3-D or has slices smaller than 7x7,
            complex or non-finite input, or a data range <= 0.
    """
    g, p = _volume_pair(gt, pred)
    if g.ndim != 3:
        raise ValueError(f"ssim needs (S, H, W) volumes, got shape {g.shape}; use gt[None] for one image")
    if min(g.shape[1:]) < SSIM_WINDOW:
        raise ValueError(
            f"slices of shape {g.shape[1:]} are smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window"
        )
    peak = _resolve_data_range(g, data_range)
    return float(np.mean([_ssim_slice(g[s], p[s], peak) for s in range(g.shape[0])]))


def reconstruction_case_metrics(gt: np.ndarray, pred: np.ndarray) -> list[dict]:
    """PSNR, SSIM and NMSE of one volume with the fastMRI/KD-MRI conventions (``data_range = gt.max()``).

    Args:
        gt: reference volume ``(S, H, W)``, real.
        pred: reconstruction of the same shape.

    Returns:
        Rows ``{"metric": m, "value": float}`` for m in ``RECONSTRUCTION_METRICS`` (psnr, ssim, nmse).

    Raises:
        ValueError: on a shape mismatch, a volume that is not 3-D, complex or non-finite input, or an
            all-zero ``gt``.
    """
    g, p = _volume_pair(gt, pred)
    if g.ndim != 3:
        raise ValueError(f"reconstruction metrics need (S, H, W) volumes, got shape {g.shape}")
    values = {"psnr": psnr(g, p), "ssim": ssim(g, p), "nmse": nmse(g, p)}
    return [{"metric": m, "value": float(values[m])} for m in RECONSTRUCTION_METRICS]


def mean_pm_2sd(values: Iterable[float], ddof: int = 1) -> tuple[float, float]:
    """The papers' "mean +/- 2 sd" over per-volume values.

    KD-MRI's and fastMRI's ``evaluate.py`` collect per-volume values in ``runstats.Statistics`` and print
    ``mean +/- 2 * stddev()``; ``runstats`` divides the sum of squared deviations by ``n - 1``, hence the
    default ``ddof=1`` (sample standard deviation). ``ddof=0`` gives the population value of ``np.std``.

    Args:
        values: per-volume metric values (finite or inf; NaN is rejected).
        ddof: delta degrees of freedom of the standard deviation (divisor ``n - ddof``).

    Returns:
        ``(mean, 2 * sd)``; the second item is NaN when ``n <= ddof`` (e.g. one value with ``ddof=1``).

    Raises:
        ValueError: if ``values`` is empty, contains NaN, or ``ddof`` is negative.
    """
    arr = np.asarray(list(values), dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("mean_pm_2sd needs at least one value, got none")
    if np.isnan(arr).any():
        raise ValueError(f"mean_pm_2sd got {int(np.isnan(arr).sum())} NaN values; drop or explain them first")
    if ddof < 0:
        raise ValueError(f"ddof must be >= 0, got {ddof}")
    mean = float(np.mean(arr))
    if arr.size <= ddof:
        return mean, math.nan
    return mean, float(2.0 * np.std(arr, ddof=ddof))
