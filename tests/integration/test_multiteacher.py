"""BraTS teacher-student and TeachFormer in the DAG: the embedded configs against the brief and the sources,
and the tiny multi-teacher config end to end.

The end-to-end run (``multiteacher_workflow``) trains three teachers of three families (CNN U-Net, 2-D
UNETR, 2-D Swin U-Net) on both contrasts, then one slim transformer student with cross-entropy, the
multi-teacher soft-label KL weighted by each teacher's best validation Dice, and coarse/fine
attention-map similarity to every teacher (teachers run online), scores the test split per case with the
engine's metrics and the union region ``tissue``, and builds the experiment and TeachFormer paper tables.
"""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from wfhelpers import REPO, run_tiny_config

EXP = "tiny_multiteacher"
TEACHERS = ("unet", "unetr", "swin_unetr")
TEACHER_TAPS = {"unet": ["bottleneck", "decoders.0"], "unetr": ["coarse_map", "fine_map"],
                "swin_unetr": ["coarse_map", "fine_map"]}
TERM_NAMES = ["0:cross_entropy", "1:multi_teacher_kl", "2:attention_similarity", "3:attention_similarity",
              "4:attention_similarity"]
TERM_WEIGHTS = [1.0, 0.5, 0.25, 0.25, 0.25]

# The BraTS README's architectures at paper scale (medkd.models.separable_unet; docs/sources.md 1).
PAPER_TEACHER_WIDTHS = (16, 48, 120, 224, 488, 1008)
PAPER_STUDENT_WIDTHS = (16, 32, 64, 128, 256)


def separable_unet_keras_params(cin: int, widths, cout: int, batchnorm: bool, first_plain: bool) -> tuple[int, int]:
    """(trainable, BN moving statistics) of the separable U-Net layout, counted layer by layer as Keras does.

    SeparableConv2D 3x3: 9 c_in (depthwise) + c_in c_out + c_out; Conv2D 3x3: 9 c_in c_out + c_out;
    Conv2DTranspose 3x3: 9 c_in c_out + c_out; BatchNormalization: 2 c trainable + 2 c statistics;
    two convs per block; head Conv2D 1x1: c_0 cout + cout.
    """
    trainable = stats = 0

    def block(c_in: int, c_out: int, plain_first: bool) -> None:
        nonlocal trainable, stats
        for k in range(2):
            trainable += 9 * c_in * c_out + c_out if (k == 0 and plain_first) else 9 * c_in + c_in * c_out + c_out
            if batchnorm:
                trainable += 2 * c_out
                stats += 2 * c_out
            c_in = c_out

    c = cin
    for i, w in enumerate(widths[:-1]):
        block(c, w, first_plain and i == 0)
        c = w
    block(c, widths[-1], False)
    c = widths[-1]
    for w in reversed(widths[:-1]):
        trainable += 9 * c * w + w  # transposed conv
        block(2 * w, w, False)
        c = w
    trainable += widths[0] * cout + cout
    return trainable, stats


# ------------------------------------------------------------------------------ embedded configs (fast)


@pytest.fixture(scope="module")
def embedded():
    """The embedded default with only this brief's two files included."""
    import yaml

    from medkd.config import load_config

    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["include"] = ["config/embedded/brats_kd.yaml", "config/embedded/teachformer.yaml"]
    return load_config(raw, root=REPO)


def test_paper_counts_of_the_layout_formula():
    # the layout formula reproduces the README's totals (3 input channels, 2 classes), so it can check the
    # embedded widths independently of the model code
    t_train, t_stats = separable_unet_keras_params(3, PAPER_TEACHER_WIDTHS, 2, batchnorm=False, first_plain=True)
    s_train, s_stats = separable_unet_keras_params(3, PAPER_STUDENT_WIDTHS, 2, batchnorm=True, first_plain=False)
    assert (t_train, t_stats) == (8_639_778, 0)
    assert (s_train, s_stats, s_train + s_stats) == (605_645, 2_944, 608_589)


