"""The MLflow store after the tiny run mirrors the runs faithfully (medkd.tracking)."""

from __future__ import annotations

import json
import math
import subprocess
from datetime import datetime, timezone

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tiny_workflow):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tiny_workflow / 'results' / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("medkd-test/tiny")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return uri, client, exp, {r.info.run_name: r for r in runs}


def test_source_commit_is_head(store, tiny_workflow):
    _, _, _, runs = store
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tiny_workflow, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert len(runs) == 6
    for name, r in runs.items():
        assert r.data.tags["mlflow.source.git.commit"] == head, name
        assert r.data.tags["mlflow.source.name"] == "Snakefile" and r.data.tags["mlflow.source.type"] == "LOCAL"


def test_times_come_from_training(store, tiny_workflow):
    _, client, _, runs = store
    after_2020 = datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp() * 1000
    stamps = []
    for name, r in runs.items():
        if name.count("/") != 2:
            continue
        summary = json.loads((tiny_workflow / f"results/{name.split('/')[0]}/models/{name.split('/')[1]}/"
                              f"{name.split('/')[2]}/summary.json").read_text())
        assert r.info.start_time == round(summary["started_at"] * 1000) and r.info.end_time == round(summary["ended_at"] * 1000)
        history = client.get_metric_history(r.info.run_id, "train_loss")
        epochs = [json.loads(x) for x in (tiny_workflow / f"results/tiny/models/{name.split('/')[1]}/seed0/epochs.jsonl")
                  .read_text().splitlines()]
        assert [m.timestamp for m in sorted(history, key=lambda m: m.step)] == [round(e["time"] * 1000) for e in epochs]
        stamps += [m.timestamp for m in history]
    assert min(stamps) > after_2020


def test_seed_runs_have_parents_holding_the_mean(store):
    _, _, _, runs = store
    by_id = {r.info.run_id: r for r in runs.values()}
    children = {}
    for name, r in runs.items():
        if name.count("/") == 2:
            parent = by_id[r.data.tags["mlflow.parentRunId"]]
            assert parent.info.run_name == name.rsplit("/", 1)[0]
            assert parent.info.start_time <= r.info.start_time and parent.info.end_time >= r.info.end_time
            children.setdefault(parent.info.run_id, []).append(r)
    assert len(children) == 3
    for pid, kids in children.items():
        parent = by_id[pid]
        tests = [k for k in parent.data.metrics if k.startswith("test.")]
        assert "test.engine.wm.dice" in tests and parent.data.metrics["n_seeds"] == len(kids)
        for k in tests:
            values = [c.data.metrics[k] for c in kids if k in c.data.metrics]
            assert math.isclose(parent.data.metrics[k], float(np.mean(values)), rel_tol=1e-12, abs_tol=1e-12), k


def test_kd_student_has_its_kd_term_curve(store):
    _, client, _, runs = store
    kd = runs["tiny/student_kd/seed0"]
    curve = client.get_metric_history(kd.info.run_id, "loss.1.kl_div")
    assert sorted(m.step for m in curve) == [0, 1] and all(m.value > 0 for m in curve)
    assert client.get_metric_history(runs["tiny/student/seed0"].info.run_id, "loss.1.kl_div") == []


def test_dataset_input_and_artifacts(store, tiny_workflow):
    _, client, exp, runs = store
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    md5 = json.loads((tiny_workflow / "results/slices/embedded.json").read_text())["md5"]
    for name, r in runs.items():
        (ds,) = r.inputs.dataset_inputs
        assert ds.dataset.name == "embedded" and ds.dataset.digest == md5
    parent = {a.path for a in client.list_artifacts(runs["tiny/student_kd"].info.run_id, "figures")}
    assert {"figures/tiny.png", "figures/tiny_curves.png", "figures/tiny_panels.png"} <= parent
    child = {a.path for a in client.list_artifacts(runs["tiny/student_kd/seed0"].info.run_id)}
    assert {"config.json", "summary.json", "epochs.jsonl"} <= child


def test_model_artifact_predicts_like_the_checkpoint(store, tiny_workflow):
    import mlflow
    import mlflow.pytorch
    import torch

    from medkd.datasets import load_split
    from medkd.runtime import forward_model, load_trained

    uri, _, _, runs = store
    mlflow.set_tracking_uri(uri)
    model_dir = tiny_workflow / "results/tiny/models/student_kd/seed0"
    reference, spec = load_trained(model_dir)
    logged = mlflow.pytorch.load_model(f"runs:/{runs['tiny/student_kd/seed0'].info.run_id}/tiny-student_kd-seed0",
                                       map_location="cpu")
    logged.eval()
    data = load_split(spec, tiny_workflow / "results/slices/embedded.h5", tiny_workflow / "results/splits/tiny.json", "test")
    batch = data.batch(torch.arange(min(8, len(data))))
    with torch.no_grad():
        a, b = forward_model(logged, batch), forward_model(reference, batch)
    assert a.shape == b.shape and torch.equal(a, b)


def test_logged_models_are_named_by_run_and_show_the_best_epoch(store, tiny_workflow):
    """Each logged model is named <exp>-<model>-seed<k> and carries the metrics of its best epoch (validation)
    and the test metrics, not the epoch-0 values."""
    _, client, exp, runs = store
    models = {m.name: m for m in client.search_logged_models(experiment_ids=[exp.experiment_id])}
    assert set(models) == {f"tiny-{m}-seed0" for m in ("teacher", "student", "student_kd")}
    for name, m in models.items():
        model = name.split("-")[1]
        summary = json.loads((tiny_workflow / f"results/tiny/models/{model}/seed0/summary.json").read_text())
        epochs = [json.loads(x) for x in (tiny_workflow / f"results/tiny/models/{model}/seed0/epochs.jsonl")
                  .read_text().splitlines()]
        best = summary["best_epoch"]
        assert m.source_run_id == runs[f"tiny/{model}/seed0"].info.run_id
        got = {x.key: x for x in m.metrics}
        assert {x.step for x in m.metrics} == {best}, name
        assert got["val_dice"].value == pytest.approx([e for e in epochs if e["epoch"] == best][0]["val_dice"])
        assert got["test.engine.wm.dice"].value == runs[f"tiny/{model}/seed0"].data.metrics["test.engine.wm.dice"]

