"""2-D transformer segmentation models for TeachFormer-style multi-teacher distillation (our own code).

TeachFormer (Hossain et al., Sci Rep 2025; no public code) reportedly distils three transformer teachers
(UNETR, SwinUNETR, H-DenseFormer) into a slim transformer student, transferring the final predictions
and two attention maps: a *coarse* map from the deepest encoder stage E_n and a *fine* map from the
decoder stage D_{n-1}. The published teachers are 3-D; everything here is our 2-D re-implementation,
faithful in kind (the blocks and the data flow), CPU-sized by default. H-DenseFormer is in
:mod:`medkd.models.hdenseformer`.

Models (all take ``in_channels``, ``out_channels``, ``img_size``, ``embed_dim``, ``depth``, ``heads``; forward
``(B, in_channels, H, W) -> logits (B, out_channels, H, W)``):

* ``unetr2d`` (:class:`UNETR2d`, after Hatamizadeh et al., WACV 2022): a ViT on non-overlapping
  ``patch_size`` patches (learned position embedding, pre-norm blocks); hidden states of evenly spaced
  layers (3/6/9/12 for 12 layers and patch 16) reshaped to grids, brought up by transposed convolutions,
  and merged deep-to-shallow by up-blocks, with a convolutional skip from the input at full resolution.
  The original uses embed 768, 12 layers, 12 heads, MLP 3072, feature size 16.
* ``swin_unet2d`` (:class:`SwinUNet2d`, after SwinUNETR, Hatamizadeh et al. 2022): patch embedding,
  stages of Swin blocks alternating regular and shifted window attention (with relative position bias and
  the shifted-window mask), patch merging between stages, and a convolutional decoder with skips from
  every stage and from the input.
* ``teachformer_student`` (:class:`TeachFormerStudent`): a slim hierarchical transformer (patch embedding,
  a few global-attention blocks per stage, strided-conv down-sampling) with a light convolutional decoder.

Uniform tap names for attention distillation (identity modules, so forward hooks see their outputs):

* ``coarse_map``: the deepest encoder tokens E_n as a grid ``(B, C_n, H / s_n, W / s_n)``, taken BEFORE
  the final LayerNorm (a side branch: per-token normalisation makes ``sum_c F^2`` the same at every
  position, so an attention map after it carries no spatial information);
* ``fine_map``: the output of decoder stage D_{n-1}, the last stage before the full-resolution one.

Every attention module has a ``probs`` identity tap whose output is the softmax attention
``(B*, heads, N, N)`` (``B* = B`` for global attention, ``B * windows`` for Swin), and ``UNETR2d`` and
``TeachFormerStudent`` expose the last block's probabilities ``(B, heads, N, N)`` as ``last_attention``.

:func:`count_flops` counts floating-point operations with ``torch.utils.flop_counter.FlopCounterMode``
(2 per multiply-accumulate of convolutions, linear layers and matrix products; element-wise operations
are not counted); :func:`count_macs` is half of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from medkd.models import MODELS

# ---------------------------------------------------------------------------------------------- blocks


class MLP(nn.Sequential):
    """Linear -> GELU -> Dropout -> Linear -> Dropout on tokens ``(..., dim)``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention on tokens ``(B, N, dim)`` with an explicit probability tap.

    ``probs`` (identity) sees the softmax attention ``(B, heads, N, N)``; the latest one is also kept in
    ``last_probs``. An additive ``bias`` broadcastable to ``(B, heads, N, N)`` (relative position bias,
    shifted-window mask) is added to the scaled scores before the softmax.

    Raises:
        ValueError: ``dim`` not divisible by ``heads``.
    """

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.0, proj_dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.probs = nn.Identity()
        self.attn_drop = nn.Dropout(attn_dropout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_dropout)
        self.last_probs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:
            scores = scores + bias
        probs = self.probs(scores.softmax(dim=-1))
        self.last_probs = probs
        out = (self.attn_drop(probs) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``; tokens ``(B, N, dim)``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, proj_dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens ``(B, h*w, C)`` (row-major) -> feature grid ``(B, C, h, w)``."""
    b, n, c = tokens.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"{n} tokens cannot form a {h}x{w} grid")
    return tokens.transpose(1, 2).reshape(b, c, h, w)


