"""Inference on the test split: predictions per case, re-stackable into volumes.

File ``results/<exp>/predictions/<model>/seed<k>.h5``:

* root attrs: ``experiment``, ``model``, ``seed``, ``task``, ``split``, ``latency_ms_per_slice`` (mean
  wall time of a forward pass per slice, batch 1, after warm-up, on ``device``), ``device``, ``params``;
* group ``cases/<case_id>``: ``pred`` (S, H, W): uint8 class indices (segmentation: argmax over classes,
  or logit > 0 for one-logit binary models) or float32 images (reconstruction), in slice-store order;
  for one-logit binary models also ``logit`` float32 (S, H, W), which paper conventions with other
  thresholds need (MTMS thresholds raw logits at 0.5).
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from medkd.io import atomic_path, h5_empty
from medkd.models import count_parameters
from medkd.datasets import DataBudget, load_split
from medkd.runtime import (RunSettings, autocast, class_indices, fix_mmap_threshold, forward_model, load_trained,
                           to_device)


def to_labels(output: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) logits -> (B, H, W) class indices; one channel -> logit > 0 (p > 0.5)."""
    if output.shape[1] == 1:
        return (output[:, 0] > 0).to(torch.uint8)
    return class_indices(output).to(torch.uint8)


@torch.no_grad()
def measure_latency(model, batch: dict, repeats: int = 5) -> float:
    """Mean milliseconds per single-slice forward pass (after one warm-up pass)."""
    one = {k: (v[:1] if torch.is_tensor(v) else v) for k, v in batch.items()}
    forward_model(model, one)
    t0 = time.perf_counter()
    for _ in range(repeats):
        forward_model(model, one)
    return (time.perf_counter() - t0) / repeats * 1000.0


@torch.no_grad()
def predict(model_dir: str | Path, store: str | Path, split_path: str | Path, out_path: str | Path,
            split_name: str = "test", batch_size: int = 16, settings: RunSettings | None = None) -> dict:
    """Predict every slice of ``split_name``'s cases with the best checkpoint, under the model's training
    precision (``train.precision`` autocast), and write ``out_path``."""
    settings = settings or RunSettings()
    fix_mmap_threshold()  # outputs are written case by case: keep freed batches off the heap
    dev = settings.apply()
    model, spec = load_trained(model_dir, dev, settings)
    data = load_split(spec, store, split_path, split_name, budget=DataBudget(settings.data_memory_mb))
    seg = spec.is_segmentation
    runs = data.case_slices()
    nhwc = settings.nhwc(model)
    latency = None
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as fh:
        for cid in tqdm(sorted(runs), desc=f"infer {spec.model}", unit="case", disable=None):
            idx = torch.as_tensor(runs[cid])
            grp = fh.create_group(f"cases/{cid}")
            sets: dict[str, h5py.Dataset] = {}
            for start in range(0, len(idx), batch_size):
                # written batch by batch: a job holds one batch of predictions, never a whole case
                batch = to_device(data.batch(idx[start : start + batch_size]), dev, nhwc)
                with autocast(dev, spec.train.precision):
                    if latency is None:
                        latency = measure_latency(model, batch)
                    out = forward_model(model, batch)
                out = (out["out"] if isinstance(out, dict) else out).float().cpu()
                arrays = {"pred": (to_labels(out) if seg else out[:, 0]).numpy()}
                if seg and out.shape[1] == 1:
                    arrays["logit"] = out[:, 0].numpy().astype(np.float32)
                for key, arr in arrays.items():
                    if key not in sets:
                        sets[key] = h5_empty(grp, key, (len(idx),) + arr.shape[1:], arr.dtype, compress=key == "pred")
                    sets[key][start : start + arr.shape[0]] = arr
        fh.attrs.update({
            "experiment": spec.experiment, "model": spec.model, "task": spec.task,
            "split": split_name, "latency_ms_per_slice": float(latency or 0.0), "device": str(dev),
            "params": count_parameters(model),
        })
    return {"cases": len(runs), "slices": len(data), "latency_ms_per_slice": latency}
