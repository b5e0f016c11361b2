"""Replay finished runs into MLflow: files are the source of truth, MLflow mirrors them.

Jobs never talk to MLflow; only the ``track`` stage writes, one job per experiment as soon as that
experiment's tables exist. Its jobs take turns on an SQLite store: :func:`store_lock` holds an exclusive
lock on ``<store>.lock`` (e.g. ``results/mlflow.db.lock``) for the whole of :func:`sync_runs`, so two
experiments finishing together never fight over the database (and it is created once).

Layout, in the MLflow experiment ``<prefix>/<experiment>`` (experiment tag ``mlflow.experimentKind =
custom_model_development``, so MLflow 3's UI opens it on the runs view of a model-training experiment):

* a **parent run** per (experiment, model), named ``<exp>/<model>``: the test metrics as the mean over
  seeds (``test.<convention>.<class>.<metric>``, the per-seed value being the mean over test cases, as
  in the tables), their sample sd over seeds (``sd.test....``) and ``n_seeds``; the model's health flags
  (tags ``health``: the flag names or ``ok``, ``health_notes``: their sentences); for a model with a
  ``compare_to``, its paired differences with their intervals (:mod:`medkd.stats`; tag ``kd.compared_to``,
  metrics ``kd.<convention>.<class>.<metric>.<field>`` for ``diff``, ``ci_low``/``ci_high`` over seeds and
  cases, ``ci_cases_low``/``ci_cases_high`` over cases, ``p_better``, ``p``, ``p_holm``); start = the earliest
  child's start, end = the latest child's end; artifacts: the experiment's figures (main-metric dot plot, validation
  curves, qualitative panels, robustness curves), its table (``<exp>.md``/``.csv``) and paper verdicts;
* a **child run** per seed (tag ``mlflow.parentRunId``), named ``<exp>/<model>/seed<k>``: params (the
  flattened resolved spec and the seed), per-epoch ``train_loss``, ``lr``, validation metrics and every
  loss term of the objective (``loss.<index>.<loss>``, e.g. ``loss.1.kl_div``), each with ``step =
  epoch`` and the wall-clock timestamp the training job recorded (``time`` in ``epochs.jsonl``); the
  test metrics (mean over cases) and ``params``; start and end times from ``summary.json``
  (``started_at``, ``ended_at``); artifacts: config.json (the resolved config), summary.json, env.json,
  epochs.jsonl, the metrics CSV, the experiment table, and the model logged with
  :func:`mlflow.pytorch.log_model`, named ``<exp>-<model>-seed<k>`` (:func:`model_name`; MLflow 3 refuses ``/``
  in a model name) at the step of the best epoch, so the model's page shows that epoch's validation metrics
  and the test metrics, which the child logs at the same step (``mlflow.pytorch.load_model(f"runs:/{id}/<name>")``
  returns the network with the best weights, ``model.pt``);
* on both: MLflow's source tags (``mlflow.source.git.commit`` = the commit the training job recorded in
  env.json, ``mlflow.source.name`` = ``Snakefile``, ``mlflow.source.type`` = ``LOCAL``), ``medkd.*``
  provenance tags (run key, spec hash, data hash, role, KD method) and the slice store registered as the
  run's input dataset (context ``training``, digest = the store's MD5, the data hash of the tables).

A (experiment, model) is re-logged only when its files changed (tag ``medkd.content_hash``, over every
seed's files, the figures and the tables); its previous parent and children are deleted, so the store
always mirrors the current files. Writes {run key: run id} for children (``<exp>/<model>/seed<k>``) and
parents (``<exp>/<model>``), and {``<exp>``: its MLflow experiment id}.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import math
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from medkd.io import read_json, read_jsonl, write_json

EXPERIMENT_KIND = "custom_model_development"  # MLflow 3's ExperimentKind for model training
SOURCE_NAME = "Snakefile"
EPOCH_KEYS = ("train_loss", "lr", "val_loss", "val_dice", "val_mse", "slices_per_second", "train_seconds")
TRACKING_VERSION = "3"  # part of the content hash: a new layout re-logs every run once


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
    h = hashlib.sha256(TRACKING_VERSION.encode())
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()[:16]


def _ms(seconds: float | None) -> int | None:
    return int(round(seconds * 1000)) if seconds is not None else None


def term_metric(part: str) -> str:
    """``"1:kl_div"`` (the objective's part name) -> ``"loss.1.kl_div"``."""
    index, _, name = part.partition(":")
    return f"loss.{index}.{name}"


def test_metrics(metrics_csv: str | Path) -> dict[str, float]:
    """``test.<convention>.<class>.<metric>`` -> mean over cases (NaN cases excluded) of one seed."""
    from medkd.integrity import METRIC_COLUMNS, check_metrics_csv

    check_metrics_csv(metrics_csv, METRIC_COLUMNS)  # a truncated or altered CSV names itself, not a KeyError
    df = pd.read_csv(metrics_csv)
    out = {}
    for (conv, cls, metric), grp in df.groupby(["convention", "class", "metric"]):
        value = float(grp["value"].mean())
        if not math.isnan(value):
            out[f"test.{conv}.{cls}.{metric}".replace("-", "all")] = value
    return out


def create_sqlite_store(tracking_uri: str) -> None:
    """Create a new SQLite store atomically: MLflow builds its schema in a temporary file, which is then
    renamed to the store's name. A ``track`` job killed while MLflow creates the tables (a few seconds of
    migrations) would otherwise leave a half-built database that every later run refuses
    ("table ... already exists"). The temporary file of a writer killed meanwhile is removed by the next
    call (:func:`medkd.io.remove_stale_tmps`). Existing stores and other backends are left alone."""
    import os

    from medkd.io import remove_stale_tmps

    if not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri[len("sqlite:///"):])
    remove_stale_tmps(path.parent)  # the half-built store of a writer killed during the migrations
    if path.exists():
        return
    from mlflow.tracking import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    MlflowClient(f"sqlite:///{tmp}").search_experiments()  # runs the schema migrations
    os.replace(tmp, path)