def test_embedded_brats_config_follows_the_brief(embedded):
    from medkd.config import model_spec
    from medkd.models import count_parameters
    from medkd.runtime import build_from_spec

    e = embedded["experiments"]["brats_kd"]
    assert e["channels"] == [0, 1] and e["task"] == "segmentation"
    assert e["classes"] == {"background": [0, 1, 2, 3], "lesion": [4]}
    assert e["regions"] == {"wt": ["lesion"]}
    assert (e["headline"]["convention"], e["headline"]["class"]) == ("region", "wt")
    m = e["models"]
    assert list(m) == ["teacher", "student", "student_kd"]
    assert m["teacher"]["arch"] == "brats_teacher"
    assert m["student"]["arch"] == m["student_kd"]["arch"] == "brats_student"
    # a quarter of every paper width
    assert m["teacher"]["arch_kwargs"]["widths"] == [w // 4 for w in PAPER_TEACHER_WIDTHS]
    for name in ("student", "student_kd"):
        assert m[name]["arch_kwargs"]["widths"] == [w // 4 for w in PAPER_STUDENT_WIDTHS]
    kd = m["student_kd"]
    assert kd["teachers"] == ["teacher"] and kd["compare_to"] == "student"
    # the README's CE + KL, with the CPU-scale recipe's soft Dice next to CE (lesion-weighted CE, see the config header)
    assert [(t["loss"], t["weight"]) for t in kd["losses"]] == [("cross_entropy", 1.0), ("soft_dice", 1.0), ("kl_div", 1.0)]
    assert kd["losses"][0]["kwargs"] == {"class_weights": [1.0, 10.0]}
    assert kd["losses"][:2] == m["student"]["losses"]  # KD adds only the KL term to the student-alone objective
    kl = kd["losses"][2]
    assert kl["kwargs"] == {"temperature": 1.0} and kl["teacher"] == "teacher" and kl["teacher_tap"] == "cache:logits"
    assert kd["fidelity"]["kd_reading"] == "readme"
    for name in m:
        tr = m[name]["train"]
        # "Adam" with "learning rate adjusted during training", values unstated: medkd's reading is cosine decay
        assert tr["optimizer"]["name"] == "adam" and tr["scheduler"]["name"] == "cosine"
    # exact parameter counts at 2 input channels, 2 classes (PyTorch count = Keras trainable count)
    # student, layer by layer (widths 4, 8, 16, 32, 64; sep = 9 cin + cin cout + cout; BN 2 c):
    #   enc 2->4: 30 + 8 + 56 + 8 = 102; 4->8: 76 + 16 + 144 + 16 = 252; 8->16: 216 + 32 + 416 + 32 = 696;
    #   16->32: 688 + 64 + 1344 + 64 = 2160; bottleneck 32->64: 2400 + 128 + 4736 + 128 = 7392;
    #   dec 64->32: up 18464, block 2656 + 64 + 1344 + 64 -> 22592; 32->16: up 4624, block 816 + 32 + 416 + 32
    #   -> 5920; 16->8: up 1160, block 280 + 16 + 144 + 16 -> 1616; 8->4: up 292, block 108 + 8 + 56 + 8 -> 472;
    #   head 4 * 2 + 2 = 10; total 10602 + 30600 + 10 = 41212
    cfg = {"experiments": {"brats_kd": e}, "device": "cpu", "threads": 1}
    params = {n: count_parameters(build_from_spec(model_spec(cfg, "brats_kd", n))) for n in m}
    assert params["student"] == params["student_kd"] == 41_212
    assert params["student"] == separable_unet_keras_params(2, [4, 8, 16, 32, 64], 2, True, False)[0]
    assert params["teacher"] == separable_unet_keras_params(2, [4, 12, 30, 56, 122, 252], 2, False, True)[0] == 550_518
    # the compression stays close to the README's 8,639,778 / 608,589 = 14.2
    assert params["teacher"] / params["student"] == pytest.approx(8_639_778 / 608_589, rel=0.1)


def test_embedded_teachformer_config_follows_the_brief(embedded):
    from medkd.config import model_spec
    from medkd.models import count_parameters
    from medkd.runtime import build_from_spec

    e = embedded["experiments"]["teachformer"]
    assert e["channels"] == [0, 1] and e["classes"] == {"background": [0, 1, 2, 3], "lesion": [4]}
    m = e["models"]
    teachers = [n for n, x in m.items() if x["role"] == "teacher"]
    assert len(teachers) == 2 and {m[t]["arch"] for t in teachers} == {"unet", "unetr2d"}  # CNN + transformer
    assert m["student"]["arch"] == m["student_kd"]["arch"] == "teachformer_student"
    assert m["student"]["arch_kwargs"] == m["student_kd"]["arch_kwargs"]
    kd = m["student_kd"]
    assert kd["teachers"] == teachers and kd["compare_to"] == "student"
    terms = kd["losses"]
    names = [t["loss"] for t in terms]
    # the paper's CE + KL + attention, with the CPU-scale recipe's soft Dice next to CE
    assert names == ["cross_entropy", "soft_dice", "multi_teacher_kl", *["attention_similarity"] * len(teachers)]
    assert terms[:2] == m["student"]["losses"]  # KD adds only distillation terms to the student-alone objective
    mt = terms[2]
    assert mt["teacher"] == teachers and mt["teacher_tap"] == "out"
    assert mt["kwargs"] == {"weights": "uniform", "temperature": 4.0}
    att = terms[3:]
    assert [t["teacher"] for t in att] == teachers  # one attention term per teacher
    assert all(t["student_tap"] == ["coarse_map", "fine_map"] for t in att)
    assert sum(t["weight"] for t in att) == pytest.approx(0.5)
    cfg = {"experiments": {"teachformer": e}, "device": "cpu", "threads": 1}
    assert model_spec(cfg, "teachformer", "student_kd").online_teachers() == sorted(teachers)
    params = {n: count_parameters(build_from_spec(model_spec(cfg, "teachformer", n))) for n in m}
    for t in teachers:
        assert 5 <= params[t] / params["student_kd"] <= 10  # "5-10x fewer parameters"


def test_embedded_teachformer_objective_runs_on_real_taps(embedded):
    """The KD objective on the models' real taps at 64x64: maps pair coarse with coarse and fine with fine
    (the teacher map at the student's resolution or finer), and every term gives the student a gradient."""
    from medkd.config import model_spec
    from medkd.distill.taps import TapRecorder
    from medkd.models.transformer_unets import count_flops
    from medkd.objective import Objective
    from medkd.runtime import build_from_spec

    cfg = {"experiments": {"teachformer": embedded["experiments"]["teachformer"]}, "device": "cpu", "threads": 1}
    spec = model_spec(cfg, "teachformer", "student_kd")
    torch.manual_seed(0)
    batch = {"image": torch.randn(2, 2, 64, 64), "target": (torch.rand(2, 64, 64) > 0.98).long()}
    student = build_from_spec(spec)
    objective = Objective(spec.losses)
    s_rec = TapRecorder(student, objective.student_taps())
    t_out, flops = {}, {}
    for name in spec.teachers:
        teacher = build_from_spec(model_spec(cfg, "teachformer", name)).eval()
        flops[name] = count_flops(teacher, (1, 2, 64, 64))
        rec = TapRecorder(teacher, sorted(spec.teacher_taps()[name]))
        with torch.no_grad():
            t_out[name] = (rec, teacher(batch["image"]))
    out = student(batch["image"])
    coarse, fine = s_rec.features["coarse_map"], s_rec.features["fine_map"]
    assert coarse.shape[-1] == 4 and fine.shape[-1] == 16  # E_n at 64 / (4 * 4), D_{n-1} at 64 / 4
    attention = [t for t in spec.losses if t.loss == "attention_similarity"]
    assert len(attention) == len(spec.teachers)
    for term in attention:
        rec, _ = t_out[term.teacher]
        t_coarse, t_fine = (rec.features[t] for t in term.teacher_tap)
        assert t_coarse.shape[-1] >= coarse.shape[-1] and t_fine.shape[-1] >= fine.shape[-1]
        assert t_coarse.shape[-1] < t_fine.shape[-1]
    total, parts = objective(out, s_rec, t_out, batch, 0)
    assert list(parts) == [
        "0:cross_entropy", "1:soft_dice", "2:multi_teacher_kl", "3:attention_similarity", "4:attention_similarity"
    ]
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in parts.values())
    for term_cfg in (t for t in spec.losses if t.teacher is not None):  # each distillation term alone reaches the student's first layer
        student.zero_grad()
        value, _ = Objective((term_cfg,))(student(batch["image"]), s_rec, t_out, batch, 0)
        value.backward()
        assert student.patch_embed.weight.grad.abs().sum() > 0, term_cfg
    s_rec.remove()
    assert all(count_flops(student, (1, 2, 64, 64)) < f for f in flops.values())


# ------------------------------------------------------------------------------ tiny end to end (slow)


@pytest.fixture(scope="session")
def multiteacher_workflow(tmp_path_factory):
    """The tiny multi-teacher config through train -> infer -> evaluate -> tables -> paper table, once."""
    targets = [f"results/tables/{EXP}.csv", "results/tables/paper_teachformer.md"]
    return run_tiny_config(tmp_path_factory.mktemp("wf_multiteacher"), "tiny_multiteacher.yaml", targets)


def _model_dir(wd, model: str):
    return wd / f"results/{EXP}/models/{model}/seed0"


def _epochs(wd, model: str) -> list[dict]:
    return [json.loads(line) for line in (_model_dir(wd, model) / "epochs.jsonl").read_text().splitlines()]


def _summary(wd, model: str) -> dict:
    return json.loads((_model_dir(wd, model) / "summary.json").read_text())


@pytest.mark.slow
def test_teachers_of_three_families_select_on_validation_dice(multiteacher_workflow):
    wd = multiteacher_workflow
    archs = set()
    for t in TEACHERS:
        s = _summary(wd, t)
        archs.add(s["arch"])
        assert s["role"] == "teacher" and s["select_metric"] == "val_dice"
        dices = [h["val_dice"] for h in _epochs(wd, t)]
        assert len(dices) == 2
        assert s["best_score"] == max(dices) and s["best_epoch"] == dices.index(max(dices))
        assert 0 < s["best_score"] <= 1
    assert archs == {"unet", "unetr2d", "swin_unet2d"}


@pytest.mark.slow
def test_student_loss_terms_and_online_teachers(multiteacher_workflow):
    wd = multiteacher_workflow
    config = json.loads((_model_dir(wd, "student_kd") / "config.json").read_text())
    assert sorted(config["inputs"]["teacher_dirs"]) == sorted(TEACHERS)  # all run online
    assert config["inputs"]["caches"] == {}  # no cache job: logits are read from the online teachers
    assert sorted(config["inputs"]["teacher_summaries"]) == sorted(TEACHERS)
    history = _epochs(wd, "student_kd")
    assert len(history) == 2
    for h in history:
        assert list(h["terms"]) == TERM_NAMES
        assert all(math.isfinite(v) and v > 0 for v in h["terms"].values())
        weighted = sum(w * h["terms"][n] for w, n in zip(TERM_WEIGHTS, TERM_NAMES))
        assert h["train_loss"] == pytest.approx(weighted, rel=1e-6)


def _validation_loss(wd, teacher_weights: list[float]) -> float:
    """The student's full objective on the validation split with its last-epoch weights, recomputed term by
    term: CE + 0.5 sum_i w_i T^2 KL(p_i^T || p_s^T) (T = 4, KL summed over classes, mean over pixels)
    + 0.25 sum_teachers mean_pairs ||a_s - a_t||_2 (a = flattened, L2-normalised mean_c F^2, the teacher map
    bilinearly resized to the student's), batched and slice-weighted as the engine validates."""
    from medkd.distill.taps import TapRecorder
    from medkd.datasets import load_split
    from medkd.runtime import build_from_spec, load_trained
    from medkd.spec import ModelSpec

    config = json.loads((_model_dir(wd, "student_kd") / "config.json").read_text())
    spec = ModelSpec.from_dict(config["spec"])
    student = build_from_spec(spec)
    student.load_state_dict(torch.load(_model_dir(wd, "student_kd") / "last.pt", weights_only=True)["model"])
    student.eval()
    s_rec = TapRecorder(student, ["coarse_map", "fine_map"])
    teachers = {}
    for t in TEACHERS:
        model, _ = load_trained(_model_dir(wd, t))
        teachers[t] = (model, TapRecorder(model, TEACHER_TAPS[t]))
    data = load_split(spec, wd / "results/slices/embedded.h5", wd / f"results/splits/{EXP}.json", "val")

    def attention(f: torch.Tensor, size) -> torch.Tensor:
        a = f.float().pow(2).mean(1, keepdim=True)
        if tuple(a.shape[-2:]) != tuple(size):
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        a = a.flatten(1)
        return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)

    total, n, bs, temp = 0.0, len(data), spec.train.batch_size, 4.0
    with torch.no_grad():
        for start in range(0, n, bs):
            batch = data.batch(torch.arange(start, min(start + bs, n)))
            z_s = student(batch["image"])
            loss = F.cross_entropy(z_s, batch["target"])
            log_ps = F.log_softmax(z_s / temp, dim=1)
            for w, t in zip(teacher_weights, TEACHERS):
                model, rec = teachers[t]
                log_pt = F.log_softmax(model(batch["image"]) / temp, dim=1)
                kl = (log_pt.exp() * (log_pt - log_ps)).sum(1).mean() * temp**2
                loss = loss + 0.5 * w * kl
                dists = []
                for s_tap, t_tap in zip(["coarse_map", "fine_map"], TEACHER_TAPS[t]):
                    fs = s_rec.features[s_tap]
                    a_s, a_t = attention(fs, fs.shape[-2:]), attention(rec.features[t_tap], fs.shape[-2:])
                    dists.append((a_s - a_t).norm(dim=1).mean())
                loss = loss + 0.25 * torch.stack(dists).mean()
            total += float(loss) * batch["image"].shape[0]
    return total / n


