"""Replay finished runs into MLflow: files are the source of truth, MLflow mirrors them.

Jobs never talk to MLflow; the ``track`` stage is the only writer, so parallel or cluster jobs never
fight over one SQLite database (and the database is created once, by this single process). Each
(experiment, model, seed) becomes one MLflow run in the MLflow experiment ``<prefix>/<experiment>``:

* params: the flattened spec (``train.optimizer.lr`` ...; lists as JSON) and the seed;
* metrics: per-epoch ``train_loss``, ``lr`` and validation metrics with ``step = epoch``; final test
  metrics (mean over cases) as ``test.<convention>.<class>.<metric>``;
* tags: ``medkd.run_key`` (``exp/model/seedK``), git commit, spec (config) hash, data hash, role, KD method;
* artifacts: config.json, summary.json, env.json, epochs.jsonl, the metrics CSV and the experiment table.

A run is re-logged only when its files changed (tag ``medkd.content_hash``); the previous run of the
same key is deleted, so the store always mirrors the current files. Returns/writes {run_key: run_id}.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pandas as pd

from medkd.io import read_json, read_jsonl, write_json


def _flatten(obj, prefix: str = "") -> dict:
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list):
        out[prefix[:-1]] = json.dumps(obj, sort_keys=True)
    else:
        out[prefix[:-1]] = obj
    return out


def _content_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()[:16]


def sync_runs(runs: list[dict], tracking_uri: str, prefix: str, artifact_root: str | Path,
              out_json: str | Path) -> dict:
    """Mirror ``runs`` into MLflow. Each run dict: key, experiment, model_dir, metrics_csv, table_md."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    artifact_root = Path(artifact_root).resolve()
    run_ids = {}
    for run in runs:
        model_dir = Path(run["model_dir"])
        files = [model_dir / n for n in ("config.json", "summary.json", "env.json", "epochs.jsonl")]
        files += [Path(run["metrics_csv"]), Path(run["table_md"])]
        content = _content_hash(files)
        exp_name = f"{prefix}/{run['experiment']}"
        exp = client.get_experiment_by_name(exp_name)
        exp_id = exp.experiment_id if exp else client.create_experiment(
            exp_name, artifact_location=(artifact_root / run["experiment"]).as_uri())
        existing = client.search_runs([exp_id], filter_string=f"tags.`medkd.run_key` = '{run['key']}'")
        kept = [r for r in existing if r.data.tags.get("medkd.content_hash") == content]
        if kept:
            run_ids[run["key"]] = kept[0].info.run_id
            continue
        for r in existing:
            client.delete_run(r.info.run_id)
        run_ids[run["key"]] = _log_run(client, exp_id, run, model_dir, files, content)
    write_json(out_json, run_ids)
    return run_ids


def _log_run(client, exp_id: str, run: dict, model_dir: Path, files: list[Path], content: str) -> str:
    from mlflow.entities import Metric, Param, RunTag

    cfg = read_json(model_dir / "config.json")
    summary = read_json(model_dir / "summary.json")
    env = read_json(model_dir / "env.json")
    spec = cfg["spec"]
    tags = {
        "medkd.run_key": run["key"], "medkd.content_hash": content, "mlflow.runName": run["key"],
        "git_commit": str(env["git"]["commit"]), "git_dirty": str(env["git"]["dirty"]),
        "spec_hash": summary["spec_hash"], "data_hash": str(summary["data_hash"]),
        "role": summary["role"], "kd_method": summary["kd_method"], "dataset": spec["dataset"],
    }
    mlrun = client.create_run(exp_id, tags=tags)
    rid = mlrun.info.run_id
    params = {k: str(v)[:6000] for k, v in _flatten(spec).items()}
    params["seed"] = str(cfg["seed"])
    metrics = []
    for h in read_jsonl(model_dir / "epochs.jsonl"):
        for k in ("train_loss", "lr", "val_loss", "val_dice", "val_mse", "slices_per_second"):
            if h.get(k) is not None:
                metrics.append(Metric(k, float(h[k]), 0, int(h["epoch"])))
    from medkd.integrity import METRIC_COLUMNS as COLUMNS, check_metrics_csv

    check_metrics_csv(run["metrics_csv"], COLUMNS)
    df = pd.read_csv(run["metrics_csv"])
    for (conv, cls, metric), grp in df.groupby(["convention", "class", "metric"]):
        value = float(grp["value"].mean())
        if not math.isnan(value):
            key = f"test.{conv}.{cls}.{metric}".replace("-", "all")
            metrics.append(Metric(key, value, 0, 0))
    metrics.append(Metric("params", float(summary["params"]), 0, 0))
    plist = [Param(k, v) for k, v in sorted(params.items())]
    for i in range(0, max(len(plist), len(metrics)), 100):
        client.log_batch(rid, metrics=metrics[i : i + 100], params=plist[i : i + 100])
    for f in files:
        if f.exists():
            client.log_artifact(rid, str(f))
    client.set_terminated(rid)
    return rid
