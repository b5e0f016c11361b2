"""MTMS in the DAG: the embedded config against the thesis's variant table, and the tiny MTMS config end to end.

The end-to-end run (``mtms_workflow``, about a minute) trains the multi-task T1 teacher (segmentation and
reconstruction heads), S1 alone and S1 with multi-scale contrastive KD from T1 under both readings of the
fidelity switches (paper: learned adapters + sigmoid-KL PMD; code: random projections re-drawn every
step + the identically-zero PMD), with teacher features tapped online, then scores the test split in
the engine's per-volume convention and the thesis's pooled one (raw logit > 0.5) and builds the
experiment table and the MTMS paper table.
"""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from wfhelpers import REPO, run_tiny_config

EXP = "tiny_mtms"
KD_MODELS = ("kd_t1_s1", "kd_t1_s1_code")

# Thesis variant table (docs/sources.md 2.3): temperature and weights seg / B-B / PMD / E-E / D-D
# (T2-S2 has no E-E or D-D term: they are commented out in the code).
VARIANTS = {
    "kd_t1_s1": (0.4, [0.4, 0.2, 0.2, 0.1, 0.1], "t1", "s1"),
    "kd_t1_s2": (0.1, [0.4, 0.2, 0.2, 0.1, 0.1], "t1", "s2"),
    "kd_t2_s1": (0.4, [0.5, 0.2, 0.1, 0.1, 0.1], "t2", "s1"),
    "kd_t2_s2": (0.4, [0.5, 0.3, 0.2], "t2", "s2"),
}
TEACHER_TAPS = {"t1": ["b", "e2.pool", "d4_seg"], "t2": ["vit_conv", "conv1", "dec4"]}
STUDENT_TAPS = ["b", "e2.pool", "d2"]


# ------------------------------------------------------------------------------ embedded config (fast)


@pytest.fixture(scope="module")
def embedded_experiment():
    """The embedded default with only this paper's file included (other papers' files are not needed)."""
    import yaml

    from medkd.config import load_config

    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["include"] = ["config/embedded/mtms.yaml"]
    return load_config(raw, root=REPO)["experiments"]["mtms_wm"]


