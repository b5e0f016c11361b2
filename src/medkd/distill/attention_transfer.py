"""KD-MRI's distillation terms: attention transfer between feature maps, and output imitation.

KD-MRI (Murugesan et al., MIDL 2020) trains the student in three steps: (1) teacher with L1 to the
ground truth; (2) student pre-trained with **only** an attention-transfer (AT) loss; (3) KD fine-tuning
with ``alpha * L1(S, GT) + (1 - alpha) * L1(S, T)`` (paper). Step 2 is :class:`AttentionTransfer`,
the teacher term of step 3 is :class:`ImitationL1`; the ground-truth term is the generic ``l1`` task loss.

Attention map (Zagoruyko & Komodakis, ICLR 2017): ``Q = sum_c F_c^2`` over the channels of a feature map
``F`` (B, C, H, W) -> (B, H, W), flattened to (B, H*W). Two normalisations (switch ``normalise``):

* ``"per_sample"`` (default, the paper's reading / Zagoruyko & Komodakis): each sample's map divided by
  its own L2 norm over pixels;
* ``"batch"`` (KD-MRI's shipped code, ``F.normalize(Q, dim=0)``): each pixel divided by the L2 norm of
  that pixel across the batch (KD-MRI trains with batch 4; with batch 1 every non-zero pixel becomes 1).

Loss = mean over the (teacher, student) pairs of the mean absolute difference of the normalised maps
(KD-MRI uses L1; Zagoruyko & Komodakis used a squared L2 distance). KD-MRI pairs teacher conv3 with
student conv2 (post-ReLU activations) in each of the 5 DC-CNN cascades, and teacher conv6 with student
conv4 in VDSR. Channel counts may differ between teacher and student; spatial sizes must match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medkd.distill import LOSSES, LossTerm

NORMALISATIONS = ("per_sample", "batch")
SCALINGS = ("paper", "per_element")
_EPS = 1e-12  # torch.nn.functional.normalize's default eps: a zero map stays zero


def _as_list(x, name: str) -> list[torch.Tensor]:
    if x is None:
        raise ValueError(f"{name} features are required (got None)")
    if isinstance(x, torch.Tensor):
        return [x]
    return list(x)


def _paired(student, teacher, loss: str, what: str) -> tuple[list, list]:
    """Student and teacher taps as two equally long, non-empty lists (ValueError otherwise)."""
    s_list, t_list = _as_list(student, "student"), _as_list(teacher, "teacher")
    if not s_list or len(s_list) != len(t_list):
        raise ValueError(f"{loss} needs equally many student and teacher {what}, got {len(s_list)} and {len(t_list)}")
    return s_list, t_list


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Spatial attention map ``Q = sum_c F_c^2``, flattened.

    Args:
        features: ``(B, C, H, W)``.

    Returns:
        ``(B, H * W)`` float tensor.

    Raises:
        ValueError: not 4-D.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, H, W), got shape {tuple(features.shape)}")
    return features.float().pow(2).sum(dim=1).flatten(1)


def normalise_attention(q: torch.Tensor, normalise: str = "per_sample") -> torch.Tensor:
    """L2-normalise flattened attention maps ``(B, N)``.

    Args:
        q: ``(B, N)`` non-negative maps.
        normalise: ``"per_sample"`` (divide each row by its L2 norm) or ``"batch"`` (divide each column,
            i.e. each pixel, by its L2 norm across the batch: KD-MRI's ``F.normalize(Q, dim=0)``).

    Returns:
        ``(B, N)``; all-zero rows/columns stay zero.

    Raises:
        ValueError: unknown ``normalise``.
    """
    if normalise == "per_sample":
        return F.normalize(q, p=2.0, dim=1, eps=_EPS)
    if normalise == "batch":
        return F.normalize(q, p=2.0, dim=0, eps=_EPS)
    raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")


@LOSSES.register("attention_transfer")
class AttentionTransfer(LossTerm):
    """Attention-transfer loss over paired feature maps (KD-MRI step 2). Teacher maps are detached.

    ``student`` and ``teacher`` are lists of feature maps, one per pair in matching order (DC-CNN: one
    per cascade, e.g. student taps ``cascades.<c>.relu2`` and teacher taps ``cascades.<c>.relu3``;
    VDSR: one-element lists ``relu4`` / ``relu6``). A single tensor is treated as a one-element list.

    Args:
        normalise: ``"per_sample"`` (default, paper) or ``"batch"`` (KD-MRI code).
        distance: ``"l1"`` (default, KD-MRI's training loss) or ``"mse"`` (KD-MRI's step-2 dev metric,
            the MSE of the attention maps; a weight-0 term with it lets the code's selection run).

    Raises:
        ValueError: unknown ``normalise`` or ``distance``; at forward, lists of different lengths, an empty list, or a
            pair whose batch or spatial sizes differ.
    """

    needs_teacher = True

    def __init__(self, normalise: str = "per_sample", distance: str = "l1"):
        super().__init__()
        if normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
        if distance not in ("l1", "mse"):
            raise ValueError(f"distance must be 'l1' or 'mse', got {distance!r}")
        self.normalise, self.distance = normalise, distance

    def forward(self, student, teacher, batch, epoch):
        s_list, t_list = _paired(student, teacher, "attention transfer", "maps")
        terms = []
        for i, (s, t) in enumerate(zip(s_list, t_list)):
            if s.dim() != 4 or t.dim() != 4 or s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
                raise ValueError(f"pair {i}: student {tuple(s.shape)} and teacher {tuple(t.shape)} must be "
                                 f"(B, C, H, W) with equal B, H, W")
            q_s = normalise_attention(attention_map(s), self.normalise)
            q_t = normalise_attention(attention_map(t.detach()), self.normalise)
            terms.append(F.l1_loss(q_s, q_t) if self.distance == "l1" else F.mse_loss(q_s, q_t))
        return torch.stack(terms).mean()


@LOSSES.register("imitation_l1")
class ImitationL1(LossTerm):
    """L1 between the student's and the (detached) teacher's outputs (KD-MRI step 3 teacher term).

    The paper's objective is ``alpha * L1(S, GT) + (1 - alpha) * L1(S, T)``; the weighting lives in the
    config weights (``l1`` with weight alpha, this term with weight 1 - alpha; KD-MRI's alpha = 0.5).
    KD-MRI's shipped ``train_kd.sh`` passes no ``--imitation_required``, so as shipped the imitation is
    off: express that with weight 0. The SR stage (VDSR) uses ``L1(S, GT) + L1(S, T)`` (weights 1, 1).

    Args:
        scaling: ``"paper"`` (default): plain mean L1. ``"per_element"``: KD-MRI's code when the flag is
            passed, the mean L1 divided again by ``teacher.numel()`` (about 1e-5 to 1e-6 of the plain
            value for a batch of 4 slices of 150x150 to 640x368, i.e. practically zero).

    Raises:
        ValueError: unknown ``scaling``; at forward, mismatched shapes or a missing teacher.
    """

    needs_teacher = True

    def __init__(self, scaling: str = "paper"):
        super().__init__()
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
        self.scaling = scaling

    def forward(self, student, teacher, batch, epoch):
        s_list, t_list = _paired(student, teacher, "imitation", "outputs")
        terms = []
        for s, t in zip(s_list, t_list):
            if s.shape != t.shape:
                raise ValueError(f"student output {tuple(s.shape)} and teacher output {tuple(t.shape)} differ")
            loss = F.l1_loss(s, t.detach())
            if self.scaling == "per_element":
                loss = loss / t.numel()
            terms.append(loss)
        return torch.stack(terms).mean()
