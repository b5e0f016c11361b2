"""The embedded default dataset: deterministic pseudo-subjects from the MNI ICBM152 2009a template.

``make reproduce`` needs no network and no gated data, so the default dataset is generated here from the
MNI ICBM152 2009a nonlinear *symmetric* template files that nilearn 0.13.1 ships inside its wheel
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``: 197x233x189 voxels,
1 mm isotropic, RAS, uint8 0-255; the T1 is skull-stripped; there are GM and WM probability maps but no
CSF map). The files are located without importing nilearn (its import takes about 3 s).

Each pseudo-subject (case ``i``, random generator ``numpy.random.default_rng([seed, i])``) is made by:

1. the template resampled once per call to ``resolution_mm`` (trilinear; 2 mm gives 99x117x95 voxels,
   the shape nilearn's own 2 mm templates have; 4 mm gives 50x59x48), T1 and maps scaled to [0, 1];
2. a random smooth deformation: an affine about the brain centre (rotation up to 5 degrees about each
   axis, scaling 0.95-1.05 per axis, translation up to 3 mm per axis) composed with a displacement field
   of Gaussian-filtered white noise (sigma 10 mm, peak 2-4 mm per component), applied to T1, GM and WM with
   ``scipy.ndimage.map_coordinates`` (order 1);
3. labels: brain = deformed T1 > 0.1; WM where wm >= gm and wm >= 0.5; GM where gm > wm and gm >= 0.5;
   CSF = rest of the brain (so CSF includes the ventricles and sulci and the template's partial-volume
   rim); 0 outside the brain;
4. when ``lesion`` is true, an ellipsoidal lesion (radii 15-25 mm, random orientation, smoothstep edge
   whose 10-90 % rise is 1 mm) centred on a random WM voxel: label 4 where its membership >= 0.5 inside the brain, T1 darkened
   by up to 55 %, T2 brightened towards 0.9;
5. a T2-like channel: per-tissue intensities (CSF 1.0, GM 0.55, WM 0.35) mixed by the deformed GM/WM
   probability maps and the remaining CSF fraction of the brain;
6. per channel: a gamma-like contrast curve (Schlick's bias function, equal to ``x ** gamma`` at 0, 0.5
   and 1; gamma 0.8-1.2), a smooth multiplicative bias field (quadratic polynomial in the
   normalised coordinates, peak deviation 5-15 %), and Rician noise (Gaussian noise of sigma 2 % of the
   channel maximum added to the real and imaginary parts, magnitude taken, as in magnitude MR images;
   values inside the brain stay > 0, so "non-zero" means "brain" for the converter's z-score);
   both channels are zero outside the brain mask; intensities are stored as multiples of 2**-12.

**The same bytes on every CPU.** The files must hash to what ``data.dvc`` records on any machine, so the
float path avoids everything whose rounding depends on the CPU: no BLAS (matrix products are written out
elementwise; OpenBLAS's kernels differ in fused multiply-add and summation order), no numpy SIMD
transcendental on an array (``exp`` and ``pow`` were replaced by a smoothstep and Schlick's curve, which
need only IEEE 754 operations that every CPU rounds identically), and the few scalars that come from
libm (cos, sin of the rotation angles) are rounded to a 2**-24 grid. scipy.ndimage's filters and
interpolation are plain C compiled for the baseline instruction set. tests/integration/test_embedded_bits.py
generates the data with OpenBLAS forced to Prescott, Haswell, SkylakeX and Zen kernels, numpy's SIMD
dispatch disabled and glibc's FMA/AVX2 variants masked, and compares the bytes.

Output, in the Medical Segmentation Decathlon (MSD) layout, so the MSD converter reads it::

    out_dir/dataset.json
    out_dir/imagesTr/emb_000.nii.gz   float32 (X, Y, Z, 2): channel 0 T1-like, channel 1 T2-like
    out_dir/labelsTr/emb_000.nii.gz   uint8 (X, Y, Z): 0 background, 1 CSF, 2 GM, 3 WM, 4 lesion

with the template affine scaled to the resolution. Files are serialised in memory and gzipped with
``mtime=0`` and JSON is key-sorted, so two runs with the same parameters give byte-identical files (DVC
relies on this). About 1 s per case at 2 mm on one core (plus about 2 s to resample the template).

All cases come from one averaged brain: this is a demonstration dataset, not a benchmark.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import importlib.metadata
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

import medkd

log = logging.getLogger(__name__)

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
LABELS = {"0": "background", "1": "CSF", "2": "GM", "3": "WM", "4": "lesion"}
MODALITIES = {"0": "T1", "1": "T2"}

BRAIN_THRESHOLD = 0.1  # deformed T1 (0-1) above this is brain
TISSUE_THRESHOLD = 0.5  # GM/WM probability needed for a GM/WM label
T2_INTENSITY = {"csf": 1.0, "gm": 0.55, "wm": 0.35}
ROTATION_DEG = 5.0
SCALING = 0.05
TRANSLATION_MM = 3.0
DISPLACEMENT_SIGMA_MM = 10.0
DISPLACEMENT_PEAK_MM = (2.0, 4.0)
LESION_RADIUS_MM = (15.0, 25.0)  # tumour-sized: learnable at 2 mm and 64x64 slices
LESION_EDGE_MM = 1.0
GAMMA_RANGE = (0.8, 1.2)
BIAS_PEAK = (0.05, 0.15)
NOISE_FRACTION = 0.02
PARAMETER_BITS = 24  # rotation entries and the gamma curve's parameter: multiples of 2**-24
IMAGE_BITS = 12  # image intensities (0-~1.3): multiples of 2**-12
SMOOTHSTEP_10_90 = 1.0 - 2.0 * 0.1958  # 10-90 % rise of 3t^2 - 2t^3 in units of its ramp (t = 0.1958: 10 %)

DESCRIPTION = (
    "Synthetic demonstration dataset generated by medkd from the MNI ICBM152 2009a nonlinear symmetric "
    "template (one averaged brain, as shipped with nilearn): each case is a seeded smooth deformation of "
    "the template with contrast jitter, bias field, noise, a T2-like second channel and an optional "
    "synthetic lesion. It is a demo for running the pipeline end to end, not a benchmark: results on it "
    "say nothing about performance on real patients."
)
LICENCE = (
    "Derived from the MNI ICBM152 2009a template, copyright (C) 1993-2009 Louis Collins, McConnell Brain "
    "Imaging Centre, Montreal Neurological Institute, McGill University. Permissive licence: use, copying, "
    "modification and distribution are allowed without fee provided the copyright notice is kept "
    "(attribution); provided as is, without warranty. Cite Fonov et al., NeuroImage 54 (2011) 313-327 "
    "and Fonov et al., NeuroImage 47 (2009) S102."
)


def template_dir() -> Path:
    """Directory of the MNI152 files inside the installed nilearn package (nilearn is not imported).

    Raises:
        FileNotFoundError: nilearn is not installed or lacks the template files.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("nilearn is not installed; the embedded dataset needs its MNI152 template files")
    folder = Path(spec.origin).parent / "datasets" / "data"
    missing = [name for name in TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: nilearn lacks the MNI152 template files {missing}")
    return folder


def load_template(resolution_mm: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Load T1, GM and WM (scaled to [0, 1], float32) resampled trilinearly to ``resolution_mm``.

    Voxel (0, 0, 0) keeps its world position; the new shape is ``ceil(shape_1mm / resolution_mm)``.

    Returns:
        (maps {"t1", "gm", "wm"} each (X, Y, Z) float32, affine (4, 4) float64 of the resampled grid).
    """
    if not resolution_mm > 0:
        raise ValueError(f"resolution_mm must be positive, got {resolution_mm}")
    folder = template_dir()
    maps: dict[str, np.ndarray] = {}
    affine = None
    for key, name in TEMPLATE_FILES.items():
        img = nib.load(folder / name)
        source_zoom = float(img.header.get_zooms()[0])
        data = np.asarray(img.dataobj, dtype=np.float32) / 255.0
        step = resolution_mm / source_zoom
        shape = tuple(int(np.ceil(n / step - 1e-9)) for n in data.shape)
        grid = np.meshgrid(*[np.arange(n, dtype=np.float32) * step for n in shape], indexing="ij", sparse=False)
        maps[key] = ndimage.map_coordinates(data, grid, order=1, mode="nearest").astype(np.float32)
        affine = img.affine.copy()
        affine[:3, :3] = img.affine[:3, :3] * step
    assert affine is not None
    return maps, affine


def _grid_round(value: float | np.ndarray, bits: int = PARAMETER_BITS) -> np.ndarray:
    """``value`` rounded to a multiple of ``2**-bits`` (float64).

    Used on the few values that come out of a transcendental function (cos, sin): libm and numpy's SIMD
    kernels may differ in the last bit of those between CPUs, and a last-bit difference ends up on a
    multiple of ``2**-bits`` only when the value lies within about ``2**-52`` of a rounding boundary
    (probability about ``2**(bits - 51)`` per value).
    """
    scale = float(2**bits)
    return np.round(np.asarray(value, dtype=np.float64) * scale) / scale


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    """3x3 rotation ``Rz @ Ry @ Rx`` (float64), written out term by term and grid-rounded.

    The product is spelled out rather than computed with ``@``: numpy hands matrix products to BLAS,
    whose kernels (and their use of fused multiply-add) depend on the CPU. cos and sin come from Python's
    ``math`` (libm), never from numpy's CPU-dispatched SIMD kernels.
    """
    cx, cy, cz = (math.cos(float(a)) for a in angles_rad)
    sx, sy, sz = (math.sin(float(a)) for a in angles_rad)
    matrix = [
        [cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx],
        [sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx],
        [-sy, cy * sx, cy * cx],
    ]
    return _grid_round(np.array(matrix, dtype=np.float64))


def _apply_matrix(matrix: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``matrix @ grid`` for a (3, 3) matrix and a (3, N) grid, elementwise in float64 (no BLAS).

    Each output row is ``m[i, 0] * g0 + m[i, 1] * g1 + m[i, 2] * g2``, evaluated left to right with one
    IEEE rounding per operation, so the result is the same on every CPU (BLAS kernels differ in
    summation order and fused multiply-add between CPUs: 41 of the 81 files changed with OpenBLAS's
    Prescott kernels before this).
    """
    return np.stack([(matrix[i, 0] * grid[0] + matrix[i, 1] * grid[1]) + matrix[i, 2] * grid[2]
                     for i in range(3)])


def _sampling_coordinates(shape: tuple[int, int, int], res: float, centre: np.ndarray,
                          rng: np.random.Generator) -> np.ndarray:
    """Source voxel coordinates (3, X, Y, Z) of a random affine + smooth displacement deformation."""
    angles = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG, 3))
    scales = rng.uniform(1 - SCALING, 1 + SCALING, 3)
    shift_vox = rng.uniform(-TRANSLATION_MM, TRANSLATION_MM, 3) / res
    matrix = _rotation(angles) * scales[None, :]  # R @ diag(scales): column j scaled by scales[j]
    sigma_vox = DISPLACEMENT_SIGMA_MM / res
    peak_vox = rng.uniform(*DISPLACEMENT_PEAK_MM) / res
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1) - centre[:, None]
    coords = _apply_matrix(matrix, grid).reshape(3, *shape)
    for axis in range(3):
        field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="nearest")
        field *= peak_vox / max(float(np.abs(field).max()), 1e-12)
        coords[axis] += field + centre[axis] + shift_vox[axis]
    return coords


