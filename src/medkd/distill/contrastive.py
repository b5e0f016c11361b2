"""MTMS distillation terms: multi-scale contrastive (InfoNCE) feature KD and prediction-map distillation.

Reference: docs/sources.md section 2.3 (MTMS, arXiv 2406.03173, code ``train_Student.py``).

``infonce``: each sample's feature map is flattened to one embedding; the student embedding is the query,
the teacher embedding of the *same* sample the positive key, and the teacher embeddings of the *other*
samples in the batch the negatives (the ``info-nce-pytorch`` package's default "unpaired" mode). Both are
L2-normalised, ``logits = S @ T^T / tau`` (B x B) and the loss is the cross-entropy with the diagonal as
the target class. Teacher maps are resized to the student's grid (bilinear, ``align_corners=False``) and
channel counts are matched by a 1x1 convolution on the teacher side (``project="teacher"``, encoder and
bottleneck pairs) or on the student side (``project="student"``, the T1 decoder pairs).

Fidelity switch ``adapter``:

* ``"learned"`` (default, the paper's reading): the 1x1 convolution is a parameter of the loss and is
  optimised with the student (the engine adds loss parameters to the optimiser).
* ``"random_per_step"`` (the shipped code): a fresh 1x1 convolution with PyTorch's default initialisation,
  drawn from the global RNG at every call and never optimised (a random projection).
* ``"none"``: no adapter; student and teacher channel counts must already match (T2-S1 decoder pair).

``pmd``: prediction-map distillation with switch ``mode``:

* ``"sigmoid_kl"`` (default, the idea): binary KL ``KL(sigmoid(t/T) || sigmoid(s/T))`` per pixel, averaged
  over pixels, times ``T^2``, ``T = 4``.
* ``"code_zero"`` (the shipped code): softmax / log-softmax over the channel dimension, which for the
  single-logit maps of MTMS has size 1, so the loss is identically 0 with zero gradient. It is computed
  the same way here (a real zero inside the autograd graph), so reproducing the paper's *numbers* keeps
  the term without effect.

MTMS per-variant settings (docs/sources.md 2.3; T = teacher, S = student; shapes for 256x256 input; tap paths of
:mod:`medkd.models.mtms`; "a -> b" is the 1x1 adapter). Bottleneck (B-B) and encoder (E-E) pairs use
``project="teacher"``; T1 decoder (D-D) pairs use ``project="student"``; the T2-S1 decoder pair needs no
adapter (``adapter="none"``). Weights are for seg (``dice``) / B-B / PMD / E-E / D-D::

    T1-S1  tau 0.4  weights 0.4 / 0.2 / 0.2 / 0.1 / 0.1
           B-B  T b (1024 @ 16^2) resized to 64^2, 1024 -> 64   vs  S b (64 @ 64^2)
           E-E  T e2.pool (128 @ 64^2), 128 -> 32              vs  S e2.pool (32 @ 64^2)
           D-D  S d2 (16 @ 256^2), 16 -> 64                    vs  T d4_seg (64 @ 256^2)
    T1-S2  tau 0.1  weights 0.4 / 0.2 / 0.2 / 0.1 / 0.1
           B-B  T b resized to 64^2, 1024 -> 128               vs  S b (128 @ 64^2)
           E-E  T e2.pool, 128 -> 64                           vs  S e2.pool (64 @ 64^2)
           D-D  S d2 (32 @ 256^2), 32 -> 64                    vs  T d4_seg
    T2-S1  tau 0.4  weights 0.5 / 0.2 / 0.1 / 0.1 / 0.1
           B-B  T vit_conv (512 @ 16^2) resized to 64^2, 512 -> 64  vs  S b
           E-E  T conv1 (256 @ 64^2), 256 -> 32                vs  S e2.pool
           D-D  T dec4 (16 @ 256^2)                            vs  S d2 (16), no adapter
    T2-S2  tau 0.4  weights 0.5 / 0.3 / 0.2 / - / -   (E-E and D-D are commented out in the code)
           B-B  T vit_conv resized to 64^2, 512 -> 128         vs  S b (128 @ 64^2)

The segmentation term of every KD student is ``dice`` (:mod:`medkd.distill.dice`); PMD pairs the student
logits ``out`` with the teacher logits ``out``. The MTMS code reshapes with the configured batch size
(``view(batch_size, -1)``), which breaks on a smaller last batch; here the batch size is read from the
tensors.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from medkd.distill import LOSSES, LossTerm

ADAPTERS = ("learned", "random_per_step", "none")
PROJECTIONS = ("teacher", "student")
PMD_MODES = ("sigmoid_kl", "code_zero")


def info_nce(query: torch.Tensor, positive_key: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives.

    Args:
        query: ``(B, ...)`` student embeddings (flattened per sample).
        positive_key: ``(B, ...)`` teacher embeddings with the same number of values per sample.
        temperature: softmax temperature ``tau`` (> 0).

    Returns:
        Scalar: ``mean_i -log softmax_j(<q_i, k_j> / tau)[i]`` with ``q``, ``k`` L2-normalised. With B = 1
        the only candidate is the positive, so the loss is exactly 0.

    Raises:
        ValueError: batch sizes or per-sample sizes differ.
    """
    if query.shape[0] != positive_key.shape[0]:
        raise ValueError(f"InfoNCE: batch sizes differ ({query.shape[0]} vs {positive_key.shape[0]})")
    q = query.reshape(query.shape[0], -1)
    k = positive_key.reshape(positive_key.shape[0], -1)
    if q.shape[1] != k.shape[1]:
        raise ValueError(
            f"InfoNCE: embeddings have {q.shape[1]} (student) and {k.shape[1]} (teacher) values per sample; "
            "match channels with an adapter and spatial sizes by resizing"
        )
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    logits = q @ k.transpose(0, 1) / temperature
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


