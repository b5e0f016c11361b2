"""Geometry of the source volumes: reading in RAS+, voxel grids, resampling and resizing.

Every converter (:mod:`medkd.data.formats`) reads its volumes through :func:`read_volume` (or
:func:`load_canonical` for 4-D NIfTI), so all of them see the same orientation:

* the closest canonical orientation, RAS+: axis 0 grows toward the patient's Right, axis 1 toward Anterior,
  axis 2 toward Superior. NIfTI goes through ``nibabel.as_closest_canonical``; ITK formats (``.mha``,
  ``.mhd``, ``.nrrd``) are read with SimpleITK, whose LPS physical frame is turned into RAS (x and y negated)
  before the same canonicalisation;
* two volumes share a grid when their shapes are equal and their affines agree within
  :data:`AFFINE_TOLERANCE` (:func:`on_grid`); a channel on another grid is brought onto the reference grid
  through world coordinates (:func:`resample_to_grid`);
* slices are resized with ``skimage.transform.resize`` (:func:`resize_stack`: linear for images, nearest for
  labels, no anti-aliasing), or with PyTorch's nearest-neighbour convention (:func:`resize_nearest`) where a
  paper's loader does that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from skimage.transform import resize

from medkd.errors import InputError

AFFINE_TOLERANCE = 1e-3
"""Largest absolute difference between two affines (mm) that still counts as the same grid."""

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")


def has_suffix(path: str | Path, suffixes: Sequence[str]) -> bool:
    """True when the file name ends with one of ``suffixes`` (case-insensitive)."""
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in suffixes)


def strip_suffix(name: str, suffixes: Sequence[str]) -> str:
    """``name`` without the first of ``suffixes`` it ends with (case-insensitive); unchanged otherwise."""
    for s in suffixes:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


def load_canonical(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI volume reoriented to the closest canonical (RAS+) orientation.

    Args:
        path: a ``.nii`` / ``.nii.gz`` file, 3-D or 4-D.

    Returns:
        (data as stored in the file, canonical axis order, (X, Y, Z[, C]); canonical affine (4, 4) float64).

    Raises:
        ValueError: unreadable, truncated or corrupt file, fewer than 3 dimensions, a voxel size (``pixdim``)
            that is zero, negative or not finite, or complex-valued data (names the file and the problem).
    """
    try:
        raw = nib.load(path)
        # nibabel silently replaces a zero pixdim by 1 and a negative one by its absolute value when it
        # reads the header; read it unchecked to name such a file instead of converting a guess
        with nib.openers.ImageOpener(path) as fh:
            stored = type(raw.header).from_fileobj(fh, check=False)
        zooms = tuple(float(z) for z in stored["pixdim"][1:4])
        sizes = tuple(float(z) for z in nib.affines.voxel_sizes(raw.affine)[:3])
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, OSError...)
        raise ValueError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    if not all(np.isfinite(z) and z > 0 for z in zooms[: min(3, len(raw.shape))]) \
            or not all(np.isfinite(z) and z > 1e-6 for z in sizes):
        raise ValueError(f"{path}: voxel spacing {zooms} mm (header pixdim[1:4]; {tuple(round(z, 6) for z in sizes)} "
                         "mm from the affine) has a zero, negative or non-finite size; every voxel size must be "
                         "positive: fix the file's header")
    if np.issubdtype(raw.get_data_dtype(), np.complexfloating):
        raise ValueError(f"{path}: the image is complex-valued ({raw.get_data_dtype()}); medkd converts real "
                         "images only: store the magnitude (e.g. numpy.abs) or the real part, as the study intends")
    try:
        img = nib.as_closest_canonical(raw)
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    if data.ndim < 3:
        raise ValueError(f"{path}: expected a 3-D or 4-D volume, got shape {data.shape}")
    return data, affine


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D volume in the closest canonical (RAS+) orientation, whatever its format.

    NIfTI (``.nii``, ``.nii.gz``) uses :func:`load_canonical`. ITK formats (``.mha``, ``.mhd``, ``.nrrd``,
    ``.nhdr``) are read with SimpleITK: its array ``(z, y, x)`` is transposed to index order ``(x, y, z)``,
    the voxel-to-world matrix ``direction * spacing`` plus ``origin`` (LPS, mm) becomes RAS by negating its
    first two rows, and the volume is reoriented with ``nibabel.as_closest_canonical``. An ITK volume with
    identity direction therefore comes out flipped along axes 0 and 1.

    Args:
        path: the file.

    Returns:
        (data ``(X, Y, Z)`` in canonical axis order, with the file's dtype; canonical affine ``(4, 4)`` float64).

    Raises:
        ValueError: unsupported suffix, unreadable or corrupt file; InputError (a ValueError): not a 3-D
            single-component volume (the message names the file and the shape).
    """
    path = Path(path)
    if has_suffix(path, NIFTI_SUFFIXES):
        data, affine = load_canonical(path)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise InputError(f"{path}: expected a 3-D volume, got shape {data.shape}")
        return data, affine
    if not has_suffix(path, ITK_SUFFIXES):
        raise ValueError(f"{path}: unsupported volume format (use {NIFTI_SUFFIXES + ITK_SUFFIXES})")
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:  # SimpleITK raises RuntimeError for unreadable/corrupt files
        raise ValueError(f"{path}: cannot read image ({str(exc).strip().splitlines()[-1]})") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected a 3-D single-component image, got dimension {image.GetDimension()} "
                         f"with {image.GetNumberOfComponentsPerPixel()} component(s)")
    data = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, ras))
    return np.asanyarray(canonical.dataobj), np.asarray(canonical.affine, dtype=np.float64)


def on_grid(shape: Sequence[int], affine: np.ndarray, ref_shape: Sequence[int], ref_affine: np.ndarray) -> bool:
    """True when two volumes share the voxel grid: same shape, affines equal within 1e-3."""
    return tuple(shape) == tuple(ref_shape) and bool(
        np.allclose(affine, ref_affine, rtol=0.0, atol=AFFINE_TOLERANCE))


def resample_to_grid(data: np.ndarray, affine: np.ndarray, shape: Sequence[int], target_affine: np.ndarray,
                     order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Resample a volume onto another voxel grid through world (RAS, mm) coordinates.

    Output voxel ``v`` takes the input value at voxel ``inv(affine) @ target_affine @ v`` (scipy
    ``ndimage.affine_transform``, spline ``order``; outside the input: ``cval``, as ITK's default pixel
    value 0). A volume already on the grid (:func:`on_grid`) is returned unchanged.

    Args:
        data: ``(X, Y, Z)`` volume.
        affine: its voxel-to-world matrix.
        shape: output shape ``(X', Y', Z')``.
        target_affine: the output grid's voxel-to-world matrix.
        order: 0 nearest (labels), 1 linear, 3 cubic B-spline (the HECKTOR organisers' resampling).
        cval: value outside the input.

    Returns:
        float32 ``shape`` array (orders > 0), or the input dtype for order 0.

    Raises:
        ValueError: not a 3-D volume, a singular affine, or an order outside 0..5.
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"resample_to_grid expects a 3-D volume, got shape {data.shape}")
    if not 0 <= int(order) <= 5:
        raise ValueError(f"spline order must lie in 0..5, got {order}")
    if on_grid(data.shape, affine, shape, target_affine):
        return data
    try:
        mapping = np.linalg.solve(np.asarray(affine, dtype=np.float64), np.asarray(target_affine, dtype=np.float64))
    except np.linalg.LinAlgError as exc:
        raise ValueError(f"resample_to_grid: singular affine {np.asarray(affine).tolist()}") from exc
    source = data if order == 0 else data.astype(np.float32)
    out = ndimage.affine_transform(source, mapping[:3, :3], offset=mapping[:3, 3],
                                   output_shape=tuple(int(s) for s in shape), order=int(order), mode="constant",
                                   cval=cval, prefilter=int(order) > 1)
    return out if order == 0 else out.astype(np.float32)


def resize_stack(stack: np.ndarray, size: Sequence[int], order: int) -> np.ndarray:
    """Resize the last two axes of ``stack`` (..., H, W) to ``size``; skimage, no anti-aliasing.

    ``order`` 1 (linear) for images, 0 (nearest) for labels; ``preserve_range=True``. A stack already of
    that size is copied unchanged.
    """
    lead = stack.shape[:-2]
    h, w = stack.shape[-2:]
    if (h, w) == tuple(size):
        return stack.copy()
    flat = stack.reshape(-1, h, w).transpose(1, 2, 0)  # (H, W, N): N is kept (zoom factor 1)
    out = resize(flat, (size[0], size[1], flat.shape[2]), order=order, anti_aliasing=False,
                 preserve_range=True)
    return out.transpose(2, 0, 1).reshape(*lead, size[0], size[1])


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source indices of PyTorch's ``interpolate(mode="nearest")`` along one axis.

    ``min(floor(i * scale), n_in - 1)`` with ``scale = n_in / n_out`` in float32, as ATen computes it;
    torchvision's ``Resize(..., NEAREST)`` on a tensor (P-CD's loader) reduces to this.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def resize_nearest(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes, PyTorch convention (:func:`nearest_indices`)."""
    rows = nearest_indices(image.shape[0], int(size[0]))
    cols = nearest_indices(image.shape[1], int(size[1]))
    return image[rows][:, cols]


def read_coregistered(paths: Mapping[str, Path]) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[int, ...]]:
    """Read channels that must share the first channel's grid (co-registered sequences: BraTS, MRBrainS).

    Args:
        paths: channel name -> file, in channel order.

    Returns:
        (channel name -> canonical ``(X, Y, Z)`` volume; the common affine; the common shape).

    Raises:
        ValueError: a channel not on the first channel's grid (names both files), or a :func:`read_volume` error.
    """
    channels: dict[str, np.ndarray] = {}
    ref_affine: np.ndarray | None = None
    ref_shape: tuple[int, ...] = ()
    ref_path = None
    for name, path in paths.items():
        data, affine = read_volume(path)
        if ref_affine is None:
            ref_affine, ref_shape, ref_path = affine, data.shape, path
        elif not on_grid(data.shape, affine, ref_shape, ref_affine):
            raise ValueError(f"{path}: not on the grid of {ref_path} (shape {data.shape} vs {ref_shape}); the "
                             "channels of this format must be co-registered")
        channels[name] = data
    if ref_affine is None:
        raise ValueError("read_coregistered needs at least one channel")
    return channels, ref_affine, ref_shape
