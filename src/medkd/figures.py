"""Figures of an experiment: the main metric per model and the validation curves per model.

* ``<exp>.png``: for each model and class, the first main metric (:data:`medkd.stats.MAIN_METRICS`, engine
  convention) as a dot plot: a grey dot per test case (its mean over seeds), a black dot per seed (its mean
  over test cases), and the mean over seeds with an error bar of one sd over seeds. The axis spans the data
  (not 0), so a 0.81-0.87 spread is visible.
* ``<exp>_curves.png``: per model, the validation curve of its selection quantity (``val_dice`` for
  segmentation, ``val_mse`` otherwise) as the mean over seeds with a band from the lowest to the highest seed,
  one colour per model, integer epoch ticks. A model whose epochs lack that quantity is named under the plot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medkd.io import atomic_path, read_json, read_jsonl
from medkd.stats import MAIN_METRICS


def _colours(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_experiment(table: pd.DataFrame, task: str, model_dirs: list[str | Path], title: str,
                    out_png: str | Path, out_curves: str | Path, metrics: pd.DataFrame | None = None) -> dict:
    """Write the dot plot of the main metric (``out_png``) and the validation curves (``out_curves``); return
    what they show: {"ylim": the dot plot's y range, "curves": {model: seeds drawn}, "missing": models without
    the curve's quantity}.

    ``table``: the experiment's long table; ``metrics``: its per-case values (columns model, seed, case, class,
    metric, convention, value), for the case and seed dots; ``model_dirs``: results/<exp>/models/<m>/seed<k>."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metric = MAIN_METRICS[task][0]
    sel = table[(table["metric"] == metric) & (table["convention"] == "engine")]
    classes = list(dict.fromkeys(sel["class"]))
    models = list(dict.fromkeys(sel["model"]))
    colours = _colours(max(1, len(classes)))
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(models) * max(1, len(classes)) / 1.5 + 2.5), 3.8))
    width = 0.8 / max(1, len(classes))
    rng = np.random.default_rng(0)  # the jitter of the case dots: the same figure every run
    per_case = per_seed = None
    if metrics is not None:
        m = metrics[(metrics["metric"] == metric) & (metrics["convention"] == "engine")]
        per_case = m.groupby(["class", "model", "case"], sort=True)["value"].mean()
        per_seed = m.groupby(["class", "model", "seed"], sort=True)["value"].mean()
    have = set(zip(m["class"], m["model"])) if metrics is not None else set()
    for i, cls in enumerate(classes):
        grp = sel[sel["class"] == cls].set_index("model").reindex(models)
        x = np.arange(len(models)) + i * width
        for j, model in enumerate(models):
            if per_case is not None and (cls, model) in have:
                ys = per_case.loc[(cls, model)].to_numpy()
                ax.scatter(x[j] + rng.uniform(-width / 3, width / 3, len(ys)), ys, s=7, color="0.65", zorder=1,
                           label="test case (mean over seeds)" if (i == 0 and j == 0) else None)
            if per_seed is not None and (cls, model) in have:
                ys = per_seed.loc[(cls, model)].to_numpy()
                ax.scatter(np.full(len(ys), x[j] + width / 4), ys, s=12, color="black", zorder=3,
                           label="seed (mean over cases)" if (i == 0 and j == 0) else None)
        ax.errorbar(x - width / 6, grp["mean"], yerr=grp["sd"].fillna(0), fmt="o", ms=6, capsize=3,
                    color=colours[i], zorder=4, label=f"{cls}: mean ± sd over seeds")
    ax.set_xticks(np.arange(len(models)) + width * (len(classes) - 1) / 2, models, rotation=20, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(axis="y", color="0.9")
    ax.legend(fontsize="x-small", loc="best")
    ylim = tuple(float(v) for v in ax.get_ylim())
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

    key = "val_dice" if task == "segmentation" else "val_mse"
    curves: dict[str, list[list[float]]] = {}
    missing = []
    rounds = False  # some model validates every max_steps updates instead of every epoch
    for d in model_dirs:
        cfg = read_json(Path(d) / "config.json")
        rounds = rounds or bool(cfg["spec"].get("train", {}).get("max_steps"))
        hist = read_jsonl(Path(d) / "epochs.jsonl")
        model = cfg["spec"]["model"]
        if not hist or any(h.get(key) is None for h in hist):
            if model not in missing:
                missing.append(model)
            continue
        curves.setdefault(model, []).append([float(h[key]) for h in sorted(hist, key=lambda h: h["epoch"])])
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for colour, (model, seeds) in zip(_colours(len(curves)), curves.items()):
        n = min(len(s) for s in seeds)  # seeds of one model train the same epochs; be safe if one stopped early
        arr = np.array([s[:n] for s in seeds])
        epochs = np.arange(n)
        ax.plot(epochs, arr.mean(axis=0), marker="o", ms=3, color=colour, label=f"{model} ({len(seeds)} seeds)")
        if len(seeds) > 1:
            ax.fill_between(epochs, arr.min(axis=0), arr.max(axis=0), color=colour, alpha=0.15, lw=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch, or validation round of max_steps updates where the model sets it" if rounds else "epoch")
    ax.set_ylabel(key)
    ax.set_title(f"{title}: validation (mean over seeds, band: lowest to highest seed)", fontsize="small")
    if curves:
        ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    if missing:
        fig.text(0.01, 0.01, f"no {key} per epoch (not trained, or validated on another quantity): "
                 f"{', '.join(missing)}", fontsize="x-small", color="0.4")
    fig.tight_layout()
    with atomic_path(out_curves) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return {"ylim": ylim, "curves": {m: len(s) for m, s in curves.items()}, "missing": missing}
