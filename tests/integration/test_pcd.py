"""End to end: P-CD (tiny_pcd.yaml) through the DAG: the teacher's cache with every uncertainty map, a
paced self-distilled student (the full P-CD row, SVLS label uncertainty fused in), P-CD's per-image
metrics and the robustness suite."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from wfhelpers import run_tiny_config

pytestmark = pytest.mark.slow

EXP = "tiny_pcd"
MODELS = ("teacher", "unet", "pcd")
TARGETS = [f"results/tables/{EXP}.csv", f"results/tables/{EXP}_robustness.csv", "results/tables/paper_pcd.md"]


@pytest.fixture(scope="session")
def pcd_tiny_workflow(tmp_path_factory):
    """tiny_pcd.yaml run once up to its tables, robustness table and paper table; yields the directory."""
    return run_tiny_config(tmp_path_factory.mktemp("wf_pcd"), "tiny_pcd.yaml", TARGETS)


def _split(wd) -> dict:
    return json.loads((wd / f"results/splits/{EXP}.json").read_text())["splits"]


def _wm_targets(wd, case: str) -> np.ndarray:
    """Binary WM reference (S, H, W) of ``case`` straight from the slice store (labels 3 and 4 -> 1)."""
    with h5py.File(wd / "results/slices/embedded.h5", "r") as fh:
        label = fh[f"cases/{case}/label"][()]
    return np.isin(label, (3, 4)).astype(np.int64)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_cache_holds_logits_and_uncertainty_maps(pcd_tiny_workflow):
    wd = pcd_tiny_workflow
    split = _split(wd)
    with h5py.File(wd / f"results/{EXP}/cache/teacher/seed0.h5", "r") as fh:
        assert json.loads(fh.attrs["keys"]) == ["logits", "entropy", "confidence", "mc_dropout", "label"]
        assert fh.attrs["confidence_temperature"] == pytest.approx(6.26)
        assert sorted(fh["cases"]) == sorted(split["train"] + split["val"])  # not the test case
        any_mc, any_label = False, False
        for case in fh["cases"]:
            g = fh[f"cases/{case}"]
            logits = g["logits"][()]
            target = _wm_targets(wd, case)
            n, h, w = target.shape
            assert logits.shape == (n, 2, h, w) and logits.dtype == np.float32
            for key in ("entropy", "confidence", "mc_dropout", "label"):
                assert g[key].shape == (n, h, w) and g[key].dtype == np.float32, key
            # entropy of softmax(z) in nats / log(2), in [0, 1]
            p = _softmax(logits.astype(np.float64))
            ent = -(p * np.log(np.clip(p, 1e-12, None))).sum(1) / math.log(2)
            assert g["entropy"][()].min() >= 0 and g["entropy"][()].max() <= 1 + 1e-6
            np.testing.assert_allclose(g["entropy"][()], ent, atol=1e-5)
            # P-CD's confidence: max softmax(z / 6.26), in [1/2, 1] and never above the T = 1 confidence
            conf = g["confidence"][()]
            np.testing.assert_allclose(conf, _softmax(logits.astype(np.float64) / 6.26).max(1), atol=1e-5)
            assert conf.min() >= 0.5 - 1e-6 and conf.max() <= 1.0
            assert (conf <= p.max(1) + 1e-6).all()
            # MC-dropout: class-mean variance of two-class probabilities, in [0, 0.25]
            mc = g["mc_dropout"][()]
            assert mc.min() >= 0 and mc.max() <= 0.25
            any_mc |= bool(mc.max() > 0)
            # SVLS label uncertainty: in [0, 0.5], > 0 exactly where the 3x3 neighbourhood (replicate
            # padding) holds another class
            lab = g["label"][()]
            assert lab.min() >= 0 and lab.max() <= 0.5 + 1e-6
            mixed = np.stack([ndimage.maximum_filter(t, size=3, mode="nearest")
                              != ndimage.minimum_filter(t, size=3, mode="nearest") for t in target])
            np.testing.assert_array_equal(lab > 1e-6, mixed)
            any_label |= bool(mixed.any())
            # a straight horizontal WM edge pixel would get 0.077807 + 2 * 0.047193 = 0.172193; every
            # boundary value is a sum of SVLS neighbour weights (0.047193 corners, 0.077807 edges)
            assert np.all(lab[mixed] >= 0.047193 - 1e-5)
        assert any_mc, "teacher has dropout 0.1: the MC-dropout map cannot be zero everywhere"
        assert any_label


def test_paced_student_trained_from_the_cache(pcd_tiny_workflow):
    wd = pcd_tiny_workflow
    d = wd / f"results/{EXP}/models/pcd/seed0"
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["inputs"]["caches"] == {"teacher": f"results/{EXP}/cache/teacher/seed0.h5"}
    term = cfg["spec"]["losses"][0]
    assert term["loss"] == "paced_kd" and term["teacher_tap"] == "cache:logits"
    assert term["kwargs"]["loss_type"] == "both_weighted_cpl_spl_per_px"
    assert term["kwargs"]["label_uncertainty"] is True and term["kwargs"]["fusion_rule"] == "product"
    epochs = [json.loads(line) for line in (d / "epochs.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1]
    losses = [e["terms"]["0:paced_kd"] for e in epochs]
    assert all(math.isfinite(v) and v >= 0 for v in losses)
    assert [e["train_loss"] for e in epochs] == pytest.approx(losses)
    # Epoch 0 (mu = 0.39): the TPL weight of a pixel is 1 iff its fused confidence c (1 - u) is >= 1 - 0.39
    # = 0.61 (c = max softmax(z / 6.26), u = SVLS label uncertainty; product rule), else 0; the CPL weights
    # are >= 0.3. So the epoch's loss is exactly 0 iff no training pixel passes. Epoch 1 (mu = 0.573): the
    # TPL test passes wherever c (1 - u) >= 0.427, which holds for every pixel off the label boundaries.
    with h5py.File(wd / f"results/{EXP}/cache/teacher/seed0.h5", "r") as fh:
        fused = [fh[f"cases/{c}/confidence"][()] * (1 - fh[f"cases/{c}/label"][()]) for c in _split(wd)["train"]]
    passing = sum(int((f >= 0.61).sum()) for f in fused)
    assert (losses[0] == 0.0) == (passing == 0)
    assert losses[1] > 0
    summary = json.loads((d / "summary.json").read_text())
    teacher = json.loads((wd / f"results/{EXP}/models/teacher/seed0/summary.json").read_text())
    # self-distillation: the student is the teacher's architecture (dropout adds no parameters)
    assert summary["params"] == teacher["params"] and summary["arch"] == teacher["arch"] == "pcd_unet"


def test_pcd_per_image_metrics_in_the_tables(pcd_tiny_workflow):
    wd = pcd_tiny_workflow
    table = pd.read_csv(wd / f"results/tables/{EXP}.csv")
    pcd = table[table.convention == "pcd_per_image"]
    assert set(pcd["model"]) == set(MODELS)
    assert set(pcd["metric"]) == {"dice", "iou"} and set(pcd["class"]) == {"wm"}
    assert pcd["mean"].between(0, 1).all() and (pcd["n_seeds"] == 1).all()
    # recompute the student's per-image Dice (smoothing 1e-4) and IoU (empty union = 1) from its predictions
    (test_case,) = _split(wd)["test"]
    with h5py.File(wd / f"results/{EXP}/predictions/pcd/seed0.h5", "r") as fh:
        pred = fh[f"cases/{test_case}/pred"][()] == 1
    ref = _wm_targets(wd, test_case) == 1
    tp = (pred & ref).sum((1, 2))
    dice = (2 * tp + 1e-4) / (pred.sum((1, 2)) + ref.sum((1, 2)) + 1e-4)
    union = (pred | ref).sum((1, 2))
    iou = np.where(union > 0, tp / np.maximum(union, 1), 1.0)
    row = pcd[pcd.model == "pcd"].set_index("metric")["mean"]
    assert row["dice"] == pytest.approx(dice.mean(), abs=1e-9)
    assert row["iou"] == pytest.approx(iou.mean(), abs=1e-9)
    fidelity = json.loads(table[table.model == "pcd"]["fidelity"].iloc[0])
    assert fidelity == {"fusion_rule": "product", "label_uncertainty": "SVLS",
                        "loss_type": "both_weighted_cpl_spl_per_px", "reading": "paper"}
    paper = (wd / "results/tables/paper_pcd.md").read_text()
    assert "Convention: pcd_per_image" in paper
    assert all(f"| tiny WM 32x32 | {m} |" in paper for m in MODELS)


def test_robustness_suite(pcd_tiny_workflow):
    wd = pcd_tiny_workflow
    (test_case,) = _split(wd)["test"]
    table = pd.read_csv(wd / f"results/tables/{EXP}.csv")
    engine_dice = table[(table.convention == "engine") & (table.metric == "dice")].set_index("model")["mean"]
    for model in MODELS:
        rows = pd.read_csv(wd / f"results/{EXP}/robustness/{model}/seed0.csv")
        # clean + 2 corruptions x severities {1, 5}, one test case, one foreground class
        assert len(rows) == 5 and set(rows["case"]) == {test_case} and set(rows["class"]) == {"wm"}
        assert set(zip(rows.corruption, rows.severity)) == {
            ("none", 0), ("gaussian_noise", 1), ("gaussian_noise", 5), ("kspace_ghosting", 1), ("kspace_ghosting", 5)}
        assert rows["value"].between(0, 1).all()
        clean = rows[rows.severity == 0]["value"].iloc[0]
        assert clean == pytest.approx(engine_dice[model], abs=1e-9)  # same per-case Dice as the evaluate stage
        assert (rows[rows.severity > 0]["value"] != clean).any()  # the corruptions reach the model
    summary = pd.read_csv(wd / f"results/tables/{EXP}_robustness.csv").set_index("model")
    assert sorted(summary.index) == sorted(MODELS)
    for model in MODELS:
        s = summary.loc[model]
        rows = pd.read_csv(wd / f"results/{EXP}/robustness/{model}/seed0.csv")
        assert s["clean"] == pytest.approx(rows[rows.severity == 0]["value"].mean())
        assert s["corrupted"] == pytest.approx(rows[rows.severity > 0]["value"].mean())
        assert s["relative_drop"] == pytest.approx((s["clean"] - s["corrupted"]) / s["clean"])
    assert "relative drop" in (wd / f"results/tables/{EXP}_robustness.md").read_text()
    assert (wd / f"results/figures/{EXP}_robustness.png").stat().st_size > 1000
