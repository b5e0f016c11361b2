"""Docs and configs agree: every experiment's `description` and `fidelity` entries name what its config runs.

For every experiment of config/paper.yaml and of the embedded default (config/config.yaml, which includes
config/embedded/*.yaml), checked against the resolved config and model specs (`medkd.config.model_spec`):

* the k-space mask: a fixed mask file (`kind: file`, KD-MRI's shipped masks) or one drawn per case from a
  seeded generator, in the experiment's description and the models' fidelity `mask`;
* the checkpoint selection: the fidelity `select` / `teacher_select` / `select_on` entries against
  `train.select` and `train.val_split`, and every `val_term` selection named in the fidelity;
* recipe switches: soft Dice, cross-entropy class weights, dropout, initialisation and BN momentum passed in
  `arch_kwargs`, the KD terms' readings (MTMS adapters and PMD, KD-MRI attention normalisation and imitation,
  temperature, alpha, teacher weighting, attention weights), and the numbers the model descriptions quote;
* a few statements of the docs that restate config values (MTMS provenance, TeachFormer attention weights,
  the BraTS embedded recipe, KD-MRI knee statistics).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medkd.config import REPO_ROOT, load_config, model_spec
from medkd.spec import term_keys

PAPER = load_config(REPO_ROOT / "config" / "paper.yaml")
EMBEDDED = load_config(REPO_ROOT / "config" / "config.yaml")
CONFIGS = {"paper": PAPER, "embedded": EMBEDDED}
EXPERIMENTS = [(c, e) for c, cfg in CONFIGS.items() for e in cfg["experiments"]]
MODELS = [(c, e, m) for c, e in EXPERIMENTS for m in CONFIGS[c]["experiments"][e]["models"]]

FIXED_MASK = re.compile(r"\b(ships|shipped)\b|\bfixed mask\b", re.I)
PER_CASE = re.compile(r"\bper[ -]case\b", re.I)
SOFT_DICE = re.compile(r"soft Dice", re.I)


def _flat(text: str) -> str:
    return " ".join(str(text).split())


def _exp(cfg: str, exp: str) -> dict:
    return CONFIGS[cfg]["experiments"][exp]


def _model(cfg: str, exp: str, model: str) -> dict:
    return _exp(cfg, exp)["models"][model]


def _fidelity_text(m: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in (m.get("fidelity") or {}).items())


def _lead(value) -> float:
    """The number a fidelity entry starts with: "1 (README gives none)" -> 1.0."""
    return float(str(value).split()[0])


def _num(value) -> str:
    """0.0 -> "0", 0.1 -> "0.1", 1.0 -> "1": how the fidelity entries write numbers."""
    return f"{float(value):g}"


# ------------------------------------------------------------------------------------------------ masks


MASKED = [(c, e) for c, e in EXPERIMENTS
          if _exp(c, e).get("kspace", {}).get("spec", {}).get("kind") not in (None, "sr_truncate")]


def test_kspace_experiments_are_found():
    assert ("paper", "kdmri_acdc_4x") in MASKED and ("paper", "kdmri_knee_8x") in MASKED
    assert ("embedded", "kdmri_recon") in MASKED and len([1 for c, _ in MASKED if c == "paper"]) == 10


@pytest.mark.parametrize("cfg,exp", MASKED, ids=[f"{c}:{e}" for c, e in MASKED])
def test_mask_kind_is_named(cfg, exp):
    e = _exp(cfg, exp)
    spec = e["kspace"]["spec"]
    desc = _flat(e["description"])
    if spec["kind"] == "file":
        right, wrong, fid = FIXED_MASK, PER_CASE, "shipped_file"
        # the description names the very file: organ folder and acceleration
        assert "/".join(Path(spec["path"]).parts[-2:]) in desc, (exp, spec["path"], desc)
    else:
        right, wrong, fid = PER_CASE, FIXED_MASK, "per_case_draw"
        assert f"{spec['acceleration']}x" in desc, (exp, desc)
    assert right.search(desc), f"{exp}: the description does not name the {spec['kind']} mask: {desc}"
    assert not wrong.search(desc), f"{exp}: the description names the other mask reading: {desc}"
    for name, m in e["models"].items():
        if m["role"] == "baseline":
            continue
        assert (m.get("fidelity") or {}).get("mask") == fid, (exp, name, m.get("fidelity"))


# -------------------------------------------------------------------------------------------- selection


def _loss_names(spec, keys) -> set[str]:
    return {k.split(":", 1)[1] for k in keys}


SELECT_READINGS = {
    # fidelity `select` -> (engine metric, loss names of the val_term terms or None)
    "val_dice": ("val_dice", None),
    "val_loss": ("val_loss", None),
    "val_mse": ("val_mse", None),
    "val_dice_loss": ("val_term", {"dice"}),
    "val_ce": ("val_term", {"cross_entropy"}),
    "unweighted_seg_plus_recon": ("val_term", {"dice_bce", "mse_to_input"}),
    "attention_map_mse": ("val_term", {"attention_transfer"}),
}


@pytest.mark.parametrize("cfg,exp,model", MODELS, ids=[f"{c}:{e}:{m}" for c, e, m in MODELS])
def test_selection_is_named_as_configured(cfg, exp, model):
    m = _model(cfg, exp, model)
    fid = m.get("fidelity") or {}
    spec = model_spec(CONFIGS[cfg], exp, model)
    sel = spec.train.select
    if sel.metric == "val_term":
        assert "select" in fid, f"{exp}/{model} selects on {sel.term}: its fidelity must say so"
    if "select" in fid:
        assert fid["select"] in SELECT_READINGS, f"{exp}/{model}: unknown fidelity select {fid['select']!r}"
        metric, losses = SELECT_READINGS[fid["select"]]
        assert sel.metric == metric, (exp, model, fid["select"], sel.metric)
        if losses is not None:
            keys = term_keys(spec.losses, sel.term)
            assert _loss_names(spec, keys) == losses, (exp, model, keys)
            if fid["select"] == "attention_map_mse":
                picked = [spec.losses[int(k.split(":")[0])] for k in keys]
                assert all(t.kwargs.get("distance") == "mse" for t in picked), (exp, model)
    if "teacher_select" in fid:
        for t in m["teachers"]:
            assert (_model(cfg, exp, t).get("fidelity") or {}).get("select") == fid["teacher_select"], (exp, model, t)
    if "select_on" in fid:
        on_test = spec.train.val_split == "test"
        assert fid["select_on"].startswith("test") == on_test, (exp, model, fid["select_on"], spec.train.val_split)


def test_mtms_provenance_every_experiment():
    """Table 4.2's numbers sit on the runs the code scored, never on the full-combination code rows
    (docs/mtms.md, "Which run is in Table 4.2"); every KD student keeps the best validation DiceLoss."""
    mtms = [e for e in PAPER["experiments"] if e.startswith("mtms_")]
    assert set(mtms) == {"mtms_spleen", "mtms_spleen_honest"}
    for exp in mtms:
        e = PAPER["experiments"][exp]
        refs = {(r["model"], r["metric"]): r["value"] for r in e["reference"]}
        assert not {m for m, _ in refs} & {"kd_t1_s1_code", "kd_t1_s2_code"}, exp
        assert refs[("kd_t1_s2", "dice")] == 0.794 and refs[("kd_t1_s1", "iou")] == 0.629, exp
        assert refs[("kd_t2_s2_code", "precision")] == 0.841 and refs[("kd_t2_s1_code", "dice")] == 0.767, exp
        if "kd_t1_s2_ee_code" in e["models"]:
            assert refs[("kd_t1_s2_ee_code", "dice")] == 0.794 and refs[("kd_t1_s1_bbdd_code", "iou")] == 0.629
        else:  # the honest variant trains no ablated run: its description says so
            assert "kd_t1_s2_ee_code" in _flat(e["description"]), exp
        for r in e["reference"]:
            assert r["model"] in e["models"] and r["convention"] == "mtms_pooled", (exp, r)
        for name, m in e["models"].items():
            if m.get("kd_method") == "mtms_contrastive":
                sel = model_spec(PAPER, exp, name).train.select
                assert (sel.metric, sel.term) == ("val_term", ("0:dice",)), (exp, name)
                assert m["fidelity"]["select"] == "val_dice_loss", (exp, name)
    doc = _flat((REPO_ROOT / "docs" / "mtms.md").read_text())
    assert "the code did not score these" in doc and "mtms_spleen_honest" in doc


# ---------------------------------------------------------------------------------------- recipe switches


@pytest.mark.parametrize("cfg,exp,model", MODELS, ids=[f"{c}:{e}:{m}" for c, e, m in MODELS])
def test_recipe_switches_are_named(cfg, exp, model):
    m = _model(cfg, exp, model)
    fid = m.get("fidelity") or {}
    ftext = _fidelity_text(m)
    spec = model_spec(CONFIGS[cfg], exp, model)
    losses = {t.loss for t in spec.losses}
    where = f"{cfg}:{exp}/{model}"

    # soft Dice: in the model's fidelity (where it has one: the tables print it), and in the experiment's or the
    # model's description
    if "soft_dice" in losses:
        assert not fid or SOFT_DICE.search(ftext), f"{where}: soft Dice not in its fidelity"
        texts = _flat(_exp(cfg, exp)["description"]) + " " + _flat(m.get("description", ""))
        assert re.search(r"(cross-entropy|CE) \+ (soft )?Dice", texts), f"{where}: Dice not in the descriptions"
    elif SOFT_DICE.search(ftext):
        pytest.fail(f"{where}: the fidelity names soft Dice, the losses have none")

    # cross-entropy class weights
    weights = [t.kwargs["class_weights"] for t in spec.losses if t.loss == "cross_entropy" and "class_weights" in t.kwargs]
    if weights:
        assert fid.get("ce_class_weights") == ", ".join(_num(w) for w in weights[0]), where
    else:
        assert "ce_class_weights" not in fid, where

    # architecture switches passed in arch_kwargs
    ak = spec.arch_kwargs
    for key in ("dropout", "bn_momentum"):
        if key in ak:
            named = fid.get(key, fid.get(f"{m['role']}_{key}"))  # pcd: teacher_dropout
            assert named is not None and str(named).split(" ")[0] == _num(ak[key]), (where, key, named)
    if "init" in ak:
        assert str(fid.get("init", "")).split(" ")[0] == ak["init"], (where, fid.get("init"))
    if "batchnorm" in fid and "batchnorm" in ak:
        assert fid["batchnorm"] == ak["batchnorm"], where

    # KD terms
    terms = {t.loss: t for t in spec.losses}
    if "pmd" in fid:
        assert terms["pmd"].kwargs["mode"] == fid["pmd"], where
    if "adapter" in fid:
        modes = {t.kwargs.get("adapter") for t in spec.losses if t.loss == "infonce"} - {"none"}
        assert modes == {fid["adapter"]}, (where, modes)
    if "teacher_weights" in fid:
        assert terms["multi_teacher_kl"].kwargs["weights"] == fid["teacher_weights"], where
    kd = terms.get("kl_div") or terms.get("multi_teacher_kl")
    if kd is not None:
        if "temperature" in fid:
            assert float(kd.kwargs.get("temperature", 1.0)) == _lead(fid["temperature"]), where
        if "alpha" in fid:
            assert kd.weight == _lead(fid["alpha"]), where
        if fid.get("kd_reading") == "readme":  # the README's literal CE + KL: T = 1, weight 1
            assert (float(kd.kwargs.get("temperature", 1.0)), kd.weight) == (1.0, 1.0), where
    att = [t for t in spec.losses if t.loss == "attention_similarity"]
    if "beta_per_teacher" in fid:
        assert att and all(t.weight == float(fid["beta_per_teacher"]) for t in att), where
    split = re.search(r"([\d.]+) split over (\d+) teachers", str(fid.get("attention", "")))
    if split:
        assert len(att) == int(split.group(2)) == len(m["teachers"]), where
        assert sum(t.weight for t in att) == pytest.approx(float(split.group(1)), abs=1e-3), where
    # KD-MRI: attention normalisation (the model's own AT term, or that of the model it starts from) and imitation
    if "at_normalise" in fid:
        source = spec if "attention_transfer" in losses else model_spec(CONFIGS[cfg], exp, m["init_from"])
        modes = {t.kwargs.get("normalise") for t in source.losses if t.loss == "attention_transfer"}
        assert modes == {fid["at_normalise"]}, (where, modes)
    if fid.get("imitation") == "paper_alpha":
        assert terms["imitation_l1"].kwargs.get("scaling") == "paper", where
        assert terms["imitation_l1"].weight == float(fid["alpha"]) == terms["l1"].weight, where
    if fid.get("imitation") == "shipped_off":
        assert "imitation_l1" not in losses, where

    # numbers a model description quotes for its KD terms
    desc = _flat(m.get("description", ""))
    for w, name in re.findall(r"(\d+(?:\.\d+)?) (multi-teacher KL|attention similarity)", desc):
        loss = "multi_teacher_kl" if name == "multi-teacher KL" else "attention_similarity"
        assert {t.weight for t in spec.losses if t.loss == loss} == {float(w)}, (where, name, w)
    t_quoted = re.search(r"\(T (\d+(?:\.\d+)?)", desc)
    if t_quoted and kd is not None:
        assert float(kd.kwargs.get("temperature", 1.0)) == float(t_quoted.group(1)), where


# ------------------------------------------------------------------------------------ docs restating configs


def _doc(name: str) -> str:
    return (REPO_ROOT / "docs" / name).read_text()


def _row(doc: str, first_cell: str) -> list[str]:
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r}")


def test_teachformer_attention_weights_in_the_docs():
    row = _row(_doc("brats_teachformer.md"), "attention weight")
    for cfg, exp, cell in (("paper", "teachformer_hecktor", row[2]), ("embedded", "teachformer", row[3])):
        w = {t["weight"] for t in _model(cfg, exp, "student_kd")["losses"] if t["loss"] == "attention_similarity"}
        n = len(_model(cfg, exp, "student_kd")["teachers"])
        assert cell == f"{_num(w.pop())} per teacher ({n})", (cfg, cell)
    text = _flat(_doc("brats_teachformer.md"))
    assert "0.25 each" not in text  # the embedded value stated as the only one


def test_brats_embedded_training_rows_in_the_docs():
    doc = _doc("brats_teachformer.md")
    for first, model in (("embedded, teacher", "teacher"), ("embedded, student / student_kd", "student")):
        cells = _row(doc, first)
        t = model_spec(EMBEDDED, "brats_kd", model).train
        assert cells[1] == f"Adam {t.optimizer.lr:.0e}".replace("e-0", "e-"), cells
        assert cells[2] == t.scheduler.name and cells[3] == str(t.epochs) and cells[4] == str(t.batch_size), cells
        assert cells[5].startswith(f"`{t.select.metric}`") or cells[5] == "same", cells
    _, _, paper_cell, embedded_cell, _ = _row(doc, "checkpoint")[:5]
    assert f"`{model_spec(PAPER, 'brats_kd', 'teacher').train.select.metric}`" in paper_cell
    assert f"`{model_spec(EMBEDDED, 'brats_kd', 'teacher').train.select.metric}`" in embedded_cell
    sched = _row(doc, "BraTS optimiser, schedule")
    assert model_spec(EMBEDDED, "brats_kd", "teacher").train.scheduler.name in sched[3]


def test_kdmri_knee_statistics_are_per_slice_in_the_docs():
    knee = [e for e in PAPER["experiments"] if e.startswith("kdmri_knee")]
    assert knee and all(PAPER["experiments"][e]["headline"]["convention"] == "kdmri_per_slice" for e in knee)
    for name in ("kdmri.md", "not_reproduced.md"):
        for para in re.split(r"\n\s*\n|\n(?=\|)", _doc(name)):
            if "over test volumes" in para or "sd over\nvolumes" in para or "sd over volumes" in _flat(para):
                assert "slice" in para, f"docs/{name}: a spread over test volumes without the knee's slices: {para[:200]}"
