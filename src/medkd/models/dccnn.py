"""DC-CNN: a cascade of small CNNs, each followed by hard data consistency (KD-MRI teacher and student).

KD-MRI (Murugesan et al., MIDL 2020) distils a DC-CNN teacher (Schlemper et al.) into a shallower
student for single-coil Cartesian MRI reconstruction:

* teacher ``DCTeacherNet``: 5 cascades x 5 convs (1->32, 3 x 32->32, 32->1), 141,765 parameters;
* student ``DCStudentNet``: 5 cascades x 3 convs (1->32, 32->32, 32->1), 49,285 parameters (65% fewer).

All convs are 3x3 with padding 1 and bias; ReLU after every conv but the last of a cascade. The first
cascade reads the zero-filled magnitude image. Every cascade ends with a noise-free data-consistency
(DC) layer ``k = m * k0 + (1 - m) * FFT(x)`` (orthonormal FFT in float64), whose output is the **real
part** of the inverse FFT (KD-MRI's code; not the magnitude).

Residual switch: the paper figure draws a residual connection around each cascade's CNN; the shipped
code has none (the cascade output is the last conv directly). ``residual=False`` (default) follows the
code, ``residual=True`` the figure (cascade input added to the last conv's output, before DC).

Tap paths (module outputs recorded by :mod:`medkd.distill.taps`):

* ``cascades.<c>.conv<i>``: output of conv i of cascade c (0-based c, 1-based i), before its ReLU;
* ``cascades.<c>.relu<i>``: the activation after conv i, i.e. the feature map conv i+1 reads. This is
  what KD-MRI's networks return as their i-th feature (``x_i = relu(conv_i(x_{i-1}))``), so the
  attention-transfer taps are the **relu** modules: teacher ``cascades.<c>.relu3`` (KD-MRI's teacher
  index 2) and student ``cascades.<c>.relu2`` (student index 1), for c = 0..4;
* ``cascades.<c>.dc``: the cascade's output after data consistency; ``cascades.<c>``: the same.

Inputs (``input_keys = ("image", "kspace", "mask")``): ``image`` float32 ``(B, 1, H, W)``; ``kspace``
complex ``(B, H, W)`` undersampled k-space, orthonormal and un-centred (DC at ``[0, 0]``); ``mask``
float ``(B, H, W)`` or ``(H, W)``, same layout. Output ``(B, 1, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from medkd.models import MODELS


def _as_bhw(t: torch.Tensor, name: str) -> torch.Tensor:
    """Accept ``(B, H, W)``, ``(B, 1, H, W)`` or (mask only) ``(H, W)``; return ``(B, H, W)`` or ``(H, W)``."""
    if t.dim() == 4 and t.shape[1] == 1:
        return t[:, 0]
    if t.dim() in (2, 3):
        return t
    raise ValueError(f"{name} must be (B, H, W) or (B, 1, H, W), got shape {tuple(t.shape)}")


class DataConsistency(nn.Module):
    """Hard (noise-free) data consistency in k-space, computed in float64.

    ``k = m * k0 + (1 - m) * F(x)`` with ``F`` the orthonormal, un-centred 2-D FFT (:meth:`kspace`
    returns it, complex128): on sampled lines (m = 1) it equals the measured ``k0``, elsewhere the
    prediction's spectrum ``F(x)``. The output is ``Re(F^-1(k))`` cast back to the input's dtype
    (KD-MRI's code). Taking the real part keeps the output's spectrum equal to ``k`` only when ``k`` is
    Hermitian-symmetric, i.e. when ``k0`` comes from a real image and the mask is symmetric under
    ``k -> -k``; with an asymmetric random mask the discarded imaginary part also changes the sampled
    lines a little, as in the shipped model. Parameter-free.
    """

    @staticmethod
    def kspace(x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The data-consistent k-space ``m * k0 + (1 - m) * F(x)``, complex128 ``(B, H, W)``.

        Args and Raises as :meth:`forward`.
        """
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"image must be (B, 1, H, W), got shape {tuple(x.shape)}")
        kspace = _as_bhw(kspace, "kspace")
        mask = _as_bhw(mask, "mask")
        if not kspace.is_complex():
            raise ValueError(f"kspace must be a complex tensor, got {kspace.dtype}")
        if kspace.shape[-2:] != x.shape[-2:] or mask.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"kspace {tuple(kspace.shape)} / mask {tuple(mask.shape)} do not match the image "
                             f"{tuple(x.shape)}")
        m = mask.to(torch.float64)
        k_pred = torch.fft.fft2(x[:, 0].to(torch.float64), norm="ortho")
        return m * kspace.to(torch.complex128) + (1.0 - m) * k_pred

    def forward(self, x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Apply data consistency.

        Args:
            x: predicted image ``(B, 1, H, W)``, real.
            kspace: measured undersampled k-space ``(B, H, W)`` (or ``(B, 1, H, W)``), complex.
            mask: sampling mask ``(B, H, W)``, ``(B, 1, H, W)`` or ``(H, W)``, 0/1.

        Returns:
            ``(B, 1, H, W)`` real image ``Re(F^-1(k))``, dtype of ``x``.

        Raises:
            ValueError: shapes that do not match ``x``, or a real-valued ``kspace``.
        """
        k = self.kspace(x, kspace, mask)
        return torch.fft.ifft2(k, norm="ortho").real.to(x.dtype).unsqueeze(1)


class DCCascade(nn.Module):
    """One cascade: ``n_convs`` 3x3 convs (1->w, (n_convs-2) x w->w, w->1), ReLU after all but the last,
    optional residual, then :class:`DataConsistency` (``dc``).

    Args:
        n_convs: number of convs (>= 2).
        width: channels of the hidden convs.
        residual: add the cascade input to the last conv's output before DC (paper figure).
    """

    def __init__(self, n_convs: int, width: int, residual: bool = False):
        super().__init__()
        self.n_convs = n_convs
        self.residual = residual
        for i in range(1, n_convs + 1):
            cin = 1 if i == 1 else width
            cout = 1 if i == n_convs else width
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1))
            if i < n_convs:
                setattr(self, f"relu{i}", nn.ReLU(inplace=False))
        self.dc = DataConsistency()

    def forward(self, x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = x
        for i in range(1, self.n_convs + 1):
            h = getattr(self, f"conv{i}")(h)
            if i < self.n_convs:
                h = getattr(self, f"relu{i}")(h)
        if self.residual:
            h = h + x
        return self.dc(h, kspace, mask)


@MODELS.register("dccnn")
class DCCNN(nn.Module):
    """DC-CNN with ``n_cascades`` cascades of ``n_convs`` convs (see the module docstring for taps).

    Parameter count: per cascade ``(9 w + w) + (n_convs - 2)(9 w^2 + w) + (9 w + 1)``; with w = 32:
    5 x 5 -> 5 x 28,353 = 141,765 (KD-MRI teacher), 5 x 3 -> 5 x 9,857 = 49,285 (student).

    Args:
        in_channels: must be 1 (single-coil magnitude/real image).
        out_channels: must be 1.
        n_cascades: number of CNN + DC cascades (KD-MRI: 5).
        n_convs: convs per cascade, >= 2 (teacher 5, student 3).
        width: hidden channels (32).
        residual: False = shipped code (no residual); True = paper figure (residual per cascade).

    Raises:
        ValueError: other channel counts, ``n_cascades < 1``, ``n_convs < 2`` or ``width < 1``.
    """

    input_keys = ("image", "kspace", "mask")

    def __init__(self, in_channels: int = 1, out_channels: int = 1, n_cascades: int = 5, n_convs: int = 5,
                 width: int = 32, residual: bool = False):
        super().__init__()
        if in_channels != 1 or out_channels != 1:
            raise ValueError(f"DC-CNN works on one real image channel; got in_channels={in_channels}, "
                             f"out_channels={out_channels}")
        if n_cascades < 1 or n_convs < 2 or width < 1:
            raise ValueError(f"DC-CNN needs n_cascades >= 1, n_convs >= 2, width >= 1; got {n_cascades}, "
                             f"{n_convs}, {width}")
        self.cascades = nn.ModuleList(DCCascade(n_convs, width, residual) for _ in range(n_cascades))

    def forward(self, image: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Reconstruct.

        Args:
            image: zero-filled image ``(B, 1, H, W)``.
            kspace: undersampled k-space ``(B, H, W)`` complex (orthonormal, un-centred).
            mask: ``(B, H, W)`` or ``(H, W)`` 0/1 sampling mask.

        Returns:
            Reconstruction ``(B, 1, H, W)``, dtype of ``image``.
        """
        x = image
        for cascade in self.cascades:
            x = cascade(x, kspace, mask)
        return x


@MODELS.register("dccnn_teacher")
class DCCNNTeacher(DCCNN):
    """KD-MRI teacher preset: 5 cascades x 5 convs, width 32 (141,765 parameters).

    AT tap (KD-MRI teacher conv3 output after ReLU): ``cascades.<c>.relu3`` for c = 0..4.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, residual: bool = False):
        super().__init__(in_channels, out_channels, n_cascades=5, n_convs=5, width=32, residual=residual)


@MODELS.register("dccnn_student")
class DCCNNStudent(DCCNN):
    """KD-MRI student preset: 5 cascades x 3 convs, width 32 (49,285 parameters).

    AT tap (KD-MRI student conv2 output after ReLU): ``cascades.<c>.relu2`` for c = 0..4.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, residual: bool = False):
        super().__init__(in_channels, out_channels, n_cascades=5, n_convs=3, width=32, residual=residual)


def attention_taps(model: DCCNN, conv_index: int) -> list[str]:
    """Tap paths of the activation after conv ``conv_index`` in every cascade, in cascade order.

    ``attention_taps(teacher, 3)`` -> ``["cascades.0.relu3", ..., "cascades.4.relu3"]``.

    Raises:
        ValueError: ``conv_index`` is the last conv (no ReLU) or out of range.
    """
    n_convs = model.cascades[0].n_convs
    if not 1 <= conv_index < n_convs:
        raise ValueError(f"conv_index must lie in [1, {n_convs - 1}] (convs followed by a ReLU), got {conv_index}")
    return [f"cascades.{c}.relu{conv_index}" for c in range(len(model.cascades))]
