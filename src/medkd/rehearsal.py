"""What each job of a rehearsal needed (``make rehearse``): ``results/rehearsal/resources.csv``.

A rehearsal (config ``rehearsal``, ``config/rehearsal.yaml``) runs every rule of the paper config on stand-in
data at full model size, image shape and batch size, with optimisation capped. Every medkd job's log ends with
``medkd: <step> done in <s> s (CPU <s> s, peak RSS <MiB> MiB)`` (:func:`medkd.cli.main`, getrusage of the job's
process); this module reads those lines from ``<run dir>/results/logs/<rule>/...``, adds the training figures
(optimisation steps and seconds per step from each model's ``epochs.jsonl``, the batch size, parameters and
device from ``summary.json``) and the slices each network job processed, and writes one row per job with the
columns :data:`COLUMNS` that :func:`medkd.resources.read_measured` reads to size the SLURM jobs.

Columns: ``experiment`` (the dataset for ``convert``/``undersample``/``fetch_source``), ``rule``, ``model``,
``seed``, ``wall_s`` (the step's own wall time, without the interpreter start-up), ``peak_rss_mb`` (MB, 10^6 bytes),
``steps`` and ``step_s`` (train only: optimisation steps and mean seconds per step, the first step with its
warm-up included), ``slices`` (slices trained on, or predicted / cached / scored), ``batch_size``, ``device``,
``params`` (trainable and frozen parameters of the model).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from pathlib import Path

COLUMNS = ["experiment", "rule", "model", "seed", "wall_s", "peak_rss_mb", "steps", "step_s", "slices", "batch_size",
           "device", "params", "log"]
DONE = re.compile(r"medkd: \S+ done in ([0-9.]+) s \(CPU ([0-9.]+) s, peak RSS (\d+) MiB\)")
PER_MODEL = ("train", "cache", "infer", "evaluate", "robustness")


def _done_line(log: Path) -> tuple[float, int] | None:
    """(wall seconds, peak RSS in MB) of the last "done in" line of a job log (which gives MiB), or None (a
    failed job). MB (10^6 bytes), the unit of Snakemake's and SLURM's ``mem_mb``."""
    found = None
    with open(log, errors="replace") as fh:
        for line in fh:
            m = DONE.search(line)
            if m:
                found = (float(m.group(1)), int(math.ceil(int(m.group(3)) * 2**20 / 1e6)))
    return found


def _h5_slices(path: Path, key: str) -> int | None:
    """Slices stored under ``cases/<id>/<key>`` of a predictions or cache file."""
    if not path.is_file():
        return None
    import h5py

    with h5py.File(path, "r") as fh:
        return int(sum(fh[f"cases/{c}/{key}"].shape[0] for c in fh["cases"] if key in fh[f"cases/{c}"]))


def _training(model_dir: Path) -> dict:
    """Batch size (the spec in config.json), device (env.json: CUDA, else cpu), parameters (summary.json) and,
    from epochs.jsonl, the optimisation steps, mean seconds per step and slices trained on."""
    out: dict = {}
    summary, config, env = model_dir / "summary.json", model_dir / "config.json", model_dir / "env.json"
    if summary.is_file():
        out["params"] = json.loads(summary.read_text()).get("params")
    if config.is_file():
        out["batch_size"] = json.loads(config.read_text())["spec"]["train"]["batch_size"]
    if env.is_file():
        cuda = json.loads(env.read_text()).get("cuda")
        out["device"] = "cuda" if isinstance(cuda, dict) and cuda.get("device") else "cpu"
    epochs = model_dir / "epochs.jsonl"
    if epochs.is_file() and out.get("batch_size"):
        seconds, steps, slices = 0.0, 0, 0
        for line in epochs.read_text().splitlines():
            e = json.loads(line)
            if e.get("train_seconds") and e.get("slices_per_second"):
                seen = int(round(e["slices_per_second"] * e["train_seconds"]))
                seconds += float(e["train_seconds"])
                steps += math.ceil(seen / int(out["batch_size"]))
                slices += seen
        if steps:
            out.update(steps=steps, step_s=round(seconds / steps, 4), slices=slices)
    return out


def collect(run_dir: str | Path) -> list[dict]:
    """One row per finished job of the run in ``run_dir`` (its ``results/logs``), sorted by rule and name."""
    run_dir = Path(run_dir)
    logs = run_dir / "results" / "logs"
    rows = []
    for log in sorted(logs.rglob("*.log")):
        rel = log.relative_to(logs).with_suffix("").parts
        done = _done_line(log)
        if done is None:
            continue
        rule = rel[0]  # results/logs/<rule>.log for the run-wide rules (collect, overview, ...)
        row = {"rule": rule, "experiment": rel[1] if len(rel) > 1 else "", "model": "", "seed": "", "wall_s": done[0],
               "peak_rss_mb": done[1], "log": str(log.relative_to(run_dir))}
        if rule in PER_MODEL and len(rel) == 4 and rel[3].startswith("seed"):
            exp, model, seed = rel[1], rel[2], rel[3][4:]
            row.update(experiment=exp, model=model, seed=seed)
            model_dir = run_dir / "results" / exp / "models" / model / f"seed{seed}"
            info = _training(model_dir)
            row.update({k: info.get(k) for k in ("batch_size", "device", "params")})
            if rule == "train":
                row.update({k: info.get(k) for k in ("steps", "step_s", "slices")})
            elif rule in ("infer", "evaluate"):
                row["slices"] = _h5_slices(run_dir / "results" / exp / "predictions" / model / f"seed{seed}.h5", "pred")
            elif rule == "cache":
                cache = run_dir / "results" / exp / "cache" / model / f"seed{seed}.h5"
                row["slices"] = _h5_slices(cache, "logits") or _h5_slices(cache, "output")
        rows.append(row)
    return rows


def write(rows: list[dict], out: str | Path) -> None:
    from medkd.io import atomic_path

    with atomic_path(out) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})


def summary(rows: list[dict], wall_seconds: float | None = None, top: int = 5) -> str:
    """The figures a reader of a rehearsal wants: jobs per rule, the largest jobs by peak RSS and by time."""
    lines = []
    if wall_seconds is not None:
        lines.append(f"rehearsal: {len(rows)} jobs finished in {wall_seconds / 60:.1f} min of wall time")
    per_rule = Counter(r["rule"] for r in rows)
    lines.append("jobs per rule: " + ", ".join(f"{k} {v}" for k, v in sorted(per_rule.items())))

    def name(r):
        return "/".join(x for x in (r["rule"], r["experiment"], r["model"], f"seed{r['seed']}" if r["seed"] != "" else "")
                        if x)

    lines.append(f"largest {top} by peak RSS:")
    for r in sorted(rows, key=lambda r: -r["peak_rss_mb"])[:top]:
        lines.append(f"  {r['peak_rss_mb']:>7,} MB  {r['wall_s']:>8.1f} s  {name(r)}")
    lines.append(f"longest {top}:")
    for r in sorted(rows, key=lambda r: -r["wall_s"])[:top]:
        step = f", {r['step_s']:.1f} s/step (batch {r['batch_size']})" if r.get("step_s") else ""
        lines.append(f"  {r['wall_s']:>8.1f} s  {r['peak_rss_mb']:>7,} MB  {name(r)}{step}")
    return "\n".join(lines)
