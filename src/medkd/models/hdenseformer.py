"""H-DenseFormer in 2-D as its authors built it: TeachFormer's third teacher.

H-DenseFormer (Shi et al., "H-DenseFormer: An Efficient Hybrid Densely Connected Transformer for Multimodal
Tumor Segmentation", MICCAI 2023) is evaluated on HECKTOR21 and PI-CAI22, the data of TeachFormer, whose
reported teachers include it (docs/sources.md section 4). This module follows the structure of the authors'
public 2-D model (repository shijun18/H-DenseFormer at commit db44a4b, ``models/HDenseFormer_2D.py``, class
``HDenseFormer_2D``, built by their ``config.py`` with ``n_filters`` 32 and ``transformer_depth`` 24). The
code here is ours; the layer list, widths, depths, dropout rates and the order of operations are theirs.
What differs from their code, and why, is listed in docs/brats_teachformer.md ("H-DenseFormer: the
authors' code") and docs/sources.md section 4.1.

Architecture (``hdenseformer_2d``; ``M = in_channels`` modalities, ``f = n_filters``, ``D = 4 f`` the token
width, ``g = growth_rate``; input ``(B, M, S, S)`` with ``S`` divisible by 16):

* Multi-path parallel embedding, one path per modality (own weights): a patch embedding
  ``Conv(1 -> D, 16, stride 16)`` of that modality's image alone, a learned position embedding
  (zero-initialised), dropout, then ``transformer_depth / 4`` densely connected Transformer (DCT) blocks
  of 4 layers each. The paths' token grids ``(B, D, S/16, S/16)`` are **concatenated** along the channels
  (``M D`` channels).
* DCT block (width ``D``, growth ``g``): layer ``i`` projects the concatenation of the block input and
  the ``i`` earlier layer outputs (``D + i g`` features) linearly to ``g``, applies pre-norm multi-head
  self-attention (``heads`` heads of ``g / heads`` dims) and a pre-norm MLP ``g -> 2g -> g`` (GELU) with
  residuals, and contributes the MLP applied once more to its result (the authors' code calls the MLP a
  second time to make the layer's output). The block's output is an MLP ``D + 4 g -> 2 g -> D`` of the
  concatenation of its input and the four layer outputs. Dropout 0.5 after the attention projection and
  in every MLP, as in the authors' defaults.
* Fused transformer features into the CNN: ``UpConv`` (conv3x3 with bias -> InstanceNorm without affine ->
  ReLU -> bilinear x2) takes the concatenated grids ``M D -> 8 f`` to S/8, and three more UpConvs give
  ``4 f`` at S/4, ``2 f`` at S/2 and ``f`` at S. Each is **added** to the output of the CNN encoder stage of
  the same size.
* CNN U-Net, 4 levels: the encoder reads all modalities together; each stage is two
  conv3x3 (no bias) -> affine InstanceNorm -> ReLU, with widths ``f, 2f, 4f, 8f`` and 2x2 max pooling
  between stages; the stage output plus the transformer feature of its size is the skip and the input of
  the next stage. Decoder: transposed conv3x3 stride 2 (``8f -> 4f``, ``4f -> 2f``, ``2f -> f``),
  concatenation with the skip, two conv blocks, and a 1x1 head.
* Deep supervision: 1x1 heads on the bottleneck (S/8, ``8 f``) and on the decoder stages at S/4 (``4 f``)
  and S/2 (``2 f``). The forward returns ``{"out": logits at S, "aux_2": S/2, "aux_4": S/4,
  "aux_8": S/8}`` (the authors return the list ``[out, S/2, S/4, S/8]``); the losses read them with the
  taps ``out``, ``out:aux_2``, ``out:aux_4``, ``out:aux_8`` (their deep-supervision weights 1, 1/2, 1/4,
  1/8 are the config's loss weights, :mod:`medkd.distill.focal`).

Taps (TeachFormer's attention maps): ``coarse_map`` = the bottleneck after the transformer feature is
added (deepest encoder stage E_n, ``(B, 8f, S/8, S/8)``); ``fine_map`` = the decoder stage at S/2
(D_{n-1}, ``(B, 2f, S/2, S/2)``); ``paths.<m>`` the modality paths' token grids;
``paths.<m>.blocks.<b>.layers.<i>.attn.probs`` the attention probabilities.

:func:`hdenseformer_2d_parameter_count` gives the exact number of parameters from the arguments; the unit
test checks it against the module and against the counts of the authors' class at the paper configs'
inputs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from medkd.models import MODELS
from medkd.models.transformer_unets import _check_input

PATCH = 16  # the authors' patch size: the token grid at S/16 is brought to S/8 by one x2 UpConv


class DenseMLP(nn.Sequential):
    """Linear -> GELU -> Dropout -> Linear -> Dropout."""

    def __init__(self, dim: int, hidden: int, out_dim: int, dropout: float):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim),
                         nn.Dropout(dropout))


class DenseSelfAttention(nn.Module):
    """Multi-head self-attention: bias-free qkv, softmax(q k^T / sqrt(d)) v, output projection + dropout
    (no projection when a single head spans the whole width, as in the authors' code)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        head_dim = dim // heads
        if heads < 1 or head_dim < 1:
            raise ValueError(f"attention width {dim} cannot be split into {heads} heads")
        self.heads, self.scale = heads, head_dim ** -0.5
        inner = head_dim * heads
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.probs = nn.Identity()  # tap: attention probabilities (B, heads, N, N)
        self.proj = (nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
                     if not (heads == 1 and head_dim == dim) else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = self.probs(torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1))
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class DenseLayer(nn.Module):
    """One layer of a DCT block: linear transition of the dense input to ``growth``, pre-norm attention and
    pre-norm MLP with residuals; returns (updated tokens, the layer's contribution = the MLP once more)."""

    def __init__(self, in_dim: int, growth: int, heads: int, dropout: float):
        super().__init__()
        self.transition = nn.Linear(in_dim, growth)
        self.norm1 = nn.LayerNorm(growth)
        self.attn = DenseSelfAttention(growth, heads, dropout)
        self.norm2 = nn.LayerNorm(growth)
        self.mlp = DenseMLP(growth, 2 * growth, growth, dropout)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        x = self.transition(dense)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.mlp(self.norm2(x))  # the authors append ff(x), a second pass of the MLP


class DCTBlock(nn.Module):
    """Densely connected Transformer block: ``depth`` dense layers, then an MLP back to ``dim``."""

    def __init__(self, dim: int, growth: int, depth: int, heads: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(dim + i * growth, growth, heads, dropout) for i in range(depth))
        self.out = DenseMLP(dim + depth * growth, 2 * growth, dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=-1)))
        return self.out(torch.cat(features, dim=-1))


