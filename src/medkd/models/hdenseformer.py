"""H-DenseFormer in 2-D: TeachFormer's third teacher, our re-implementation from its paper's description.

H-DenseFormer (Shi et al., "H-DenseFormer: An Efficient Hybrid Densely Connected Transformer for Multimodal
Tumor Segmentation", MICCAI 2023) is a hybrid CNN-Transformer for multimodal tumour segmentation, evaluated
on HECKTOR21 and PI-CAI22 (the data of TeachFormer, whose reported teachers include it; docs/sources.md 4).
Its description: a Multi-path Parallel Embedding (MPE) - one independent encoder path per modality, made of
convolutions and a Transformer, whose outputs are fused by summation -; a Densely Connected Transformer (DCT)
block in which each layer receives the outputs of all earlier layers; a lightweight convolutional decoder
with skip connections; deep supervision. No code is used here; every size, and everything the description
leaves open, is our choice, listed in docs/brats_teachformer.md ("H-DenseFormer: our assumptions").

Architecture (``hdenseformer2d``; ``M = in_channels`` modalities, ``f = feature_size``, ``D = embed_dim``,
``p = patch_size``; input ``(B, M, S, S)``, ``S = img_size``):

* MPE, per modality m (own weights): a conv stem ``1 -> f`` (two conv3x3-IN-LReLU, at S), ``f -> 2f``
  (stride 2, then conv3x3, at S/2), ``2f -> 4f`` (stride 2, then conv3x3, at S/4); a patch embedding
  ``Conv(4f -> D, p, stride p)`` (tokens at S/(4p)) with a learned position embedding; ``path_depth``
  pre-norm Transformer blocks. The paths' tokens are **summed** (fusion), and so are their stem features at
  S, S/2 and S/4 (the decoder's skips).
* DCT: ``dct_depth`` Transformer layers; layer ``i`` reads ``Linear(concat(x_0, ..., x_{i-1}), i*D -> D)``
  (``x_0`` = the fused tokens, the transition of DenseNet), and the block's output is
  ``Linear(concat(x_0, ..., x_n), (n+1)*D -> D)`` followed by a LayerNorm.
* Decoder (lightweight): transposed conv ``D -> 4f`` (factor p) to S/4, concatenation with the S/4 skip and
  a conv block; then x2 to S/2 (skip, conv block) and x2 to S (skip, conv block); a 1x1 head.
* Deep supervision: auxiliary 1x1 heads at S/4 and S/2, returned only when ``deep_supervision=True``
  (then the forward returns ``{"out", "aux_4", "aux_2"}``); the default returns the logits, so the model
  trains with the engine's usual task loss.

Taps: ``coarse_map`` = the DCT output grid before its final LayerNorm ``(B, D, S/(4p), S/(4p))`` (E_n);
``fine_map`` = the decoder stage at S/2 (D_{n-1}, the last before the full-resolution one), ``(B, 2f, S/2, S/2)``;
``paths.<m>`` the modality paths, ``dct.layers.<i>.attn.probs`` the attention probabilities.

:func:`hdenseformer_parameter_count` gives the exact number of parameters from the arguments (the unit test
checks it against the module).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from medkd.models import MODELS
from medkd.models.transformer_unets import TokensToGrid, TransformerBlock, _check_input, tokens_to_grid


class ConvINAct(nn.Sequential):
    """Conv (``k``, ``stride``, bias) -> affine InstanceNorm -> LeakyReLU(0.01)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, k: int = 3):
        super().__init__(nn.Conv2d(in_channels, out_channels, k, stride=stride, padding=k // 2),
                         nn.InstanceNorm2d(out_channels, affine=True), nn.LeakyReLU(0.01))


class ModalityPath(nn.Module):
    """One MPE path: conv stem (three scales) + patch embedding + position embedding + Transformer blocks."""

    def __init__(self, feature_size: int, embed_dim: int, patch_size: int, n_tokens: int, depth: int, heads: int,
                 mlp_ratio: float, dropout: float):
        super().__init__()
        f = feature_size
        self.stem1 = nn.Sequential(ConvINAct(1, f), ConvINAct(f, f))
        self.stem2 = nn.Sequential(ConvINAct(f, 2 * f, stride=2), ConvINAct(2 * f, 2 * f))
        self.stem3 = nn.Sequential(ConvINAct(2 * f, 4 * f, stride=2), ConvINAct(4 * f, 4 * f))
        self.patch_embed = nn.Conv2d(4 * f, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(embed_dim, heads, mlp_ratio, dropout) for _ in range(depth))

    def forward(self, x: torch.Tensor):
        s1 = self.stem1(x)
        s2 = self.stem2(s1)
        s3 = self.stem3(s2)
        grid = self.patch_embed(s3)
        tokens = grid.flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return tokens, grid.shape[-2:], (s1, s2, s3)


class DenselyConnectedTransformer(nn.Module):
    """DCT block: layer i sees a linear transition of the concatenation of every earlier output."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.transitions = nn.ModuleList(nn.Linear(i * dim, dim) for i in range(1, depth + 1))
        self.layers = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.fuse = nn.Linear((depth + 1) * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x]
        for transition, layer in zip(self.transitions, self.layers):
            outs.append(layer(transition(torch.cat(outs, dim=-1))))
        return self.fuse(torch.cat(outs, dim=-1))


class DecoderStage(nn.Module):
    """Up-sampling (transposed conv, ``factor``) -> concat skip -> conv3x3-IN-LReLU."""

    def __init__(self, in_channels: int, out_channels: int, factor: int = 2):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, factor, stride=factor)
        self.block = ConvINAct(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


@MODELS.register("hdenseformer2d")
class HDenseFormer2d(nn.Module):
    """2-D H-DenseFormer (see the module docstring).

    Args:
        in_channels: modalities (one MPE path each).
        out_channels: classes.
        img_size: input side; divisible by ``4 * patch_size``.
        feature_size: ``f``, channels of the full-resolution stem.
        embed_dim: token dimension ``D``.
        patch_size: ``p`` (on the S/4 stem features).
        path_depth: Transformer blocks per modality path.
        dct_depth: layers of the DCT block.
        heads: attention heads (paths and DCT).
        mlp_ratio, dropout: Transformer MLP ratio and dropout.
        deep_supervision: also return auxiliary logits at S/4 and S/2.

    Raises:
        ValueError: inconsistent sizes.
    """

    def __init__(self, in_channels: int, out_channels: int, img_size: int = 128, feature_size: int = 16,
                 embed_dim: int = 128, patch_size: int = 2, path_depth: int = 1, dct_depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, deep_supervision: bool = False):
        super().__init__()
        if img_size % (4 * patch_size):
            raise ValueError(f"img_size {img_size} must be divisible by 4 * patch_size = {4 * patch_size}")
        if embed_dim % heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by heads {heads}")
        if dct_depth < 1 or path_depth < 0 or in_channels < 1:
            raise ValueError("need dct_depth >= 1, path_depth >= 0 and at least one input channel")
        f, self.img_size, self.deep_supervision = feature_size, img_size, deep_supervision
        grid = img_size // (4 * patch_size)
        self.paths = nn.ModuleList(ModalityPath(f, embed_dim, patch_size, grid * grid, path_depth, heads, mlp_ratio,
                                                dropout) for _ in range(in_channels))
        self.dct = DenselyConnectedTransformer(embed_dim, dct_depth, heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(embed_dim)
        self.coarse_map = nn.Identity()
        self.to_grid = TokensToGrid()
        self.up4 = DecoderStage(embed_dim, 4 * f, factor=patch_size)
        self.up2 = DecoderStage(4 * f, 2 * f)
        self.fine_map = nn.Identity()
        self.up1 = DecoderStage(2 * f, f)
        self.head = nn.Conv2d(f, out_channels, 1)
        if deep_supervision:
            self.aux_4 = nn.Conv2d(4 * f, out_channels, 1)
            self.aux_2 = nn.Conv2d(2 * f, out_channels, 1)

    def forward(self, image: torch.Tensor):
        _check_input(image, self.img_size, "hdenseformer2d")
        tokens, skips, hw = 0, [0, 0, 0], None
        for m, path in enumerate(self.paths):  # multi-path parallel embedding, fused by summation
            t, hw, s = path(image[:, m : m + 1])
            tokens = tokens + t
            skips = [a + b for a, b in zip(skips, s)]
        dense = self.dct(tokens)
        self.coarse_map(tokens_to_grid(dense, tuple(hw)))  # E_n tap, before the final LayerNorm
        y = self.to_grid(self.norm(dense), tuple(hw))
        y4 = self.up4(y, skips[2])
        y2 = self.fine_map(self.up2(y4, skips[1]))
        out = self.head(self.up1(y2, skips[0]))
        if self.deep_supervision:
            return {"out": out, "aux_4": self.aux_4(y4), "aux_2": self.aux_2(y2)}
        return out


def hdenseformer_parameter_count(in_channels: int, out_channels: int, img_size: int = 128, feature_size: int = 16,
                                 embed_dim: int = 128, patch_size: int = 2, path_depth: int = 1, dct_depth: int = 4,
                                 heads: int = 4, mlp_ratio: float = 4.0, deep_supervision: bool = False, **_) -> int:
    """Exact parameter count of :class:`HDenseFormer2d`, from the layer definitions."""
    f, d = feature_size, embed_dim
    hidden = int(d * mlp_ratio)

    def conv(i, o, k):  # conv with bias + affine InstanceNorm
        return i * o * k * k + o + 2 * o

    block = 2 * (2 * d) + (3 * d * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)
    tokens = (img_size // (4 * patch_size)) ** 2
    path = (conv(1, f, 3) + conv(f, f, 3) + conv(f, 2 * f, 3) + conv(2 * f, 2 * f, 3) + conv(2 * f, 4 * f, 3)
            + conv(4 * f, 4 * f, 3) + (4 * f * d * patch_size**2 + d) + tokens * d + path_depth * block)
    dct = sum(i * d * d + d for i in range(1, dct_depth + 1)) + dct_depth * block + ((dct_depth + 1) * d * d + d)
    decoder = ((d * 4 * f * patch_size**2 + 4 * f) + conv(8 * f, 4 * f, 3)
               + (4 * f * 2 * f * 4 + 2 * f) + conv(4 * f, 2 * f, 3)
               + (2 * f * f * 4 + f) + conv(2 * f, f, 3) + (f * out_channels + out_channels))
    aux = (4 * f * out_channels + out_channels + 2 * f * out_channels + out_channels) if deep_supervision else 0
    return in_channels * path + dct + 2 * d + decoder + aux
