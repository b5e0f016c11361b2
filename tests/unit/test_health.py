"""Health flags on hand-made per-case CSVs and epoch logs (exact wording), their place in the tables,
all.csv and health.md, and Markdown/LaTeX escaping."""

import json
import math

import pandas as pd
import pytest

from medkd import health as H
from medkd.report import collect, latex_escape, md_escape, write_experiment_outputs

B = H.HEALTH_DEFAULTS


def per_case(model, by_seed, metric="dice", cls="wm", conv="engine"):
    """by_seed: {seed: [value of case c0, c1, ...]} -> rows of a per-case metrics CSV."""
    return pd.DataFrame([{"experiment": "e", "model": model, "seed": seed, "case": f"c{i}", "class": cls,
                          "metric": metric, "convention": conv, "value": v}
                         for seed, values in by_seed.items() for i, v in enumerate(values)])


def epochs(metric, values, **extra):
    return [{"epoch": i, "train_loss": 1.0 / (i + 1), "val_loss": 1.0, metric: v, **extra} for i, v in enumerate(values)]


# ------------------------------------------------------------------------------------------ each flag


def test_trivial_teacher_segmentation_wording():
    m = pd.concat([per_case("t", {0: [0.02, 0.04], 1: [0.03, 0.05]}),          # wm: mean 0.035 <= 0.05
                   per_case("t", {0: [0.8, 0.9], 1: [0.8, 0.9]}, cls="gm")])     # gm: fine
    cfg = {"task": "segmentation", "models": {"t": {"role": "teacher"}}}
    assert H.check_trivial_teacher(m, "t", cfg, B) == (
        "test Dice of wm 0.035 (mean over seeds of the per-case mean) is within the margin 0.05 of the "
        "all-background prediction's Dice of 0 (empty-mask policy): for this class the teacher is no better than "
        "predicting nothing.")
    assert H.check_trivial_teacher(m, "t", cfg, {**B, "margin_dice": 0.01}) is None


def test_trivial_teacher_reconstruction_against_the_input_baseline():
    m = pd.concat([per_case("zf", {0: [27.0, 28.0]}, metric="psnr", cls="image"),
                   per_case("t", {0: [27.2, 28.1]}, metric="psnr", cls="image")])
    cfg = {"task": "reconstruction", "models": {"zf": {"role": "baseline", "arch": "identity"},
                                                "t": {"role": "teacher", "arch": "dccnn_teacher"}}}
    assert H.check_trivial_teacher(m, "t", cfg, B) == (
        "test PSNR 27.65 dB is not above the input's (zf) 27.50 dB by more than the margin 0.5 dB "
        "(difference +0.15 dB): the teacher does not improve on its input.")
    assert H.check_trivial_teacher(m, "t", cfg, {**B, "margin_psnr_db": 0.1}) is None


def test_equals_input_needs_every_case_and_seed_to_match_the_input():
    zf = per_case("zf", {0: [27.0, 28.0], 1: [27.0, 28.0]}, metric="psnr", cls="image")
    same = per_case("at", {0: [27.0, 28.004], 1: [27.0, 28.0]}, metric="psnr", cls="image")
    cfg = {"task": "super_resolution", "models": {"zf": {"role": "baseline", "arch": "identity"},
                                                  "at": {"role": "student", "arch": "vdsr_student"}}}
    assert H.check_equals_input(pd.concat([zf, same]), "at", cfg, B) == (
        "test PSNR equals the input's (zf) on all 4 case-seed pairs (largest difference 0.004 dB, bound 0.01 dB): "
        "its output is its input.")
    # one case of one seed 0.05 dB away: a model, however close its mean
    near = per_case("at", {0: [27.0, 28.05], 1: [27.0, 28.0]}, metric="psnr", cls="image")
    assert H.check_equals_input(pd.concat([zf, near]), "at", cfg, B) is None
    assert H.check_equals_input(pd.concat([zf, same]), "zf", cfg, B) is None  # the baseline itself
    assert H.check_equals_input(pd.concat([zf, same]), "at", {**cfg, "task": "segmentation"}, B) is None