class ModalityPath(nn.Module):
    """One path of the multi-path parallel embedding: patch embedding of one modality, position embedding,
    dropout, DCT blocks; returns the token grid ``(B, dim, S/16, S/16)``."""

    def __init__(self, dim: int, img_size: int, n_blocks: int, growth: int, layers_per_block: int, heads: int,
                 dropout: float):
        super().__init__()
        self.grid = img_size // PATCH
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))  # zeros, as theirs
        self.patch_embed = nn.Conv2d(1, dim, PATCH, stride=PATCH)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(DCTBlock(dim, growth, layers_per_block, heads, dropout) for _ in range(n_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.dropout(self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, self.grid, self.grid)


class UpConv(nn.Module):
    """conv3x3 (bias) -> InstanceNorm (no affine) -> ReLU -> bilinear x2 (align_corners False)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.InstanceNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class ConvBlock(nn.Sequential):
    """Two (conv3x3 without bias -> affine InstanceNorm -> ReLU)."""

    def __init__(self, in_channels: int, out_channels: int):
        layers = []
        for c_in in (in_channels, out_channels):
            layers += [nn.Conv2d(c_in, out_channels, 3, padding=1, bias=False),
                       nn.InstanceNorm2d(out_channels, affine=True), nn.ReLU()]
        super().__init__(*layers)


@MODELS.register("hdenseformer_2d")
class HDenseFormer2d(nn.Module):
    """The authors' 2-D H-DenseFormer (see the module docstring).

    Args:
        in_channels: modalities (one embedding path each; the CNN encoder reads them all).
        out_channels: classes.
        img_size: input side, divisible by 16.
        n_filters: ``f``, width of the full-resolution CNN stage (authors: 32).
        transformer_depth: dense Transformer layers per modality path, in blocks of 4 (authors: 24).
        growth_rate: width of each dense layer (authors: 32).
        heads: attention heads (authors: 8).
        dropout: dropout of the embedding, attention projection and MLPs (authors: 0.5).

    Raises:
        ValueError: inconsistent sizes.
    """

    def __init__(self, in_channels: int, out_channels: int, img_size: int = 384, n_filters: int = 32,
                 transformer_depth: int = 24, growth_rate: int = 32, heads: int = 8, dropout: float = 0.5):
        super().__init__()
        if img_size % PATCH:
            raise ValueError(f"img_size {img_size} must be divisible by {PATCH} (patch size; the U-Net pools x3)")
        if transformer_depth < 4 or transformer_depth % 4:
            raise ValueError(f"transformer_depth {transformer_depth} must be a positive multiple of 4 "
                             "(blocks of 4 dense layers)")
        if in_channels < 1:
            raise ValueError("need at least one input channel")
        f, self.img_size = n_filters, img_size
        dim = 4 * f
        self.paths = nn.ModuleList(ModalityPath(dim, img_size, transformer_depth // 4, growth_rate, 4, heads, dropout)
                                   for _ in range(in_channels))
        self.fuse = UpConv(in_channels * dim, 8 * f)  # concatenated paths, S/16 -> S/8
        self.up4, self.up2, self.up1 = UpConv(8 * f, 4 * f), UpConv(4 * f, 2 * f), UpConv(2 * f, f)
        self.enc1, self.enc2 = ConvBlock(in_channels, f), ConvBlock(f, 2 * f)
        self.enc3, self.enc4 = ConvBlock(2 * f, 4 * f), ConvBlock(4 * f, 8 * f)
        self.coarse_map = nn.Identity()
        self.upconv3 = nn.ConvTranspose2d(8 * f, 4 * f, 3, stride=2, padding=1, output_padding=1)
        self.dec3 = ConvBlock(8 * f, 4 * f)
        self.upconv2 = nn.ConvTranspose2d(4 * f, 2 * f, 3, stride=2, padding=1, output_padding=1)
        self.dec2 = ConvBlock(4 * f, 2 * f)
        self.fine_map = nn.Identity()
        self.upconv1 = nn.ConvTranspose2d(2 * f, f, 3, stride=2, padding=1, output_padding=1)
        self.dec1 = ConvBlock(2 * f, f)
        self.head = nn.Conv2d(f, out_channels, 1)
        self.aux_2 = nn.Conv2d(2 * f, out_channels, 1)
        self.aux_4 = nn.Conv2d(4 * f, out_channels, 1)
        self.aux_8 = nn.Conv2d(8 * f, out_channels, 1)

    def forward(self, image: torch.Tensor) -> dict:
        _check_input(image, self.img_size, "hdenseformer_2d")
        grids = torch.cat([path(image[:, m : m + 1]) for m, path in enumerate(self.paths)], dim=1)
        t8 = self.fuse(grids)
        t4 = self.up4(t8)
        t2 = self.up2(t4)
        t1 = self.up1(t2)
        s1 = self.enc1(image) + t1
        s2 = self.enc2(F.max_pool2d(s1, 2)) + t2
        s4 = self.enc3(F.max_pool2d(s2, 2)) + t4
        bottleneck = self.coarse_map(self.enc4(F.max_pool2d(s4, 2)) + t8)
        d4 = self.dec3(torch.cat([self.upconv3(bottleneck), s4], dim=1))
        d2 = self.fine_map(self.dec2(torch.cat([self.upconv2(d4), s2], dim=1)))
        d1 = self.dec1(torch.cat([self.upconv1(d2), s1], dim=1))
        return {"out": self.head(d1), "aux_2": self.aux_2(d2), "aux_4": self.aux_4(d4),
                "aux_8": self.aux_8(bottleneck)}


def hdenseformer_2d_parameter_count(in_channels: int, out_channels: int, img_size: int = 384, n_filters: int = 32,
                                    transformer_depth: int = 24, growth_rate: int = 32, heads: int = 8, **_) -> int:
    """Exact parameter count of :class:`HDenseFormer2d` (and of the authors' ``HDenseFormer_2D``), from the
    layer definitions."""
    f, g, m, k = n_filters, growth_rate, in_channels, out_channels
    d = 4 * f
    inner = (g // heads) * heads
    proj = 0 if (heads == 1 and g // heads == g) else inner * g + g

    def linear(i, o):
        return i * o + o

    def layer(i):  # transition, LayerNorm, qkv (no bias), projection, LayerNorm, MLP
        return linear(d + i * g, g) + 2 * g + g * 3 * inner + proj + 2 * g + linear(g, 2 * g) + linear(2 * g, g)

    block = sum(layer(i) for i in range(4)) + linear(d + 4 * g, 2 * g) + linear(2 * g, d)
    path = (img_size // PATCH) ** 2 * d + (PATCH * PATCH * d + d) + (transformer_depth // 4) * block

    def conv3(i, o, bias=True):
        return 9 * i * o + (o if bias else 0)

    def conv_block(i, o):  # two bias-free convs, each with an affine InstanceNorm
        return conv3(i, o, False) + 2 * o + conv3(o, o, False) + 2 * o

    upconvs = conv3(m * d, 8 * f) + conv3(8 * f, 4 * f) + conv3(4 * f, 2 * f) + conv3(2 * f, f)
    encoder = conv_block(m, f) + conv_block(f, 2 * f) + conv_block(2 * f, 4 * f) + conv_block(4 * f, 8 * f)
    decoder = (conv3(8 * f, 4 * f) + conv_block(8 * f, 4 * f) + conv3(4 * f, 2 * f) + conv_block(4 * f, 2 * f)
               + conv3(2 * f, f) + conv_block(2 * f, f))
    heads_ = sum(linear(c, k) for c in (f, 2 * f, 4 * f, 8 * f))
    return m * path + upconvs + encoder + decoder + heads_
