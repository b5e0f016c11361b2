"""Image corruptions at five severities: the robustness suite run on every segmentation experiment.

P-CD (IJCARS 2023) evaluates robustness under "various types and severity of image perturbation and
corruption", but its corruption code is not public and the types and severities are unknown
(docs/sources.md 5.3/5.7). **The corruptions and the severity tables below are the re-implementers' choice**,
modelled on ImageNet-C (Hendrycks & Dietterich, ICLR 2019: fifteen corruptions, severities 1..5 given by
a fixed five-entry parameter table) plus two MRI-specific artefacts (bias field, k-space ghosting).

Every function has the signature ``f(image, severity, rng) -> corrupted`` with ``image`` a float
``(C, H, W)`` numpy array, ``severity`` in 1..5 and ``rng`` a ``numpy.random.Generator``; the result has
the same shape, dtype float32. Conventions:

* **Any intensity range.** Additive amplitudes are fractions of the image's robust range
  ``s = P99 - P1`` (1st to 99th percentile over all channels; the full range, then 1, when that is 0), and
  multiplicative corruptions act on ``x - P1`` (the intensity above the robust floor), so a CT in HU, a
  z-scored MRI and a [0, 1] ultrasound image are treated alike.
* **Clipping** only when the input lies in [0, 1] (then the output is clipped to [0, 1]); nothing is
  clipped otherwise.
* **Resolution.** Spatial sizes (blur sigmas, motion length) are ImageNet-C's values at 224 pixels (also
  P-CD's input size) scaled by ``min(H, W) / 224``.
* **Nested randomness.** Random draws (noise, angles, fields) do not depend on the severity, so for one
  seed a higher severity scales the same realisation and the distortion grows monotonically.

Severity tables (:data:`SEVERITY_TABLES`):

==================  ====================================================  ===================================
name                parameter                                             severities 1..5
==================  ====================================================  ===================================
gaussian_noise      noise sd / s (ImageNet-C)                             0.08, 0.12, 0.18, 0.26, 0.38
speckle_noise       sd of n in ``x + (x - P1) n`` (ImageNet-C)            0.15, 0.20, 0.35, 0.45, 0.60
gaussian_blur       sigma in pixels at 224 (ImageNet-C)                   1, 2, 3, 4, 6
motion_blur         (length, sigma) in pixels at 224 (ImageNet-C)          (10,3) (15,5) (15,8) (15,12) (20,15)
contrast            factor c of ``mean + c (x - mean)`` (ImageNet-C)       0.4, 0.3, 0.2, 0.1, 0.05
brightness          shift / s (ImageNet-C's HSV value shift)              0.1, 0.2, 0.3, 0.4, 0.5
bias_field          max log-gain of ``exp(a f)``, ``max|f| = 1``           0.1, 0.2, 0.3, 0.45, 0.6
kspace_ghosting     (period, strength) of the line modulation              (4,0.2) (4,0.4) (4,0.6) (4,0.8) (4,1.0)
==================  ====================================================  ===================================
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

#: Image side at which the spatial parameters are defined (ImageNet-C and P-CD use 224).
REFERENCE_SIZE = 224
#: Valid severities.
SEVERITIES = (1, 2, 3, 4, 5)

SEVERITY_TABLES: dict[str, tuple] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "speckle_noise": (0.15, 0.20, 0.35, 0.45, 0.60),
    "gaussian_blur": (1.0, 2.0, 3.0, 4.0, 6.0),
    "motion_blur": ((10, 3.0), (15, 5.0), (15, 8.0), (15, 12.0), (20, 15.0)),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "bias_field": (0.1, 0.2, 0.3, 0.45, 0.6),
    "kspace_ghosting": ((4, 0.2), (4, 0.4), (4, 0.6), (4, 0.8), (4, 1.0)),
}


# --- helpers ---------------------------------------------------------------------------------------------------


def robust_range(image: np.ndarray) -> tuple[float, float]:
    """``(floor, scale)``: the 1st percentile and ``P99 - P1`` of ``image`` (all channels).

    When ``P99 == P1`` (e.g. a mostly constant image) the scale falls back to ``max - min``, then to 1.
    """
    lo, hi = np.percentile(image, [1.0, 99.0])
    scale = float(hi - lo)
    if scale <= 0:
        scale = float(image.max() - image.min())
    if scale <= 0:
        scale = 1.0
    return float(lo), scale


def _is_unit_range(image: np.ndarray) -> bool:
    return bool(image.min() >= 0.0 and image.max() <= 1.0)


def _finish(corrupted: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Cast to float32 and clip to [0, 1] only when the clean image lies in [0, 1]."""
    out = corrupted.astype(np.float32, copy=False)
    if _is_unit_range(clean):
        out = np.clip(out, 0.0, 1.0)
    return out


