"""KD-MRI in the DAG: the embedded config against the paper's recipe, the latency benchmark, and the tiny
KD-MRI config end to end.

The end-to-end run (``kdmri_workflow``) builds the k-space stores (4x Cartesian variable-density masks drawn
per case, and x4 k-space truncation for super-resolution), then for DC-CNN reconstruction and VDSR
super-resolution trains the teacher with L1, the student alone, the student with attention transfer only
(step 2; teacher features tapped online) and the KD student initialised from step 2 with
0.5 L1(S, GT) + 0.5 L1(S, T) (step 3), scores the two test volumes (PSNR, SSIM, NMSE per volume) and builds
the experiment tables and the paper tables (mean +- 2 sd over volumes).
"""

from __future__ import annotations

import importlib.util
import json
import math

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from wfhelpers import REPO, run_tiny_config

pytestmark = pytest.mark.slow

MODELS = ["zero_filled", "teacher", "student", "student_at", "student_kd"]
DCCNN_TEACHER_TAPS = [f"cascades.{c}.relu3" for c in range(5)]
DCCNN_STUDENT_TAPS = [f"cascades.{c}.relu2" for c in range(5)]
# exact parameter counts (docs/sources.md 3.2): DC-CNN teacher / student, VDSR teacher / student
PARAMS = {"kdmri_recon": [0, 141_765, 49_285, 49_285, 49_285], "kdmri_sr": [0, 333_569, 185_857, 185_857, 185_857]}
TARGETS = ["results/tables/paper_kdmri.md", "results/tables/paper_kdmri_sr.md"]


# ------------------------------------------------------------------------------ embedded config (fast)


@pytest.fixture(scope="module")
def embedded():
    """The embedded default with only this paper's file included."""
    from medkd.config import load_config

    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["include"] = ["config/embedded/kdmri.yaml"]
    return load_config(raw, root=REPO)["experiments"]


def test_embedded_config_follows_the_three_steps(embedded):
    arch = {"kdmri_recon": ("dccnn_teacher", "dccnn_student"), "kdmri_sr": ("vdsr_teacher", "vdsr_student")}
    taps = {"kdmri_recon": (DCCNN_TEACHER_TAPS, DCCNN_STUDENT_TAPS), "kdmri_sr": (["relu6"], ["relu4"])}
    for name, task, group in (("kdmri_recon", "reconstruction", "kdmri"), ("kdmri_sr", "super_resolution", "kdmri_sr")):
        e = embedded[name]
        assert e["dataset"] == "embedded" and e["task"] == task and e["group"] == group
        assert e["headline"] == {"convention": "engine", "class": "image", "metrics": ["psnr", "ssim"],
                                 "spread": "cases_2sd"}
        assert "reference" not in e  # paper numbers live in docs/kdmri.md and the paper config
        models = e["models"]
        assert list(models) == MODELS
        assert models["zero_filled"]["arch"] == "identity" and models["zero_filled"]["train"]["epochs"] == 0
        t_arch, s_arch = arch[name]
        assert models["teacher"]["arch"] == t_arch and models["teacher"]["role"] == "teacher"
        for m in ("student", "student_at", "student_kd"):
            assert models[m]["arch"] == s_arch and models[m]["role"] == "student"
        # step 1 and the student alone: L1 only
        for m in ("teacher", "student"):
            assert [(t["loss"], t["weight"]) for t in models[m]["losses"]] == [("l1", 1.0)]
        # step 2: attention transfer only, per-sample maps (the paper's reading), selected on its own loss
        at = models["student_at"]
        assert [t["loss"] for t in at["losses"]] == ["attention_transfer"]
        assert at["losses"][0]["kwargs"] == {"normalise": "per_sample"}
        assert (at["losses"][0]["teacher_tap"], at["losses"][0]["student_tap"]) == taps[name]
        assert at["train"]["select"]["metric"] == "val_loss" and at["fidelity"]["at_normalise"] == "per_sample"
        # step 3: from step 2, alpha L1(S, GT) + (1 - alpha) L1(S, T) with alpha = 0.5, teacher output online
        kd = models["student_kd"]
        assert kd["init_from"] == "student_at" and kd["compare_to"] == "student" and kd["teachers"] == ["teacher"]
        assert [(t["loss"], t["weight"]) for t in kd["losses"]] == [("l1", 0.5), ("imitation_l1", 0.5)]
        assert kd["losses"][1]["teacher_tap"] == "out" and kd["losses"][1]["kwargs"] == {"scaling": "paper"}
        assert kd["fidelity"]["imitation"] == "paper_alpha" and kd["fidelity"]["alpha"] == 0.5
        for m in ("teacher", "student", "student_at", "student_kd"):
            tr = models[m]["train"]
            assert tr["optimizer"]["name"] == "adam" and tr["optimizer"]["lr"] == 0.001
            # embedded scale: batch 1 (the paper's 4; docs/kdmri.md), a constant learning rate
            assert tr["optimizer"]["weight_decay"] == 0.0 and tr["batch_size"] == 1
            if m != "student_at":
                assert tr["select"]["metric"] == "val_mse"
    assert embedded["kdmri_recon"]["kspace"]["spec"] == {"kind": "cartesian_vd", "acceleration": 4,
                                                         "centre_lines": 10, "axis": 0, "seed": 0}
    assert embedded["kdmri_sr"]["kspace"]["spec"] == {"kind": "sr_truncate", "factor": 4}
    assert "seeds" not in embedded["kdmri_recon"] and "seeds" not in embedded["kdmri_sr"]  # the default's 3 seeds
    for name in ("teacher", "student", "student_at", "student_kd"):  # CPU-scale VDSR width, VDSR's own init
        assert embedded["kdmri_sr"]["models"][name]["arch_kwargs"] == {"width": 16, "init": "kaiming"}
    for name in ("teacher", "student", "student_at", "student_kd"):
        assert embedded["kdmri_recon"]["models"][name]["arch_kwargs"] == {"residual": False}