class TokensToGrid(nn.Module):
    """Tokens ``(B, h*w, C)`` (row-major) -> feature grid ``(B, C, h, w)``; a tap point."""

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return tokens_to_grid(tokens, grid)


class ResConvBlock(nn.Module):
    """MONAI-style residual block: conv3x3-norm-LReLU-conv3x3-norm (+ 1x1 projection) -> LReLU.

    ``norm``: ``"instance"`` (affine InstanceNorm, as MONAI's UNETR) or ``"batch"``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "instance"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = _norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, out_channels)
        self.act = nn.LeakyReLU(0.01)
        self.skip = (nn.Identity() if in_channels == out_channels else
                     nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), _norm(norm, out_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))
        return self.act(y + self.skip(x))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm must be 'instance' or 'batch', got {kind!r}")


class UpBlock(nn.Module):
    """Transposed conv 2x2 stride 2 (``in -> out``), concatenation with a skip (``out`` channels), block."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "instance"):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.block = ResConvBlock(2 * out_channels, out_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class ProjectUp(nn.Module):
    """UNETR's skip projection: transposed conv (``in -> out``), then ``n_up - 1`` x [transposed conv + block].

    Up-samples a ViT grid by ``2**n_up``.
    """

    def __init__(self, in_channels: int, out_channels: int, n_up: int, norm: str = "instance"):
        super().__init__()
        self.init_up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(out_channels, out_channels, 2, stride=2),
                          ResConvBlock(out_channels, out_channels, norm))
            for _ in range(n_up - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.init_up(x)
        for stage in self.stages:
            x = stage(x)
        return x


def _log2_exact(value: int, what: str) -> int:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{what} must be a power of two, got {value}")
    return int(math.log2(value))


def _check_input(image: torch.Tensor, img_size: int, name: str) -> None:
    if image.dim() != 4 or tuple(image.shape[-2:]) != (img_size, img_size):
        raise ValueError(f"{name} expects (B, C, {img_size}, {img_size}) input (img_size={img_size}), "
                         f"got {tuple(image.shape)}")


# ---------------------------------------------------------------------------------------------- UNETR


def evenly_spaced_layers(depth: int, n: int) -> list[int]:
    """1-based indices of ``n`` evenly spaced transformer layers ending at ``depth`` (12, 4 -> 3, 6, 9, 12)."""
    return [max(1, math.ceil(depth * j / n)) for j in range(1, n + 1)]


@MODELS.register("unetr2d")
class UNETR2d(nn.Module):
    """2-D UNETR: ViT encoder, hidden states from evenly spaced layers, convolutional up-path.

    With ``k = log2(patch_size)`` the ViT grid is ``img_size / patch_size`` and the decoder has ``k``
    stages; hidden states of ``k`` evenly spaced layers are used (``patch_size = 16``, 12 layers:
    3, 6, 9, 12, as UNETR). Stage s = 1..k doubles the resolution to ``img_size / 2**(k - s)`` with
    ``feature_size * 2**(k - s)`` channels; its skip is the hidden state of tapped layer ``k - s``
    projected up ``s`` times (:class:`ProjectUp`), and for the last stage the input's conv block.

    Tap paths: ``encoder_grids.<j>`` (tapped layer j's grid, ``(B, embed_dim, g, g)``, g = img/patch),
    ``coarse_map`` (the last layer's grid after the final LayerNorm), ``decoder.<s-1>``, ``fine_map``
    (output of stage k-1, ``(B, 2 * feature_size, img/2, img/2)``), ``blocks.<i>.attn.probs``
    (``(B, heads, g*g, g*g)``), ``head``.

    Args:
        in_channels, out_channels: input channels and classes.
        img_size: input height = width (fixed by the position embedding).
        patch_size: patch side, a power of two >= 4 dividing ``img_size`` (UNETR: 16).
        embed_dim, depth, heads: ViT width, layers and heads (UNETR: 768, 12, 12).
        mlp_ratio: MLP hidden size / embed_dim (UNETR: 4).
        feature_size: decoder base width (UNETR: 16).
        dropout: dropout in the ViT.
        norm: decoder normalisation, ``"instance"`` (MONAI default) or ``"batch"``.

    Raises:
        ValueError: inconsistent sizes.
    """
    # NHWC on CPU, for inference only (benchmarks/memory_format.py, x NCHW time: inference 0.73-0.84x; train 0.90-1.04x)
    cpu_channels_last = ("eval",)

    def __init__(self, in_channels: int, out_channels: int, img_size: int = 128, patch_size: int = 16,
                 embed_dim: int = 192, depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0,
                 feature_size: int = 16, dropout: float = 0.0, norm: str = "instance"):
        super().__init__()
        k = _log2_exact(patch_size, "patch_size")
        if k < 2:
            raise ValueError(f"patch_size must be >= 4 (the fine map needs a decoder stage below full size), "
                             f"got {patch_size}")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.img_size, self.patch_size, self.n_stages = img_size, patch_size, k
        self.grid = img_size // patch_size
        self.tap_layers = evenly_spaced_layers(depth, k)

        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(embed_dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.encoder_grids = nn.ModuleList(TokensToGrid() for _ in range(k))
        self.coarse_map = nn.Identity()

        widths = [feature_size * 2 ** (k - s) for s in range(1, k + 1)]  # stage s = 1..k
        self.input_block = ResConvBlock(in_channels, feature_size, norm)
        self.skip_projections = nn.ModuleList(ProjectUp(embed_dim, widths[s - 1], s, norm) for s in range(1, k))
        self.decoder = nn.ModuleList()
        cin = embed_dim
        for w in widths:
            self.decoder.append(UpBlock(cin, w, norm))
            cin = w
        self.fine_map = nn.Identity()
        self.head = nn.Conv2d(feature_size, out_channels, 1)

    @property
    def last_attention(self) -> torch.Tensor | None:
        """Softmax attention of the last ViT block from the latest forward, ``(B, heads, N, N)``."""
        return self.blocks[-1].attn.last_probs

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _check_input(image, self.img_size, "unetr2d")
        x = self.patch_embed(image).flatten(2).transpose(1, 2)
        x = self.pos_drop(x + self.pos_embed)
        hidden = {}
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            hidden[i] = x
        g = (self.grid, self.grid)
        grids = []
        for j, layer in enumerate(self.tap_layers):
            tokens = self.norm(hidden[layer]) if j == len(self.tap_layers) - 1 else hidden[layer]
            grids.append(self.encoder_grids[j](tokens, g))
        self.coarse_map(tokens_to_grid(hidden[self.tap_layers[-1]], g))  # attention tap, before the final norm
        y = grids[-1]
        k = self.n_stages
        for s in range(1, k + 1):
            skip = self.skip_projections[s - 1](grids[k - 1 - s]) if s < k else self.input_block(image)
            y = self.decoder[s - 1](y, skip)
            if s == k - 1:
                y = self.fine_map(y)
        return self.head(y)


# ----------------------------------------------------------------------------------------------- Swin


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B * H/window * W/window, window*window, C)``, windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, window*window, C)`` -> ``(B, H, W, C)``."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def relative_position_index(window: int, table_window: int | None = None) -> torch.Tensor:
    """``(M*M, M*M)`` index into a ``(2T-1)**2`` relative-position bias table (Swin's layout), T >= M.

    Entry ``[i, j]`` is ``(dy + T - 1) * (2T - 1) + (dx + T - 1)`` with ``(dy, dx)`` the offset of token i
    from token j inside an M x M window; ``table_window`` T defaults to M.
    """
    table = window if table_window is None else table_window
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (table - 1)
    return rel[..., 0] * (2 * table - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """Additive mask ``(nW, M*M, M*M)``: -100 between tokens from different regions after the cyclic shift."""
    region = torch.zeros(h, w)
    label = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            region[hs, ws] = label
            label += 1
    ids = window_partition(region.view(1, h, w, 1), window).squeeze(-1)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class SwinBlock(nn.Module):
    """Swin block: (shifted) window attention with relative position bias, then MLP; tokens ``(B, H*W, C)``.

    Windows of ``window`` tokens per side; ``shift > 0`` rolls the map by ``-shift`` before partitioning
    (SW-MSA) and masks attention across the wrapped regions. If the map is not larger than the window, the
    window becomes the whole map and no shift is applied (as Swin does).
    """

    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0):
        super().__init__()
        self.window, self.shift, self.heads = window, shift, heads
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, proj_dropout=dropout)
        self.relative_bias = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_bias, std=0.02)
        self.register_buffer("rel_index", relative_position_index(window), persistent=False)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        h, w = grid
        b, n, c = x.shape
        m = self.window
        shift = self.shift
        if min(h, w) <= m:
            if h != w:
                raise ValueError(f"Swin stage {h}x{w} smaller than the window {m} must be square")
            m, shift = h, 0
        if h % m or w % m:
            raise ValueError(f"Swin stage {h}x{w} is not divisible by the window {m}")
        y = self.norm1(x).view(b, h, w, c)
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(y, m)
        index = self.rel_index if m == self.window else relative_position_index(m, self.window).to(x.device)
        bias = self.relative_bias[index].permute(2, 0, 1).unsqueeze(0)  # (1, heads, N, N)
        if shift:
            mask = shifted_window_mask(h, w, m, shift).to(x.device, x.dtype)  # (nW, N, N)
            bias = (bias + mask.unsqueeze(1)).repeat(b, 1, 1, 1)  # windows are batch-major
        attended = self.attn(windows, bias)
        y = window_reverse(attended, m, h, w)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + y.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Swin patch merging: concatenate each 2x2 neighbourhood (4C), LayerNorm, Linear 4C -> 2C (no bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        h, w = grid
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    """``depth`` Swin blocks (even: W-MSA, odd: SW-MSA with shift window // 2) at one resolution."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, dropout)
            for i in range(depth))

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, grid)
        return x


def _per_stage(value: int | Sequence[int], n: int, doubling: bool, what: str) -> list[int]:
    if isinstance(value, int):
        return [value * 2**i for i in range(n)] if doubling else [value] * n
    values = [int(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{what} lists {len(values)} values for {n} stages")
    return values


@MODELS.register("swin_unet2d")
class SwinUNet2d(nn.Module):
    """Compact 2-D Swin U-Net in the manner of SwinUNETR.

    Patch embedding (``patch_size``, a power of two >= 2) to ``embed_dim`` channels; ``n_stages`` Swin
    stages with ``embed_dim * 2**i`` channels at ``img / (patch * 2**i)``, patch merging between stages;
    each stage's LayerNormed tokens become a grid (``grids.<i>``). Decoder: from the deepest grid, up-blocks
    (transposed conv 2x2 + concatenation + residual conv block) to each shallower stage
    (``decoder.<j>``), then ``log2(patch_size)`` up-blocks to full resolution, the last one concatenating
    the input's conv block (``input_block``, ``feature_size`` channels).

    Tap paths: ``grids.<i>``, ``coarse_map`` (= ``grids.<n_stages-1>``), ``decoder.<j>``, ``fine_map``
    (output of the decoder stage before the full-resolution one), ``stages.<i>.blocks.<b>.attn.probs``
    (``(B * windows, heads_i, window**2, window**2)``), ``head``.

    Args:
        in_channels, out_channels: input channels and classes.
        img_size: expected input side (checked; stage sizes must be divisible by the window).
        embed_dim: channels of the first stage (SwinUNETR: 48).
        depth: Swin blocks per stage, an int or one value per stage (SwinUNETR: 2, 2, 2, 2).
        heads: heads of the first stage (doubling per stage) or one value per stage (SwinUNETR: 3, 6, 12, 24).
        n_stages: number of Swin stages (SwinUNETR: 4).
        patch_size: patch-embedding stride (SwinUNETR: 2).
        window_size: attention window side (SwinUNETR: 7).
        mlp_ratio, dropout: block MLP ratio and dropout.
        feature_size: channels of the full-resolution decoder stage.
        norm: decoder normalisation (``"instance"`` or ``"batch"``).

    Raises:
        ValueError: inconsistent sizes.
    """

    def __init__(self, in_channels: int, out_channels: int, img_size: int = 128, embed_dim: int = 48,
                 depth: int | Sequence[int] = 2, heads: int | Sequence[int] = 3, n_stages: int = 3,
                 patch_size: int = 2, window_size: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 feature_size: int = 16, norm: str = "instance"):
        super().__init__()
        k = _log2_exact(patch_size, "patch_size")
        if k < 1:
            raise ValueError(f"patch_size must be >= 2, got {patch_size}")
        if n_stages < 1:
            raise ValueError(f"n_stages must be >= 1, got {n_stages}")
        depths = _per_stage(depth, n_stages, False, "depth")
        head_counts = _per_stage(heads, n_stages, True, "heads")
        dims = [embed_dim * 2**i for i in range(n_stages)]
        for i in range(n_stages):
            side = img_size / (patch_size * 2**i)
            m = min(window_size, side)
            if side != int(side) or int(side) % int(m):
                raise ValueError(f"img_size {img_size}: stage {i} side {side} must be an integer divisible by "
                                 f"the window {window_size} (or not larger than it)")
        self.img_size, self.patch_size, self.n_stages = img_size, patch_size, n_stages

        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.stages = nn.ModuleList(SwinStage(d, n, h, window_size, mlp_ratio, dropout)
                                    for d, n, h in zip(dims, depths, head_counts))
        self.merges = nn.ModuleList(PatchMerging(d) for d in dims[:-1])
        self.stage_norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.grids = nn.ModuleList(TokensToGrid() for _ in dims)
        self.coarse_map = nn.Identity()

        self.input_block = ResConvBlock(in_channels, feature_size, norm)
        self.decoder = nn.ModuleList(UpBlock(dims[i + 1], dims[i], norm) for i in reversed(range(n_stages - 1)))
        # patch-level (img / patch) to full resolution: k up-steps; the last one concatenates input_block
        up_widths = [max(feature_size, dims[0] // 2**s) for s in range(1, k)] + [feature_size]
        self.full_res_ups = nn.ModuleList()
        self.full_res_blocks = nn.ModuleList()
        cin = dims[0]
        for s, w in enumerate(up_widths):
            self.full_res_ups.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
            last = s == len(up_widths) - 1
            self.full_res_blocks.append(ResConvBlock(2 * w if last else w, w, norm))
            cin = w
        self.fine_map = nn.Identity()
        self.head = nn.Conv2d(feature_size, out_channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _check_input(image, self.img_size, "swin_unet2d")
        x = self.patch_embed(image)
        h, w = x.shape[-2:]
        x = self.embed_norm(x.flatten(2).transpose(1, 2))
        grids = []
        for i, stage in enumerate(self.stages):
            x = stage(x, (h, w))
            grids.append(self.grids[i](self.stage_norms[i](x), (h, w)))
            if i < self.n_stages - 1:
                x = self.merges[i](x, (h, w))
                h, w = h // 2, w // 2
        self.coarse_map(tokens_to_grid(x, (h, w)))  # attention tap: deepest tokens before the stage norm
        y = grids[-1]
        n_steps = len(self.decoder) + len(self.full_res_ups)
        if n_steps == 1:  # one stage with patch 2: D_{n-1} is the deepest grid itself
            y = self.fine_map(y)
        for step in range(n_steps):
            if step < len(self.decoder):
                y = self.decoder[step](y, grids[-2 - step])
            else:
                s = step - len(self.decoder)
                y = self.full_res_ups[s](y)
                if step == n_steps - 1:
                    y = torch.cat([y, self.input_block(image)], dim=1)
                y = self.full_res_blocks[s](y)
            if step == n_steps - 2:
                y = self.fine_map(y)
        return self.head(y)


# -------------------------------------------------------------------------------------------- student


class ConvBNAct(nn.Sequential):
    """conv3x3 (no bias) -> BatchNorm -> GELU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.GELU())