def _param(name: str, severity: int):
    return SEVERITY_TABLES[name][severity - 1]


def _pixel_scale(image: np.ndarray) -> float:
    """``min(H, W) / 224``: converts a 224-pixel spatial parameter to this image's size."""
    return min(image.shape[-2:]) / REFERENCE_SIZE


# --- corruptions ------------------------------------------------------------------------------------------------


def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise with sd ``c * s`` (``s`` = robust range), independent per pixel."""
    _, scale = robust_range(image)
    noise = rng.standard_normal(image.shape)
    return _finish(image + _param("gaussian_noise", severity) * scale * noise, image)


def speckle_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative (speckle) noise ``x + (x - P1) n``, ``n ~ N(0, c^2)``: stronger on bright tissue,
    as in ultrasound."""
    floor, _ = robust_range(image)
    noise = rng.standard_normal(image.shape)
    return _finish(image + (image - floor) * _param("speckle_noise", severity) * noise, image)


def gaussian_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Isotropic Gaussian blur per channel, sigma ``c * min(H, W) / 224`` pixels, reflect padding.
    ``rng`` is unused (deterministic corruption)."""
    sigma = _param("gaussian_blur", severity) * _pixel_scale(image)
    out = np.stack([ndimage.gaussian_filter(ch.astype(np.float64), sigma, mode="reflect") for ch in image])
    return _finish(out, image)


def motion_kernel(length: float, sigma: float, angle_deg: float) -> np.ndarray:
    """A one-sided linear motion-blur kernel (the trail of a moving camera), summing to 1.

    Taps lie on the ray from the centre at ``angle_deg`` (0 = +x, counter-clockwise) for distances
    ``t = 0, 1, .., floor(length)`` pixels (one tap per pixel of distance), weighted by
    ``exp(-t^2 / (2 sigma^2))`` and splatted bilinearly into a ``(2R+1) x (2R+1)`` grid,
    ``R = ceil(length)`` (modelled on ImageNet-C's Wand motion blur with radius ``length`` and sigma
    ``sigma``).

    Raises:
        ValueError: non-positive ``length`` or ``sigma``.
    """
    if length <= 0 or sigma <= 0:
        raise ValueError(f"motion blur length and sigma must be positive, got {length}, {sigma}")
    radius = int(np.ceil(length))
    kernel = np.zeros((2 * radius + 1, 2 * radius + 1))
    theta = np.deg2rad(angle_deg)
    for t in np.arange(0.0, np.floor(length) + 1.0):
        w = np.exp(-(t**2) / (2 * sigma**2))
        y, x = radius - t * np.sin(theta), radius + t * np.cos(theta)
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        fy, fx = y - y0, x - x0
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                yy, xx = min(y0 + dy, 2 * radius), min(x0 + dx, 2 * radius)
                kernel[yy, xx] += w * wy * wx
    return kernel / kernel.sum()


def motion_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Linear motion blur at a random angle in [-45, 45] degrees (as ImageNet-C), length and sigma from
    the table scaled by ``min(H, W) / 224``; reflect padding."""
    angle = rng.uniform(-45.0, 45.0)
    length, sigma = _param("motion_blur", severity)
    s = _pixel_scale(image)
    kernel = motion_kernel(max(length * s, 1.0), max(sigma * s, 0.25), angle)
    out = np.stack([ndimage.convolve(ch.astype(np.float64), kernel, mode="reflect") for ch in image])
    return _finish(out, image)


def contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Contrast reduction towards each channel's mean, ``mean + c (x - mean)``. ``rng`` is unused."""
    mean = image.mean(axis=(-2, -1), keepdims=True)
    return _finish(mean + _param("contrast", severity) * (image - mean), image)