@contextmanager
def store_lock(tracking_uri: str):
    """An exclusive ``fcntl.flock`` on ``<sqlite path>.lock`` while the block runs (one writer at a time,
    across processes on the machine or a shared file system that supports flock); a no-op for other
    tracking URIs, whose servers serialise writes themselves. The lock file stays (removing it could let
    two writers lock two different files)."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock = Path(tracking_uri[len("sqlite:///"):] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file is closed, also if the process dies
        yield


def sync_runs(runs: list[dict], tracking_uri: str, prefix: str, artifact_root: str | Path,
              out_json: str | Path, experiments: dict | None = None, log_models: bool = True) -> dict:
    """Mirror ``runs`` into MLflow, holding :func:`store_lock`. Each run dict: key (``exp/model/seedK``),
    experiment, model, seed, model_dir, metrics_csv, table_md. ``experiments``: experiment -> {"files":
    experiment-level artifacts (figures, tables), "dataset": name, "store": slice store path,
    "fingerprint": its JSON, "description": text}."""
    with store_lock(tracking_uri):
        return _sync_runs(runs, tracking_uri, prefix, artifact_root, out_json, experiments, log_models)


def _sync_runs(runs: list[dict], tracking_uri: str, prefix: str, artifact_root: str | Path,
               out_json: str | Path, experiments: dict | None, log_models: bool) -> dict:
    import mlflow
    from mlflow.tracking import MlflowClient

    create_sqlite_store(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    artifact_root = Path(artifact_root).resolve()
    experiments = experiments or {}
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["experiment"], run["model"]), []).append(run)
    run_ids = {}
    for (exp, model), members in groups.items():
        info = experiments.get(exp, {})
        exp_id = _experiment(client, f"{prefix}/{exp}", artifact_root / exp, info.get("description", ""))
        run_ids[exp] = exp_id  # the MLflow experiment id, for links into the UI (medkd.reportpages)
        files = []
        for run in members:
            files += _run_files(run)
        files += [Path(f) for f in info.get("files", [])]
        if info.get("fingerprint"):
            files.append(Path(info["fingerprint"]))
        content = _content_hash(files)
        group_key = f"{exp}/{model}"
        existing = client.search_runs([exp_id], filter_string=f"tags.`medkd.group_key` = '{group_key}'")
        kept = [r for r in existing if r.data.tags.get("medkd.content_hash") == content
                and r.data.tags.get("medkd.kind") == "parent"]
        if kept:
            run_ids[group_key] = kept[0].info.run_id
            for r in existing:
                if r.data.tags.get("mlflow.parentRunId") == kept[0].info.run_id:
                    run_ids[r.data.tags["medkd.run_key"]] = r.info.run_id
            continue
        keys = [r["key"] for r in members]
        legacy = []
        for key in keys:  # runs of an earlier layout (one flat run per seed) of the same keys
            legacy += client.search_runs([exp_id], filter_string=f"tags.`medkd.run_key` = '{key}'")
        for r in {r.info.run_id: r for r in existing + legacy}.values():
            client.delete_run(r.info.run_id)
        run_ids.update(_log_group(client, exp_id, group_key, members, info, content, log_models))
    write_json(out_json, run_ids)
    return run_ids


def _experiment(client, name: str, artifact_location: Path, description: str) -> str:
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name, artifact_location=artifact_location.as_uri())
    tags = exp.tags if exp else {}
    if tags.get("mlflow.experimentKind") != EXPERIMENT_KIND:
        client.set_experiment_tag(exp_id, "mlflow.experimentKind", EXPERIMENT_KIND)
    if description and tags.get("mlflow.note.content") != description:
        client.set_experiment_tag(exp_id, "mlflow.note.content", description)
    return exp_id


def model_name(run_key: str) -> str:
    """The logged model's name of run ``<exp>/<model>/seed<k>``: ``<exp>-<model>-seed<k>``."""
    return run_key.replace("/", "-")


