"""Qualitative panels: what the models predict on a few fixed test slices, laid out as the papers show it.

``results/figures/<exp>_panels.png`` has one row per chosen slice (segmentation) or two (reconstruction
and super-resolution: the images, then the absolute error maps against the ground truth), and the
columns input | ground truth | every teacher | every student trained alone | every distilled student,
in config order within each group (baselines such as ``zero_filled`` are the input column itself).

The slices are fixed by the data, not by any model: for each of the first ``n_cases`` test cases (sorted
case ids) the slice with the most foreground (segmentation: pixels of a non-background class in the
ground truth; reconstruction: the largest sum of the ground-truth image). Predictions come from the
predictions files of one seed (``results/<exp>/predictions/<model>/seed<k>.h5``, the experiment's first
seed). Each model panel is titled with its name and the score of that slice (mean foreground Dice, or
PSNR in dB with data_range = the slice maximum), so the picture and the tables can be read together.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np

from medkd.datasets import DataBudget, load_split
from medkd.io import atomic_path, read_json
from medkd.spec import ModelSpec

ROLE_ORDER = {"teacher": 0, "student": 1}


def column_label(name: str, cfg: dict) -> str:
    """``teacher``, ``student alone`` or ``KD student (<method>)`` under the model name."""
    if cfg["role"] == "teacher":
        kind = "teacher"
    elif cfg.get("kd_method") and cfg.get("kd_method") != "none":
        kind = f"KD student ({cfg['kd_method']})"
    else:
        kind = "student alone"
    return name if name == kind else f"{name}\n{kind}"


def panel_models(exp_cfg: dict) -> list[str]:
    """Models shown, teachers first, then students alone, then distilled students (config order within)."""
    def group(item):
        name, m = item
        if m["role"] == "teacher":
            return 0
        return 1 if not m.get("kd_method") or m.get("kd_method") == "none" else 2

    models = [(n, m) for n, m in exp_cfg["models"].items() if m["role"] in ROLE_ORDER]
    return [n for n, _ in sorted(models, key=group)]


def choose_slices(data, n_cases: int = 2, segmentation: bool = True) -> list[tuple[str, int, int]]:
    """(case id, position in the case, position in the split) of the fixed slices."""
    runs = data.case_slices()
    out = []
    for cid in sorted(runs)[:n_cases]:
        idx = runs[cid]
        target = data.take("target", idx)
        if segmentation:
            score = (target > 0).reshape(len(idx), -1).sum(1)
        else:
            score = target.reshape(len(idx), -1).sum(1)
        k = int(np.argmax(score))
        out.append((cid, k, int(idx[k])))
    return out


def _dice(pred: np.ndarray, ref: np.ndarray, n_classes: int) -> float:
    scores = []
    for c in range(1, n_classes):
        p, r = pred == c, ref == c
        denom = p.sum() + r.sum()
        if denom:
            scores.append(2.0 * (p & r).sum() / denom)
    return float(np.mean(scores)) if scores else math.nan


def _psnr(pred: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((pred.astype(np.float64) - ref) ** 2))
    peak = float(ref.max())
    return 10 * math.log10(peak ** 2 / mse) if mse > 0 and peak > 0 else math.inf


def write_panels(exp_name: str, exp_cfg: dict, predictions: dict[str, str | Path], model_dir: str | Path,
                 store: str | Path, split_path: str | Path, out_png: str | Path, seed: int, n_cases: int = 2) -> list:
    """Draw the panels of ``exp_name`` from ``predictions`` (model -> predictions file of one seed);
    ``model_dir`` is any model directory of the experiment (its spec says how to read the test split).
    Returns the chosen slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    spec = ModelSpec.from_dict(read_json(Path(model_dir) / "config.json")["spec"])
    data = load_split(spec, store, split_path, "test", numpy=True, budget=DataBudget())
    seg = spec.is_segmentation
    slices = choose_slices(data, n_cases, seg)
    models = [m for m in panel_models(exp_cfg) if m in predictions]
    preds = {}
    for m in models:
        with h5py.File(predictions[m], "r") as fh:
            preds[m] = {cid: fh[f"cases/{cid}/pred"][k] for cid, k, _ in slices}
    n_cols = 2 + len(models)
    rows_per = 1 if seg else 2
    n_rows = rows_per * len(slices)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.9 * n_cols, 2.3 * n_rows + 0.6), squeeze=False)
    n_classes = len(exp_cfg.get("classes", {})) or 2
    base = plt.get_cmap("tab10")
    cmap = ListedColormap([(0, 0, 0, 1)] + [base(i % 10) for i in range(max(1, n_classes - 1))])
    for r, (cid, k, pos) in enumerate(slices):
        image = data.take("image", [pos])[0][0]
        target = data.take("target", [pos])[0]
        row = axes[r * rows_per]
        if seg:
            row[0].imshow(image, cmap="gray")
        else:  # the input on the ground truth's scale, as the predictions
            row[0].imshow(image, cmap="gray", vmin=0, vmax=float(target[0].max()) or 1.0)
        row[0].set_title(f"input\n{cid} slice {k}", fontsize=7)
        if seg:
            row[1].imshow(target, cmap=cmap, vmin=0, vmax=n_classes - 1, interpolation="nearest")
            row[1].set_title("ground truth\n", fontsize=7)
            for j, m in enumerate(models):
                p = preds[m][cid]
                row[2 + j].imshow(p, cmap=cmap, vmin=0, vmax=n_classes - 1, interpolation="nearest")
                row[2 + j].set_title(f"{column_label(m, exp_cfg['models'][m])}\nDice {_dice(p, target, n_classes):.3f}",
                                     fontsize=7)
        else:
            gt = target[0]
            vmax = float(gt.max()) or 1.0
            err_max = 0.0
            errors = {"input": np.abs(image - gt)}
            row[1].imshow(gt, cmap="gray", vmin=0, vmax=vmax)
            row[1].set_title("ground truth\n", fontsize=7)
            row[0].set_title(f"input\n{cid} slice {k}\nPSNR {_psnr(image, gt):.2f}", fontsize=7)
            for j, m in enumerate(models):
                p = preds[m][cid].astype(np.float64)
                errors[m] = np.abs(p - gt)
                row[2 + j].imshow(p, cmap="gray", vmin=0, vmax=vmax)
                row[2 + j].set_title(f"{column_label(m, exp_cfg['models'][m])}\nPSNR {_psnr(p, gt):.2f}", fontsize=7)
            err_max = max(float(e.max()) for e in errors.values()) or 1.0
            erow = axes[r * rows_per + 1]
            erow[0].imshow(errors["input"], cmap="inferno", vmin=0, vmax=err_max)
            erow[0].set_title("|input - truth|", fontsize=7)
            erow[1].text(0.5, 0.5, f"error maps\n(0 to {err_max:.3g})", ha="center", va="center", fontsize=7)
            for j, m in enumerate(models):
                erow[2 + j].imshow(errors[m], cmap="inferno", vmin=0, vmax=err_max)
                erow[2 + j].set_title(f"|{m} - truth|", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    if seg:
        from matplotlib.patches import Patch

        names = list(exp_cfg["classes"])
        fig.legend(handles=[Patch(color=cmap(i), label=n) for i, n in enumerate(names)], loc="lower center",
                   ncol=len(names), fontsize=7, frameon=False)
    what = "label maps" if seg else "images (top) and absolute error maps (bottom)"
    fig.suptitle(f"{exp_name}: test slices with the most foreground of the first {len(slices)} test case(s), "
                 f"{what}, seed {seed}", fontsize=8)
    fig.tight_layout(rect=(0, 0.05 if seg else 0, 1, 1 - 0.35 / fig.get_figheight()))
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return slices