def brightness(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Global intensity shift ``x + c s`` (``s`` = robust range). ``rng`` is unused."""
    _, scale = robust_range(image)
    return _finish(image + _param("brightness", severity) * scale, image)


def smooth_field(shape: tuple[int, int], rng: np.random.Generator, order: int = 3) -> np.ndarray:
    """A smooth random field ``(H, W)`` with ``max |f| = 1``: a polynomial of degree ``order`` in
    coordinates scaled to [-1, 1] with coefficients uniform in [-1, 1] and no constant term (the
    TorchIO ``RandomBiasField`` model)."""
    h, w = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    field = np.zeros(shape)
    for i in range(order + 1):
        for j in range(order + 1 - i):
            if i + j:
                field += rng.uniform(-1.0, 1.0) * yy**i * xx**j
    peak = np.abs(field).max()
    return field / peak if peak > 0 else field


def bias_field(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """MRI intensity non-uniformity: ``P1 + (x - P1) exp(a f)`` with one smooth field ``f`` shared by
    all channels (``max|f| = 1``, :func:`smooth_field`) and ``a`` from the table (gain up to
    ``e^0.6 = 1.82`` at severity 5)."""
    floor, _ = robust_range(image)
    gain = np.exp(_param("bias_field", severity) * smooth_field(image.shape[-2:], rng))
    return _finish(floor + (image - floor) * gain, image)


def kspace_ghosting(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """MRI ghosting from periodic k-space line modulation (e.g. motion between phase-encode lines).

    Each channel is Fourier transformed (orthonormal 2-D FFT); along a phase-encode axis chosen at random
    (rows or columns), every line whose signed frequency index k satisfies ``k % period == 0``, except the
    DC line k = 0, is multiplied by ``1 - strength``; the real part of the inverse FFT is returned.
    Scaling every ``period``-th line produces ghost replicas shifted by ``N / period`` pixels with
    amplitude ``strength / period``; the DC line is kept so the mean profile along that axis survives.
    """
    period, strength = _param("kspace_ghosting", severity)
    axis = int(rng.integers(0, 2)) - 2  # -2: rows (phase-encode along y), -1: columns
    n = image.shape[axis]
    k = np.fft.fftfreq(n, d=1.0 / n).round().astype(int)
    modulated = (np.abs(k) % period == 0) & (k != 0)
    gain = np.where(modulated, 1.0 - strength, 1.0)
    gain = gain.reshape((n, 1) if axis == -2 else (1, n))
    spectrum = np.fft.fft2(image.astype(np.float64), norm="ortho") * gain
    return _finish(np.fft.ifft2(spectrum, norm="ortho").real, image)


Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

#: Corruption name -> function ``(image (C, H, W), severity 1..5, rng) -> (C, H, W) float32``.
CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "motion_blur": motion_blur,
    "contrast": contrast,
    "brightness": brightness,
    "bias_field": bias_field,
    "kspace_ghosting": kspace_ghosting,
}


def corrupt(image: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` to ``image``, deterministically for ``seed``.

    Args:
        image: float array ``(C, H, W)`` (any intensity range; finite values).
        name: a key of :data:`CORRUPTIONS`.
        severity: 1..5.
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same output, and the random
            draws do not depend on ``severity``.

    Returns:
        The corrupted image, float32 ``(C, H, W)``.

    Raises:
        ValueError: unknown name or severity (the message lists the valid ones), or an image that is not
            a finite 3-D array with H, W >= 2.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}; valid: {', '.join(map(str, SEVERITIES))}")
    image = np.asarray(image)
    if image.ndim != 3 or min(image.shape[-2:]) < 2 or image.shape[0] < 1:
        raise ValueError(f"image must be (C, H, W) with H, W >= 2, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise ValueError(f"image must be a real numeric array, got dtype {image.dtype}")
    if not np.all(np.isfinite(image)):
        raise ValueError("image contains NaN or infinite values")
    rng = np.random.default_rng(seed)
    out = CORRUPTIONS[name](image.astype(np.float32, copy=False), int(severity), rng)
    if out.shape != image.shape:  # pragma: no cover - guarded by the functions above
        raise RuntimeError(f"corruption {name} changed the shape {image.shape} -> {out.shape}")
    return out


__all__ = [
    "CORRUPTIONS",
    "REFERENCE_SIZE",
    "SEVERITIES",
    "SEVERITY_TABLES",
    "corrupt",
    "motion_kernel",
    "robust_range",
    "smooth_field",
]