class StudentDecoderStage(nn.Module):
    """Transposed conv 2x2 stride 2, concatenation with the encoder grid, one conv-BN-GELU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.block = ConvBNAct(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


@MODELS.register("teachformer_student")
class TeachFormerStudent(nn.Module):
    """Slim hierarchical-transformer segmentation student (our design for TeachFormer's student).

    Encoder stages E_1..E_n (``n_stages``): stage 1 is a patch embedding (``patch_size``) plus a learned
    position embedding; stage i > 1 down-samples with a 2x2 stride-2 conv (channels x2); every stage runs
    ``depth`` global-attention pre-norm transformer blocks (``heads`` in stage 1, doubling). Decoder stages
    D_1..D_{n-1} (transposed conv + skip concatenation + conv-BN-GELU) climb back to the patch grid; the
    last stage D_n up-samples by ``patch_size`` to full resolution (transposed conv + conv-BN-GELU), then a
    1x1 head.

    Tap paths (the attention-distillation pair): ``coarse_map`` = E_n's grid
    ``(B, embed_dim * 2**(n-1), img / (patch * 2**(n-1)), ...)``; ``fine_map`` = D_{n-1}'s output
    ``(B, embed_dim, img / patch, img / patch)``. Also ``encoder_grids.<i>``, ``decoder.<j>``,
    ``stages.<i>.<b>.attn.probs`` and ``last_attention`` (last block of E_n, ``(B, heads_n, N_n, N_n)``).

    Args:
        in_channels, out_channels: input channels and classes.
        img_size: input side (fixed by the position embedding).
        embed_dim: channels of stage 1.
        depth: transformer blocks per stage.
        heads: heads of stage 1 (doubling per stage).
        n_stages: encoder stages (>= 2).
        patch_size: patch side, dividing ``img_size / 2**(n_stages-1)``.
        mlp_ratio, dropout: block MLP ratio and dropout.

    Raises:
        ValueError: inconsistent sizes.
    """

    def __init__(self, in_channels: int, out_channels: int, img_size: int = 128, embed_dim: int = 32,
                 depth: int = 1, heads: int = 2, n_stages: int = 3, patch_size: int = 4,
                 mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        if n_stages < 2:
            raise ValueError(f"n_stages must be >= 2 (coarse and fine maps), got {n_stages}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if img_size % (patch_size * 2 ** (n_stages - 1)):
            raise ValueError(f"img_size {img_size} must be divisible by patch_size * 2**(n_stages-1) = "
                             f"{patch_size * 2 ** (n_stages - 1)}")
        self.img_size, self.patch_size, self.n_stages = img_size, patch_size, n_stages
        dims = [embed_dim * 2**i for i in range(n_stages)]
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, (img_size // patch_size) ** 2, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.downsamples = nn.ModuleList(nn.Conv2d(dims[i], dims[i + 1], 2, stride=2) for i in range(n_stages - 1))
        self.stages = nn.ModuleList(
            nn.ModuleList(TransformerBlock(d, heads * 2**i, mlp_ratio, dropout) for _ in range(depth))
            for i, d in enumerate(dims))
        self.stage_norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.encoder_grids = nn.ModuleList(TokensToGrid() for _ in dims)
        self.coarse_map = nn.Identity()
        self.decoder = nn.ModuleList(StudentDecoderStage(dims[i + 1], dims[i]) for i in reversed(range(n_stages - 1)))
        self.fine_map = nn.Identity()
        self.final_up = nn.ConvTranspose2d(embed_dim, embed_dim, patch_size, stride=patch_size)
        self.final_block = ConvBNAct(embed_dim, embed_dim)
        self.head = nn.Conv2d(embed_dim, out_channels, 1)

    @property
    def last_attention(self) -> torch.Tensor | None:
        """Softmax attention of E_n's last block from the latest forward, ``(B, heads_n, N_n, N_n)``."""
        return self.stages[-1][-1].attn.last_probs

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _check_input(image, self.img_size, "teachformer_student")
        feat = self.patch_embed(image)
        grids = []
        for i, blocks in enumerate(self.stages):
            if i > 0:
                feat = self.downsamples[i - 1](feat)
            h, w = feat.shape[-2:]
            tokens = feat.flatten(2).transpose(1, 2)
            if i == 0:
                tokens = tokens + self.pos_embed
            for block in blocks:
                tokens = block(tokens)
            feat = self.encoder_grids[i](self.stage_norms[i](tokens), (h, w))
            grids.append(feat)
        self.coarse_map(tokens_to_grid(tokens, (h, w)))  # attention tap: deepest tokens before the stage norm
        y = grids[-1]
        for j, stage in enumerate(self.decoder):
            y = stage(y, grids[-2 - j])
        y = self.fine_map(y)
        y = self.final_block(self.final_up(y))
        return self.head(y)


# ---------------------------------------------------------------------------------------------- FLOPs


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Floating-point operations of one forward pass on a zero input of ``input_shape``.

    Counted by ``torch.utils.flop_counter.FlopCounterMode``: 2 FLOPs per multiply-accumulate of
    convolutions (incl. transposed), linear layers and matrix products (attention); bias additions,
    normalisation, activations and softmax are not counted. Runs in eval mode without gradients and
    restores the model's training flag.

    Args:
        model: the network (its ``forward`` takes one image tensor).
        input_shape: ``(B, C, H, W)``.

    Returns:
        FLOPs as an int (MACs = FLOPs / 2, see :func:`count_macs`).
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.zeros(tuple(int(s) for s in input_shape), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass (``count_flops // 2``), the unit of thop/ptflops "FLOPs"."""
    return count_flops(model, input_shape) // 2
