"""Qualitative panels: what the models predict on a few fixed test slices, laid out as the papers show it.

``results/figures/<exp>_panels.png`` has one row per chosen slice (segmentation: the label maps drawn over the
image, background transparent) or two (reconstruction and super-resolution: the images, then the absolute
error maps against the ground truth, with a colour bar), and the columns input | ground truth | every teacher |
every student trained alone | every distilled student, in config order within each group (baselines such as
``zero_filled`` are the input column itself); more than :data:`MAX_COLUMNS` columns wrap onto further rows.

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
MAX_COLUMNS = 6
"""Panels per line: an experiment with more columns (MTMS: input, truth and 8 models) wraps onto more lines."""


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
    columns = ["input", "truth", *models]
    chunks = [columns[i:i + MAX_COLUMNS] for i in range(0, len(columns), MAX_COLUMNS)]  # wide ones wrap
    n_cols = max(len(c) for c in chunks)
    rows_per = 1 if seg else 2  # reconstruction: the images, then their error maps
    n_rows = rows_per * len(chunks) * len(slices)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.0 * n_cols + (0.6 if not seg else 0), 2.45 * n_rows + 0.9),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_visible(False)
    n_classes = len(exp_cfg.get("classes", {})) or 2
    base = plt.get_cmap("tab10")
    colours = [base(i % 10) for i in range(max(1, n_classes - 1))]
    # the label map over the image: background transparent, each class in its colour at 55 % opacity
    overlay = ListedColormap([(0, 0, 0, 0)] + [(*c[:3], 0.55) for c in colours])
    for r, (cid, k, pos) in enumerate(slices):
        image = data.take("image", [pos])[0][0]
        target = data.take("target", [pos])[0]
        gt = None if seg else target[0]
        vmax = 1.0 if seg else (float(gt.max()) or 1.0)
        errors, err_max = {}, 1.0
        if not seg:
            errors = {"input": np.abs(image - gt), **{m: np.abs(preds[m][cid].astype(np.float64) - gt) for m in models}}
            err_max = max(float(e.max()) for e in errors.values()) or 1.0
        for c_i, chunk in enumerate(chunks):
            top = (r * len(chunks) + c_i) * rows_per
            for j, col in enumerate(chunk):
                ax = axes[top, j]
                if seg:
                    ax.imshow(image, cmap="gray")
                    if col == "input":
                        ax.set_title(f"input\n{cid} slice {k}", fontsize=7)
                        continue
                    lab = target if col == "truth" else preds[col][cid]
                    ax.imshow(lab, cmap=overlay, vmin=0, vmax=n_classes - 1, interpolation="nearest")
                    ax.set_title("ground truth" if col == "truth" else
                                 f"{column_label(col, exp_cfg['models'][col])}\nDice {_dice(lab, target, n_classes):.3f}",
                                 fontsize=7)
                    continue
                img = image if col == "input" else gt if col == "truth" else preds[col][cid].astype(np.float64)
                ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)  # the input on the ground truth's scale
                if col == "input":
                    ax.set_title(f"input\n{cid} slice {k}\nPSNR {_psnr(image, gt):.2f}", fontsize=7)
                elif col == "truth":
                    ax.set_title("ground truth", fontsize=7)
                else:
                    ax.set_title(f"{column_label(col, exp_cfg['models'][col])}\nPSNR {_psnr(img, gt):.2f}", fontsize=7)
                if col == "truth":
                    continue
                err_ax = axes[top + 1, j]
                im = err_ax.imshow(errors[col], cmap="inferno", vmin=0, vmax=err_max)
                err_ax.set_title(f"|{col} - truth|", fontsize=7)
            if not seg:
                fig.colorbar(im, ax=list(axes[top + 1, :len(chunk)]), shrink=0.8, pad=0.01,
                             label="absolute error").ax.tick_params(labelsize=6)
    for ax in axes.flat:
        if not ax.images:
            ax.set_axis_off()
    if seg:
        from matplotlib.patches import Patch

        names = list(exp_cfg["classes"])[1:]
        fig.legend(handles=[Patch(color=colours[i], label=n) for i, n in enumerate(names)], loc="outside lower center",
                   ncol=len(names), fontsize=7, frameon=False)
    what = "label maps over the image" if seg else "images and their absolute error maps (one scale per slice)"
    fig.suptitle(f"{exp_name}: test slices with the most foreground of the first {len(slices)} test case(s), "
                 f"{what}, seed {seed}", fontsize=8)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return slices