def test_embedded_taps_pair_up(embedded):
    """Every attention-transfer pair exists in the registered models and has matching (B, H, W)."""
    from medkd.distill import build_loss
    from medkd.distill.taps import TapRecorder
    from medkd.models import build_model

    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16)
    k = torch.fft.fft2(x[:, 0], norm="ortho").to(torch.complex64)
    mask = torch.zeros(2, 16, 16)
    mask[:, :4] = 1
    for exp, inputs in (("kdmri_recon", (x, k * mask, mask)), ("kdmri_sr", (x,))):
        models = embedded[exp]["models"]
        term = models["student_at"]["losses"][0]
        teacher = build_model(models["teacher"]["arch"], in_channels=1, out_channels=1,
                              **models["teacher"].get("arch_kwargs", {}))
        student = build_model(models["student_at"]["arch"], in_channels=1, out_channels=1,
                              **models["student_at"].get("arch_kwargs", {}))
        t_rec, s_rec = TapRecorder(teacher, term["teacher_tap"]), TapRecorder(student, term["student_tap"])
        t_out, s_out = teacher(*inputs), student(*inputs)
        t_feats, s_feats = t_rec.get(term["teacher_tap"], t_out), s_rec.get(term["student_tap"], s_out)
        width = 32 if exp == "kdmri_recon" else 16  # embedded VDSR width (paper 64)
        for tf, sf in zip(t_feats, s_feats):
            assert tf.shape == sf.shape == (2, width, 16, 16)
            assert (tf >= 0).all() and (sf >= 0).all()  # post-ReLU activations
        loss = build_loss(term["loss"], **term["kwargs"])(s_feats, t_feats, {}, 0)
        assert torch.isfinite(loss) and loss > 0
        loss.backward()
        first_conv = student.conv1 if exp == "kdmri_sr" else student.cascades[0].conv1
        assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_latency_benchmark_reports_the_parameter_reduction():
    spec = importlib.util.spec_from_file_location("kdmri_latency", REPO / "benchmarks" / "kdmri_latency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.benchmark(size=16, repeats=2, warmup=1, threads=1)
    assert res["dccnn"]["teacher"]["params"] == 141_765 and res["dccnn"]["student"]["params"] == 49_285
    assert res["vdsr"]["teacher"]["params"] == 333_569 and res["vdsr"]["student"]["params"] == 185_857
    # 1 - 49,285 / 141,765 = 0.65235 (the paper's "65%"); 1 - 185,857 / 333,569 = 0.44282
    assert res["dccnn"]["param_reduction_pct"] == pytest.approx(65.235, abs=1e-3)
    assert res["vdsr"]["param_reduction_pct"] == pytest.approx(44.282, abs=1e-3)
    for pair in ("dccnn", "vdsr"):
        row = res[pair]
        assert row["teacher"]["median_ms"] > 0 and row["student"]["median_ms"] > 0
        assert row["speedup"] == pytest.approx(row["teacher"]["median_ms"] / row["student"]["median_ms"])
    text = bench.format_report(res, 16, 1)
    assert "65.2% fewer parameters" in text and "44.3% fewer parameters" in text
    with pytest.raises(ValueError, match="repeats"):
        bench.time_forward(torch.nn.Identity(), {"image": torch.zeros(1, 1, 4, 4)}, repeats=0, warmup=0)


# ------------------------------------------------------------------------------ tiny end to end


@pytest.fixture(scope="session")
def kdmri_workflow(tmp_path_factory):
    """tiny_kdmri.yaml run once up to both paper tables; yields the working directory."""
    return run_tiny_config(tmp_path_factory.mktemp("wf_kdmri"), "tiny_kdmri.yaml", TARGETS)


def _split(wd, exp: str) -> dict:
    return json.loads((wd / f"results/splits/{exp}.json").read_text())["splits"]


def _store_case(path, case: str) -> dict:
    with h5py.File(path, "r") as fh:
        grp = fh[f"cases/{case}"]
        return {**{k: grp[k][()] for k in grp}, **dict(grp.attrs)}


def test_undersample_masks_per_case_with_achieved_acceleration(kdmri_workflow):
    wd = kdmri_workflow
    path = wd / "results/kspace/embedded/cartesian_vd_4x.h5"
    with h5py.File(path, "r") as fh:
        assert fh.attrs["kind"] == "undersample"
        assert json.loads(fh.attrs["mask_spec"])["acceleration"] == 4
        cases = sorted(fh["cases"])
    assert len(cases) == 5
    line_sets = set()
    for case in cases:
        c = _store_case(path, case)
        s, h, w = c["target"].shape
        assert (h, w) == (32, 32) and c["mask"].shape == (32, 32)
        lines = c["mask"][:, 0]
        assert (c["mask"] == lines[:, None]).all()  # whole rows (axis 0)
        # 32 rows at 4x: int(32 / 4) = 8 lines -> achieved 32 / 8 = 4.0; centre rows 30, 31, 0, 1 (un-centred)
        assert lines.sum() == 8 and c["sampled_lines"] == 8 and c["acceleration"] == pytest.approx(4.0)
        assert lines[[30, 31, 0, 1]].all()
        line_sets.add(tuple(np.flatnonzero(lines)))
        # target: per-slice max-normalised magnitude; k-space = FFT(target) * mask; input = |IFFT(k-space)|
        assert c["target"].min() >= 0 and np.allclose(c["target"].max(axis=(1, 2)), 1.0)
        k = np.fft.fft2(c["target"].astype(np.float64), norm="ortho") * c["mask"]
        np.testing.assert_allclose(c["kspace"], k, atol=1e-5)
        np.testing.assert_allclose(c["image"], np.abs(np.fft.ifft2(k, norm="ortho")), atol=1e-5)
    assert len(line_sets) > 1  # a mask per case, not one shared mask

    sr = wd / "results/kspace/embedded/sr_truncate_x4.h5"
    with h5py.File(sr, "r") as fh:
        assert fh.attrs["kind"] == "sr_truncate"
        case = sorted(fh["cases"])[0]
    c = _store_case(sr, case)
    assert c["factor"] == 4 and "kspace" not in c and "mask" not in c
    # x4 truncation of 32x32 keeps the centre 8x8 (rows and columns 12-19) of the centred orthonormal
    # spectrum and transforms back at full size; the input is the magnitude
    spec = np.fft.fftshift(np.fft.fft2(c["target"].astype(np.float64), norm="ortho"), axes=(1, 2))
    kept = np.zeros_like(spec)
    kept[:, 12:20, 12:20] = spec[:, 12:20, 12:20]
    low = np.abs(np.fft.ifft2(np.fft.ifftshift(kept, axes=(1, 2)), norm="ortho"))
    np.testing.assert_allclose(c["image"], low, atol=1e-5)
    assert not np.allclose(c["image"], c["target"], atol=1e-2)


def test_three_steps_train_with_their_losses(kdmri_workflow):
    wd = kdmri_workflow
    for exp in ("kdmri_recon", "kdmri_sr"):
        root = wd / f"results/{exp}/models"

        def terms(model):
            rows = [json.loads(line) for line in (root / model / "seed0/epochs.jsonl").read_text().splitlines()]
            assert len(rows) == 1
            return rows[0]["terms"]

        assert set(terms("teacher")) == {"0:l1"} and set(terms("student")) == {"0:l1"}
        at_terms = terms("student_at")
        assert set(at_terms) == {"0:attention_transfer"} and at_terms["0:attention_transfer"] > 0
        kd_terms = terms("student_kd")
        assert set(kd_terms) == {"0:l1", "1:imitation_l1"} and kd_terms["1:imitation_l1"] > 0
        at_cfg = json.loads((root / "student_at/seed0/config.json").read_text())
        assert at_cfg["inputs"]["teacher_dirs"] == {"teacher": f"results/{exp}/models/teacher/seed0"}
        kd_cfg = json.loads((root / "student_kd/seed0/config.json").read_text())
        assert kd_cfg["inputs"]["init_dir"] == f"results/{exp}/models/student_at/seed0"
        assert kd_cfg["inputs"]["teacher_dirs"] == {"teacher": f"results/{exp}/models/teacher/seed0"}
        assert "initialised from" in (wd / f"results/logs/train/{exp}/student_kd/seed0.log").read_text()
        for model, n in zip(MODELS, PARAMS[exp]):
            summary = json.loads((root / model / "seed0/summary.json").read_text())
            assert summary["params"] == n
        assert json.loads((root / "student_at/seed0/summary.json").read_text())["select_metric"] == "val_loss"


def _volume_metrics(gt: np.ndarray, pred: np.ndarray) -> dict:
    """KD-MRI's evaluate.py with today's scikit-image: PSNR over the volume and SSIM averaged over slices,
    both with data_range = gt.max(); NMSE = ||gt - pred||^2 / ||gt||^2."""
    rng = float(gt.max())
    return {
        "psnr": peak_signal_noise_ratio(gt, pred, data_range=rng),
        "ssim": float(np.mean([structural_similarity(g, p, data_range=rng) for g, p in zip(gt, pred)])),
        "nmse": float(np.sum((gt - pred) ** 2) / np.sum(gt ** 2)),
    }


def test_metrics_per_volume_match_scikit_image(kdmri_workflow):
    wd = kdmri_workflow
    for exp, store in (("kdmri_recon", "cartesian_vd_4x"), ("kdmri_sr", "sr_truncate_x4")):
        test_cases = _split(wd, exp)["test"]
        assert len(test_cases) == 2
        for model in MODELS:
            rows = pd.read_csv(wd / f"results/{exp}/metrics/{model}/seed0.csv")
            engine = rows[rows.convention == "engine"]
            assert sorted(set(engine["case"])) == sorted(test_cases)
            assert set(engine["metric"]) == {"psnr", "ssim", "nmse"}
            cost = rows[rows.convention == "cost"]
            assert list(cost["metric"]) == ["latency_ms_per_slice"]
            assert (cost["value"] > 0).all() if model != "zero_filled" else (cost["value"] >= 0).all()
            with h5py.File(wd / f"results/{exp}/predictions/{model}/seed0.h5", "r") as fh:
                preds = {c: fh[f"cases/{c}/pred"][()].astype(np.float64) for c in test_cases}
            for case in test_cases:
                c = _store_case(wd / f"results/kspace/embedded/{store}.h5", case)
                gt = c["target"].astype(np.float64)
                if model == "zero_filled":  # the identity baseline predicts its input exactly
                    np.testing.assert_allclose(preds[case], c["image"], atol=1e-6)
                ours = engine[engine.case == case].set_index("metric")["value"]
                for metric, value in _volume_metrics(gt, preds[case]).items():
                    assert ours[metric] == pytest.approx(value, rel=1e-6, abs=1e-9), (exp, model, case, metric)
                assert 5 < ours["psnr"] < 60 and 0 < ours["ssim"] <= 1 and ours["nmse"] >= 0


def test_paper_tables_have_the_paper_layout(kdmri_workflow):
    wd = kdmri_workflow
    for exp, group, setting in (("kdmri_recon", "kdmri", "tiny T1 4x"), ("kdmri_sr", "kdmri_sr", "tiny T1 SR x4")):
        paper = pd.read_csv(wd / f"results/tables/paper_{group}.csv")
        assert list(paper["model"]) == MODELS and set(paper["setting"]) == {setting}
        assert list(paper["params"]) == PARAMS[exp]
        assert set(paper["spread"]) == {"2 sd over cases"}
        # the paper's form: mean +- 2 sd over test volumes (runstats' n - 1 divisor)
        for r in paper.to_dict("records"):
            per_case = pd.read_csv(wd / f"results/{exp}/metrics/{r['model']}/seed0.csv")
            for metric in ("psnr", "ssim"):
                v = per_case[(per_case.metric == metric) & (per_case.convention == "engine")]["value"].to_numpy()
                assert r[metric] == pytest.approx(v.mean(), rel=1e-9)
                assert r[f"{metric}_sd"] == pytest.approx(2 * v.std(ddof=1), rel=1e-9)
                assert math.isnan(r[f"{metric}_paper"])  # no paper numbers at this scale
        kd = paper.set_index("model").loc["student_kd"]
        alone = paper.set_index("model").loc["student"]
        assert kd["psnr_gain_pct"] == pytest.approx(100 * (kd["psnr"] - alone["psnr"]) / alone["psnr"])
        md = (wd / f"results/tables/paper_{group}.md").read_text()
        assert "mean ± 2 sd over cases" in md and "student_kd" in md
        # experiment table: parameters, latency, PSNR and SSIM per model, and the fidelity switches
        table = (wd / f"results/tables/{exp}.md").read_text()
        header = table.splitlines()[2]
        for col in ("params", "latency_ms_per_slice", "psnr image", "ssim image"):
            assert col in header
        if exp == "kdmri_recon":
            assert "student_kd: alpha=0.5, at_normalise=per_sample, imitation=paper_alpha" in table
