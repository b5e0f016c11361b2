"""Robustness suite: every segmentation model scored on corrupted copies of the test split.

For each corruption of :mod:`medkd.data.corrupt` and severity (1-5), every test slice is corrupted
(seeded per case, slice and corruption, so all models see the same corrupted images), predicted, and
re-stacked into volumes; the configured metric (Dice by default) is computed per case and foreground
class. Severity 0 is the clean image. CSV columns: experiment, model, seed, case, class, metric,
corruption, severity, value.

Summary per model (:func:`summarise`): the clean score, the mean corrupted score over all corruptions
and severities, and the relative drop ``(clean - corrupted) / clean``; all are means over seeds of
foreground-class means of per-case values.
"""

from __future__ import annotations

import csv
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medkd import metrics
from medkd.data.corrupt import corrupt
from medkd.infer import to_labels
from medkd.io import atomic_path
from medkd.datasets import DataBudget, load_split
from medkd.runtime import RunSettings, autocast, forward_model, load_trained, to_device

COLUMNS = ["experiment", "model", "seed", "case", "class", "metric", "corruption", "severity", "value"]
METRICS = {"dice": metrics.dice, "iou": metrics.iou}


@torch.no_grad()
def _predict(model, images: torch.Tensor, batch_size: int, device, settings: RunSettings, precision: str) -> np.ndarray:
    preds, nhwc = [], settings.nhwc(model)
    for start in range(0, len(images), batch_size):
        batch = to_device({"image": images[start : start + batch_size]}, device, nhwc)
        with autocast(device, precision):
            out = forward_model(model, batch)
        preds.append(to_labels((out["out"] if isinstance(out, dict) else out).float().cpu()))
    return torch.cat(preds).numpy()


def evaluate_robustness(model_dir: str | Path, store: str | Path, split_path: str | Path, out_csv: str | Path,
                        corruptions: list[str], severities: list[int], seed: int = 0, metric: str = "dice",
                        batch_size: int = 16, settings: RunSettings | None = None) -> int:
    """Score one model on clean and corrupted test slices; returns the number of rows written."""
    if metric not in METRICS:
        raise ValueError(f"robustness metric {metric!r} not in {sorted(METRICS)}")
    settings = settings or RunSettings()
    dev = settings.apply()
    model, spec = load_trained(model_dir, dev, settings)
    if not spec.is_segmentation:
        raise ValueError(f"{model_dir}: the robustness suite scores segmentation models only")
    from medkd.io import read_json

    run_seed = read_json(Path(model_dir) / "config.json")["seed"]
    data = load_split(spec, store, split_path, "test", budget=DataBudget(settings.data_memory_mb))
    runs = data.case_slices()
    classes = {name: i for i, name in enumerate(spec.classes) if i > 0}
    score = METRICS[metric]
    base = {"experiment": spec.experiment, "model": spec.model, "seed": run_seed, "metric": metric}
    rows = []
    grid = [("none", 0)] + [(c, s) for c in corruptions for s in severities]
    for name, severity in tqdm(grid, desc=f"robustness {spec.model}", unit="setting", disable=None):
        for cid in sorted(runs):
            idx = runs[cid]
            clean = data.take("image", idx).numpy()
            if severity == 0:
                images = clean
            else:
                images = np.stack([
                    corrupt(img, name, severity, seed=zlib.crc32(f"{seed}:{cid}:{k}:{name}".encode()))
                    for k, img in enumerate(clean)
                ]).astype(np.float32)
            pred = _predict(model, torch.from_numpy(images), batch_size, dev, settings, spec.train.precision)
            ref = data.take("target", idx).numpy()
            for cname, c in classes.items():
                rows.append({**base, "case": cid, "class": cname, "corruption": name, "severity": severity,
                             "value": score(pred == c, ref == c)})
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def per_setting(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean score per (model, corruption, severity): cases and classes averaged per seed, then seeds."""
    df = pd.concat(frames, ignore_index=True)
    per_seed = df.groupby(["model", "seed", "corruption", "severity"], sort=False)["value"].mean().reset_index()
    return per_seed.groupby(["model", "corruption", "severity"], sort=False)["value"].agg(["mean", "std"]).reset_index()


def summarise(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per model: clean, mean corrupted score and relative drop (means over seeds)."""
    df = pd.concat(frames, ignore_index=True)
    per_seed = df.groupby(["model", "seed", "corruption", "severity"], sort=False)["value"].mean().reset_index()
    rows = []
    for (model, seed), grp in per_seed.groupby(["model", "seed"], sort=False):
        clean = grp[grp.severity == 0]["value"].mean()
        corrupted = grp[grp.severity > 0]["value"].mean()
        rows.append({"model": model, "seed": seed, "clean": clean, "corrupted": corrupted,
                     "relative_drop": (clean - corrupted) / clean if clean > 0 else np.nan})
    out = pd.DataFrame(rows)
    return out.groupby("model", sort=False).agg(
        clean=("clean", "mean"), corrupted=("corrupted", "mean"), relative_drop=("relative_drop", "mean"),
        relative_drop_sd=("relative_drop", lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else np.nan),
        n_seeds=("seed", "count")).reset_index()


def write_robustness_outputs(exp_name: str, csvs: list[str | Path], out: dict) -> pd.DataFrame:
    """The robustness table (csv, md) and the score-vs-severity plot of one experiment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = [pd.read_csv(p) for p in csvs]
    summary = summarise(frames)
    metric = frames[0]["metric"].iloc[0]
    with atomic_path(out["csv"]) as tmp:
        summary.to_csv(tmp, index=False)
    lines = [f"## {exp_name}: robustness ({metric}, foreground mean)\n",
             "| model | clean | mean corrupted | relative drop |", "|---|---|---|---|"]
    for r in summary.itertuples(index=False):
        lines.append(f"| {r.model} | {r.clean:.3f} | {r.corrupted:.3f} | {100 * r.relative_drop:.1f}% |")
    lines.append("\nCorruptions and severities: medkd.data.corrupt (ImageNet-C-style tables; the re-implementers' "
                 "choice, P-CD's corruption code is not public).\n")
    with atomic_path(out["md"]) as tmp:
        tmp.write_text("\n".join(lines))
    settings = per_setting(frames)
    corrs = [c for c in dict.fromkeys(settings["corruption"]) if c != "none"]
    fig, axes = plt.subplots(1, len(corrs), figsize=(3 * len(corrs), 3), squeeze=False, sharey=True)
    for ax, corr in zip(axes[0], corrs):
        for model in dict.fromkeys(settings["model"]):
            m = settings[settings.model == model]
            pts = pd.concat([m[m.corruption == "none"], m[m.corruption == corr]]).sort_values("severity")
            ax.plot(pts["severity"], pts["mean"], marker="o", ms=3, label=model)
        ax.set_title(corr, fontsize="small")
        ax.set_xlabel("severity")
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize="x-small")
    fig.tight_layout()
    with atomic_path(out["png"]) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return summary
