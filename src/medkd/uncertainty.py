"""Per-pixel uncertainty maps computed from a teacher's logits (stored by the ``cache`` stage).

All functions take logits of shape ``(B, C, H, W)`` (C >= 2 classes, softmax over dim 1) or
``(B, 1, H, W)`` (one binary logit, sigmoid) and return float maps of shape ``(B, H, W)``.

Also: MC-dropout variance of a model (:func:`mc_dropout_variance`), the SVLS kernel, soft labels and
the annotation-boundary (label) uncertainty derived from them, and P-CD's fusion of prediction and label
uncertainty (:func:`fused_difficulty`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn


def class_probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Class probabilities ``(B, C', H, W)`` at ``temperature``; a single binary logit becomes two classes
    ``[1 - sigmoid(z/T), sigmoid(z/T)]`` so every map below treats binary and multi-class alike."""
    if logits.dim() != 4:
        raise ValueError(f"logits must be (B, C, H, W), got shape {tuple(logits.shape)}")
    z = logits.float() / temperature
    if z.shape[1] == 1:
        p = torch.sigmoid(z)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(z, dim=1)


def predictive_entropy(logits: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Shannon entropy of the softmax, ``-sum_c p_c log p_c`` in nats, per pixel.

    With ``normalise=True`` the entropy is divided by ``log(C)`` so the map lies in ``[0, 1]``
    (0 = one-hot certain, 1 = uniform).
    """
    p = class_probabilities(logits)
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1)
    if normalise:
        ent = ent / math.log(p.shape[1])
    return ent


def temperature_confidence(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Maximum class probability after temperature scaling, ``max_c softmax(z / T)_c``, in
    ``[1/C, 1]``. P-CD uses T = 6.26 as a fixed calibration temperature."""
    return class_probabilities(logits, temperature).max(dim=1).values


# --- MC-dropout, SVLS boundary (label) uncertainty and P-CD's fusion -------------------------------------

_DROPOUT_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def _dropout_modules(model: nn.Module) -> list[nn.Module]:
    """Dropout modules of ``model`` with a non-zero drop probability."""
    return [m for m in model.modules() if isinstance(m, _DROPOUT_TYPES) and m.p > 0]


def mc_dropout_variance(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    n_passes: int,
    seed: int = 0,
) -> torch.Tensor:
    """Monte-Carlo dropout uncertainty (Gal & Ghahramani, 2016) of a segmentation model.

    The model runs ``n_passes`` times with its dropout layers in train mode (random masks) and every other
    module, BatchNorm in particular, in eval mode (running statistics). The map is the mean over classes
    of the per-class variance of the softmax probabilities across passes,
    ``(1/C) sum_c Var_n[p_c^(n)]`` (population variance, divisor n), per pixel. For two classes the two
    variances are equal, so the map is ``Var[p_1]``; its maximum is 0.25.

    The masks are drawn from torch's global generator re-seeded with ``seed`` inside
    ``torch.random.fork_rng``, so the result is deterministic for a seed and the caller's RNG state is left
    untouched. Every module's train/eval flag is restored afterwards; no gradients are computed.

    Args:
        model: network returning logits ``(B, C, H, W)`` (or ``(B, 1, H, W)``, or a dict with ``"out"``).
        inputs: the image ``(B, C_in, H, W)``, or a sequence of tensors passed positionally (the model's
            ``input_keys``).
        n_passes: number of stochastic forward passes (>= 2).
        seed: seed of the dropout masks.

    Returns:
        Float map ``(B, H, W)``, >= 0.

    Raises:
        ValueError: ``n_passes < 2``, or the model has no dropout layer with p > 0.
    """
    if n_passes < 2:
        raise ValueError(f"n_passes must be >= 2 for a variance, got {n_passes}")
    dropouts = _dropout_modules(model)
    if not dropouts:
        raise ValueError(
            f"{type(model).__name__} has no dropout layer with p > 0; MC-dropout needs one "
            "(e.g. build the model with dropout > 0)"
        )
    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for m in dropouts:
            m.train()
        probs = []
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(n_passes):
                out = model(*args)
                if isinstance(out, dict):
                    out = out["out"]
                probs.append(class_probabilities(out))
    finally:
        for m, flag in flags.items():
            m.train(flag)
    stacked = torch.stack(probs, dim=0)  # (n, B, C, H, W)
    return stacked.var(dim=0, unbiased=False).mean(dim=1)


def svls_kernel(sigma: float = 1.0, size: int = 3) -> torch.Tensor:
    """The 2-D SVLS kernel (spatially varying label smoothing; Islam & Glocker, IPMI 2021).

    Construction (as ``mobarakol/SVLS/svls.py``, in 2-D): a ``size x size`` Gaussian with standard
    deviation ``sigma`` centred on the middle pixel; the centre weight is replaced by the sum of the
    other (neighbour) weights; the kernel is renormalised to sum 1. The centre therefore always weighs
    exactly 1/2 and the neighbours share the other half in proportion to the Gaussian.

    For the default ``sigma = 1, size = 3``: unnormalised weights are 1 (centre), ``e^-0.5 = 0.606531``
    (4 edge neighbours) and ``e^-1 = 0.367879`` (4 corners); the neighbour sum is
    ``4 (0.606531 + 0.367879) = 3.897640``, so after the replacement the total is 7.795281 and the kernel is
    (edge ``0.606531 / 7.795281``, corner ``0.367879 / 7.795281``)::

        0.047193  0.077807  0.047193
        0.077807  0.500000  0.077807
        0.047193  0.077807  0.047193

    Args:
        sigma: Gaussian standard deviation in pixels (> 0).
        size: odd kernel side (>= 3).

    Returns:
        Float32 tensor ``(size, size)`` summing to 1.

    Raises:
        ValueError: even or too small ``size``, non-positive ``sigma``.
    """
    if size < 3 or size % 2 == 0:
        raise ValueError(f"size must be odd and >= 3, got {size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    sq = r[:, None] ** 2 + r[None, :] ** 2
    kernel = torch.exp(-sq / (2 * sigma**2))
    c = size // 2
    kernel[c, c] = kernel.sum() - kernel[c, c]
    return (kernel / kernel.sum()).float()


def svls_soft_labels(target: torch.Tensor, n_classes: int, sigma: float = 1.0, size: int = 3) -> torch.Tensor:
    """SVLS soft labels: the one-hot ``target`` convolved with :func:`svls_kernel`, replicate padding.

    Inside a region the soft label equals the one-hot label; near a boundary it spreads up to half of the
    mass to the neighbouring classes. Each pixel's soft label sums to 1 (the kernel does, and replicate
    padding keeps every tap a valid one-hot vector).

    Args:
        target: class indices ``(B, H, W)`` int64 in ``[0, n_classes)``.
        n_classes: number of classes C (>= 2).
        sigma: kernel standard deviation (pixels).
        size: kernel side (odd).

    Returns:
        Float32 ``(B, C, H, W)``.

    Raises:
        ValueError: wrong shape/dtype, fewer than 2 classes, or labels outside ``[0, n_classes)``.
    """
    if target.dim() != 3:
        raise ValueError(f"target must be (B, H, W), got shape {tuple(target.shape)}")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= n_classes):
        raise ValueError(
            f"target labels must be in [0, {n_classes}), got min {int(target.min())} max {int(target.max())}"
        )
    onehot = torch.nn.functional.one_hot(target.long(), n_classes).permute(0, 3, 1, 2).float()
    k = svls_kernel(sigma, size).to(onehot.device)
    weight = k.expand(n_classes, 1, size, size).contiguous()
    pad = size // 2
    padded = torch.nn.functional.pad(onehot, (pad, pad, pad, pad), mode="replicate")
    return torch.nn.functional.conv2d(padded, weight, groups=n_classes)


def label_uncertainty(target: torch.Tensor, n_classes: int, sigma: float = 1.0, size: int = 3) -> torch.Tensor:
    """Annotation-boundary uncertainty ``1 - max_c svls(target)_c`` per pixel (P-CD's label uncertainty).

    0 inside homogeneous regions (farther than ``size // 2`` pixels from a label change), > 0 on and near
    boundaries. Because the SVLS centre weight is 1/2 the map lies in ``[0, 0.5]`` (a subset of
    ``[0, 1)``); e.g. a pixel whose only differently-labelled 3x3 neighbour is one edge neighbour gets
    0.077807, a straight boundary pixel (one full side of 3 neighbours differs) gets
    ``0.077807 + 2 * 0.047193 = 0.172193``, and an isolated pixel (all 8 neighbours differ) gets 0.5.

    Args:
        target: class indices ``(B, H, W)`` int64.
        n_classes: number of classes C.
        sigma: SVLS kernel standard deviation.
        size: SVLS kernel side.

    Returns:
        Float32 ``(B, H, W)``.
    """
    return 1.0 - svls_soft_labels(target, n_classes, sigma, size).max(dim=1).values


#: Fusion rules accepted by :func:`fused_difficulty`.
FUSION_RULES = ("product", "max")


def fused_difficulty(
    confidence: torch.Tensor, label_uncertainty: torch.Tensor, rule: str = "product"
) -> torch.Tensor:
    """Fuse the teacher's prediction confidence and the SVLS label uncertainty into a pixel difficulty.

    P-CD (IJCARS 2023) fuses prediction and annotation-boundary uncertainty, but neither its paper text
    available to us nor its code define how (the repository has no SVLS code at all). **The rules below
    are the re-implementers' choice.** Difficulty is ``1 - fused confidence``:

    * ``"product"`` (default): fused confidence ``c * (1 - u)``, difficulty ``1 - c (1 - u)``. A pixel
      is easy only if the teacher is confident *and* the label is certain; at ``u = 0`` it is ``1 - c``.
    * ``"max"``: difficulty ``max(1 - c, u)`` (the worse of the two sources).

    Both are in ``[0, 1]`` for ``c, u`` in ``[0, 1]``, increasing in ``u`` and decreasing in ``c``. The
    paced weights compare the fused confidence ``1 - difficulty`` with ``1 - mu``.

    Args:
        confidence: teacher confidence ``(B, H, W)`` in ``[0, 1]`` (e.g. temperature-scaled max class
            probability, or the probability of the ground-truth class).
        label_uncertainty: ``(B, H, W)`` in ``[0, 1]`` (:func:`label_uncertainty`).
        rule: one of :data:`FUSION_RULES`.

    Returns:
        Difficulty ``(B, H, W)`` in ``[0, 1]`` (0 = easiest).

    Raises:
        ValueError: unknown ``rule`` or mismatched shapes.
    """
    if confidence.shape != label_uncertainty.shape:
        raise ValueError(
            f"confidence {tuple(confidence.shape)} and label_uncertainty {tuple(label_uncertainty.shape)} differ"
        )
    u = label_uncertainty.to(confidence.dtype)
    if rule == "product":
        return 1.0 - confidence * (1.0 - u)
    if rule == "max":
        return torch.maximum(1.0 - confidence, u)
    raise ValueError(f"unknown fusion rule {rule!r}; valid: {', '.join(FUSION_RULES)}")
