"""End to end: the tiny config through the full DAG, then the re-run guarantees."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import yaml

from wfhelpers import planned_jobs, snakemake

pytestmark = __import__("pytest").mark.slow




def test_local_run_without_gpu_runs_network_jobs_side_by_side(tmp_path):
    """A local run with device auto on a machine without a GPU asks for no GPU, so the profile's gpu=1 limit
    cannot run the network jobs one at a time. It did: the resources were sized while the Snakefile was read,
    before Snakemake had chosen its executor, so every train/cache/infer/robustness job asked for gpu=1 and
    `make reproduce` used one core of two."""
    import re

    import pytest

    from medkd.resources import visible_gpus
    from wfhelpers import copy_repo

    if visible_gpus():
        pytest.skip("this machine shows a GPU")
    wd = copy_repo(tmp_path / "repo")
    targets = [f"results/tiny/models/{m}/seed0/summary.json" for m in ("teacher", "student")]
    proc = snakemake(["--cores", "2", *targets, "--configfile", "tests/integration/tiny.yaml", "--config",
                      "device=auto"], wd)
    assert proc.returncode == 0, proc.stderr[-5000:]
    blocks = re.split(r"\n(?:local)?rule ", proc.stderr)[1:]
    train = [b for b in blocks if b.startswith("train:")]
    assert len(train) == 2, [b[:40] for b in blocks]
    for b in train:
        (resources,) = [line for line in b.splitlines() if line.strip().startswith("resources:")]
        assert "gpu=0" in resources, resources
    # the two training jobs were started together (with gpu=1 each, Snakemake starts one, then the other)
    assert re.search(r"Execute 2 jobs\.\.\.\n(?:.*\n){0,2}\s*localrule train:", proc.stderr), proc.stderr[-3000:]


def test_tables_and_tracking(tiny_workflow):
    wd = tiny_workflow
    table = pd.read_csv(wd / "results/tables/all.csv")
    assert set(table["model"]) == {"teacher", "student", "student_kd"}
    dice = table[(table.metric == "dice") & (table.convention == "engine")]
    assert set(dice["class"]) == {"csf", "gm", "wm"}
    assert dice["mean"].between(0, 1).all()
    assert (dice["n_seeds"] == 1).all() and (dice["n_cases"] == 1).all()
    for col in ("params", "spec_hash", "data_hash", "git_commit", "mlflow_run_ids", "paper_value", "delta"):
        assert col in table.columns
    assert table["mlflow_run_ids"].str.len().gt(0).all()
    hd = table[(table.metric == "hd95")]
    assert (hd["mean"] >= 0).all()
    runs = json.loads((wd / "results/mlflow/runs/tiny.json").read_text())
    assert sorted(k for k in runs if k.count("/") == 2) == ["tiny/student/seed0", "tiny/student_kd/seed0",
                                                            "tiny/teacher/seed0"]
    assert sorted(k for k in runs if k.count("/") == 1) == ["tiny/student", "tiny/student_kd", "tiny/teacher"]
    with sqlite3.connect(wd / "results/mlflow.db") as db:
        n_runs = db.execute("select count(*) from runs where lifecycle_stage = 'active'").fetchone()[0]
        epochs = db.execute("select count(*) from metrics where key = 'train_loss'").fetchone()[0]
        tags = dict(db.execute("select key, value from tags where run_uuid = ?", (runs["tiny/teacher/seed0"],)))
    assert n_runs == 3 + 3 and epochs == 3 * 2  # a parent per model, a child per seed (the epochs)
    assert tags["medkd.run_key"] == "tiny/teacher/seed0" and len(tags["spec_hash"]) == 12
    md = (wd / "results/tables/tiny.md").read_text()
    assert "student_kd" in md and "±" not in md.split("\n")[4]  # one seed: no spread printed
    assert (wd / "results/figures/tiny.png").stat().st_size > 1000
    for model in ("teacher", "student", "student_kd"):
        d = wd / f"results/tiny/models/{model}/seed0"
        for f in ("model.pt", "summary.json", "config.json", "env.json", "epochs.jsonl", "last.pt"):
            assert (d / f).exists(), d / f
        env = json.loads((d / "env.json").read_text())
        assert env["torch"].startswith("2.13.0") and env["data_hash"]


def test_second_run_has_nothing_to_do(tiny_workflow):
    proc = snakemake(["-n", "results/tables/all.csv", "--configfile", "tiny.yaml"], tiny_workflow)
    assert proc.returncode == 0, proc.stderr
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_changing_one_student_reruns_only_its_chain(tiny_workflow):
    wd = tiny_workflow
    cfg = yaml.safe_load((wd / "tiny.yaml").read_text())
    cfg["experiments"]["tiny"]["models"]["student_kd"]["train"]["optimizer"]["lr"] = 0.001
    (wd / "tiny_changed.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(["-n", "results/tables/all.csv", "--configfile", "tiny_changed.yaml"], wd)
    assert proc.returncode == 0, proc.stderr
    jobs = planned_jobs(proc.stdout)
    assert jobs == {"train": 1, "infer": 1, "evaluate": 1, "tables": 1, "panels": 1, "track": 1, "collect": 1}, jobs
    assert "student_kd" in proc.stdout and "models/teacher/seed0/model.pt" not in proc.stdout.split("Job stats")[0]


CODE_EDIT = b"\n\ndef _edited_by_the_test():\n    return None\n"
COMMENT_EDIT = b"\n# edited by the test: a comment\n"


def _plan_after_editing(wd, rel_path: str, edit: bytes = CODE_EDIT) -> dict[str, int]:
    """Append code (default: a new function) to a source file of the run's copy, dry-run, restore the file;
    the planned jobs."""
    path = wd / rel_path
    original = path.read_bytes()
    try:
        path.write_bytes(original + edit)
        proc = snakemake(["-n", "results/tables/all.csv", "--configfile", "tiny.yaml"], wd)
    finally:
        path.write_bytes(original)
    assert proc.returncode == 0, proc.stderr
    return planned_jobs(proc.stdout), proc.stdout


def test_comments_and_docstrings_rerun_nothing(tiny_workflow):
    """Code hashes are of the syntax tree without docstrings (medkd.codehash): a comment in the engine or a new
    docstring line in a loss plans no job."""
    jobs, out = _plan_after_editing(tiny_workflow, "src/medkd/train.py", COMMENT_EDIT)
    assert jobs == {}, jobs
    path = tiny_workflow / "src/medkd/distill/hinton.py"
    original = path.read_text()
    try:
        path.write_text(original.replace('"""', '"""Edited by the test. ', 1))
        proc = snakemake(["-n", "results/tables/all.csv", "--configfile", "tiny.yaml"], tiny_workflow)
    finally:
        path.write_text(original)
    assert planned_jobs(proc.stdout) == {}, proc.stdout[-2000:]


def test_editing_a_loss_reruns_exactly_the_students_using_it(tiny_workflow):
    """kl_div lives in distill/hinton.py; only student_kd uses it: its chain re-runs, nothing else."""
    jobs, out = _plan_after_editing(tiny_workflow, "src/medkd/distill/hinton.py")
    assert jobs == {"train": 1, "infer": 1, "evaluate": 1, "tables": 1, "panels": 1, "track": 1, "collect": 1}, jobs
    assert "models/student_kd/seed0/model.pt" in out and "models/teacher/seed0/model.pt" not in out.split("Job stats")[0]


def test_editing_the_engine_reruns_every_training_job_and_what_follows(tiny_workflow):
    jobs, _ = _plan_after_editing(tiny_workflow, "src/medkd/train.py")
    assert jobs == {"train": 3, "cache": 1, "infer": 3, "evaluate": 3, "tables": 1, "panels": 1, "track": 1,
                    "collect": 1}, jobs


def test_editing_the_report_reruns_only_tables_and_later(tiny_workflow):
    jobs, _ = _plan_after_editing(tiny_workflow, "src/medkd/report.py")
    assert jobs == {"tables": 1, "track": 1, "collect": 1}, jobs


def test_editing_a_metric_reruns_evaluation_not_training(tiny_workflow):
    jobs, _ = _plan_after_editing(tiny_workflow, "src/medkd/metrics.py")
    assert jobs == {"evaluate": 3, "tables": 1, "track": 1, "collect": 1}, jobs
