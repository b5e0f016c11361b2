"""End to end: the tiny config through the full DAG, then the re-run guarantees."""

from __future__ import annotations

import json
import re
import sqlite3

import pandas as pd
import yaml

from wfhelpers import snakemake

pytestmark = __import__("pytest").mark.slow


def planned_jobs(stdout: str) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table of a dry run into {rule: count}."""
    jobs = {}
    m = re.search(r"Job stats:\n(.*?)\n\n", stdout, re.S)
    if not m:
        return jobs
    for line in m.group(1).splitlines()[2:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            jobs[parts[0]] = int(parts[1])
    return jobs


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
    runs = json.loads((wd / "results/mlflow/runs.json").read_text())
    assert sorted(runs) == ["tiny/student/seed0", "tiny/student_kd/seed0", "tiny/teacher/seed0"]
    with sqlite3.connect(wd / "results/mlflow.db") as db:
        n_runs = db.execute("select count(*) from runs where lifecycle_stage = 'active'").fetchone()[0]
        epochs = db.execute("select count(*) from metrics where key = 'train_loss'").fetchone()[0]
        tags = dict(db.execute("select key, value from tags where run_uuid = ?", (runs["tiny/teacher/seed0"],)))
    assert n_runs == 3 and epochs == 3 * 2
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
    assert jobs == {"train": 1, "infer": 1, "evaluate": 1, "tables": 1, "track": 1, "collect": 1}, jobs
    assert "student_kd" in proc.stdout and "models/teacher/seed0/model.pt" not in proc.stdout.split("Job stats")[0]