def test_feature_stage_is_a_model_with_no_loss_on_its_output():
    cfg = {"task": "reconstruction", "models": {"at": {"role": "student"}, "kd": {"role": "student", "init_from": "at"}}}
    at = [{"loss": "attention_transfer", "student_tap": ["c0.relu2", "c1.relu2"]}]
    assert H.check_feature_stage(at, "at", cfg) == (
        "trains no loss on its output, only feature imitation (attention_transfer on c0.relu2, c1.relu2): a stage "
        "that initialises kd, not a reconstruction model; its test metrics score an output head no loss trained.")
    assert H.check_feature_stage([{"loss": "l1", "student_tap": "out"}, *at], "kd", cfg) is None
    assert H.check_feature_stage([{"loss": "l1"}], "kd", cfg) is None  # no tap named: the output
    assert H.check_feature_stage([{"loss": "l1", "student_tap": "out:recon"}, *at], "kd", cfg) is None  # a named output
    assert H.check_feature_stage(None, "kd", cfg) is None


def test_collapse_wording_and_bounds():
    m = per_case("s", {0: [0.8, 0.9], 1: [0.3, 0.4], 2: [0.85, 0.85]})  # per-seed means 0.85, 0.35, 0.85
    assert H.check_collapse(m, "s", "segmentation", B) == (
        "seeds disagree: dice wm: sd over 3 seeds 0.289 > 0.1; seed 1 is 0.500 below the median of the other "
        "seeds (bound 0.2) (per-seed case means: seed 0 0.850, seed 1 0.350, seed 2 0.850): the mean hides a "
        "failed or unstable seed.")
    steady = per_case("s", {0: [0.8, 0.9], 1: [0.82, 0.86]})
    assert H.check_collapse(steady, "s", "segmentation", B) is None
    assert H.check_collapse(per_case("s", {0: [0.1]}), "s", "segmentation", B) is None  # one seed: not checked


def test_non_finite_wording():
    hist = {0: epochs("val_dice", [0.1, 0.2]), 1: epochs("val_dice", [0.1, math.inf])}
    hist[0][0]["train_loss"] = math.nan
    assert H.check_non_finite(hist) == (
        "non-finite training or validation values in epochs.jsonl: seed 0 epoch 0 train_loss = nan; seed 1 epoch 1 "
        "val_dice = inf; the model's numbers come from a diverged or broken run.")
    assert H.check_non_finite({0: epochs("val_dice", [0.1, 0.2])}) is None


def test_not_converged_definition_and_wording():
    # 4 epochs, tail k = ceil(0.25 * 4) = 1: gain 0.5 - 0.4 = 0.1 = 25% of 0.4 > 10%, last epoch best -> flagged
    rising = {0: epochs("val_dice", [0.1, 0.3, 0.4, 0.5])}
    assert H.check_not_converged(rising, "val_dice", "max", 0.25, 0.1) == (
        "seed 0: val_dice rose by 0.1000 in the last 1 of 4 epochs (25% of its total change of 0.4000 since epoch 0) "
        "and the last epoch is its best (bound: at most 10% of the improvement in the last 25% of the epochs): "
        "training stopped while the model was still improving.")
    # a loss (mode min) that has levelled off: 0.01 of 0.56 in the tail (1.8%) -> fine
    assert H.check_not_converged({0: epochs("val_mse", [1.0, 0.5, 0.45, 0.44])}, "val_mse", "min") is None
    # the last epoch is not the best -> fine; a single epoch or no epoch (baseline) -> not checked
    assert H.check_not_converged({0: epochs("val_dice", [0.1, 0.5, 0.6, 0.55])}, "val_dice", "max") is None
    assert H.check_not_converged({0: epochs("val_dice", [0.1])}, "val_dice", "max") is None
    assert H.check_not_converged({0: []}, "val_dice", "max") is None
    # 8 epochs: the tail is 2 epochs; falling loss, mode min
    falling = {3: epochs("val_loss", [1.0, 0.8, 0.7, 0.65, 0.6, 0.58, 0.5, 0.4])}
    assert H.check_not_converged(falling, "val_loss", "min").startswith(
        "seed 3: val_loss fell by 0.1800 in the last 2 of 8 epochs (30% of its total change of 0.6000 since epoch 0)")
    # a curve that first dips below its start: the tail gain 0.30 exceeds the net change 0.05; no "600%"
    dipped = {1: epochs("val_dice", [0.40, 0.20, 0.15, 0.45])}
    assert H.check_not_converged(dipped, "val_dice", "max").startswith(
        "seed 1: val_dice rose by 0.3000 in the last 1 of 4 epochs (more than its whole net change of 0.0500 since "
        "epoch 0, having first gone below its start) and the last epoch is its best")


