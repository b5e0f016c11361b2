"""End to end: a teacher trained for 0 epochs is flagged trivial_teacher and its student flagged_teacher,
in all.csv, the experiment's Markdown table and results/tables/health.md; the KD student's paired
comparison reaches all.csv and the tables."""

from __future__ import annotations

import pandas as pd
import pytest

from wfhelpers import run_tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def health_workflow(tmp_path_factory):
    return run_tiny_config(tmp_path_factory.mktemp("health"), "tiny_health.yaml", ["results/tables/all.csv"])


def test_flags_and_differences_end_to_end(health_workflow):
    wd = health_workflow
    table = pd.read_csv(wd / "results/tables/all.csv", keep_default_na=False, na_values=[""])
    for col in ("health", "health_notes", "compared_to", "diff", "ci_low", "ci_high", "p", "p_holm"):
        assert col in table.columns
    models = table.drop_duplicates("model").set_index("model")
    teacher_flags = models.loc["teacher", "health"].split(";")
    assert "trivial_teacher" in teacher_flags
    notes = models.loc["teacher", "health_notes"]
    assert "trivial_teacher: test Dice of " in notes
    assert ("is within the margin 0.05 of the all-background prediction's Dice of 0 (empty-mask policy)") in notes
    kd_flags = models.loc["student_kd", "health"].split(";")
    assert "flagged_teacher" in kd_flags
    unsound = [f for f in teacher_flags if f != "not_converged"]  # not_converged alone does not propagate
    assert (f"flagged_teacher: distilled from a flagged teacher: teacher ({', '.join(unsound)}); what it learnt "
            "from that teacher is suspect.") in models.loc["student_kd", "health_notes"]
    assert "flagged_teacher" not in str(models.loc["student", "health"])

    # the KD effect: paired by case and seed, 2 test cases -> a CI and a Wilcoxon p (>= 0.5 with n = 2)
    kd = table[(table.model == "student_kd") & (table.metric == "dice") & (table.convention == "engine")]
    assert len(kd) == 3 and (kd["compared_to"] == "student").all()
    assert (kd["ci_low"] <= kd["diff"] + 1e-12).all() and (kd["diff"] <= kd["ci_high"] + 1e-12).all()
    assert kd["p"].between(0.5, 1).all() and (kd["p_holm"] >= kd["p"]).all()
    assert table[table.metric == "latency_ms_per_slice"]["diff"].isna().all()  # main metrics only
    stats = pd.read_csv(wd / "results/tables/tiny_stats.csv")
    assert set(stats["kind"]) == {"kd_effect", "teacher_vs_student"} and (stats["n_cases"] == 2).all()

    md = (wd / "results/tables/tiny.md").read_text()
    assert "| vs | Δ dice csf |" in md.splitlines()[2] and "| health |" in md.splitlines()[2]
    assert "### Health" in md
    assert "- teacher: trivial_teacher: test Dice of " in md
    assert "- student_kd: flagged_teacher: distilled from a flagged teacher: teacher (" in md
    assert "### Teacher vs student" in md and "| teacher - student_kd |" in md
    health = (wd / "results/tables/health.md").read_text()
    assert "- tiny / teacher: trivial_teacher: test Dice of " in health
    assert "- tiny / student_kd: flagged_teacher: distilled from a flagged teacher" in health


def test_mlflow_parent_runs_carry_health_and_the_kd_differences(health_workflow):
    """The parent run of each (experiment, model) holds its health flags (tag ``health``) and, for the KD
    student, its paired differences with both intervals (``kd.<conv>.<class>.<metric>.<field>``)."""
    from mlflow.tracking import MlflowClient

    wd = health_workflow
    client = MlflowClient(f"sqlite:///{wd / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("medkd-test/tiny")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id], max_results=1000)}
    table = pd.read_csv(wd / "results/tables/tiny.csv").drop_duplicates("model").set_index("model")
    for model in ("teacher", "student", "student_kd"):
        flags = table.loc[model, "health"]
        want = flags.replace(";", "; ") if isinstance(flags, str) and flags else "ok"
        assert runs[f"tiny/{model}"].data.tags["health"] == want, model
    assert "trivial_teacher" in runs["tiny/teacher"].data.tags["health"]
    assert runs["tiny/teacher"].data.tags["health_notes"].startswith("trivial_teacher: test Dice of ")
    stats = pd.read_csv(wd / "results/tables/tiny_stats.csv")
    kd = stats[(stats.kind == "kd_effect") & (stats.model == "student_kd") & (stats.metric == "dice")
               & (stats["class"] == "wm") & (stats.convention == "engine")].iloc[0]
    parent = runs["tiny/student_kd"].data
    assert parent.tags["kd.compared_to"] == kd["compared_to"] == "student"
    for field in ("diff", "ci_low", "ci_high", "ci_cases_low", "ci_cases_high", "p_better", "p", "p_holm"):
        assert parent.metrics[f"kd.engine.wm.dice.{field}"] == pytest.approx(kd[field]), field
    assert not any(k.startswith("kd.") for k in runs["tiny/student"].data.metrics)