def _read_once(path: str | None) -> pd.DataFrame | None:
    """The CSV at ``path`` (None when unset or absent), read once per (path, modification time): every model of an
    experiment reads the same table and stats file."""
    if not path or not Path(path).exists():
        return None
    return _read_csv_cached(str(path), Path(path).stat().st_mtime_ns)


@lru_cache(maxsize=16)
def _read_csv_cached(path: str, mtime_ns: int) -> pd.DataFrame:
    return pd.read_csv(path)


def _parent_evidence(info: dict, model: str, end_ms: int | None) -> tuple[dict, list]:
    """(tags, metrics) of a parent run from the experiment's long table (health flags) and stats CSV (the KD
    differences of ``model``); nothing for files that are absent."""
    from mlflow.entities import Metric

    tags, metrics = {}, []
    table = _read_once(info.get("table_csv"))
    if table is not None:
        rows = table[table["model"] == model]
        if len(rows):
            flags = rows["health"].iloc[0] if "health" in rows and isinstance(rows["health"].iloc[0], str) else ""
            notes = rows["health_notes"].iloc[0] if "health_notes" in rows else ""
            tags["health"] = flags.replace(";", "; ") if flags else "ok"
            if isinstance(notes, str) and notes:
                tags["health_notes"] = notes[:5000]
    stats = _read_once(info.get("stats_csv"))
    if stats is not None:
        kd = stats[(stats["kind"] == "kd_effect") & (stats["model"] == model)]
        for r in kd.to_dict("records"):
            tags["kd.compared_to"] = str(r["compared_to"])
            base = f"kd.{r['convention']}.{r['class']}.{r['metric']}"
            for field in ("diff", "ci_low", "ci_high", "ci_cases_low", "ci_cases_high", "p_better", "p", "p_holm"):
                value = r.get(field)
                if value is not None and np.isfinite(float(value)):
                    metrics.append(Metric(f"{base}.{field}", float(value), end_ms or 0, 0))
    return tags, metrics