def _single_tensor(x, role: str) -> torch.Tensor:
    """Unwrap a one-element list (a single listed tap); reject anything but one tensor."""
    if isinstance(x, (list, tuple)):
        if len(x) != 1:
            raise TypeError(f"{role} tap: expected one feature map, got a list of {len(x)}")
        x = x[0]
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{role} tap: expected a tensor, got {type(x).__name__}")
    return x


@LOSSES.register("infonce")
class ContrastiveFeatureKD(LossTerm):
    """InfoNCE between a student feature map and a teacher feature map (MTMS multi-scale KD).

    Args:
        student_channels: channels of the student tap (required unless ``adapter="none"``).
        teacher_channels: channels of the teacher tap (required unless ``adapter="none"``).
        project: which side the 1x1 adapter maps: ``"teacher"`` (teacher -> student channels) or
            ``"student"`` (student -> teacher channels).
        adapter: ``"learned"`` (paper reading, default), ``"random_per_step"`` (shipped code) or ``"none"``.
        temperature: InfoNCE temperature (MTMS: 0.4, 0.1 for T1-S2; the package default is 0.1).

    ``forward`` takes ``student (B, Cs, Hs, Ws)`` and ``teacher (B, Ct, Ht, Wt)``; the teacher is detached,
    resized to ``(Hs, Ws)`` when the grids differ, and the adapter applied; returns a scalar.

    Raises:
        ValueError: unknown ``adapter``/``project``, missing or non-positive channel counts, ``"none"``
            with different channel counts, non-positive temperature; in ``forward``, maps that are not 4-D,
            batch sizes or channel counts that do not match the configuration.
    """

    needs_teacher = True

    def __init__(
        self,
        student_channels: int | None = None,
        teacher_channels: int | None = None,
        project: str = "teacher",
        adapter: str = "learned",
        temperature: float = 0.1,
    ):
        super().__init__()
        if adapter not in ADAPTERS:
            raise ValueError(f"adapter must be one of {ADAPTERS}, got {adapter!r}")
        if project not in PROJECTIONS:
            raise ValueError(f"project must be one of {PROJECTIONS}, got {project!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        for name, value in (("student_channels", student_channels), ("teacher_channels", teacher_channels)):
            if value is None and adapter != "none":
                raise ValueError(f"{name} is required with adapter={adapter!r}")
            if value is not None and int(value) <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if adapter == "none" and None not in (student_channels, teacher_channels):
            if student_channels != teacher_channels:
                raise ValueError(
                    f"adapter='none' needs equal channel counts, got student {student_channels} and teacher "
                    f"{teacher_channels}"
                )
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.project = project
        self.adapter_mode = adapter
        self.temperature = float(temperature)
        if project == "teacher":
            self._adapter_in, self._adapter_out = teacher_channels, student_channels
        else:
            self._adapter_in, self._adapter_out = student_channels, teacher_channels
        self.adapter = nn.Conv2d(self._adapter_in, self._adapter_out, 1) if adapter == "learned" else None

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if self.adapter_mode == "none":
            return x
        if self.adapter_mode == "learned":
            return self.adapter(x)
        conv = nn.Conv2d(self._adapter_in, self._adapter_out, 1, device=x.device, dtype=x.dtype)
        conv.requires_grad_(False)
        return conv(x)

    def forward(self, student, teacher, batch, epoch):
        student = _single_tensor(student, "student")
        teacher = _single_tensor(teacher, "teacher").detach()
        if student.ndim != 4 or teacher.ndim != 4:
            raise ValueError(
                f"infonce expects (B, C, H, W) feature maps, got student {tuple(student.shape)} and teacher "
                f"{tuple(teacher.shape)}"
            )
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(f"batch sizes differ: student {student.shape[0]}, teacher {teacher.shape[0]}")
        for role, x, expected in (
            ("student", student, self.student_channels),
            ("teacher", teacher, self.teacher_channels),
        ):
            if expected is not None and x.shape[1] != expected:
                raise ValueError(f"{role} tap has {x.shape[1]} channels, configured {role}_channels={expected}")
        if teacher.shape[-2:] != student.shape[-2:]:
            teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
        if self.project == "teacher":
            teacher = self._project(teacher)
        else:
            student = self._project(student)
        return info_nce(student, teacher, self.temperature)


def binary_kl_with_temperature(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * mean_pixels [q log(q/p) + (1-q) log((1-q)/(1-p))]``, ``q = sigmoid(t/T)``, ``p = sigmoid(s/T)``.

    Args:
        student_logits, teacher_logits: single-logit maps of equal shape, e.g. ``(B, 1, H, W)``.
        temperature: ``T`` (> 0).

    Returns:
        Scalar tensor (>= 0; 0 iff the logits agree).
    """
    s = student_logits / temperature
    t = teacher_logits / temperature
    q = torch.sigmoid(t)
    kl = q * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - q) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return kl.mean() * temperature**2


def code_pmd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The MTMS code's ``PredictionMapDistillation``: ``T^2 * KL(softmax_c(t/T) || softmax_c(s/T))``
    summed and divided by ``numel / 2`` (``batchmean`` after ``view(-1, 2)``).

    With one channel, softmax is 1 and log-softmax 0 everywhere: the value is exactly 0 and so is the
    gradient, but the result stays attached to the student's graph.
    """
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    rows = max(1.0, student_logits.numel() / 2)
    return F.kl_div(log_p, q, reduction="sum") / rows * temperature**2


@LOSSES.register("pmd")
class PredictionMapDistillation(LossTerm):
    """MTMS prediction-map distillation between student and teacher logits ``(B, 1, H, W)``.

    Args:
        mode: ``"sigmoid_kl"`` (default, the method's idea: binary KL at temperature T, times T^2) or
            ``"code_zero"`` (what the shipped code computes: identically 0 for single-logit maps).
        temperature: T (4 in MTMS).

    Raises:
        ValueError: unknown mode, non-positive temperature; in ``forward``, logits of different shapes.
    """

    needs_teacher = True

    def __init__(self, mode: str = "sigmoid_kl", temperature: float = 4.0):
        super().__init__()
        if mode not in PMD_MODES:
            raise ValueError(f"mode must be one of {PMD_MODES}, got {mode!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.mode = mode
        self.temperature = float(temperature)

    def forward(self, student, teacher, batch, epoch):
        student = _single_tensor(student, "student")
        teacher = _single_tensor(teacher, "teacher").detach()
        if student.shape != teacher.shape:
            raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
        if self.mode == "code_zero":
            return code_pmd(student, teacher, self.temperature)
        return binary_kl_with_temperature(student, teacher, self.temperature)