def test_embedded_config_follows_the_thesis(embedded_experiment):
    e = embedded_experiment
    assert e["channels"] == [0, 0, 0] and e["task"] == "segmentation"
    assert list(e["classes"]) == ["background", "wm"] and e["classes"]["wm"] == [3, 4]
    # embedded scale: teachers on 12 of the 24 training cases, students on half of those (nested subsets)
    assert e["split"]["subsets"] == {"teacher_cases": {"of": "train", "fraction": 0.5},
                                     "half": {"of": "train", "fraction": 0.25},
                                     "val_small": {"of": "val", "fraction": 0.5}}
    assert e["conventions"] == ["engine", "mtms_pooled"] and e["logit_threshold"] == 0.5
    assert e["group"] == "mtms"
    head = e["headline"]
    assert (head["convention"], head["class"], head["metrics"]) == ("mtms_pooled", "wm", ["iou", "dice", "recall", "precision"])
    models = e["models"]
    assert list(models) == ["s1", "s2", "kd_t1_s1", "kd_t1_s2", "kd_t2_s1", "kd_t2_s2", "t1", "t2"]
    for name in ("t1", "t2"):
        m = models[name]
        assert m["role"] == "teacher" and m["train"]["subset"] == "teacher_cases"
        assert m["train"]["batch_size"] == {"t1": 8, "t2": 4}[name]  # CPU scale: the TransUNet at batch 4
        assert [(t["loss"], t["weight"], t["student_tap"]) for t in m["losses"]] == [
            ("dice_bce", 1.0, "out"), ("mse_to_input", 0.2, "out:recon")]
    assert [t["loss"] for t in models["s1"]["losses"]] == ["dice"]
    assert [t["loss"] for t in models["s2"]["losses"]] == ["dice_bce"]
    for name in ("t1", "t2", "s1", "s2"):
        opt = models[name]["train"]["optimizer"]
        assert opt["name"] == "adamw" and opt["betas"] == [0.9, 0.95] and opt["weight_decay"] == 0.05
    for name in ("s1", "s2"):
        assert models[name]["train"]["subset"] == "half" and models[name]["train"]["batch_size"] == 16
    for name, (tau, weights, teacher, student) in VARIANTS.items():
        m = models[name]
        assert m["arch"] == f"mtms_{student}" and m["teachers"] == [teacher] and m["compare_to"] == student
        tr = m["train"]
        assert tr["subset"] == "half" and tr["batch_size"] == 20 and tr["drop_last"] is False
        assert tr["optimizer"] == {"name": "rmsprop", "lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0}
        terms = m["losses"]
        assert [t["weight"] for t in terms] == weights
        assert [t["loss"] for t in terms] == ["dice", "infonce", "pmd", "infonce", "infonce"][: len(weights)]
        assert [t["student_tap"] for t in terms[1:]] == ["b", "out", "e2.pool", "d2"][: len(weights) - 1]
        t_taps = TEACHER_TAPS[teacher]
        assert [t["teacher_tap"] for t in terms[1:]] == [t_taps[0], "out", t_taps[1], t_taps[2]][: len(weights) - 1]
        for t in terms[1:]:
            assert t["kwargs"]["temperature"] == (4.0 if t["loss"] == "pmd" else tau)
        assert m["fidelity"]["adapter"] == "learned" and m["fidelity"]["pmd"] == "sigmoid_kl"


def test_embedded_adapters_match_the_models_taps(embedded_experiment):
    """Every KD objective of the embedded config runs on real taps of its student and teacher (64x64)."""
    from medkd.config import model_spec
    from medkd.distill.taps import TapRecorder
    from medkd.objective import Objective
    from medkd.runtime import build_from_spec

    cfg = {"experiments": {"mtms_wm": embedded_experiment}, "device": "cpu", "threads": 1}
    torch.manual_seed(0)
    batch = {"image": torch.rand(3, 3, 64, 64), "target": (torch.rand(3, 64, 64) > 0.8).long()}
    built = {}
    for name in ("t1", "t2", "s1", "s2"):
        model = build_from_spec(model_spec(cfg, "mtms_wm", name)).eval()
        taps = TEACHER_TAPS.get(name, STUDENT_TAPS)
        recorder = TapRecorder(model, taps)
        with torch.no_grad():
            out = model(batch["image"])
        built[name] = (recorder, out)
    for name in VARIANTS:
        spec = model_spec(cfg, "mtms_wm", name)
        objective = Objective(spec.losses)
        for term_cfg, term in zip(spec.losses[1:], list(objective.terms)[1:]):
            if term_cfg.loss != "infonce":
                continue
            s_rec, s_out = built[spec.arch[-2:]]
            t_rec, t_out = built[term_cfg.teacher]
            student = s_rec.get(term_cfg.student_tap, s_out)
            teacher = t_rec.get(term_cfg.teacher_tap, t_out)
            assert student.shape[1] == term_cfg.kwargs["student_channels"], (name, term_cfg)
            assert teacher.shape[1] == term_cfg.kwargs["teacher_channels"], (name, term_cfg)
            value = term(student, teacher, batch, 0)
            assert torch.isfinite(value) and value > 0
        s_rec, s_out = built[spec.arch[-2:]]
        t_rec, t_out = built[spec.teachers[0]]
        total, parts = objective(s_out, s_rec, {spec.teachers[0]: (t_rec, t_out)}, batch, 0)
        assert torch.isfinite(total) and len(parts) == len(spec.losses)


# ------------------------------------------------------------------------------ tiny end to end (slow)


@pytest.fixture(scope="session")
def mtms_workflow(tmp_path_factory):
    """The tiny MTMS config through train -> infer -> evaluate -> tables -> paper table, once."""
    targets = [f"results/tables/{EXP}.csv", "results/tables/paper_mtms.md"]
    return run_tiny_config(tmp_path_factory.mktemp("wf_mtms"), "tiny_mtms.yaml", targets)


def _epochs(wd, model: str) -> list[dict]:
    path = wd / f"results/{EXP}/models/{model}/seed0/epochs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _summary(wd, model: str) -> dict:
    return json.loads((wd / f"results/{EXP}/models/{model}/seed0/summary.json").read_text())


def _n_slices(wd, cases: list[str]) -> int:
    from medkd.data.store import SliceStore

    with SliceStore(wd / "results/slices/embedded.h5") as store:
        return sum(store.n_slices(c) for c in cases)


@pytest.mark.slow
def test_teacher_trains_both_heads(mtms_workflow):
    from medkd.runtime import load_trained

    wd = mtms_workflow
    model, spec = load_trained(wd / f"results/{EXP}/models/t1/seed0")
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert set(out) == {"out", "recon"}
    assert out["out"].shape == (2, 1, 32, 32) and out["recon"].shape == (2, 3, 32, 32)
    history = _epochs(wd, "t1")
    assert len(history) == 2
    for h in history:
        seg, recon = h["terms"]["0:dice_bce"], h["terms"]["1:mse_to_input"]
        assert seg > 0 and recon > 0
        # the epoch loss is the slice-weighted mean of DiceBCE + 0.2 * MSE(recon, input)
        assert h["train_loss"] == pytest.approx(seg + 0.2 * recon, rel=1e-6)
    assert history[1]["terms"]["1:mse_to_input"] < history[0]["terms"]["1:mse_to_input"]


@pytest.mark.slow
def test_students_train_on_the_nested_half(mtms_workflow):
    wd = mtms_workflow
    split = json.loads((wd / f"results/splits/{EXP}.json").read_text())
    train, half = split["splits"]["train"], split["subsets"]["half"]["cases"]
    # 5 cases: test floor(0.2 * 5) = 1, val 1, train 3; half = floor(0.5 * 3 + 0.5) = 2 of the train cases
    assert len(train) == 3 and len(half) == 2 and set(half) < set(train)
    n_train, n_half = _n_slices(wd, train), _n_slices(wd, half)
    assert _summary(wd, "t1")["train_slices"] == n_train
    for model in ("s1", *KD_MODELS):
        assert _summary(wd, model)["train_slices"] == n_half
    # the KD batch (20) does not divide the student's slices, so the last, smaller batch is exercised
    assert n_half % 20 != 0
    # S1 at width 0.25 (channels 4, 8, 16), conv weights + bias, BN 2 per channel:
    # e1 3*9*4+4+8 = 120; e2 4*9*8+8+16 = 312; b 8*9*16+16+32 = 1200;
    # d1 up 16*8*4+8 = 520, conv 16*9*8+8+16 = 1176; d2 up 8*4*4+4 = 132, conv 8*9*4+4+8 = 300; head 4+1 = 5
    # total 120 + 312 + 1200 + 520 + 1176 + 132 + 300 + 5 = 3765
    for model in ("s1", *KD_MODELS):
        assert _summary(wd, model)["params"] == 3765


@pytest.mark.slow
def test_contrastive_kd_terms_and_switches(mtms_workflow):
    wd = mtms_workflow
    weights = [0.4, 0.2, 0.2, 0.1, 0.1]
    names = ["0:dice", "1:infonce", "2:pmd", "3:infonce", "4:infonce"]
    for model in KD_MODELS:
        config = json.loads((wd / f"results/{EXP}/models/{model}/seed0/config.json").read_text())
        assert list(config["inputs"]["teacher_dirs"]) == ["t1"] and config["inputs"]["caches"] == {}
        for h in _epochs(wd, model):
            assert list(h["terms"]) == names
            assert all(math.isfinite(v) for v in h["terms"].values())
            assert h["terms"]["1:infonce"] > 0 and h["terms"]["3:infonce"] > 0 and h["terms"]["4:infonce"] > 0
            total = sum(w * h["terms"][n] for w, n in zip(weights, names))
            assert h["train_loss"] == pytest.approx(total, rel=1e-6)
    for h in _epochs(wd, "kd_t1_s1"):
        assert h["terms"]["2:pmd"] > 0  # binary sigmoid KL between student and teacher logits
    for h in _epochs(wd, "kd_t1_s1_code"):
        assert h["terms"]["2:pmd"] == 0.0  # the code's softmax over one channel: identically zero

    def adapters(model: str) -> dict:
        state = torch.load(wd / f"results/{EXP}/models/{model}/seed0/last.pt", weights_only=True)["objective"]
        return {k: tuple(v.shape) for k, v in state.items() if k.endswith("adapter.weight")}

    # learned 1x1 adapters (out, in): B-B teacher 64 -> student 16, E-E 8 -> 8, D-D student 4 -> teacher 4
    assert adapters("kd_t1_s1") == {"terms.1.adapter.weight": (16, 64, 1, 1), "terms.3.adapter.weight": (8, 8, 1, 1),
                                     "terms.4.adapter.weight": (4, 4, 1, 1)}
    assert adapters("kd_t1_s1_code") == {}  # random projections are re-drawn every step, never stored


@pytest.mark.slow
def test_pooled_convention_thresholds_raw_logits(mtms_workflow):
    from medkd.data.store import SliceStore

    wd = mtms_workflow
    split = json.loads((wd / f"results/splits/{EXP}.json").read_text())
    refs = {}
    with SliceStore(wd / "results/slices/embedded.h5") as store:
        for cid in split["splits"]["test"]:
            refs[cid] = np.isin(store.read_case(cid).label, [3, 4])
    for model in ("t1", "s1", *KD_MODELS):
        tp = fp = fn = 0
        with h5py.File(wd / f"results/{EXP}/predictions/{model}/seed0.h5", "r") as fh:
            assert sorted(fh["cases"]) == sorted(refs)
            for cid, ref in refs.items():
                logit = fh[f"cases/{cid}/logit"][()]
                np.testing.assert_array_equal(fh[f"cases/{cid}/pred"][()], (logit > 0).astype(np.uint8))
                pred = logit > 0.5  # the thesis thresholds raw logits at 0.5 (p > 0.622)
                tp += int((pred & ref).sum())
                fp += int((pred & ~ref).sum())
                fn += int((~pred & ref).sum())
        rows = pd.read_csv(wd / f"results/{EXP}/metrics/{model}/seed0.csv")
        pooled = rows[rows.convention == "mtms_pooled"].set_index("metric")["value"]
        assert set(rows[rows.convention == "mtms_pooled"]["case"]) == {"ALL"}
        expected = {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn),
                    "precision": tp / (tp + fp) if tp + fp else math.nan, "recall": tp / (tp + fn)}
        for metric, value in expected.items():
            if math.isnan(value):
                assert math.isnan(pooled[metric])
            else:
                assert pooled[metric] == pytest.approx(value, abs=1e-12), (model, metric)
        engine = rows[rows.convention == "engine"]
        assert set(engine["metric"]) >= {"dice", "iou", "precision", "recall", "hd95"}
        assert set(engine["case"]) == set(refs) and set(engine["class"]) == {"wm"}