def _bias_field(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Multiplicative field 1 + quadratic polynomial, peak deviation 5-15 %, float32 (X, Y, Z)."""
    x, y, z = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    terms = [x, y, z, x * y, x * z, y * z, x * x, y * y, z * z]
    poly = sum(float(c) * t for c, t in zip(rng.uniform(-1, 1, len(terms)), terms))
    poly = np.broadcast_to(poly, shape).astype(np.float32)
    poly -= poly.mean()
    poly *= rng.uniform(*BIAS_PEAK) / max(float(np.abs(poly).max()), 1e-12)
    return 1.0 + poly


def _lesion_membership(shape: tuple[int, int, int], res: float, centre: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    """Soft ellipsoid (0-1, float32, (X, Y, Z)) with random radii and orientation.

    The edge is a cubic smoothstep of the normalised radius ``rho`` (1 inside, 0 outside, 0.5 at
    ``rho = 1``) whose 10-90 % rise is :data:`LESION_EDGE_MM` wide. A smoothstep needs only +, *, sqrt
    and clipping, which IEEE 754 rounds the same on every CPU; a logistic edge would need ``exp``, whose
    SIMD kernels differ in the last bit between CPUs.
    """
    radii_vox = rng.uniform(*LESION_RADIUS_MM, 3) / res
    rot = _rotation(rng.uniform(-np.pi, np.pi, 3))
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1) - centre[:, None]
    local = _apply_matrix(rot.T.copy(), grid)
    scaled = local / radii_vox[:, None]
    rho = np.sqrt((scaled[0] * scaled[0] + scaled[1] * scaled[1]) + scaled[2] * scaled[2]).reshape(shape)
    edge = LESION_EDGE_MM / res / float(radii_vox.mean())  # edge width in units of the normalised radius
    return smooth_edge(rho, edge).astype(np.float32)


def smooth_edge(rho: np.ndarray, edge: float) -> np.ndarray:
    """Membership of normalised radius ``rho``: 1 inside, 0 outside, 0.5 at ``rho = 1``, a cubic smoothstep
    ``3t^2 - 2t^3`` between that rises from 10 % to 90 % over ``edge`` (in units of ``rho``)."""
    ramp = np.clip(0.5 - (rho - 1.0) * (SMOOTHSTEP_10_90 / edge), 0.0, 1.0)
    return ramp * ramp * (3.0 - 2.0 * ramp)


def _gamma_curve(x: np.ndarray, gamma: float) -> np.ndarray:
    """A gamma-like contrast curve on [0, 1] from +, -, * and / only (float64).

    Schlick's bias function ``x / ((1 / b - 2) * (1 - x) + 1)`` with ``b = 0.5 ** gamma``: it maps 0 to 0,
    1 to 1 and 0.5 to ``0.5 ** gamma`` as ``x ** gamma`` does, and bends the same way (darker for
    gamma > 1). Unlike ``x ** gamma`` it needs no ``pow``, whose libm and SIMD versions round differently
    on different CPUs. Schlick, "Fast alternatives to Perlin's bias and gain functions", Graphics Gems IV
    (1994).
    """
    b = float(_grid_round(0.5**gamma))
    x = np.clip(x, 0.0, 1.0)
    return x / ((1.0 / b - 2.0) * (1.0 - x) + 1.0)


def _contrast(channel: np.ndarray, brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma-like curve, bias field and Rician noise for one channel; zero outside ``brain``.

    The result is rounded to a multiple of ``2**-IMAGE_BITS`` (about 1 % of the noise's sigma): what a
    scanner's integer output would do, and a guard that makes a last-bit difference upstream (a libm or
    compiler variant on another CPU) land on a different stored value only when it straddles a step.
    """
    gamma = rng.uniform(*GAMMA_RANGE)
    out = _gamma_curve(channel.astype(np.float64), gamma) * _bias_field(channel.shape, rng)
    sigma = NOISE_FRACTION * float(out.max())
    real = out + sigma * rng.standard_normal(out.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(out.shape, dtype=np.float32)
    out = np.sqrt(real * real + imag * imag)
    out[~brain] = 0.0
    return _grid_round(out, IMAGE_BITS).astype(np.float32)


def make_case(template: dict[str, np.ndarray], res: float, rng: np.random.Generator,
              lesion: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One pseudo-subject from the resampled template.

    Args:
        template: {"t1", "gm", "wm"} float32 (X, Y, Z) in [0, 1] at ``res`` mm.
        res: voxel size in mm.
        rng: the case's random generator.
        lesion: add a lesion (label 4).

    Returns:
        (image float32 (X, Y, Z, 2) [T1-like, T2-like], label uint8 (X, Y, Z) 0-4).
    """
    shape = template["t1"].shape
    brain_voxels = np.argwhere(template["t1"] > BRAIN_THRESHOLD)
    centre = brain_voxels.mean(axis=0)
    coords = _sampling_coordinates(shape, res, centre, rng)
    t1, gm, wm = (ndimage.map_coordinates(template[k], coords, order=1, mode="constant", cval=0.0)
                  for k in ("t1", "gm", "wm"))
    gm, wm = np.clip(gm, 0, 1), np.clip(wm, 0, 1)
    brain = t1 > BRAIN_THRESHOLD
    label = np.zeros(shape, dtype=np.uint8)
    is_wm = brain & (wm >= gm) & (wm >= TISSUE_THRESHOLD)
    is_gm = brain & (gm > wm) & (gm >= TISSUE_THRESHOLD)
    label[brain] = 1
    label[is_gm] = 2
    label[is_wm] = 3
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    t2 = T2_INTENSITY["csf"] * csf + T2_INTENSITY["gm"] * gm + T2_INTENSITY["wm"] * wm
    if lesion:
        wm_voxels = np.argwhere(is_wm)
        if len(wm_voxels) == 0:
            raise ValueError("deformed template has no white matter voxel to place a lesion on")
        centre_voxel = wm_voxels[rng.integers(len(wm_voxels))].astype(np.float64)
        member = _lesion_membership(shape, res, centre_voxel, rng)
        label[brain & (member >= 0.5)] = 4
        t1 = t1 * (1.0 - 0.55 * member)
        t2 = t2 * (1.0 - member) + 0.9 * member
    image = np.stack([_contrast(t1, brain, rng), _contrast(t2, brain, rng)], axis=-1)
    return image, label


def _nifti_gz(data: np.ndarray, affine: np.ndarray) -> bytes:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header["descrip"] = b"medkd embedded (MNI152 2009a)"
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def dataset_json(n_cases: int, seed: int, resolution_mm: float, lesion: bool) -> str:
    """The MSD-schema ``dataset.json`` text (key-sorted, indent 2) for the given parameters."""
    names = [f"emb_{i:03d}" for i in range(n_cases)]
    doc = {
        "name": "embedded",
        "description": DESCRIPTION,
        "reference": "MNI ICBM152 2009a nonlinear symmetric template (Fonov et al. 2009, 2011), via nilearn",
        "licence": LICENCE,
        "release": f"medkd {medkd.__version__}",
        "tensorImageSize": "4D",
        "modality": MODALITIES,
        "labels": LABELS,
        "numTraining": n_cases,
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
        "test": [],
        "generator": {
            "name": "medkd.data.embedded.generate_embedded",
            "seed": int(seed),
            "n_cases": int(n_cases),
            "resolution_mm": float(resolution_mm),
            "lesion": bool(lesion),
            "medkd_version": medkd.__version__,
            "nilearn_version": _nilearn_version(),
            "template_files": sorted(TEMPLATE_FILES.values()),
        },
    }
    return json.dumps(doc, sort_keys=True, indent=2) + "\n"


def _nilearn_version() -> str | None:
    try:
        return importlib.metadata.version("nilearn")
    except importlib.metadata.PackageNotFoundError:
        return None


_WORKER: dict = {}
"""The template and settings of a case-generating worker process (set once by :func:`_init_worker`)."""


def _init_worker(template: dict[str, np.ndarray], affine: np.ndarray, res: float, seed: int, lesion: bool,
                 blas_threads: int | None = None, parent: int | None = None) -> None:
    if parent is not None:
        _die_with_parent(parent)
    if blas_threads is not None:  # a worker process: one BLAS thread each, the workers share the CPUs
        from threadpoolctl import threadpool_limits

        threadpool_limits(blas_threads)
    _WORKER.update(template=template, affine=affine, res=res, seed=seed, lesion=lesion)


def _case_files(i: int) -> tuple[bytes, bytes]:
    """The gzipped NIfTI image and label of case ``i``; a function of ``i`` and :data:`_WORKER` alone."""
    w = _WORKER
    image, label = make_case(w["template"], w["res"], np.random.default_rng([w["seed"], i]), w["lesion"])
    return _nifti_gz(image, w["affine"]), _nifti_gz(label, w["affine"])


def generate_embedded(out_dir: str | Path, *, n_cases: int, seed: int, resolution_mm: float, lesion: bool,
                      workers: int = 1) -> Path:
    """Write the embedded dataset in MSD layout (see the module docstring).

    Idempotent and atomic: when ``out_dir/dataset.json`` already has exactly the text these parameters
    produce and every file it lists exists, nothing is done. Otherwise the dataset is built in a temporary sibling directory and renamed
    to ``out_dir``; a previous embedded dataset there (its ``dataset.json`` names ``"embedded"``) or an
    empty directory is replaced.

    Args:
        out_dir: destination directory, e.g. ``data/embedded``.
        n_cases: number of pseudo-subjects (>= 1).
        seed: base seed; case ``i`` uses ``numpy.random.default_rng([seed, i])``.
        resolution_mm: isotropic voxel size of the output (2 mm: 99x117x95 voxels).
        lesion: add a lesion (label 4) to every case.
        workers: processes that make cases side by side (the step's ``--threads``). Every case depends only
            on its own generator, so the files are byte-identical for any number of workers.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: ``n_cases`` < 1 or ``resolution_mm`` <= 0.
        FileExistsError: ``out_dir`` exists, is not empty and is not an embedded dataset.
        FileNotFoundError: nilearn's template files are missing.
    """
    out_dir = Path(out_dir)
    if int(n_cases) < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    if not resolution_mm > 0:
        raise ValueError(f"resolution_mm must be positive, got {resolution_mm}")
    text = dataset_json(int(n_cases), int(seed), float(resolution_mm), bool(lesion))
    if _is_up_to_date(out_dir, text):
        log.info("%s is up to date", out_dir)
        return out_dir
    _check_replaceable(out_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    from medkd.io import remove_stale_tmps

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmps(out_dir.parent)  # the half-written folder of a killed generator
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir()
        template, affine = load_template(float(resolution_mm))
        init = (template, affine, float(resolution_mm), int(seed), bool(lesion))
        names = [f"emb_{i:03d}.nii.gz" for i in range(int(n_cases))]
        with _case_pool(int(workers), init) as pool:
            for name, (image, label) in zip(names, tqdm(pool(_case_files, range(int(n_cases))), total=len(names),
                                                        desc="embedded cases", unit="case")):
                (tmp / "imagesTr" / name).write_bytes(image)
                (tmp / "labelsTr" / name).write_bytes(label)
        (tmp / "dataset.json").write_text(text)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote embedded dataset (%d cases, %.3g mm) to %s", n_cases, resolution_mm, out_dir)
    return out_dir


@contextlib.contextmanager
def _case_pool(workers: int, init: tuple):
    """A ``map`` over cases, in order: in this process for one worker, else in ``workers`` forked processes
    (each given the template once, and one BLAS thread: the sampling grid's matrix product is otherwise
    threaded, and two workers with two threads each ran no faster than one process). Fork, not spawn: the
    template is already in memory, and a fork server's job has its imports already."""
    if workers <= 1:
        _init_worker(*init)
        yield map
        return
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                                initargs=(*init, 1, os.getpid())) as executor:
        yield executor.map


def _die_with_parent(parent: int) -> None:
    """Have Linux SIGKILL this worker when the job that forked it dies (prctl(2) ``PR_SET_PDEATHSIG``), and exit
    at once if it is already gone (its pid is no longer our parent's).

    A job killed with SIGKILL (a cluster's time limit, a user's ``kill -9``) cannot stop its pool; the workers
    wait on a queue whose other end they hold themselves, so without this they would outlive it for good (the
    fault gauntlet's killed ``fetch`` job left two). The signal follows the thread that forked the worker:
    ProcessPoolExecutor forks its workers from the thread that first submits, here the job's main thread.
    Elsewhere than Linux only the exit check is done."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1  # <linux/prctl.h>
        try:
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)


def _is_up_to_date(out_dir: Path, text: str) -> bool:
    """True when ``out_dir/dataset.json`` reads exactly ``text`` and every file it lists exists."""
    meta = out_dir / "dataset.json"
    if not meta.is_file() or meta.read_text() != text:
        return False
    entries = json.loads(text)["training"]
    return all((out_dir / entry[key]).is_file() for entry in entries for key in ("image", "label"))


_CASE_FILE = re.compile(r"emb_\d{3,}\.nii\.gz")


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a non-empty ``out_dir`` unless it is an embedded dataset: its ``dataset.json`` says so,
    or it holds nothing but ``imagesTr/`` and ``labelsTr/`` of generated case files (``emb_<n>.nii.gz``).
    The second is what Snakemake leaves when the generator's code changed: it deletes the rule's output,
    ``dataset.json``, before it runs the job again."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: exists and is not a directory")
    if not any(out_dir.iterdir()):
        return
    meta = out_dir / "dataset.json"
    try:
        is_embedded = json.loads(meta.read_text()).get("name") == "embedded"
    except (OSError, ValueError, AttributeError):
        is_embedded = not meta.exists() and all(
            entry.name in ("imagesTr", "labelsTr") and entry.is_dir()
            and all(f.is_file() and _CASE_FILE.fullmatch(f.name) for f in entry.iterdir())
            for entry in out_dir.iterdir())
    if not is_embedded:
        raise FileExistsError(f"{out_dir}: exists, is not empty and is not an embedded dataset; "
                              "refusing to replace it")


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``, replacing an old ``target`` (moved aside first, then deleted)."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            with contextlib.suppress(OSError):
                os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