@pytest.mark.slow
def test_teacher_weights_come_from_validation_dice(multiteacher_workflow):
    wd = multiteacher_workflow
    scores = [_summary(wd, t)["best_score"] for t in TEACHERS]
    weights = [s / sum(scores) for s in scores]  # "proportional": w_i = Dice_i / sum_j Dice_j
    logged = _epochs(wd, "student_kd")[-1]["val_loss"]
    assert _validation_loss(wd, weights) == pytest.approx(logged, rel=1e-5, abs=1e-7)
    # the check tells the weightings apart: the teachers' scores differ, and uniform weights give another value
    assert max(weights) - min(weights) > 0.01
    assert abs(_validation_loss(wd, [1 / 3] * 3) - logged) > 1e-5


@pytest.mark.slow
def test_region_metrics_are_unions_of_classes(multiteacher_workflow):
    from medkd.data.store import SliceStore

    wd = multiteacher_workflow
    split = json.loads((wd / f"results/splits/{EXP}.json").read_text())
    refs, spacing = {}, {}
    with SliceStore(wd / "results/slices/embedded.h5") as store:
        for cid in split["splits"]["test"]:
            case = store.read_case(cid)
            refs[cid] = np.isin(case.label, [2, 3, 4])  # gm [2] + wm [3, 4]
            spacing[cid] = case.spacing
    for model in (*TEACHERS, "student_kd"):
        rows = pd.read_csv(wd / f"results/{EXP}/metrics/{model}/seed0.csv")
        region = rows[rows.convention == "region"]
        assert set(region["class"]) == {"tissue"} and set(region["metric"]) == {"dice", "iou", "hd95"}
        assert set(region["case"]) == set(refs)
        by = region.set_index(["case", "metric"])["value"]
        with h5py.File(wd / f"results/{EXP}/predictions/{model}/seed0.h5", "r") as fh:
            for cid, ref in refs.items():
                pred = np.isin(fh[f"cases/{cid}/pred"][()], [1, 2])  # class indices of gm, wm
                tp, fp, fn = int((pred & ref).sum()), int((pred & ~ref).sum()), int((~pred & ref).sum())
                assert by[(cid, "dice")] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
                assert by[(cid, "iou")] == pytest.approx(tp / (tp + fp + fn), abs=1e-12)
                row_mm, col_mm, slice_mm = spacing[cid]
                diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(ref.shape, (slice_mm, row_mm, col_mm))))
                assert 0 <= by[(cid, "hd95")] <= diagonal
        engine = rows[rows.convention == "engine"]
        assert set(engine["class"]) == {"gm", "wm"}