def test_health_md_lists_each_flagged_model_once_then_the_details():
    rows = [("e", "t", "not_converged", "a."), ("e", "t", "collapse", "b."), ("f", "s", "feature_stage", "c.")]
    md = H.health_markdown(rows, 5, 2)
    assert "3 flags on 2 of 5 models in 2 experiments (not_converged 1, collapse 1, feature_stage 1)" in md
    head, details = md.split("## Details")
    assert "## Flagged models\n\n- e / t: not_converged, collapse\n- f / s: feature_stage\n" in head
    assert "- e / t: not_converged: a.\n- e / t: collapse: b.\n- f / s: feature_stage: c.\n" in details


# ------------------------------------------------------------------------------------------ through the tables


def make_experiment(tmp_path, teacher_dice, student_values, kd_values, kd_epochs=None):
    """A tiny experiment on disk: teacher, student, KD student (compare_to student); 2 seeds, 3 test cases."""
    cfg = {"dataset": "embedded", "task": "segmentation", "models": {
        "teacher": {"role": "teacher", "arch": "unet"},
        "student": {"role": "student", "arch": "unet"},
        "student_kd": {"role": "student", "arch": "unet", "kd_method": "hinton", "teachers": ["teacher"],
                       "compare_to": "student", "fidelity": {"alpha_#": "50%_&_$"}}}}
    values = {"teacher": teacher_dice, "student": student_values, "student_kd": kd_values}
    csvs, dirs = [], []
    for model, by_seed in values.items():
        for seed, vals in by_seed.items():
            d = tmp_path / "results/e/models" / model / f"seed{seed}"
            d.mkdir(parents=True)
            spec = {"model": model, "train": {"select": {"metric": "val_dice"}}}
            (d / "config.json").write_text(json.dumps({"spec": spec, "seed": seed}))
            hist = (kd_epochs or {}).get((model, seed)) or epochs("val_dice", [0.5, 0.6, 0.6, 0.6])
            (d / "epochs.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hist))
            (d / "summary.json").write_text(json.dumps({
                "model": model, "role": cfg["models"][model]["role"], "kd_method": cfg["models"][model].get("kd_method", "none"),
                "arch": "unet", "params": 1000, "flops_per_slice": 2e6, "spec_hash": "abc", "data_hash": "def"}))
            (d / "env.json").write_text(json.dumps({"git": {"commit": "0123"}}))
            rows = per_case(model, {seed: vals})
            rows = pd.concat([rows, rows.assign(metric="hd95", value=10 - 5 * rows["value"])])
            cost = rows.iloc[:1].assign(case="ALL", **{"class": "-"}, metric="latency_ms_per_slice",
                                        convention="cost", value=1.0)
            rows = pd.concat([rows, cost])  # evaluate's last row: the cost row marks a complete file
            p = tmp_path / f"results/e/metrics/{model}/seed{seed}.csv"
            p.parent.mkdir(parents=True, exist_ok=True)
            rows.to_csv(p, index=False)
            csvs.append(p)
            dirs.append(d)
    return cfg, csvs, dirs


def run_tables(tmp_path, cfg, csvs, dirs):
    out = {k: tmp_path / f"tables/e.{k}" for k in ("csv", "md", "tex")}
    out.update(png=tmp_path / "figures/e.png", curves=tmp_path / "figures/e_curves.png",
               stats=tmp_path / "tables/e_stats.csv")
    table = write_experiment_outputs("e", cfg, csvs, dirs, out, health_cfg={}, stats_cfg={"n_resamples": 999})
    return table, out


def test_flags_and_statistics_reach_the_tables_all_csv_and_health_md(tmp_path):
    cfg, csvs, dirs = make_experiment(
        tmp_path,
        teacher_dice={0: [0.01, 0.02, 0.03], 1: [0.02, 0.02, 0.02]},        # trivial
        student_values={0: [0.60, 0.70, 0.50], 1: [0.62, 0.68, 0.52]},
        kd_values={0: [0.65, 0.72, 0.55], 1: [0.66, 0.70, 0.56]},
        kd_epochs={("student", 1): epochs("val_dice", [0.1, 0.2, 0.3, float("nan")])})
    table, out = run_tables(tmp_path, cfg, csvs, dirs)

    by_model = table.drop_duplicates("model").set_index("model")
    assert by_model.loc["teacher", "health"] == "trivial_teacher"
    assert by_model.loc["student", "health"] == "non_finite"
    assert by_model.loc["student_kd", "health"] == "flagged_teacher"
    assert by_model.loc["student_kd", "health_notes"] == (
        "flagged_teacher: distilled from a flagged teacher: teacher (trivial_teacher); what it learnt from that "
        "teacher is suspect.")
    assert by_model.loc["teacher", "health_notes"].startswith("trivial_teacher: test Dice of wm 0.020 ")
    # health on every row of a flagged model (dice and hd95 alike)
    assert set(table[table.model == "teacher"]["health"]) == {"trivial_teacher"}

    # paired statistics on the KD student's main-metric rows: differences per (case, seed)
    # seed 0: 0.05, 0.02, 0.05; seed 1: 0.04, 0.02, 0.04 -> mean 0.0366..; case means 0.045, 0.02, 0.045
    kd = table[(table.model == "student_kd") & (table.metric == "dice")].iloc[0]
    assert kd["compared_to"] == "student" and kd["diff"] == pytest.approx(0.11 / 3)
    assert kd["p"] == pytest.approx(0.25)  # 3 positive case means, tied: exact 2/8
    assert kd["ci_low"] <= kd["diff"] <= kd["ci_high"]
    # the interval over seeds and cases, by hand: seed means 0.04, 0.0333; case means 0.045, 0.02, 0.045; m = 0.22/6.
    # MS_seed = 3 * 2 * (1/300)^2 = 6.667e-5, MS_case = 2 * (2 * (1/120)^2 + (1/60)^2) / 2 = 4.1667e-4, residuals
    # +-1/600 (4x) and +-1/300 (2x): MS_res = 3.3333e-5 / 2 = 1.6667e-5. Var(m) = (MS_seed + MS_case - MS_res) / 6
    # = 7.7778e-5; Satterthwaite df = Var^2 / ((MS_seed/6)^2 / 1 + (MS_case/6)^2 / 2 + (MS_res/6)^2 / 2) = 2.3830
    from scipy import stats as sst

    ms_s, ms_c, ms_e = 6 * (1 / 300) ** 2, (2 * (1 / 120) ** 2 + (1 / 60) ** 2), 2 * (4 * (1 / 600) ** 2 + 2 * (1 / 300) ** 2) / 4
    var = (ms_s + ms_c - ms_e) / 6
    dof = var**2 / ((ms_s / 6) ** 2 + (ms_c / 6) ** 2 / 2 + (ms_e / 6) ** 2 / 2)
    assert var == pytest.approx(7.7778e-5, rel=1e-4) and dof == pytest.approx(2.3830, rel=1e-4)
    half = sst.t.ppf(0.975, dof) * var**0.5
    assert (kd["ci_low"], kd["ci_high"]) == pytest.approx((0.22 / 6 - half, 0.22 / 6 + half))
    assert kd["ci_method"] == "seeds+cases" and kd["seed_diffs"] == "+0.04;+0.03333" and kd["p_better"] == 1.0
    assert kd["ci_cases_low"] == pytest.approx(0.02) and kd["ci_cases_high"] == pytest.approx(0.045)  # all-b, all-a/c
    stats = pd.read_csv(out["stats"])
    assert set(stats["kind"]) == {"kd_effect", "teacher_vs_student"} and len(stats) == 3 * 2
    assert kd["p_holm"] == pytest.approx(min(1.0, 6 * 0.25))
    assert table[(table.model == "student")]["compared_to"].isna().all()

    md = out["md"].read_text()
    header = md.splitlines()[2]
    assert "| vs | Δ dice wm | Δ hd95 wm | health |" in header
    assert f"| student | +0.037 [{0.22 / 6 - half:.3f}, {0.22 / 6 + half:.3f}] |" in md  # p under KD effect in detail
    assert "### KD effect in detail" in md
    assert (f"| student_kd - student | dice wm | +0.037 | [{0.22 / 6 - half:.3f}, {0.22 / 6 + half:.3f}] | [0.020, 0.045] "
            "| +0.040, +0.033 | 1.00 | 0.25 (n=3) | 1 | no |") in md
    assert "With 3 cases the smallest p it can reach is 0.25" in md
    assert "### Health" in md
    assert ("- student_kd: flagged_teacher: distilled from a flagged teacher: teacher (trivial_teacher); what "
            "it learnt from that teacher is suspect.") in md
    assert "### Teacher vs student" in md and "| teacher - student_kd |" in md
    # escaping: the fidelity note "alpha_#=50%_&_$" reaches Markdown and LaTeX escaped
    assert "student_kd: alpha\\_\\#=50%\\_\\&\\_\\$" in md
    assert r"\caption{e (embedded, segmentation)}" in out["tex"].read_text()
    assert r"flagged\_teacher" in out["tex"].read_text() and r"$\Delta$ dice wm" in out["tex"].read_text()

    runs = tmp_path / "runs.json"
    runs.write_text("{}")
    all_csv = collect([out["csv"]], [runs], tmp_path / "tables/all.csv")
    for col in ("health", "health_notes", "compared_to", "diff", "ci_low", "ci_high", "p", "p_holm", "stats_note"):
        assert col in all_csv.columns
    back = pd.read_csv(tmp_path / "tables/all.csv")
    row = back[(back.model == "student_kd") & (back.metric == "dice")].iloc[0]
    assert row["diff"] == pytest.approx(0.11 / 3) and row["health"] == "flagged_teacher"
    assert back[back.model == "teacher"]["diff"].isna().all()
    health_md = (tmp_path / "tables/health.md").read_text()
    assert "3 flags on 3 of 3 models in 1 experiment (non_finite 1, trivial_teacher 1, flagged_teacher 1)" in health_md
    assert ("- e / student_kd: flagged_teacher: distilled from a flagged teacher: teacher (trivial_teacher); what it "
            "learnt from that teacher is suspect.") in health_md
    assert "- e / student: non_finite: non-finite training or validation values in epochs.jsonl: seed 1 epoch 3 " \
           "val_dice = nan;" in health_md


def test_healthy_experiment(tmp_path):
    good = {0: [0.80, 0.82, 0.78], 1: [0.81, 0.80, 0.79]}
    cfg, csvs, dirs = make_experiment(tmp_path, good, good, good)
    table, out = run_tables(tmp_path, cfg, csvs, dirs)
    assert (table["health"] == "").all()
    assert "- No flag: every model passed every check" in out["md"].read_text()
    kd = table[(table.model == "student_kd") & (table.metric == "dice")].iloc[0]
    assert kd["diff"] == 0 and kd["p"] == 1 and kd["stats_note"] == "all paired differences are zero: p set to 1"
    runs = tmp_path / "runs.json"
    runs.write_text("{}")
    collect([out["csv"]], [runs], tmp_path / "tables/all.csv")
    assert "All models healthy: no flag in 3 models of 1 experiment." in (tmp_path / "tables/health.md").read_text()


def test_markdown_and_latex_escaping():
    assert md_escape("a|b") == "a\\|b"
    assert md_escape("R&D #1 costs $5 *now*") == "R\\&D \\#1 costs \\$5 \\*now\\*"
    assert md_escape("student_kd") == "student_kd"            # intraword: literal in GFM, left readable
    assert md_escape("_private_") == "\\_private\\_"          # would be emphasis: escaped
    assert md_escape("dice wm [mtms_pooled]") == "dice wm [mtms_pooled]"
    assert latex_escape("50% of R&D #1: $x_1$ {a} ~ ^ \\") == (
        r"50\% of R\&D \#1: \$x\_1\$ \{a\} \textasciitilde{} \textasciicircum{} \textbackslash{}")
    assert latex_escape("0.80 ± 0.01 [engine]") == r"0.80 $\pm$ 0.01 {[}engine{]}"


def test_a_teacher_only_not_converged_does_not_flag_its_students(tmp_path):
    """A sound teacher still improving at its last epoch: not_converged on the teacher, nothing on the KD
    student (flagged_teacher propagates trivial_teacher, collapse and non_finite only)."""
    cfg, csvs, dirs = make_experiment(
        tmp_path,
        teacher_dice={0: [0.85, 0.86, 0.84], 1: [0.86, 0.85, 0.85]},
        student_values={0: [0.60, 0.70, 0.50], 1: [0.62, 0.68, 0.52]},
        kd_values={0: [0.65, 0.72, 0.55], 1: [0.66, 0.70, 0.56]},
        kd_epochs={("teacher", 0): epochs("val_dice", [0.1, 0.2, 0.3, 0.8])})
    table, _ = run_tables(tmp_path, cfg, csvs, dirs)
    by_model = table.drop_duplicates("model").set_index("model")
    assert by_model.loc["teacher", "health"] == "not_converged"
    assert pd.isna(by_model.loc["student_kd", "health"]) or by_model.loc["student_kd", "health"] == ""
