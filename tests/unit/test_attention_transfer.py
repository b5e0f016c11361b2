"""Attention transfer and imitation (KD-MRI): hand-computed golden values in both switches."""

from __future__ import annotations

import math

import pytest
import torch

from medkd.distill import LOSSES, build_loss
from medkd.distill.attention_transfer import AttentionTransfer, ImitationL1, attention_map, normalise_attention
from medkd.distill.taps import TapRecorder
from medkd.models import MODELS

# Features (B=2, C=2, H=W=2) chosen so that Q = sum_c F^2 is simple (pixels in row-major order):
#   teacher sample 0: ch0 [[1,1],[1,2]], ch1 [[0,1],[1,0]] -> Q = [1, 2, 2, 4], ||Q|| = sqrt(1+4+4+16) = 5
#   teacher sample 1: ch0 [[1,2],[0,0]], ch1 [[1,0],[2,0]] -> Q = [2, 4, 4, 0], ||Q|| = sqrt(4+16+16) = 6
#   student sample 0: ch0 [[1,0],[0,0]], ch1 0             -> Q = [1, 0, 0, 0], ||Q|| = 1
#   student sample 1: = teacher sample 0                   -> Q = [1, 2, 2, 4], ||Q|| = 5
TEACHER = torch.tensor([[[[1, 1], [1, 2]], [[0, 1], [1, 0]]],
                        [[[1, 2], [0, 0]], [[1, 0], [2, 0]]]], dtype=torch.float32)
STUDENT = torch.tensor([[[[1, 0], [0, 0]], [[0, 0], [0, 0]]],
                        [[[1, 1], [1, 2]], [[0, 1], [1, 0]]]], dtype=torch.float32)

# per_sample: T0 = [.2, .4, .4, .8], T1 = [1/3, 2/3, 2/3, 0], S0 = [1, 0, 0, 0], S1 = [.2, .4, .4, .8]
#   |T0 - S0| = [.8, .4, .4, .8] -> 2.4;  |T1 - S1| = [2/15, 4/15, 4/15, 4/5] -> 22/15
#   mean over 8 elements = (36/15 + 22/15) / 8 = 58/120 = 29/60
PER_SAMPLE = 29 / 60
# batch (per pixel over the 2 samples): teacher pixel norms [sqrt5, 2sqrt5, 2sqrt5, 4],
#   T0 = [1/sqrt5, 1/sqrt5, 1/sqrt5, 1], T1 = [2/sqrt5, 2/sqrt5, 2/sqrt5, 0];
#   student pixel norms [sqrt2, 2, 2, 4]: S0 = [1/sqrt2, 0, 0, 0], S1 = [1/sqrt2, 1, 1, 1].
#   sum |T - S| = (1/sqrt2 - 1/sqrt5) + 2/sqrt5 + 1 + (2/sqrt5 - 1/sqrt2) + 2 (1 - 2/sqrt5) + 1 = 4 - 1/sqrt5
BATCH = (4 - 1 / math.sqrt(5)) / 8


def test_attention_map_and_normalisations():
    q = attention_map(TEACHER)
    assert torch.equal(q, torch.tensor([[1.0, 2, 2, 4], [2, 4, 4, 0]]))
    per_sample = normalise_attention(q, "per_sample")
    assert torch.allclose(per_sample, torch.tensor([[0.2, 0.4, 0.4, 0.8], [1 / 3, 2 / 3, 2 / 3, 0]]))
    batch = normalise_attention(q, "batch")
    r5 = 1 / math.sqrt(5)
    assert torch.allclose(batch, torch.tensor([[r5, r5, r5, 1.0], [2 * r5, 2 * r5, 2 * r5, 0.0]]))
    assert torch.equal(normalise_attention(torch.zeros(2, 3), "per_sample"), torch.zeros(2, 3))  # no NaN
    with pytest.raises(ValueError, match="normalise"):
        normalise_attention(q, "global")


@pytest.mark.parametrize("normalise,expected", [("per_sample", PER_SAMPLE), ("batch", BATCH)])
def test_attention_transfer_golden_values(normalise, expected):
    loss = build_loss("attention_transfer", normalise=normalise)
    assert loss.needs_teacher
    value = loss([STUDENT], [TEACHER], batch={}, epoch=0)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    # Mean over pairs: adding an identical pair (loss 0) halves it; a bare tensor is a one-element list.
    two = loss([STUDENT, TEACHER], [TEACHER, TEACHER], batch={}, epoch=0)
    assert two.item() == pytest.approx(expected / 2, rel=1e-6)
    assert loss(STUDENT, TEACHER, batch={}, epoch=0).item() == pytest.approx(expected, rel=1e-6)