def _run_files(run: dict) -> list[Path]:
    d = Path(run["model_dir"])
    files = [d / n for n in ("config.json", "summary.json", "env.json", "epochs.jsonl", "model.pt")]
    return files + [Path(run["metrics_csv"]), Path(run["table_md"])]


def _source_tags(env: dict) -> dict:
    return {"mlflow.source.git.commit": str(env["git"]["commit"]), "mlflow.source.name": SOURCE_NAME,
            "mlflow.source.type": "LOCAL", "mlflow.user": _user(),
            "git_commit": str(env["git"]["commit"]), "git_dirty": str(env["git"]["dirty"])}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in a container without passwd entry
        return os.environ.get("USER", "medkd")


def _dataset_input(info: dict, data_hash: str):
    """The slice store as an MLflow dataset input (context ``training``), or None without a store."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    if not info.get("store"):
        return None
    fp = read_json(info["fingerprint"]) if info.get("fingerprint") and Path(info["fingerprint"]).exists() else {}
    profile = {k: fp[k] for k in ("n_cases", "n_slices") if k in fp}
    ds = Dataset(name=info.get("dataset", Path(info["store"]).stem), digest=str(data_hash or fp.get("md5", ""))[:36],
                 source_type="local", source=json.dumps({"uri": str(Path(info["store"]).resolve())}),
                 profile=json.dumps(profile))
    return DatasetInput(dataset=ds, tags=[InputTag(key="mlflow.data.context", value="training")])


def _log_batch(client, rid: str, metrics: list, params: list | None = None) -> None:
    params = params or []
    for i in range(0, max(len(params), len(metrics)), 100):
        client.log_batch(rid, metrics=metrics[i : i + 100], params=params[i : i + 100])


def _log_group(client, exp_id: str, group_key: str, members: list[dict], info: dict, content: str,
               log_models: bool) -> dict:
    from mlflow.entities import Metric, Param

    loaded = []
    for run in sorted(members, key=lambda r: int(r["seed"])):
        d = Path(run["model_dir"])
        loaded.append((run, read_json(d / "config.json"), read_json(d / "summary.json"), read_json(d / "env.json")))
    first_cfg, first_summary, first_env = loaded[0][1], loaded[0][2], loaded[0][3]
    spec = first_cfg["spec"]
    starts = [s.get("started_at") for _, _, s, _ in loaded if s.get("started_at") is not None]
    ends = [s.get("ended_at") for _, _, s, _ in loaded if s.get("ended_at") is not None]
    base_tags = {"medkd.group_key": group_key, "medkd.content_hash": content, "spec_hash": first_summary["spec_hash"],
                 "data_hash": str(first_summary["data_hash"]), "role": first_summary["role"],
                 "kd_method": first_summary["kd_method"], "dataset": spec["dataset"], "arch": first_summary["arch"]}
    params = [Param(k, str(v)[:6000]) for k, v in sorted(_flatten(spec).items())]
    dataset = _dataset_input(info, first_summary["data_hash"])

    parent = client.create_run(exp_id, start_time=_ms(min(starts)) if starts else None, run_name=group_key,
                               tags={**base_tags, **_source_tags(first_env), "medkd.kind": "parent",
                                     "medkd.seeds": ";".join(str(r["seed"]) for r, *_ in loaded)})
    pid = parent.info.run_id
    ids = {group_key: pid}
    per_seed: dict[str, list[float]] = {}
    for run, cfg, summary, env in loaded:
        tests = test_metrics(run["metrics_csv"])
        for k, v in tests.items():
            per_seed.setdefault(k, []).append(v)
        ids[run["key"]] = _log_child(client, exp_id, pid, run, cfg, summary, env, tests,
                                     {**base_tags, "medkd.kind": "seed"}, params, dataset, log_models)
    end_ms = _ms(max(ends)) if ends else None
    metrics = [Metric("n_seeds", float(len(loaded)), end_ms or 0, 0),
               Metric("params", float(first_summary["params"]), end_ms or 0, 0)]
    for k, vals in per_seed.items():
        metrics.append(Metric(k, float(np.mean(vals)), end_ms or 0, 0))
        if len(vals) > 1:
            metrics.append(Metric(f"sd.{k}", float(np.std(vals, ddof=1)), end_ms or 0, 0))
    evidence_tags, evidence = _parent_evidence(info, group_key.split("/", 1)[1], end_ms)
    for key, value in evidence_tags.items():
        client.set_tag(pid, key, value)
    _log_batch(client, pid, metrics + evidence,
               params + [Param("seeds", json.dumps([int(r["seed"]) for r, *_ in loaded]))])
    if dataset is not None:
        client.log_inputs(pid, datasets=[dataset])
    for f in info.get("files", []):
        if Path(f).exists():
            client.log_artifact(pid, str(f), artifact_path="figures" if str(f).endswith(".png") else "tables")
    client.set_terminated(pid, "FINISHED", end_time=end_ms)
    return ids


def _log_child(client, exp_id: str, parent_id: str, run: dict, cfg: dict, summary: dict, env: dict,
               tests: dict, tags: dict, params: list, dataset, log_models: bool) -> str:
    from mlflow.entities import Metric, Param

    start_ms, end_ms = _ms(summary.get("started_at")), _ms(summary.get("ended_at"))
    child = client.create_run(exp_id, start_time=start_ms, run_name=run["key"],
                              tags={**tags, **_source_tags(env), "mlflow.parentRunId": parent_id,
                                    "medkd.run_key": run["key"]})
    rid = child.info.run_id
    metrics = []
    epochs = read_jsonl(Path(run["model_dir"]) / "epochs.jsonl")
    # the step of the selected checkpoint: the test metrics and the logged model sit at the best epoch
    best = summary.get("best_epoch")
    model_step = int(best) if best is not None else (int(epochs[-1]["epoch"]) if epochs else 0)
    for h in epochs:
        ts = _ms(h.get("time")) or start_ms or 0
        step = int(h["epoch"])
        for k in EPOCH_KEYS:
            if h.get(k) is not None:
                metrics.append(Metric(k, float(h[k]), ts, step))
        for part, value in (h.get("terms") or {}).items():
            metrics.append(Metric(term_metric(part), float(value), ts, step))
    for k, v in tests.items():
        metrics.append(Metric(k, v, end_ms or 0, model_step))
    metrics.append(Metric("params", float(summary["params"]), end_ms or 0, model_step))
    _log_batch(client, rid, metrics, params + [Param("seed", str(cfg["seed"]))])
    if dataset is not None:
        client.log_inputs(rid, datasets=[dataset])
    for f in _run_files(run):
        if f.exists() and f.name != "model.pt":
            client.log_artifact(rid, str(f))
    if log_models:
        _log_model(rid, Path(run["model_dir"]), model_name(run["key"]), model_step)
    client.set_terminated(rid, "FINISHED", end_time=end_ms)
    return rid


def _pickle_warning_once(record: logging.LogRecord) -> bool:
    """MLflow warns, for every model saved in pickle format, that unpickling can run code. Keep the first
    warning of a process and drop the repeats (a track job logs one model per run: 12-20 identical lines)."""
    if "Pickle or CloudPickle" not in record.getMessage():
        return True
    seen = getattr(_pickle_warning_once, "seen", False)
    _pickle_warning_once.seen = True
    return not seen


def _log_model(run_id: str, model_dir: Path, name: str, step: int) -> None:
    """The best checkpoint as an MLflow PyTorch model named ``name`` of run ``run_id``, logged at ``step`` (the
    best epoch: MLflow links the run's metrics of that step to the model, so its page shows them). The pip
    requirements are given (medkd and the torch it ran with) so MLflow does not infer them, which would
    import the model in a subprocess per run."""
    import mlflow
    import mlflow.pytorch
    import torch

    from medkd.runtime import load_trained

    model, _ = load_trained(model_dir, "cpu")
    flavour_log = logging.getLogger("mlflow.pytorch")
    if _pickle_warning_once not in flavour_log.filters:
        flavour_log.addFilter(_pickle_warning_once)
    with mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(model, name=name, step=step, serialization_format="pickle",
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "medkd"])
