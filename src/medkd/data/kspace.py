"""Single-coil k-space simulation for the reconstruction and super-resolution experiments (KD-MRI).

KD-MRI (Murugesan et al., MIDL 2020) simulates k-space from *magnitude* images, single-coil, as the lab's
companion data script shows: the target slice is divided by its own maximum (values in [0, 1]), then
``kspace = fft2(target, norm='ortho') * mask`` and the network input is the zero-filled magnitude
``|ifft2(kspace, norm='ortho')|``. This module holds every piece of that recipe and the file format
that carries it to training.

Conventions (used everywhere in medkd):

* **FFT**: orthonormal 2-D FFT over the last two axes, **un-centred**: the DC coefficient sits at index
  ``[0, 0]`` and low frequencies wrap around to both ends (numpy/torch default layout, no fftshift).
  Orthonormality means Parseval holds: ``sum |x|^2 == sum |fft2_ortho(x)|^2``.
* **Masks**: float32 ``(H, W)`` arrays of 0/1 made of whole k-space lines, in the same un-centred layout
  (as KD-MRI's shipped ``us_masks/*.npy``: DC at index 0, the fully sampled centre split between the
  first and last lines). ``axis=0`` samples whole rows (KD-MRI cardiac and brain masks, phase encoding
  along axis 0); ``axis=1`` whole columns (KD-MRI knee masks, fastMRI's convention).
* **Mask facts**: every mask function also returns a dict with ``kind``, ``acceleration`` (nominal),
  ``achieved_acceleration`` (total lines / sampled lines), ``sampled_lines``, ``centre_lines``,
  ``total_lines`` and ``axis``.

K-space store (one HDF5 file per dataset and mask: ``results/kspace/<dataset>/<mask_name>.h5``):

* root attributes: ``format_version`` (1), ``kind`` (``"undersample"`` or ``"sr_truncate"``),
  ``mask_spec`` (JSON of the spec), ``dataset`` (str), ``source`` (path of the slice store read);
* group ``cases/<case_id>``:

  - ``target`` float32 ``(S, H, W)``: per-slice max-normalised magnitude, in [0, 1];
  - ``image`` float32 ``(S, H, W)``: network input (zero-filled magnitude, or the low-resolution
    magnitude for super-resolution);
  - ``kspace`` complex64 ``(S, H, W)``: undersampled k-space (undersample stores only);
  - ``mask`` float32 ``(H, W)``: the sampling mask (undersample stores only);
  - attributes ``spacing`` (float64 ``[row_mm, col_mm, slice_mm]``, copied from the slice store) and,
    for undersample stores, ``acceleration`` (achieved), ``sampled_lines``, ``centre_lines``; for
    super-resolution stores ``factor``.

Datasets are gzip level 1 with one slice per chunk, and no timestamps are recorded, so the same input
gives the same file contents.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

from medkd.io import atomic_path, h5_dataset

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
UNDERSAMPLE = "undersample"
SR_TRUNCATE = "sr_truncate"
MASK_KINDS = ("cartesian_vd", "random", "equispaced", "file")

ArrayLike = np.ndarray | torch.Tensor


# ------------------------------------------------------------------------------------------ FFT


def fft2_ortho(x: ArrayLike) -> ArrayLike:
    """Orthonormal, un-centred 2-D FFT over the last two axes (KD-MRI's ``fft2(img, norm='ortho')``).

    Args:
        x: numpy array or torch tensor ``(..., H, W)``, real or complex.

    Returns:
        Complex array/tensor of the same shape: numpy complex128 for real float64 input (numpy's own
        promotion rules), torch complex with the precision of ``x``. DC is at ``[..., 0, 0]``.
    """
    if isinstance(x, torch.Tensor):
        return torch.fft.fft2(x, norm="ortho")
    return np.fft.fft2(np.asarray(x), norm="ortho")


def ifft2_ortho(k: ArrayLike) -> ArrayLike:
    """Inverse of :func:`fft2_ortho` (orthonormal, un-centred, last two axes); numpy or torch."""
    if isinstance(k, torch.Tensor):
        return torch.fft.ifft2(k, norm="ortho")
    return np.fft.ifft2(np.asarray(k), norm="ortho")


# ------------------------------------------------------------------------------------------ masks


def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) != 2 or min(int(s) for s in shape) < 1:
        raise ValueError(f"mask shape must be (H, W) with positive sizes, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _check_axis(axis: int) -> int:
    if axis not in (0, 1):
        raise ValueError(f"line axis must be 0 (whole rows) or 1 (whole columns), got {axis!r}")
    return int(axis)


def _check_acceleration(acceleration: float) -> float:
    if not np.isfinite(acceleration) or acceleration < 1:
        raise ValueError(f"acceleration must be a finite number >= 1, got {acceleration!r}")
    return float(acceleration)


def _lines_to_mask(lines: np.ndarray, shape: tuple[int, int], axis: int) -> np.ndarray:
    """A 1-D 0/1 line vector (length = size of ``axis``) broadcast to a float32 ``(H, W)`` mask."""
    lines = lines.astype(np.float32)
    mask = np.broadcast_to(lines[:, None] if axis == 0 else lines[None, :], shape)
    return np.ascontiguousarray(mask, dtype=np.float32)


def _centre_run(lines: np.ndarray) -> int:
    """Number of contiguous sampled lines around DC in an un-centred line vector (wrapping at the ends)."""
    n = lines.size
    if lines.all():
        return n
    forward = 0
    while forward < n and lines[forward]:
        forward += 1
    backward = 0
    while backward < n and lines[n - 1 - backward]:
        backward += 1
    return forward + backward


def _facts(kind: str, acceleration: float | None, lines: np.ndarray, centre_lines: int, axis: int) -> dict:
    sampled = int(lines.sum())
    n = int(lines.size)
    return {
        "kind": kind,
        "acceleration": None if acceleration is None else float(acceleration),
        "achieved_acceleration": float(n / sampled) if sampled else float("inf"),
        "sampled_lines": sampled,
        "centre_lines": int(centre_lines),
        "total_lines": n,
        "axis": int(axis),
    }


def cartesian_vd_pdf(n: int, acceleration: float, centre_lines: int = 10) -> np.ndarray:
    """Line-selection probabilities of :func:`cartesian_vd_mask`, in centred coordinates.

    ``p(i) ∝ exp(-s (i - N/2)^2) + lambda / N`` with ``s = 0.5 / (N/10)^2`` and ``lambda = N / (2 acc)``,
    zero on the ``centre_lines`` block starting at ``N//2 - centre_lines//2``, normalised to sum 1.

    Args:
        n: number of lines N.
        acceleration: nominal acceleration.
        centre_lines: size of the fully sampled centre block (probability 0).

    Returns:
        float64 ``(N,)`` probabilities.
    """
    positions = np.arange(n, dtype=np.float64)
    sensitivity = 0.5 / (n / 10.0) ** 2
    lam = n / (2.0 * acceleration)
    pdf = np.exp(-sensitivity * (positions - n / 2.0) ** 2) + lam / n
    start = n // 2 - centre_lines // 2
    pdf[start : start + centre_lines] = 0.0
    return pdf / pdf.sum()


def cartesian_vd_mask(shape: Sequence[int], acceleration: float, rng: np.random.Generator,
                      centre_lines: int = 10, axis: int = 0) -> tuple[np.ndarray, dict]:
    """The KD-MRI lab's 1-D variable-density random Cartesian mask (cardiac and brain masks).

    Follows the lab's ``cartesian_mask(shape, acc, sample_n=10)`` (after Schlemper et al.'s DC-CNN
    code), which reproduces the shipped ``us_masks/{cardiac,mrbrain}`` line counts exactly:

    1. over the N line positions (centred coordinates, position i at distance ``i - N/2`` from the
       centre) a Gaussian ``exp(-s (i - N/2)^2)`` with sensitivity ``s = 0.5 / (N/10)^2``, plus a
       uniform floor ``lambda / N`` with ``lambda = N / (2 acc)`` (i.e. ``1 / (2 acc)`` per line);
    2. ``int(N / acc)`` lines in total, **including** ``centre_lines`` fully sampled centre lines
       (positions ``N//2 - centre_lines//2`` onwards); the centre gets probability 0 and the
       remaining ``int(N/acc) - centre_lines`` lines are drawn without replacement with probabilities
       proportional to the pdf;
    3. ``ifftshift``, so the mask is un-centred (DC at index 0, centre lines at both ends).

    N = 150 gives 37 / 30 / 18 lines at 4x / 5x / 8x (achieved 4.05 / 5.00 / 8.33), N = 240 gives
    60 / 48 / 30; with 10 centre lines they sit at indices 0-4 and N-5..N-1. The lab code sets
    ``2 * (sample_n // 2)`` centre lines; for odd ``centre_lines`` this function sets exactly
    ``centre_lines`` (identical for the even values used by KD-MRI).

    Args:
        shape: ``(H, W)`` of the mask.
        acceleration: nominal acceleration ``acc >= 1`` (need not be an integer).
        rng: numpy Generator (see :func:`mask_seed` for per-case seeds).
        centre_lines: fully sampled low-frequency lines (KD-MRI: 10).
        axis: 0 samples whole rows (N = H; KD-MRI cardiac/brain), 1 whole columns (N = W).

    Returns:
        ``(mask, facts)``: float32 ``(H, W)`` 0/1 mask, un-centred, and the facts dict (module docstring).

    Raises:
        ValueError: bad shape/axis/acceleration, or ``centre_lines`` more than ``int(N / acc)``.
    """
    shape = _check_shape(shape)
    axis = _check_axis(axis)
    acc = _check_acceleration(acceleration)
    n = shape[axis]
    n_total = int(n / acc)
    centre_lines = int(centre_lines)
    if centre_lines < 0 or centre_lines > n_total:
        raise ValueError(f"cartesian_vd: centre_lines={centre_lines} must lie in [0, int(N/acc)={n_total}] "
                         f"(N={n}, acc={acc})")
    pdf = cartesian_vd_pdf(n, acc, centre_lines)
    start = n // 2 - centre_lines // 2
    centre = slice(start, start + centre_lines)
    lines = np.zeros(n, dtype=bool)
    n_random = n_total - centre_lines
    if n_random > 0:
        lines[rng.choice(n, size=n_random, replace=False, p=pdf)] = True
    lines[centre] = True
    lines = np.fft.ifftshift(lines)
    return _lines_to_mask(lines, shape, axis), _facts("cartesian_vd", acc, lines, centre_lines, axis)


def _fastmri_centre(n: int, centre_fraction: float) -> tuple[int, slice]:
    """fastMRI's centre block in centred coordinates: ``round(N * fraction)`` lines from ``(N - n_low + 1)//2``."""
    if not 0.0 <= centre_fraction <= 1.0:
        raise ValueError(f"centre_fraction must lie in [0, 1], got {centre_fraction!r}")
    n_low = int(round(n * centre_fraction))
    pad = (n - n_low + 1) // 2
    return n_low, slice(pad, pad + n_low)


def random_mask(shape: Sequence[int], acceleration: float, centre_fraction: float, rng: np.random.Generator,
                axis: int = 1) -> tuple[np.ndarray, dict]:
    """fastMRI ``RandomMaskFunc`` semantics, un-centred.

    ``n_low = round(N * centre_fraction)`` centre lines are always kept (block starting at
    ``(N - n_low + 1) // 2`` in centred coordinates); every line is also kept independently with
    probability ``(N/acc - n_low) / (N - n_low)``, so the expected total is ``N / acc`` (the actual count
    is random: KD-MRI's knee masks, 640x368 with 29 centre columns, have 94 / 74 / 50 lines at 4x / 5x /
    8x). fastMRI's canonical pairs are 4x with 0.08 and 8x with 0.04. The result is ``ifftshift``-ed.

    Args:
        shape: ``(H, W)``.
        acceleration: nominal acceleration (>= 1).
        centre_fraction: fraction of fully sampled centre lines, in [0, 1].
        rng: numpy Generator.
        axis: 1 (default, fastMRI/knee) samples whole columns; 0 whole rows.

    Returns:
        ``(mask, facts)`` as :func:`cartesian_vd_mask`; facts also carry ``centre_fraction``.

    Raises:
        ValueError: bad arguments, or a centre larger than ``N / acc`` (the acceleration is unreachable).
    """
    shape = _check_shape(shape)
    axis = _check_axis(axis)
    acc = _check_acceleration(acceleration)
    n = shape[axis]
    n_low, centre = _fastmri_centre(n, centre_fraction)
    if n_low >= n:
        prob = 0.0
    else:
        prob = (n / acc - n_low) / (n - n_low)
    if prob < 0:
        raise ValueError(f"random mask: {n_low} centre lines exceed N/acc = {n / acc:.1f}; lower centre_fraction")
    lines = rng.uniform(size=n) < prob
    lines[centre] = True
    lines = np.fft.ifftshift(lines)
    facts = _facts("random", acc, lines, n_low, axis)
    facts["centre_fraction"] = float(centre_fraction)
    return _lines_to_mask(lines, shape, axis), facts


def equispaced_mask(shape: Sequence[int], acceleration: float, centre_fraction: float,
                    rng: np.random.Generator, axis: int = 1,
                    adjust_acceleration: bool = True) -> tuple[np.ndarray, dict]:
    """fastMRI equispaced mask, un-centred.

    The ``n_low = round(N * centre_fraction)`` centre lines are kept as in :func:`random_mask`. Outer
    lines, two readings behind ``adjust_acceleration``:

    * ``True`` (default; fastMRI's original ``EquispacedMaskFunc``, kept in fastMRI 0.3 as
      ``EquispacedMaskFractionFunc``): spacing ``a' = acc (N - n_low) / (N - acc n_low)``, lines
      ``round(offset + j a')`` for ``offset + j a' < N - 1``, offset uniform in ``[0, round(a'))``, so
      the *total* fraction including the centre is about ``1 / acc``;
    * ``False`` (fastMRI 0.3 ``EquiSpacedMaskFunc``): every ``acc``-th line from a random offset in
      ``[0, acc)`` (integer ``acc`` only), on top of the centre, so more than ``N/acc`` lines in total.

    The result is ``ifftshift``-ed (centred coordinates are used for the offsets, as fastMRI does).

    Args:
        shape: ``(H, W)``.
        acceleration: nominal acceleration (>= 1).
        centre_fraction: fraction of fully sampled centre lines.
        rng: numpy Generator.
        axis: 1 (default) samples whole columns; 0 whole rows.
        adjust_acceleration: choose the reading above.

    Returns:
        ``(mask, facts)``; facts also carry ``centre_fraction``.

    Raises:
        ValueError: bad arguments; ``N == acc * n_low`` (spacing undefined); non-integer ``acc`` with
            ``adjust_acceleration=False``; a centre larger than ``N / acc``.
    """
    shape = _check_shape(shape)
    axis = _check_axis(axis)
    acc = _check_acceleration(acceleration)
    n = shape[axis]
    n_low, centre = _fastmri_centre(n, centre_fraction)
    lines = np.zeros(n, dtype=bool)
    if adjust_acceleration:
        if n - acc * n_low <= 0:
            raise ValueError(f"equispaced mask: {n_low} centre lines leave no room for acceleration {acc} "
                             f"(N={n}); lower centre_fraction")
        spacing = acc * (n - n_low) / (n - acc * n_low)
        offset = int(rng.integers(0, max(1, round(spacing))))
        picks = np.around(np.arange(offset, n - 1, spacing)).astype(np.int64)
        lines[picks[picks < n]] = True
    else:
        if float(acc) != int(acc):
            raise ValueError(f"equispaced mask without adjustment needs an integer acceleration, got {acc}")
        step = int(acc)
        offset = int(rng.integers(0, step))
        lines[offset::step] = True
    lines[centre] = True
    lines = np.fft.ifftshift(lines)
    facts = _facts("equispaced", acc, lines, n_low, axis)
    facts["centre_fraction"] = float(centre_fraction)
    return _lines_to_mask(lines, shape, axis), facts


def line_axis(mask: np.ndarray) -> int | None:
    """The axis along which ``mask`` (H, W) is made of whole lines: 0 (rows), 1 (columns) or None.

    A constant mask (all ones or all zeros) is made of whole rows and columns; 0 is returned.
    """
    rows_whole = bool((mask == mask[:, :1]).all())
    cols_whole = bool((mask == mask[:1, :]).all())
    if rows_whole:
        return 0
    if cols_whole:
        return 1
    return None


def mask_facts(mask: np.ndarray, axis: int | None = None, kind: str = "file",
               acceleration: float | None = None) -> dict:
    """Facts of an existing un-centred line mask (see the module docstring for the keys).

    ``centre_lines`` is the contiguous run of sampled lines around DC (wrapping at both ends); for a
    KD-MRI cardiac mask it is 10 (indices 0-4 and 145-149), unless a random line happens to touch the
    centre block.

    Args:
        mask: 0/1 array ``(H, W)``.
        axis: line axis, inferred with :func:`line_axis` when None.
        kind: stored as ``facts["kind"]``.
        acceleration: nominal acceleration to record (None when unknown).

    Raises:
        ValueError: ``mask`` is not made of whole lines along ``axis``.
    """
    mask = np.asarray(mask)
    if axis is None:
        axis = line_axis(mask)
        if axis is None:
            raise ValueError("mask is not made of whole rows or whole columns "
                             "(only Cartesian line masks are supported)")
    axis = _check_axis(axis)
    lines = mask[:, 0] if axis == 0 else mask[0, :]
    if not (_lines_to_mask(lines, mask.shape, axis) == mask).all():
        raise ValueError(f"mask is not made of whole {'rows' if axis == 0 else 'columns'} (axis={axis})")
    lines = lines.astype(bool)
    return _facts(kind, acceleration, lines, _centre_run(lines), axis)


def load_mask_npy(path: str | Path, shape: Sequence[int] | None = None,
                  axis: int | None = None) -> tuple[np.ndarray, dict]:
    """Load a user-supplied un-centred line mask, e.g. KD-MRI's ``us_masks/cardiac/mask_4x.npy``.

    KD-MRI's masks are 150x150 float64 (cardiac), 240x240 float64 (brain) and 640x368 float32 (knee),
    values 0/1, un-centred. They are used unchanged (cast to float32).

    Args:
        path: ``.npy`` file holding a 2-D 0/1 array.
        shape: expected ``(H, W)``; checked when given.
        axis: expected line axis; inferred when None.

    Returns:
        ``(mask, facts)``: float32 ``(H, W)`` and :func:`mask_facts` with ``kind="file"``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, not 2-D, wrong shape, values other than 0/1, or not a line mask
            (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mask file not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read mask ({exc})") from exc
    if arr.ndim != 2:
        raise ValueError(f"{path}: mask must be 2-D (H, W), got shape {arr.shape}")
    if shape is not None and tuple(arr.shape) != tuple(int(s) for s in shape):
        raise ValueError(f"{path}: mask shape {arr.shape} does not match the image shape {tuple(shape)}")
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{path}: mask values must be 0 or 1, found {np.unique(arr)[:8].tolist()}")
    mask = arr.astype(np.float32)
    try:
        facts = mask_facts(mask, axis=axis, kind="file")
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return mask, facts


def mask_seed(case_id: str, base_seed: int) -> int:
    """A stable per-case seed: a case always gets the same mask, different cases different masks.

    Combines ``zlib.crc32`` of the UTF-8 case id (stable across processes and Python versions, unlike
    ``hash()``, which is salted per process) with ``base_seed`` through ``numpy.random.SeedSequence``.
    (fastMRI seeds its validation masks from the file name in the same spirit.)

    Args:
        case_id: case identifier.
        base_seed: non-negative integer (the mask spec's ``seed``).

    Returns:
        A 32-bit non-negative integer seed for ``numpy.random.default_rng``.

    Raises:
        ValueError: negative or non-integer ``base_seed``.
    """
    if isinstance(base_seed, bool) or not isinstance(base_seed, (int, np.integer)) or base_seed < 0:
        raise ValueError(f"mask seed must be a non-negative integer, got {base_seed!r}")
    crc = zlib.crc32(str(case_id).encode("utf-8"))
    return int(np.random.SeedSequence([int(base_seed), crc]).generate_state(1, dtype=np.uint32)[0])


_SPEC_KEYS = {
    "cartesian_vd": ({"acceleration"}, {"centre_lines", "axis", "seed"}),
    "random": ({"acceleration", "centre_fraction"}, {"axis", "seed"}),
    "equispaced": ({"acceleration", "centre_fraction"}, {"axis", "seed", "adjust_acceleration"}),
    "file": ({"path"}, {"axis", "acceleration"}),
    SR_TRUNCATE: (set(), {"factor"}),
}
_COMMON_KEYS = {"kind", "name"}


def validate_spec(spec: Mapping[str, Any]) -> dict:
    """Check a mask (or super-resolution) spec and return it as a plain dict.

    Kinds and keys (``name`` is allowed everywhere and ignored):

    * ``cartesian_vd``: ``acceleration``; optional ``centre_lines`` (10), ``axis`` (0), ``seed`` (0);
    * ``random``: ``acceleration``, ``centre_fraction``; optional ``axis`` (1), ``seed`` (0);
    * ``equispaced``: as ``random`` plus ``adjust_acceleration`` (True);
    * ``file``: ``path`` of a ``.npy`` line mask; optional ``axis``, ``acceleration`` (recorded only);
    * ``sr_truncate``: optional ``factor`` (4): k-space truncation, no mask (:func:`kspace_truncate`).

    Raises:
        ValueError: unknown kind, missing or unknown keys (catches typos such as ``center_fraction``).
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"mask spec must be a mapping, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in _SPEC_KEYS:
        raise ValueError(f"mask spec kind {kind!r} unknown; known: {sorted(_SPEC_KEYS)}")
    required, optional = _SPEC_KEYS[kind]
    keys = set(spec)
    missing = sorted(required - keys)
    unknown = sorted(keys - required - optional - _COMMON_KEYS)
    if missing:
        raise ValueError(f"mask spec {dict(spec)}: kind {kind!r} needs {missing}")
    if unknown:
        raise ValueError(f"mask spec {dict(spec)}: keys {unknown} are not used by kind {kind!r} "
                         f"(allowed: {sorted(required | optional | _COMMON_KEYS)})")
    return dict(spec)


def make_mask(spec: Mapping[str, Any], shape: Sequence[int], case_id: str) -> tuple[np.ndarray, dict]:
    """The mask of one case from a config spec, deterministic per (spec, case id).

    Example spec: ``{"kind": "cartesian_vd", "acceleration": 4, "centre_lines": 10, "axis": 0, "seed": 0}``
    or ``{"kind": "random", "acceleration": 4, "centre_fraction": 0.08, "axis": 1, "seed": 0}``. The
    random generator is ``numpy.random.default_rng(mask_seed(case_id, spec["seed"]))``. Kind ``file``
    returns the same mask for every case.

    Args:
        spec: see :func:`validate_spec` (kind ``sr_truncate`` has no mask and is rejected here).
        shape: ``(H, W)`` of the case's slices.
        case_id: the case identifier.

    Returns:
        ``(mask, facts)``: float32 ``(H, W)`` un-centred mask and its facts.

    Raises:
        ValueError: invalid spec, or a file mask whose shape differs from ``shape``.
    """
    spec = validate_spec(spec)
    kind = spec["kind"]
    if kind == SR_TRUNCATE:
        raise ValueError("spec kind 'sr_truncate' has no sampling mask; use kspace_truncate")
    if kind == "file":
        mask, facts = load_mask_npy(spec["path"], shape=shape, axis=spec.get("axis"))
        if "acceleration" in spec:
            facts["acceleration"] = float(spec["acceleration"])
        return mask, facts
    rng = np.random.default_rng(mask_seed(case_id, spec.get("seed", 0)))
    if kind == "cartesian_vd":
        return cartesian_vd_mask(shape, spec["acceleration"], rng, centre_lines=spec.get("centre_lines", 10),
                                 axis=spec.get("axis", 0))
    if kind == "random":
        return random_mask(shape, spec["acceleration"], spec["centre_fraction"], rng, axis=spec.get("axis", 1))
    return equispaced_mask(shape, spec["acceleration"], spec["centre_fraction"], rng, axis=spec.get("axis", 1),
                           adjust_acceleration=bool(spec.get("adjust_acceleration", True)))


# ------------------------------------------------------------------------------------------ simulation


def _check_volume(volume: np.ndarray, what: str) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"{what} must be a 3-D array (S, H, W), got shape {volume.shape}")
    if np.iscomplexobj(volume):
        raise ValueError(f"{what} must be real-valued (magnitude images), got {volume.dtype}")
    if not np.isfinite(volume).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return volume


def normalise_slices(volume: np.ndarray) -> np.ndarray:
    """Divide every slice by its own maximum (KD-MRI companion script ``normalize_volume``): values in [0, 1].

    Args:
        volume: non-negative real ``(S, H, W)``.

    Returns:
        float32 ``(S, H, W)``; an all-zero slice stays all zero.

    Raises:
        ValueError: not 3-D, complex, non-finite or negative values (shift the volume first).
    """
    volume = _check_volume(volume, "volume").astype(np.float64)
    if (volume < 0).any():
        raise ValueError(f"volume has negative values (min {volume.min():.4g}); shift it to be non-negative first")
    peak = volume.max(axis=(1, 2), keepdims=True)
    out = np.divide(volume, peak, out=np.zeros_like(volume), where=peak > 0)
    return out.astype(np.float32)


def simulate_single_coil(target: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Undersample single-coil k-space simulated from magnitude slices, KD-MRI style.

    ``kspace = fft2_ortho(target) * mask`` and ``zero_filled = |ifft2_ortho(kspace)|``, computed in
    float64/complex128 and stored as complex64/float32. A fully sampled mask returns ``target`` (up to
    float32 rounding).

    Args:
        target: real ``(S, H, W)`` slices (KD-MRI: per-slice max-normalised, in [0, 1]).
        mask: 0/1 ``(H, W)`` un-centred mask.

    Returns:
        ``(kspace_us, zero_filled)``: complex64 ``(S, H, W)`` and float32 ``(S, H, W)``.

    Raises:
        ValueError: wrong dimensions, mismatched shapes or non-finite values.
    """
    target = _check_volume(target, "target").astype(np.float64)
    mask = np.asarray(mask, dtype=np.float64)
    if mask.shape != target.shape[1:]:
        raise ValueError(f"mask shape {mask.shape} does not match the slice shape {target.shape[1:]}")
    kspace = fft2_ortho(target) * mask
    zero_filled = np.abs(ifft2_ortho(kspace))
    return kspace.astype(np.complex64), zero_filled.astype(np.float32)


def truncation_mask(shape: Sequence[int], factor: int = 4) -> np.ndarray:
    """Un-centred 0/1 float32 ``(H, W)`` mask of the k-space coefficients kept by :func:`kspace_truncate`.

    In centred (fftshift) coordinates the kept block is ``(H // factor, W // factor)`` starting at
    ``H//2 - (H//factor)//2`` (and likewise for W): for 256x256 and factor 4, rows and columns 96-159,
    KD-MRI's ``mask[128-32:128+32, 128-32:128+32]``. It is returned ``ifftshift``-ed.

    Raises:
        ValueError: factor < 1 or a side smaller than ``factor``.
    """
    h, w = _check_shape(shape)
    factor = int(factor)
    if factor < 1 or h // factor < 1 or w // factor < 1:
        raise ValueError(f"truncation factor {factor} must be >= 1 and at most the image size {(h, w)}")
    kh, kw = h // factor, w // factor
    centred = np.zeros((h, w), dtype=np.float32)
    r0, c0 = h // 2 - kh // 2, w // 2 - kw // 2
    centred[r0 : r0 + kh, c0 : c0 + kw] = 1.0
    return np.fft.ifftshift(centred)


def lowres_complex(target: np.ndarray, factor: int = 4) -> np.ndarray:
    """Complex low-resolution images: ``ifft2_ortho(fft2_ortho(target) * truncation_mask)``, complex128.

    Args:
        target: real ``(S, H, W)``.
        factor: truncation factor per axis.

    Returns:
        complex128 ``(S, H, W)`` whose spectrum is zero outside the centre ``(H//factor, W//factor)`` block.
    """
    target = _check_volume(target, "target").astype(np.float64)
    keep = truncation_mask(target.shape[1:], factor).astype(np.float64)
    return ifft2_ortho(fft2_ortho(target) * keep)


def kspace_truncate(target: np.ndarray, factor: int = 4) -> np.ndarray:
    """Super-resolution input by k-space truncation (KD-MRI SR): keep the centre block, zero the rest.

    KD-MRI keeps the centre 64x64 of the centred 256x256 orthonormal spectrum (x4 per axis) and
    transforms back at full size; the input is the magnitude. KD-MRI skips the ``ifftshift`` before the
    inverse FFT; that only multiplies the image by a unit-modulus phase ramp, so the magnitude is the
    same as here. Other sizes keep ``(H // factor, W // factor)``.

    Args:
        target: real ``(S, H, W)`` (KD-MRI: 256x256 Calgary-Campinas slices).
        factor: truncation factor per axis (KD-MRI: 4).

    Returns:
        float32 ``(S, H, W)`` low-resolution magnitude at full size.
    """
    return np.abs(lowres_complex(target, factor)).astype(np.float32)


# ------------------------------------------------------------------------------------------ store


def prepare_target(image: np.ndarray) -> np.ndarray:
    """Slice-store channel -> KD-MRI target: non-negative magnitude, per-slice max-normalised.

    The slice store may hold z-scored intensities. Taking ``|x|`` of a z-scored image would fold
    dark tissue onto bright tissue, so the case is first shifted by its minimum when that is negative
    (making ``|x|`` the identity), then every slice is divided by its maximum.

    Args:
        image: real ``(S, H, W)`` (one channel of a case).

    Returns:
        float32 ``(S, H, W)`` in [0, 1].
    """
    volume = _check_volume(image, "image").astype(np.float64)
    low = volume.min()
    if low < 0:
        volume = volume - low
    return normalise_slices(np.abs(volume))


def simulate_case(target: np.ndarray, spec: Mapping[str, Any], case_id: str) -> dict[str, Any]:
    """The k-space store entry of one case (arrays and attributes), without any file I/O.

    Args:
        target: float ``(S, H, W)`` prepared target (:func:`prepare_target`).
        spec: validated spec (:func:`validate_spec`).
        case_id: for the per-case mask seed.

    Returns:
        dict with ``target``, ``image`` and, for undersampling, ``kspace``, ``mask``, ``acceleration``
        (achieved), ``sampled_lines``, ``centre_lines``; for ``sr_truncate`` ``factor``.
    """
    target = _check_volume(target, "target").astype(np.float32)
    if spec["kind"] == SR_TRUNCATE:
        factor = int(spec.get("factor", 4))
        return {"target": target, "image": kspace_truncate(target, factor), "factor": factor}
    mask, facts = make_mask(spec, target.shape[1:], case_id)
    kspace, zero_filled = simulate_single_coil(target, mask)
    return {
        "target": target, "image": zero_filled, "kspace": kspace, "mask": mask,
        "acceleration": facts["achieved_acceleration"], "sampled_lines": facts["sampled_lines"],
        "centre_lines": facts["centre_lines"],
    }


_ARRAY_KEYS = ("target", "image", "kspace", "mask")


def _write_entry(group: h5py.Group, case_id: str, entry: Mapping[str, Any], spacing: Sequence[float]) -> None:
    grp = group.create_group(case_id)
    for key in _ARRAY_KEYS:
        if key not in entry:
            continue
        arr = np.asarray(entry[key])
        chunks = (1,) + arr.shape[1:] if arr.ndim == 3 else None
        h5_dataset(grp, key, arr, chunks=chunks, compression="gzip", compression_opts=1,
                           track_times=False)
    for key, value in entry.items():
        if key not in _ARRAY_KEYS:
            grp.attrs[key] = value
    grp.attrs["spacing"] = np.asarray(spacing, dtype=np.float64)


def write_kspace_store(slice_store_path: str | Path, out_path: str | Path, spec: Mapping[str, Any],
                       channel: int = 0) -> dict[str, Any]:
    """Build a k-space store from the canonical slice store (file layout in the module docstring).

    For every case: channel ``channel`` of ``image`` -> :func:`prepare_target` (shift if negative,
    magnitude, per-slice max-normalise) -> per-case mask (:func:`make_mask`) -> :func:`simulate_single_coil`
    (or :func:`kspace_truncate` for ``kind: sr_truncate``). Written atomically (temporary name in the
    same directory, then ``os.replace``), with a tqdm bar.

    Args:
        slice_store_path: the slice store (:class:`medkd.data.store.SliceStore`).
        out_path: destination, e.g. ``results/kspace/<dataset>/<mask_name>.h5``.
        spec: mask or super-resolution spec (:func:`validate_spec`).
        channel: image channel to use (KD-MRI is single-contrast; default 0).

    Returns:
        Summary: ``cases``, ``slices``, ``kind`` and the mean achieved ``acceleration`` (undersampling).

    Raises:
        ValueError: invalid spec, an empty store, a missing channel (message names the file and case).
    """
    from medkd.data.store import SliceStore

    spec = validate_spec(spec)
    kind = SR_TRUNCATE if spec["kind"] == SR_TRUNCATE else UNDERSAMPLE
    n_slices = 0
    accelerations: list[float] = []
    with SliceStore(slice_store_path) as store:
        if not store.case_ids:
            raise ValueError(f"{slice_store_path}: slice store has no cases")
        with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as fh:
            fh.attrs["format_version"] = FORMAT_VERSION
            fh.attrs["kind"] = kind
            fh.attrs["mask_spec"] = json.dumps(spec, sort_keys=True)
            fh.attrs["dataset"] = str(store.attrs.get("dataset", Path(slice_store_path).stem))
            fh.attrs["source"] = str(slice_store_path)
            group = fh.create_group("cases")
            for cid in tqdm(store.case_ids, desc=f"k-space {Path(out_path).stem}", unit="case", disable=None):
                case = store.read_case(cid)
                if channel >= case.image.shape[1]:
                    raise ValueError(f"{slice_store_path}: case {cid!r} has {case.image.shape[1]} channels, "
                                     f"channel {channel} requested")
                entry = simulate_case(prepare_target(case.image[:, channel]), spec, cid)
                _write_entry(group, cid, entry, case.spacing)
                n_slices += entry["target"].shape[0]
                if kind == UNDERSAMPLE:
                    accelerations.append(float(entry["acceleration"]))
    summary: dict[str, Any] = {"cases": len(store.case_ids), "slices": n_slices, "kind": kind}
    if accelerations:
        summary["acceleration"] = float(np.mean(accelerations))
    log.info("wrote k-space store %s: %s", out_path, summary)
    return summary


class KspaceStore:
    """Read-only access to a k-space store; use as a context manager.

    Args:
        path: the ``.h5`` k-space store written by :func:`write_kspace_store`.

    Attributes:
        case_ids: sorted case ids.
        attrs: root attributes; ``mask_spec`` decoded from JSON.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a readable HDF5 k-space store (message names the file).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: k-space store not found")
        try:
            self._fh = h5py.File(self.path, "r")
        except OSError as exc:
            raise ValueError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        try:
            raw = dict(self._fh.attrs)
            if raw.get("kind") not in (UNDERSAMPLE, SR_TRUNCATE) or "cases" not in self._fh:
                raise ValueError(f"{self.path}: not a k-space store (root attr kind={raw.get('kind')!r})")
            self.attrs: dict[str, Any] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
            self.attrs["mask_spec"] = json.loads(self.attrs.get("mask_spec", "{}"))
            self.case_ids: list[str] = sorted(self._fh["cases"].keys())
        except BaseException:
            self._fh.close()
            raise

    def __enter__(self) -> KspaceStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def read_case(self, case_id: str) -> dict[str, Any]:
        """One case's arrays and attributes.

        Returns:
            dict with ``target``/``image`` float32 ``(S, H, W)``, ``kspace`` complex64 ``(S, H, W)`` and
            ``mask`` float32 ``(H, W)`` (undersample stores), ``spacing`` (tuple of 3 floats) and the other
            case attributes (``acceleration``, ``sampled_lines``, ``centre_lines`` or ``factor``).

        Raises:
            KeyError: unknown case id (message names the file).
            ValueError: the case cannot be read.
        """
        if case_id not in self.case_ids:
            raise KeyError(f"{self.path}: no case {case_id!r} in the k-space store")
        grp = self._fh["cases"][case_id]
        try:
            out: dict[str, Any] = {key: grp[key][()] for key in _ARRAY_KEYS if key in grp}
            for key, value in grp.attrs.items():
                out[key] = value.item() if isinstance(value, np.generic) else value
        except (OSError, KeyError) as exc:
            raise ValueError(f"{self.path}: cannot read case {case_id!r} ({exc})") from exc
        out["spacing"] = tuple(float(v) for v in out.get("spacing", (1.0, 1.0, 1.0)))
        return out

    def dataset(self, case_id: str, key: str) -> h5py.Dataset:
        """The HDF5 dataset ``key`` of a case (``target``/``image``/``kspace`` (S, H, W), one slice per
        chunk; ``mask`` (H, W)), for reading slices without loading the case."""
        if case_id not in self.case_ids:
            raise KeyError(f"{self.path}: no case {case_id!r} in the k-space store")
        return self._fh["cases"][case_id][key]

    def has(self, case_id: str, key: str) -> bool:
        """Whether a case stores ``key`` (``kspace``/``mask`` only in undersampling stores)."""
        return key in self._fh["cases"][case_id]

    def case_spacing(self, case_id: str) -> tuple[float, float, float]:
        """The case's spacing (mm; (1, 1, 1) when the store recorded none), without reading its arrays."""
        raw = self._fh["cases"][case_id].attrs.get("spacing", (1.0, 1.0, 1.0))
        return tuple(float(v) for v in raw)  # type: ignore[return-value]

    def close(self) -> None:
        """Close the file handle."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None  # type: ignore[assignment]