def test_attention_transfer_default_is_per_sample_and_batch_of_one_degenerates():
    assert AttentionTransfer().normalise == "per_sample"
    # Batch normalisation with B = 1 maps every non-zero pixel to 1 (KD-MRI's code): two maps with the
    # same support give zero loss whatever their values.
    s = torch.tensor([[[[1.0, 2.0], [0.0, 3.0]]]])
    t = torch.tensor([[[[5.0, 0.5], [0.0, 9.0]]]])
    assert AttentionTransfer("batch")([s], [t], {}, 0).item() == 0.0
    assert AttentionTransfer("per_sample")([s], [t], {}, 0).item() > 0.1


def test_attention_transfer_gradients_and_errors():
    s = STUDENT.clone().requires_grad_(True)
    t = TEACHER.clone().requires_grad_(True)
    AttentionTransfer()([s], [t], {}, 0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None  # teacher maps are detached
    with pytest.raises(ValueError, match="equally many"):
        AttentionTransfer()([STUDENT], [TEACHER, TEACHER], {}, 0)
    with pytest.raises(ValueError, match="equal B, H, W"):
        AttentionTransfer()([STUDENT], [TEACHER[:, :, :1]], {}, 0)
    with pytest.raises(ValueError, match="required"):
        AttentionTransfer()([STUDENT], None, {}, 0)
    with pytest.raises(ValueError, match="normalise"):
        AttentionTransfer(normalise="global")


def test_attention_transfer_on_dccnn_taps_trains_the_student_only():
    # KD-MRI step 2: teacher relu3 <-> student relu2 in all 5 cascades; channel counts may differ.
    torch.manual_seed(0)
    teacher, student = MODELS.get("dccnn_teacher")(), MODELS.get("dccnn_student")()
    t_taps = [f"cascades.{c}.relu3" for c in range(5)]
    s_taps = [f"cascades.{c}.relu2" for c in range(5)]
    t_rec, s_rec = TapRecorder(teacher, t_taps), TapRecorder(student, s_taps)
    image = torch.rand(2, 1, 12, 12)
    mask = torch.zeros(12, 12)
    mask[[0, 1, 5, 11]] = 1
    kspace = (torch.fft.fft2(image[:, 0], norm="ortho") * mask).to(torch.complex64)
    with torch.no_grad():
        t_out = teacher(image, kspace, mask)
    s_out = student(image, kspace, mask)
    for normalise in ("per_sample", "batch"):
        loss = AttentionTransfer(normalise)(s_rec.get(s_taps, s_out), t_rec.get(t_taps, t_out), {}, 0)
        assert torch.isfinite(loss) and loss.item() > 0
    student.zero_grad()
    loss.backward()
    assert student.cascades[0].conv1.weight.grad.abs().sum() > 0
    assert student.cascades[4].conv3.weight.grad is None  # after the tapped layer: no AT gradient
    assert all(p.grad is None for p in teacher.parameters())


def test_imitation_l1_golden_values():
    # |[1,2,3,4] - [0,2,5,4]| = [1,0,2,0]: mean 0.75; per_element divides by numel(T) = 4 -> 0.1875.
    s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)
    t = torch.tensor([[[[0.0, 2.0], [5.0, 4.0]]]], requires_grad=True)
    paper = build_loss("imitation_l1")
    assert paper.needs_teacher and paper.scaling == "paper"
    assert paper(s, t, {}, 0).item() == pytest.approx(0.75)
    coded = build_loss("imitation_l1", scaling="per_element")
    value = coded(s, t, {}, 0)
    assert value.item() == pytest.approx(0.1875)
    value.backward()
    assert s.grad is not None and t.grad is None
    assert paper([s, s], [t, s], {}, 0).item() == pytest.approx(0.375)  # mean over pairs (0.75 + 0)/2
    with pytest.raises(ValueError, match="differ"):
        paper(s, t[..., :1], {}, 0)
    with pytest.raises(ValueError, match="scaling"):
        ImitationL1(scaling="numel")


def test_registered_names():
    assert {"attention_transfer", "imitation_l1"} <= set(LOSSES.names())
