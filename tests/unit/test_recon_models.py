"""DC-CNN and VDSR (KD-MRI): exact parameter counts, data consistency, shapes, taps, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medkd.distill.taps import TapRecorder
from medkd.models import MODELS, build_model, count_parameters
from medkd.models.dccnn import DCCNN, DataConsistency, attention_taps
from medkd.models.vdsr import VDSR


def _symmetric_line_mask(n_rows: int, n_cols: int, rows: list[int]) -> torch.Tensor:
    """Row mask symmetric under k -> -k (row i sampled iff row -i mod N sampled)."""
    mask = torch.zeros(n_rows, n_cols, dtype=torch.float64)
    for r in rows:
        mask[r] = 1
        mask[(-r) % n_rows] = 1
    return mask


def _recon_batch(b: int = 2, h: int = 16, w: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, h, w, generator=g)
    mask = torch.zeros(h, w)
    mask[[0, 1, 2, 5, 9, 14, 15]] = 1  # un-centred rows incl. DC
    kspace = torch.fft.fft2(target, norm="ortho") * mask
    image = torch.fft.ifft2(kspace, norm="ortho").abs().unsqueeze(1)
    return image, kspace.to(torch.complex64), mask.expand(b, h, w).contiguous()


# ------------------------------------------------------------------------------------------ counts


@pytest.mark.parametrize("name,kwargs,expected", [
    # per cascade: conv1 1*32*9+32 = 320, conv2..4 32*32*9+32 = 9,248 each, conv5 32*9+1 = 289
    ("dccnn", {"n_cascades": 5, "n_convs": 5}, 5 * (320 + 3 * 9248 + 289)),  # 141,765
    ("dccnn", {"n_cascades": 5, "n_convs": 3}, 5 * (320 + 9248 + 289)),  # 49,285
    ("dccnn_teacher", {}, 141_765),
    ("dccnn_student", {}, 49_285),
    # VDSR: conv1 1*64*9+64 = 640, hidden 64*64*9+64 = 36,928, last 64*9+1 = 577
    ("vdsr", {"n_convs": 11}, 640 + 9 * 36928 + 577),  # 333,569
    ("vdsr", {"n_convs": 7}, 640 + 5 * 36928 + 577),  # 185,857
    ("vdsr_teacher", {}, 333_569),
    ("vdsr_student", {}, 185_857),
])
def test_exact_parameter_counts(name, kwargs, expected):
    model = build_model(name, in_channels=1, out_channels=1, **kwargs)
    assert count_parameters(model) == expected


def test_paper_counts_and_reduction():
    teacher, student = MODELS.get("dccnn_teacher")(), MODELS.get("dccnn_student")()
    assert count_parameters(teacher) == 141_765 and count_parameters(student) == 49_285
    assert 1 - 49_285 / 141_765 == pytest.approx(0.652, abs=1e-3)  # the abstract's "65% reduction"
    assert count_parameters(MODELS.get("vdsr_teacher")()) == 333_569
    assert count_parameters(MODELS.get("vdsr_student")()) == 185_857
    assert DCCNN.input_keys == ("image", "kspace", "mask") and VDSR.input_keys == ("image",)


# ------------------------------------------------------------------------------------------ data consistency


def test_data_consistency_kspace_is_exact():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 8, 6, generator=g, dtype=torch.float64)
    k0 = torch.randn(2, 8, 6, generator=g, dtype=torch.complex128)
    mask = torch.zeros(8, 6, dtype=torch.float64)
    mask[[0, 3, 4]] = 1
    k = DataConsistency.kspace(x, k0, mask)
    fx = torch.fft.fft2(x[:, 0], norm="ortho")
    sampled = mask.bool().expand(2, 8, 6)
    assert torch.equal(k[sampled], k0[sampled])  # measured lines kept bit-exactly
    assert torch.allclose(k[~sampled], fx[~sampled], atol=1e-14, rtol=0)


def test_data_consistency_output_spectrum_matches_measurement():
    # k0 from a real image and a mask symmetric under k -> -k make k Hermitian, so the real-part output
    # keeps the measured lines exactly (float64 tolerance) and F(x) elsewhere.
    g = torch.Generator().manual_seed(2)
    truth = torch.rand(3, 8, 10, generator=g, dtype=torch.float64)
    mask = _symmetric_line_mask(8, 10, [0, 1, 3])  # rows 0, 1, 7, 3, 5
    k0 = torch.fft.fft2(truth, norm="ortho") * mask
    x = torch.randn(3, 1, 8, 10, generator=g, dtype=torch.float64)
    out = DataConsistency()(x, k0, mask.expand(3, 8, 10))
    assert out.shape == (3, 1, 8, 10) and out.dtype == torch.float64
    spec_out = torch.fft.fft2(out[:, 0], norm="ortho")
    spec_x = torch.fft.fft2(x[:, 0], norm="ortho")
    sampled = mask.bool().expand(3, 8, 10)
    assert torch.allclose(spec_out[sampled], k0[sampled], atol=1e-12, rtol=0)
    assert torch.allclose(spec_out[~sampled], spec_x[~sampled], atol=1e-12, rtol=0)
    # A fully sampled mask returns the measured image; an empty mask returns x.
    full = DataConsistency()(x, torch.fft.fft2(truth, norm="ortho"), torch.ones(8, 10, dtype=torch.float64))
    assert torch.allclose(full[:, 0], truth, atol=1e-12)
    none = DataConsistency()(x, k0, torch.zeros(8, 10, dtype=torch.float64))
    assert torch.allclose(none, x, atol=1e-12)


def test_data_consistency_float32_in_float32_out_and_errors():
    image, kspace, mask = _recon_batch()
    out = DataConsistency()(image, kspace, mask)
    assert out.dtype == torch.float32 and out.shape == image.shape
    with pytest.raises(ValueError, match="complex"):
        DataConsistency()(image, kspace.real, mask)
    with pytest.raises(ValueError, match="do not match"):
        DataConsistency()(image, kspace[..., :-1], mask)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        DataConsistency()(image[:, 0], kspace, mask)


# ------------------------------------------------------------------------------------------ DC-CNN


def test_dccnn_forward_shapes_taps_and_gradients():
    image, kspace, mask = _recon_batch()
    for name, taps in (("dccnn_teacher", "relu3"), ("dccnn_student", "relu2")):
        torch.manual_seed(0)
        model = MODELS.get(name)()
        modules = dict(model.named_modules())
        n_convs = 5 if name == "dccnn_teacher" else 3
        for c in range(5):
            assert isinstance(modules[f"cascades.{c}.dc"], DataConsistency)
            for i in range(1, n_convs + 1):
                assert f"cascades.{c}.conv{i}" in modules
        paths = attention_taps(model, int(taps[-1]))
        assert paths == [f"cascades.{c}.{taps}" for c in range(5)]
        recorder = TapRecorder(model, paths)
        out = model(image, kspace, mask)
        assert out.shape == (2, 1, 16, 12) and out.dtype == torch.float32
        feats = recorder.get(paths, out)
        assert [tuple(f.shape) for f in feats] == [(2, 32, 16, 12)] * 5
        assert all((f >= 0).all() for f in feats)  # post-ReLU activations
        out.abs().mean().backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert all(p.grad.abs().sum() > 0 for p in model.parameters() if p.dim() == 4)
        recorder.remove()
    with pytest.raises(ValueError, match="conv_index"):
        attention_taps(MODELS.get("dccnn_student")(), 3)  # conv3 is the last conv: no ReLU


def test_dccnn_with_zero_convs_returns_the_real_part_of_the_zero_filled_image():
    # With every conv zeroed, each cascade's CNN outputs 0, so DC gives Re(F^-1(m * k0)) in every cascade.
    image, kspace, mask = _recon_batch()
    model = DCCNN(n_cascades=2, n_convs=3, width=4)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    expected = torch.fft.ifft2(kspace.to(torch.complex128) * mask, norm="ortho").real.float().unsqueeze(1)
    assert torch.allclose(model(image, kspace, mask), expected, atol=1e-6)
    # Residual switch (paper figure): the cascade input is added before DC; same parameter count.
    residual = DCCNN(n_cascades=2, n_convs=3, width=4, residual=True)
    residual.load_state_dict(model.state_dict())
    assert count_parameters(residual) == count_parameters(model)
    # With zero convs the first cascade passes the zero-filled input through DC unchanged on
    # unsampled lines: F^-1(m k0 + (1 - m) F(zf)) with F(zf) = F(|F^-1 m k0|).
    zf = image[:, 0].to(torch.float64)
    k = mask * kspace.to(torch.complex128) + (1 - mask) * torch.fft.fft2(zf, norm="ortho")
    first = torch.fft.ifft2(k, norm="ortho").real
    second_k = mask * kspace.to(torch.complex128) + (1 - mask) * torch.fft.fft2(first, norm="ortho")
    expected_res = torch.fft.ifft2(second_k, norm="ortho").real.float().unsqueeze(1)
    assert torch.allclose(residual(image, kspace, mask), expected_res, atol=1e-5)


def test_dccnn_rejects_bad_configuration():
    with pytest.raises(ValueError, match="one real image channel"):
        DCCNN(in_channels=2)
    with pytest.raises(ValueError, match="n_convs >= 2"):
        DCCNN(n_convs=1)
    with pytest.raises(TypeError):
        MODELS.get("dccnn_teacher")(n_convs=3)  # presets fix the architecture


# ------------------------------------------------------------------------------------------ VDSR


def test_vdsr_shapes_residual_taps_and_gradients():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 10, 12)
    for name, tap in (("vdsr_teacher", "relu6"), ("vdsr_student", "relu4")):
        model = MODELS.get(name)()
        recorder = TapRecorder(model, [tap])
        out = model(x)
        assert out.shape == x.shape
        feat = recorder.get(tap, out)
        assert feat.shape == (2, 64, 10, 12) and (feat >= 0).all()
        out.pow(2).mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        recorder.remove()
    # Global residual: with the last conv zeroed, the output is the input.
    model = VDSR(n_convs=3, width=4)
    with torch.no_grad():
        model.conv3.weight.zero_()
        model.conv3.bias.zero_()
    assert torch.equal(model(x), x)
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        VDSR(in_channels=1, out_channels=2)


def test_vdsr_matches_a_manual_forward():
    torch.manual_seed(1)
    model = VDSR(n_convs=3, width=2)
    x = torch.rand(1, 1, 5, 5)
    f = torch.nn.functional
    h = f.relu(f.conv2d(x, model.conv1.weight, model.conv1.bias, padding=1))
    h = f.relu(f.conv2d(h, model.conv2.weight, model.conv2.bias, padding=1))
    h = f.conv2d(h, model.conv3.weight, model.conv3.bias, padding=1)
    assert torch.allclose(model(x), x + h, atol=1e-7)
    assert np.isfinite(model(x).detach().numpy()).all()
