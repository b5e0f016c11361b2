"""VDSR (Kim et al., CVPR 2016) as used by KD-MRI for MRI super-resolution.

KD-MRI (Murugesan et al., MIDL 2020) super-resolves Calgary-Campinas slices whose k-space was truncated
to the centre 64x64 of 256x256 (x4 per axis, :func:`medkd.data.kspace.kspace_truncate`); input and
output have the same size. Architecture: ``n_convs`` 3x3 convs with padding 1 and bias, 1->64,
(n_convs - 2) x 64->64, 64->1, ReLU after every conv but the last, and a global residual
``out = x + body(x)``.

* teacher: 11 convs, 333,569 parameters ("333K" in the paper table);
* student: 7 convs, 185,857 parameters ("185K").

Initialisation (``init``): ``"pytorch"`` (default) keeps PyTorch's default, as KD-MRI's code does; its
10-conv body then starts as a near-constant map (the signal shrinks at every conv + ReLU), so the network
begins as ``x + c`` and needs many updates before it improves on its input. ``"kaiming"`` is VDSR's own
(Kim et al. 2016, He et al. 2015): He-normal kernels (fan-in, ReLU gain) and zero biases for every conv but
the last, and a zero last conv, so the network starts as the identity ``out = x`` and the body's
features keep their scale through the depth.

Tap paths: ``conv<i>`` (before ReLU) and ``relu<i>`` (after ReLU; 1-based i). KD-MRI's networks return
``x_i = relu(conv_i(...))``, so its attention-transfer pair "teacher conv6 <-> student conv4" is
``relu6`` (teacher) <-> ``relu4`` (student) here. ``out`` is the final image.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from medkd.models import MODELS

INITS = ("pytorch", "kaiming")


@MODELS.register("vdsr")
class VDSR(nn.Module):
    """VDSR with ``n_convs`` convs of ``width`` channels and a global residual.

    Parameter count: ``(9 w + w) + (n_convs - 2)(9 w^2 + w) + (9 w + 1)``; w = 64: 11 convs ->
    640 + 9 x 36,928 + 577 = 333,569; 7 convs -> 640 + 5 x 36,928 + 577 = 185,857.

    Args:
        in_channels: image channels (the residual needs ``in_channels == out_channels``; KD-MRI: 1).
        out_channels: output channels.
        n_convs: number of convs, >= 2 (teacher 11, student 7).
        width: hidden channels (64).
        init: ``"pytorch"`` (PyTorch's default, KD-MRI's code) or ``"kaiming"`` (VDSR's He init, zero last
            conv: starts as the identity).

    Raises:
        ValueError: ``in_channels != out_channels``, ``n_convs < 2``, ``width < 1`` or an unknown ``init``.
    """
    # NHWC on CPU, for inference only (benchmarks/memory_format.py, x NCHW time: inference 0.33-0.94x; train 0.93-1.23x)
    cpu_channels_last = ("eval",)

    input_keys = ("image",)

    def __init__(self, in_channels: int = 1, out_channels: int = 1, n_convs: int = 11, width: int = 64,
                 init: str = "pytorch"):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"VDSR init must be one of {INITS}, got {init!r}")
        if in_channels != out_channels:
            raise ValueError(f"VDSR's global residual needs in_channels == out_channels, got {in_channels} "
                             f"and {out_channels}")
        if n_convs < 2 or width < 1:
            raise ValueError(f"VDSR needs n_convs >= 2 and width >= 1, got {n_convs}, {width}")
        self.n_convs = n_convs
        for i in range(1, n_convs + 1):
            cin = in_channels if i == 1 else width
            cout = out_channels if i == n_convs else width
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1))
            if i < n_convs:
                setattr(self, f"relu{i}", nn.ReLU(inplace=False))
        if init == "kaiming":
            for i in range(1, n_convs + 1):
                conv = getattr(self, f"conv{i}")
                if i < n_convs:
                    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
                else:
                    nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Super-resolve.

        Args:
            image: low-resolution input at full size ``(B, C, H, W)``.

        Returns:
            ``(B, C, H, W)``: ``image + body(image)``.
        """
        h = image
        for i in range(1, self.n_convs + 1):
            h = getattr(self, f"conv{i}")(h)
            if i < self.n_convs:
                h = getattr(self, f"relu{i}")(h)
        return image + h


@MODELS.register("vdsr_teacher")
class VDSRTeacher(VDSR):
    """KD-MRI VDSR teacher: 11 convs x 64 channels (333,569 parameters); AT tap ``relu6``. ``width`` and
    ``init`` as :class:`VDSR` (embedded scale narrows both networks for CPU time)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 64, init: str = "pytorch"):
        super().__init__(in_channels, out_channels, n_convs=11, width=width, init=init)


@MODELS.register("vdsr_student")
class VDSRStudent(VDSR):
    """KD-MRI VDSR student: 7 convs x 64 channels (185,857 parameters); AT tap ``relu4``. ``width`` and
    ``init`` as :class:`VDSR`."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 64, init: str = "pytorch"):
        super().__init__(in_channels, out_channels, n_convs=7, width=width, init=init)
