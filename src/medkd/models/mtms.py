"""MTMS (Multi-Task Multi-Scale contrastive KD, Biswas, arXiv 2406.03173) teachers and students.

Four architectures of the MTMS spleen-segmentation study (docs/sources.md section 2.2), each with a
``width`` multiplier so the embedded default can run them at CPU scale (paper configs use ``width=1``):

* ``mtms_t1``: multi-task U-Net teacher (shared encoder, segmentation and reconstruction decoders).
  43,236,036 parameters at width 1 with 3 input channels.
* ``mtms_t2``: multi-task TransUNet teacher (dilated ResNet-style encoder, a single-token ViT at H/16,
  two bilinear decoders). 172,625,028 parameters at 256x256 input and width 1; 134.5 M of them sit in the
  two patch (back-)projection Linear layers, because the whole 1024x16x16 map is one token.
* ``mtms_s1`` ("U-Net-S", 57,297 parameters = "0.057 M" of thesis Table 4.2) and ``mtms_s2`` (227,233 =
  "0.227 M"): small single-conv-per-level U-Net students. The thesis figure shows two convolutions per
  level and bilinear upsampling; the code (whose counts match the table) has one convolution per level
  and transposed convolutions, which is what is built here.

Width scaling: every channel count ``c`` becomes ``max(1, round(c * width))``; for T2 the transformer
dimension (256), number of heads (12) and MLP width (2048) scale the same way, and the head dimension
stays ``dim // heads`` as in the original (21 at width 1, so the attention inner dimension 12*21 = 252 need
not equal the token dimension 256; nothing has to be divisible).

Attribute names follow the original scripts (``e1``..``e4``, ``b``, ``d1_seg``, ``segmentation_output``,
``init_conv``, ``conv1``, ``vit_conv``, ``dec4``, ...), so the state-dict keys of checkpoints written by the
original code map one to one at width 1.

Inputs are ``(B, 3, H, W)`` float images in [0, 1] (the MTMS loader divides 8-bit PNGs by 255); the paper
runs 256x256. Teachers return ``{"out": seg logits (B, 1, H, W), "recon": (B, 3, H, W)}`` (reconstruction
head without activation; its training target is the input image itself), students return logits
``(B, 1, H, W)``.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from medkd.models import MODELS


def scaled_channels(channels: int, width: float) -> int:
    """``max(1, round(channels * width))``: a channel count under the width multiplier."""
    return max(1, int(round(channels * width)))


def _check_width(width: float) -> float:
    if not width > 0:
        raise ValueError(f"width must be a positive multiplier, got {width}")
    return float(width)


def _check_image(image: torch.Tensor, in_channels: int, multiple: int, model: str) -> None:
    """Raise a ValueError unless ``image`` is ``(B, in_channels, H, W)`` with H, W divisible by ``multiple``."""
    if image.ndim != 4 or image.shape[1] != in_channels:
        raise ValueError(f"{model} expects input (B, {in_channels}, H, W), got {tuple(image.shape)}")
    h, w = image.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(f"{model} needs H and W divisible by {multiple}, got {h}x{w}")


# ----------------------------------------------------------------------------------------------------------
# U-Net building blocks (T1, S1, S2)
# ----------------------------------------------------------------------------------------------------------


class DoubleConvBNReLU(nn.Module):
    """[Conv3x3 (with bias) -> BN -> ReLU] x 2, spatial size kept (T1's ``conv_block``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))


class SingleConvBNReLU(nn.Module):
    """One Conv3x3 (with bias) -> BN -> ReLU, spatial size kept (the students' ``conv_block``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class EncoderLevel(nn.Module):
    """A conv block followed by 2x2 max-pooling held in its own module ``pool`` (a hookable tap).

    ``forward`` returns ``(features, pooled)``: the skip connection at the level's resolution and the
    half-resolution input of the next level.
    """

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.conv(x)
        return features, self.pool(features)


class DecoderLevel(nn.Module):
    """ConvTranspose 2x2 stride 2 (``cin -> cout``), concatenation ``[up, skip]``, then a conv block.

    The skip has ``cout`` channels, so the block sees ``2 * cout`` input channels.
    """

    def __init__(self, cin: int, cout: int, conv: nn.Module):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.conv = conv

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


@MODELS.register("mtms_t1")
class MTMSMultiTaskUNet(nn.Module):
    """MTMS teacher T1: U-Net with a shared encoder and two decoders (segmentation, reconstruction).

    Encoder levels [Conv3x3-BN-ReLU] x 2 with widths 64, 128, 256, 512, each followed by 2x2 max-pooling;
    bottleneck 512 -> 1024 at H/16; each decoder goes 1024 -> 512 -> 256 -> 128 -> 64 with a 2x2 stride-2
    transposed convolution and concatenation of the shared encoder skip. Heads: 1x1 conv 64 -> 1
    (segmentation logits) and 64 -> 3 (reconstruction, no activation). 43,236,036 parameters at width 1,
    ``in_channels=3``.

    Tap paths (module outputs, for forward hooks; shapes for input ``(B, 3, H, W)`` at width 1):

    * ``b``: bottleneck features, ``(B, 1024, H/16, W/16)``;
    * ``e2.pool``: pooled second encoder level (the paper's ``p2``), ``(B, 128, H/4, W/4)``;
    * ``d4_seg``: last segmentation-decoder features, ``(B, 64, H, W)``;
    * also ``e<i>.conv`` (skips), ``d<i>_seg``, ``d<i>_recon``.

    Args:
        in_channels: input image channels (3 in the paper: grey CT replicated to RGB).
        out_channels: segmentation logits (1 in the paper: binary spleen).
        recon_channels: reconstruction channels; ``None`` means ``in_channels`` (the target is the input).
        width: channel multiplier (1.0 = paper).

    Raises:
        ValueError: non-positive width; in ``forward``, a wrong channel count or H, W not divisible by 16.
    """
    # NHWC on CPU, in both (benchmarks/memory_format.py, x NCHW time: train 0.81-0.82x, inference 0.63-0.74x)
    cpu_channels_last = ("train", "eval")

    def __init__(
        self, in_channels: int = 3, out_channels: int = 1, recon_channels: int | None = None, width: float = 1.0
    ):
        super().__init__()
        width = _check_width(width)
        self.in_channels = in_channels
        c = [scaled_channels(n, width) for n in (64, 128, 256, 512, 1024)]
        recon_channels = in_channels if recon_channels is None else recon_channels
        self.e1 = EncoderLevel(DoubleConvBNReLU(in_channels, c[0]))
        self.e2 = EncoderLevel(DoubleConvBNReLU(c[0], c[1]))
        self.e3 = EncoderLevel(DoubleConvBNReLU(c[1], c[2]))
        self.e4 = EncoderLevel(DoubleConvBNReLU(c[2], c[3]))
        self.b = DoubleConvBNReLU(c[3], c[4])
        for suffix in ("seg", "recon"):
            for i, (cin, cout) in enumerate(zip(c[:0:-1], c[-2::-1]), start=1):
                setattr(self, f"d{i}_{suffix}", DecoderLevel(cin, cout, DoubleConvBNReLU(2 * cout, cout)))
        self.segmentation_output = nn.Conv2d(c[0], out_channels, kernel_size=1)
        self.reconstruction_output = nn.Conv2d(c[0], recon_channels, kernel_size=1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: image ``(B, in_channels, H, W)``. Returns ``{"out": (B, out_channels, H, W) logits,
        "recon": (B, recon_channels, H, W)}``."""
        _check_image(image, self.in_channels, 16, "mtms_t1")
        s1, p1 = self.e1(image)
        s2, p2 = self.e2(p1)
        s3, p3 = self.e3(p2)
        s4, p4 = self.e4(p3)
        b = self.b(p4)
        outputs = {}
        for suffix in ("seg", "recon"):
            x = b
            for i, skip in enumerate((s4, s3, s2, s1), start=1):
                x = getattr(self, f"d{i}_{suffix}")(x, skip)
            outputs[suffix] = x
        return {
            "out": self.segmentation_output(outputs["seg"]),
            "recon": self.reconstruction_output(outputs["recon"]),
        }


class MTMSSmallUNet(nn.Module):
    """MTMS student: two encoder levels and a bottleneck, one Conv3x3-BN-ReLU each; two decoder levels.

    Widths ``base, 2*base, 4*base`` (S1: base 16; S2: base 32). Encoder ``in -> base -> 2*base`` with 2x2
    max-pooling, bottleneck ``2*base -> 4*base`` at H/4, decoder ConvTranspose ``4*base -> 2*base`` (+ skip)
    then conv, ``2*base -> base`` (+ skip) then conv, 1x1 head ``base -> out_channels``.

    Tap paths (shapes at width 1 for S1; S2 doubles the channels):

    * ``b``: bottleneck, ``(B, 64, H/4, W/4)``;
    * ``e2.pool``: pooled second encoder level (the paper's ``p2``), ``(B, 32, H/4, W/4)``;
    * ``d2``: last decoder features, ``(B, 16, H, W)``.

    Args:
        in_channels: input image channels (3 in the paper).
        out_channels: logits (1 in the paper).
        base: first-level width before the width multiplier.
        width: channel multiplier (1.0 = paper).

    Raises:
        ValueError: non-positive width; in ``forward``, a wrong channel count or H, W not divisible by 4.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base: int = 16, width: float = 1.0):
        super().__init__()
        width = _check_width(width)
        self.in_channels = in_channels
        c1, c2, c3 = (scaled_channels(n, width) for n in (base, 2 * base, 4 * base))
        self.e1 = EncoderLevel(SingleConvBNReLU(in_channels, c1))
        self.e2 = EncoderLevel(SingleConvBNReLU(c1, c2))
        self.b = SingleConvBNReLU(c2, c3)
        self.d1 = DecoderLevel(c3, c2, SingleConvBNReLU(2 * c2, c2))
        self.d2 = DecoderLevel(c2, c1, SingleConvBNReLU(2 * c1, c1))
        self.outputs = nn.Conv2d(c1, out_channels, kernel_size=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Args: image ``(B, in_channels, H, W)``. Returns logits ``(B, out_channels, H, W)``."""
        _check_image(image, self.in_channels, 4, getattr(self, "registry_name", "mtms student"))
        s1, p1 = self.e1(image)
        s2, p2 = self.e2(p1)
        b = self.b(p2)
        return self.outputs(self.d2(self.d1(b, s2), s1))


@MODELS.register("mtms_s1")
class MTMSStudentS1(MTMSSmallUNet):
    """MTMS student S1 ("U-Net-S"): :class:`MTMSSmallUNet` with base 16; 57,297 parameters at width 1."""
    # NHWC on CPU, in both (benchmarks/memory_format.py, x NCHW time: train 0.73-0.77x, inference 0.61x)
    cpu_channels_last = ("train", "eval")

    def __init__(self, in_channels: int = 3, out_channels: int = 1, width: float = 1.0):
        super().__init__(in_channels=in_channels, out_channels=out_channels, base=16, width=width)


@MODELS.register("mtms_s2")
class MTMSStudentS2(MTMSSmallUNet):
    """MTMS student S2 ("U-Net"): :class:`MTMSSmallUNet` with base 32; 227,233 parameters at width 1."""
    # NHWC on CPU, for inference only (benchmarks/memory_format.py, x NCHW time: inference 0.61-0.63x;
    # train 0.84-0.96x, unsteady)
    cpu_channels_last = ("eval",)

    def __init__(self, in_channels: int = 3, out_channels: int = 1, width: float = 1.0):
        super().__init__(in_channels=in_channels, out_channels=out_channels, base=32, width=width)


# ----------------------------------------------------------------------------------------------------------
# TransUNet building blocks (T2)
# ----------------------------------------------------------------------------------------------------------


class DilatedBottleneck(nn.Module):
    """ResNet bottleneck with expansion 1 and a dilation-3 middle convolution (T2's encoder stage).

    conv1x1 ``cin -> cout`` -> BN -> ReLU -> conv3x3 ``cout -> cout`` (dilation 3, padding 3, ``stride``)
    -> BN -> ReLU -> conv1x1 ``cout -> cout`` -> BN; plus the shortcut (1x1 conv ``cin -> cout`` with
    ``stride`` + BN when shape changes, identity otherwise); ReLU of the sum. Convolutions have no bias.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 3):
        super().__init__()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.downsample = nn.Identity()
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(
            cout, cout, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv3 = nn.Conv2d(cout, cout, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


class ConvBNReLUBiased(nn.Module):
    """Conv3x3 (with bias, padding 1) -> BN -> ReLU held in ``conv`` (T2's ``SignleConv``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class TwoConvBNReLUBiased(nn.Module):
    """Two :class:`ConvBNReLUBiased` in ``conv`` (T2's ``DoubleConv``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(ConvBNReLUBiased(cin, cout), ConvBNReLUBiased(cout, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class BilinearUp(nn.Module):
    """Bilinear x2 upsampling (align_corners=True), optional concatenation ``[skip, up]``, two conv blocks.

    ``cin`` is the channel count after concatenation (the skip's plus the upsampled input's).
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = TwoConvBNReLUBiased(cin, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with ``heads * dim_head`` inner width (may differ from ``dim``).

    ``to_qkv``: Linear ``dim -> 3 * heads * dim_head`` without bias; scaled dot product with scale
    ``dim_head ** -0.5``; ``to_out``: Linear ``heads * dim_head -> dim`` with bias.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = dropout
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, N, dim)``. Returns ``(B, N, dim)``."""
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class PostNormTransformerBlock(nn.Module):
    """Post-norm transformer block: ``y = LN(x + MHSA(x))``, ``out = LN(y + MLP(y))``, GELU MLP."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.mhsa = MultiHeadSelfAttention(dim, heads, dim_head, dropout)
        self.drop = nn.Dropout(dropout)
        self.norm_1 = nn.LayerNorm(dim)
        self.norm_2 = nn.LayerNorm(dim)
        self.linear = nn.Sequential(
            nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm_1(self.drop(self.mhsa(x)) + x)
        return self.norm_2(self.linear(y) + y)


class TransformerStack(nn.Module):
    """Transformer blocks applied in order, held in ``layers``."""

    def __init__(self, blocks: Iterable[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            x = block(x)
        return x


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Feature map ``(B, C, H, W)`` -> tokens ``(B, (H/p)*(W/p), p*p*C)`` in the original T2 layout.

    The original splits each spatial axis as ``(patch, n)`` with the patch index outermost, i.e. row
    ``h = i_patch * n_rows + i_token``: a token gathers a strided grid of pixels, and its vector is ordered
    ``(patch_row, patch_col, channel)``. With a single token (the paper's 16x16 map, patch 16) this is
    simply the channels-last flattening of the whole map.
    """
    b, c, h, w = x.shape
    nh, nw = h // patch, w // patch
    x = x.reshape(b, c, patch, nh, patch, nw).permute(0, 3, 5, 2, 4, 1)
    return x.reshape(b, nh * nw, patch * patch * c)


def unpatchify(tokens: torch.Tensor, patch: int, channels: int, nh: int, nw: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, nh*nw, p*p*C)`` -> ``(B, C, p*nh, p*nw)``."""
    b = tokens.shape[0]
    x = tokens.reshape(b, nh, nw, patch, patch, channels).permute(0, 5, 3, 1, 4, 2)
    return x.reshape(b, channels, patch * nh, patch * nw)


class SingleTokenViT(nn.Module):
    """ViT encoder over a feature map (no classification head), as in T2.

    Patches (see :func:`patchify`) are projected by ``project_patches`` (Linear ``p*p*C -> dim``), a learned
    CLS token is prepended and a learned 1-D position embedding (``tokens + 1`` rows) added; ``blocks``
    post-norm transformer blocks follow and the CLS token is dropped from the output.

    Returns tokens ``(B, tokens, dim)``.
    """

    def __init__(
        self, img_dim: int, channels: int, patch: int, dim: int, blocks: int, heads: int, dim_head: int,
        mlp_dim: int, dropout: float = 0.0,
    ):
        super().__init__()
        if img_dim % patch:
            raise ValueError(f"ViT input size {img_dim} is not divisible by the patch size {patch}")
        self.patch = patch
        tokens = (img_dim // patch) ** 2
        self.project_patches = nn.Linear(channels * patch * patch, dim)
        self.emb_dropout = nn.Dropout(dropout)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_emb1D = nn.Parameter(torch.randn(tokens + 1, dim))
        self.transformer = TransformerStack(
            PostNormTransformerBlock(dim, heads, dim_head, mlp_dim, dropout) for _ in range(blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.project_patches(patchify(x, self.patch))
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = self.emb_dropout(tokens + self.pos_emb1D[: tokens.shape[1]])
        return self.transformer(tokens)[:, 1:]


@MODELS.register("mtms_t2")
class MTMSMultiTaskTransUNet(nn.Module):
    """MTMS teacher T2: multi-task TransUNet with a single-token ViT bottleneck.

    Layers at width 1 and 256x256 input (172,625,028 parameters):

    * ``init_conv``: Conv7x7 stride 2, ``in -> 128`` (no bias) + BN + ReLU -> x2 ``(128, H/2)``;
    * ``conv1``/``conv2``/``conv3``: :class:`DilatedBottleneck` stride 2, 128 -> 256 (x4, H/4), 256 -> 512
      (x8, H/8), 512 -> 1024 (x16, H/16);
    * ``vit``: x16 (a 16x16x1024 map) is one patch of 16x16, i.e. a single token of 262,144 values,
      projected to 256; CLS token; learned 1-D position embedding; 8 post-norm blocks with 12 heads of
      dim 21 (inner 252), MLP 2048, GELU, dropout 0;
    * ``project_patches_back``: Linear 256 -> 262,144, reshaped to ``(1024, H/16, W/16)``;
    * ``vit_conv``: Conv3x3 1024 -> 512 + BN + ReLU -> y ``(512, H/16)``;
    * two decoders ``dec1..dec4`` (segmentation) and ``dec1_rec..dec4_rec`` (reconstruction): bilinear x2 +
      two Conv3x3-BN-ReLU, [y, x8] 1024 -> 256, [., x4] 512 -> 128, [., x2] 256 -> 64, then 64 -> 16 without
      skip (H);
    * heads 1x1 ``segmentation_output`` 16 -> 1 and ``reconstruction_output`` 16 -> 3.

    Tap paths (shapes at width 1):

    * ``conv1``: x4, ``(B, 256, H/4, W/4)``;
    * ``vit_conv``: y, ``(B, 512, H/16, W/16)``;
    * ``dec4``: last segmentation-decoder features, ``(B, 16, H, W)``.

    Args:
        in_channels: input channels (3 in the paper).
        out_channels: segmentation logits (1 in the paper).
        recon_channels: reconstruction channels; ``None`` means ``in_channels``.
        img_dim: the (square) input size the ViT is built for (256 in the paper); inputs must match it.
        width: multiplier of every channel count and of the transformer dim, heads and MLP width.
        patch_size: ViT patch size on the H/16 map; ``None`` means the whole map (``img_dim // 16``): a
            single token, which is the paper's configuration (patch 16 at 256 input).
        vit_blocks: number of transformer blocks (8).
        vit_dropout: dropout in the ViT (0 in the paper).

    Raises:
        ValueError: non-positive width, ``img_dim`` not divisible by 16, or the H/16 map not divisible by
            the patch size; in ``forward``, input not ``(B, in_channels, img_dim, img_dim)``.
    """
    # NHWC on CPU, for inference only (benchmarks/memory_format.py, x NCHW time: inference 0.70-0.74x; train 0.95-1.10x)
    cpu_channels_last = ("eval",)

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        recon_channels: int | None = None,
        img_dim: int = 256,
        width: float = 1.0,
        patch_size: int | None = None,
        vit_blocks: int = 8,
        vit_dropout: float = 0.0,
    ):
        super().__init__()
        width = _check_width(width)
        if img_dim % 16:
            raise ValueError(f"img_dim must be divisible by 16 (four stride-2 stages), got {img_dim}")
        self.in_channels = in_channels
        self.img_dim = img_dim
        self.img_dim_vit = img_dim // 16
        self.patch_size = self.img_dim_vit if patch_size is None else patch_size
        if self.patch_size <= 0 or self.img_dim_vit % self.patch_size:
            raise ValueError(f"ViT patch size {self.patch_size} does not divide the {self.img_dim_vit}-pixel map")
        recon_channels = in_channels if recon_channels is None else recon_channels
        c128, c256, c512, c1024, c64, c16 = (scaled_channels(n, width) for n in (128, 256, 512, 1024, 64, 16))
        dim, heads, mlp_dim = (scaled_channels(n, width) for n in (256, 12, 2048))
        self.vit_channels = c1024

        self.init_conv = nn.Sequential(
            nn.Conv2d(in_channels, c128, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(c128),
            nn.ReLU(inplace=True),
        )
        self.conv1 = DilatedBottleneck(c128, c256, stride=2)
        self.conv2 = DilatedBottleneck(c256, c512, stride=2)
        self.conv3 = DilatedBottleneck(c512, c1024, stride=2)
        self.vit = SingleTokenViT(
            img_dim=self.img_dim_vit, channels=c1024, patch=self.patch_size, dim=dim, blocks=vit_blocks,
            heads=heads, dim_head=dim // heads, mlp_dim=mlp_dim, dropout=vit_dropout,
        )
        self.project_patches_back = nn.Linear(dim, c1024 * self.patch_size**2)
        self.vit_conv = ConvBNReLUBiased(c1024, c512)
        for suffix in ("", "_rec"):
            setattr(self, f"dec1{suffix}", BilinearUp(c512 + c512, c256))
            setattr(self, f"dec2{suffix}", BilinearUp(c256 + c256, c128))
            setattr(self, f"dec3{suffix}", BilinearUp(c128 + c128, c64))
            setattr(self, f"dec4{suffix}", BilinearUp(c64, c16))
        self.segmentation_output = nn.Conv2d(c16, out_channels, kernel_size=1)
        self.reconstruction_output = nn.Conv2d(c16, recon_channels, kernel_size=1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: image ``(B, in_channels, img_dim, img_dim)``. Returns ``{"out": (B, out_channels, H, W)
        logits, "recon": (B, recon_channels, H, W)}``."""
        _check_image(image, self.in_channels, 16, "mtms_t2")
        if tuple(image.shape[-2:]) != (self.img_dim, self.img_dim):
            raise ValueError(
                f"mtms_t2 was built for {self.img_dim}x{self.img_dim} inputs (img_dim), got "
                f"{image.shape[-2]}x{image.shape[-1]}"
            )
        x2 = self.init_conv(image)
        x4 = self.conv1(x2)
        x8 = self.conv2(x4)
        x16 = self.conv3(x8)
        n = self.img_dim_vit // self.patch_size
        tokens = self.project_patches_back(self.vit(x16))
        y = self.vit_conv(unpatchify(tokens, self.patch_size, self.vit_channels, n, n))
        seg = self.dec4(self.dec3(self.dec2(self.dec1(y, x8), x4), x2))
        rec = self.dec4_rec(self.dec3_rec(self.dec2_rec(self.dec1_rec(y, x8), x4), x2))
        return {"out": self.segmentation_output(seg), "recon": self.reconstruction_output(rec)}
