"""Figures of an experiment: the main metric per model (a point per seed, error bars: sd over seeds) and
the validation curve of every model and seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medkd.io import atomic_path, read_json, read_jsonl
from medkd.stats import MAIN_METRICS

def plot_experiment(table: pd.DataFrame, task: str, model_dirs: list[str | Path], title: str,
                    out_png: str | Path, out_curves: str | Path, metrics: pd.DataFrame | None = None) -> None:
    """Bar chart of the first main metric per model and class (mean over seeds, error bar one sd over seeds,
    a black point per seed: that seed's mean over test cases, from ``metrics``); validation curves per
    model and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = MAIN_METRICS[task][0]
    sel = table[(table["metric"] == metric) & (table["convention"] == "engine")]
    classes = list(dict.fromkeys(sel["class"]))
    models = list(dict.fromkeys(sel["model"]))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(models) * max(1, len(classes)) / 2 + 2), 3.5))
    width = 0.8 / max(1, len(classes))
    for i, cls in enumerate(classes):
        grp = sel[sel["class"] == cls].set_index("model").reindex(models)
        x = np.arange(len(models)) + i * width
        ax.bar(x, grp["mean"], width, yerr=grp["sd"].fillna(0), label=cls, capsize=3)
        if metrics is not None:
            per = metrics[(metrics["metric"] == metric) & (metrics["convention"] == "engine")
                          & (metrics["class"] == cls)].groupby(["model", "seed"], sort=True)["value"].mean()
            for j, m in enumerate(models):
                if m in per.index.get_level_values(0):
                    ys = per.loc[m].to_numpy()
                    offs = np.linspace(-width / 4, width / 4, len(ys)) if len(ys) > 1 else np.zeros(1)
                    ax.scatter(x[j] + offs, ys, s=10, color="black", zorder=3,
                               label="seed (mean over cases)" if (i == 0 and j == 0) else None)
    ax.set_xticks(np.arange(len(models)) + width * (len(classes) - 1) / 2, models, rotation=20, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(title)
    if len(classes) > 1 or metrics is not None:
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for d in model_dirs:
        cfg = read_json(Path(d) / "config.json")
        hist = read_jsonl(Path(d) / "epochs.jsonl")
        key = "val_dice" if task == "segmentation" else "val_mse"
        ys = [h.get(key, h["val_loss"]) for h in hist]
        ax.plot([h["epoch"] for h in hist], ys, marker="o", ms=3, label=f"{cfg['spec']['model']} s{cfg['seed']}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val_dice" if task == "segmentation" else "val_mse")
    ax.set_title(f"{title}: validation")
    ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    with atomic_path(out_curves) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