@pytest.mark.slow
def test_tables_give_params_and_flops_of_every_model(multiteacher_workflow):
    from medkd.models import count_parameters
    from medkd.models.transformer_unets import count_flops
    from medkd.runtime import load_trained

    wd = multiteacher_workflow
    table = pd.read_csv(wd / f"results/tables/{EXP}.csv")
    assert list(dict.fromkeys(table["model"])) == [*TEACHERS, "student_kd"]
    first = table.drop_duplicates("model").set_index("model")
    for model in (*TEACHERS, "student_kd"):
        net, _ = load_trained(_model_dir(wd, model))
        assert first.loc[model, "params"] == count_parameters(net)
        assert first.loc[model, "flops"] == count_flops(net, (1, 2, 32, 32))
    for t in TEACHERS:
        assert first.loc["student_kd", "flops"] < first.loc[t, "flops"]
    region = table[table.convention == "region"]
    assert region[region.metric != "hd95"]["mean"].between(0, 1).all()
    header = (wd / f"results/tables/{EXP}.md").read_text().splitlines()[2]
    for column in ("params", "GFLOPs", "dice tissue [region]", "hd95 tissue [region]"):
        assert f"| {column} |" in header
    paper = pd.read_csv(wd / "results/tables/paper_teachformer.csv")
    assert list(paper["model"]) == [*TEACHERS, "student_kd"]
    assert set(paper["convention"]) == {"region"} and set(paper["class"]) == {"tissue"}
    by = region.set_index(["model", "metric"])["mean"]
    for model in (*TEACHERS, "student_kd"):
        assert paper.set_index("model").loc[model, "dice"] == pytest.approx(by[(model, "dice")], rel=1e-12)
