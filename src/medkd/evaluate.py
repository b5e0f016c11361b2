"""The evaluate stage: compare test predictions with the references, per case, and write a CSV.

Segmentation slices are re-stacked into volumes (slice-store order) and scored per case with
:func:`medkd.metrics.segmentation_case_metrics` (Dice, IoU, precision, recall, HD95 in mm, with the
empty-mask policy documented there), using the stored slice spacing (slice thickness, row, column).
Paper conventions requested by the experiment are added as extra rows, labelled in ``convention``:

* ``mtms_pooled``: TP/FP/FN pooled over every test pixel (MTMS thesis), case ``ALL``; one-logit models
  are thresholded at the experiment's ``logit_threshold`` (0.5 reproduces the thesis code);
* ``pcd_per_image``: P-CD's per-image Dice/IoU (smoothing 1e-4, empty union = 1) averaged over slices
  of each case.

* ``region``: Dice, IoU and HD95 of unions of classes (the experiment's ``regions``, e.g. BraTS's
  whole tumour / tumour core / enhancing tumour), per case.

Every file also gets a ``cost`` row: the inference latency per slice measured by the infer stage.

Reconstruction volumes are scored with PSNR, SSIM and NMSE per volume
(:func:`medkd.metrics.reconstruction_case_metrics`; data_range = the volume's maximum). With the
``kdmri_per_slice`` convention every slice is also scored on its own (case ``<case>/<slice index>``,
data_range = the slice's maximum), as KD-MRI's ``evaluate.py`` scores its knee data, stored one slice per
file: the tables' mean and case spread are then over slices.

CSV columns: experiment, model, seed, case, class, metric, convention, value.
"""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np

from medkd import metrics
from medkd.io import atomic_path, read_json
from medkd.datasets import DEFAULT_DATA_MEMORY_MB, DataBudget, load_split
from medkd.spec import ModelSpec

from medkd.integrity import METRIC_COLUMNS as COLUMNS  # noqa: E402


def _open_predictions(path: str | Path):
    """The open predictions file, its root attrs and case ids; each case's ``pred`` (and ``logit`` for
    one-logit models) is read when it is scored, so a split is never held in memory at once."""
    from medkd.integrity import reading

    with reading(path, "predictions file"):
        fh = h5py.File(path, "r")
        try:
            return fh, dict(fh.attrs), list(fh["cases"])
        except BaseException:
            fh.close()
            raise


def evaluate(predictions: str | Path, model_dir: str | Path, store: str | Path, split_path: str | Path,
             out_csv: str | Path, conventions: list[str] = ("engine",), logit_threshold: float = 0.0,
             regions: dict[str, list[str]] | None = None, data_memory_mb: float | None = DEFAULT_DATA_MEMORY_MB) -> int:
    """Score ``predictions`` against the references; returns the number of rows written.

    ``logit_threshold`` applies to the ``mtms_pooled`` convention of one-logit binary models: the MTMS
    code thresholds raw logits at 0.5 (p > 0.622) instead of 0 (p > 0.5). ``data_memory_mb``: the
    references are held in memory up to this size and read case by case beyond it.
    """
    fh, attrs, pred_cases = _open_predictions(predictions)
    try:
        return _evaluate(fh, attrs, pred_cases, predictions, model_dir, store, split_path, out_csv, conventions,
                         logit_threshold, regions, data_memory_mb)
    finally:
        fh.close()