@pytest.mark.slow
def test_experiment_and_paper_tables(mtms_workflow):
    wd = mtms_workflow
    table = pd.read_csv(wd / f"results/tables/{EXP}.csv")
    assert set(table["model"]) == {"s1", "kd_t1_s1", "kd_t1_s1_code", "t1"}
    assert set(table["convention"]) == {"engine", "mtms_pooled", "cost"}
    pooled = table[table.convention == "mtms_pooled"]
    assert set(pooled["metric"]) == {"dice", "iou", "precision", "recall"} and set(pooled["class"]) == {"wm"}
    assert pooled["mean"].dropna().between(0, 1).all()
    by = pooled.set_index(["model", "metric"])["mean"]
    for model in ("s1", "kd_t1_s1", "kd_t1_s1_code", "t1"):
        iou = by[(model, "iou")]
        assert by[(model, "dice")] == pytest.approx(2 * iou / (1 + iou), abs=1e-12)  # pooled counts: D = 2J/(1+J)
    kd = table[table.model == "kd_t1_s1"]
    assert json.loads(kd["fidelity"].iloc[0]) == {"adapter": "learned", "pmd": "sigmoid_kl"}
    md = (wd / f"results/tables/{EXP}.md").read_text()
    header = md.splitlines()[2]
    for column in ("dice wm", "hd95 wm", "dice wm [mtms_pooled]", "iou wm [mtms_pooled]"):
        assert f"| {column} |" in header

    paper = pd.read_csv(wd / "results/tables/paper_mtms.csv")
    assert list(paper["model"]) == ["s1", "kd_t1_s1", "kd_t1_s1_code", "t1"]
    assert set(paper["convention"]) == {"mtms_pooled"} and set(paper["class"]) == {"wm"}
    rows = paper.set_index("model")
    assert rows.loc["s1", "params"] == 3765
    for metric in ("iou", "dice", "recall", "precision"):
        assert math.isnan(rows.loc["s1"].get(f"{metric}_gain_pct", math.nan))
        for model in KD_MODELS:
            expected = 100 * (by[(model, metric)] - by[("s1", metric)]) / by[("s1", metric)]
            assert rows.loc[model, f"{metric}_gain_pct"] == pytest.approx(expected, rel=1e-9)
    text = (wd / "results/tables/paper_mtms.md").read_text()
    assert "| setting | model | params | iou ours (paper) | dice ours (paper) | recall ours (paper) | precision ours (paper) |" in text
    assert "Convention: mtms_pooled" in text