def _evaluate(fh, attrs, pred_cases, predictions, model_dir, store, split_path, out_csv, conventions,
              logit_threshold, regions, data_memory_mb) -> int:
    from medkd.integrity import reading

    run_cfg = read_json(Path(model_dir) / "config.json")
    spec, seed = ModelSpec.from_dict(run_cfg["spec"]), run_cfg["seed"]
    data = load_split(spec, store, split_path, attrs["split"], numpy=True, budget=DataBudget(data_memory_mb))
    runs = data.case_slices()
    if sorted(runs) != sorted(pred_cases):
        raise ValueError(f"{predictions}: cases {sorted(pred_cases)} do not match the {attrs['split']} split "
                         f"{sorted(runs)}")

    def pred_of(cid):
        with reading(predictions, "predictions file"):
            return fh[f"cases/{cid}/pred"][()]

    regions = regions or {}
    base = {"experiment": spec.experiment, "model": spec.model, "seed": seed}
    rows: list[dict] = []
    if spec.is_segmentation:
        classes = {name: i for i, name in enumerate(spec.classes) if i > 0}
        class_index = {name: i for i, name in enumerate(spec.classes)}
        pooled_counts = {name: [0, 0, 0] for name in classes}  # tp, fp, fn summed over the cases
        for cid in sorted(runs):
            ref = data.take("target", runs[cid])
            pred = pred_of(cid).astype(np.int64)
            if pred.shape != ref.shape:
                raise ValueError(f"{predictions}: case {cid} prediction {pred.shape} vs reference {ref.shape}")
            row_mm, col_mm, slice_mm = data.spacing[cid]
            for r in metrics.segmentation_case_metrics(pred, ref, classes, (slice_mm, row_mm, col_mm)):
                rows.append({**base, "case": cid, "convention": "engine", **r})
            for region, members in regions.items():
                idx = [class_index[m] for m in members]
                p_reg, r_reg = np.isin(pred, idx), np.isin(ref, idx)
                for m, fn in (("dice", metrics.dice), ("iou", metrics.iou)):
                    rows.append({**base, "case": cid, "class": region, "metric": m, "convention": "region",
                                 "value": fn(p_reg, r_reg)})
                rows.append({**base, "case": cid, "class": region, "metric": "hd95", "convention": "region",
                             "value": metrics.hd95(p_reg, r_reg, (slice_mm, row_mm, col_mm))})
            if "pcd_per_image" in conventions:
                for name, c in classes.items():
                    per = [metrics.per_image_binary_metrics(p == c, g == c) for p, g in zip(pred, ref)]
                    for m in ("dice", "iou"):
                        rows.append({**base, "case": cid, "class": name, "metric": m,
                                     "convention": "pcd_per_image", "value": float(np.mean([x[m] for x in per]))})
            if "mtms_pooled" in conventions:
                with reading(predictions, "predictions file"):
                    grp = fh[f"cases/{cid}"]
                    logit = grp["logit"][()] if "logit" in grp else None
                pooled_pred = (logit > logit_threshold).astype(np.int64) if logit is not None else pred
                for name, c in classes.items():
                    conf = metrics.binary_confusion(pooled_pred == c, ref == c)
                    for i, k in enumerate(("tp", "fp", "fn")):
                        pooled_counts[name][i] += int(conf[k])
        if "mtms_pooled" in conventions:
            for name, c in classes.items():
                pooled = metrics.pooled_from_counts(*pooled_counts[name])
                for m in ("dice", "iou", "precision", "recall"):
                    rows.append({**base, "case": "ALL", "class": name, "metric": m,
                                 "convention": "mtms_pooled", "value": pooled[m]})
    else:
        for cid in sorted(runs):
            gt = data.take("target", runs[cid])[:, 0]
            pred = pred_of(cid).astype(np.float64)
            for r in metrics.reconstruction_case_metrics(gt, pred):
                rows.append({**base, "case": cid, "class": "image", "convention": "engine", **r})
            if "kdmri_per_slice" in conventions:  # KD-MRI's knee files hold one slice each: every slice is a "case"
                for k in range(gt.shape[0]):
                    for r in metrics.reconstruction_case_metrics(gt[k : k + 1], pred[k : k + 1]):
                        rows.append({**base, "case": f"{cid}/{k}", "class": "image", "convention": "kdmri_per_slice", **r})
    rows.append({**base, "case": "ALL", "class": "-", "metric": "latency_ms_per_slice", "convention": "cost",
                 "value": float(attrs["latency_ms_per_slice"])})
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in COLUMNS})
    return len(rows)
