"""The teacher cache: a teacher's outputs and uncertainty maps on every slice students train or validate on.

Computed once per (teacher, seed) and shared by every student variant that reads ``cache:<key>`` taps.
Only the cases those students read are cached: the union of their training subsets and validation splits
(:func:`medkd.config.cache_splits`; e.g. P-CD's students read 6 training and 4 validation cases of 32).
File ``results/<exp>/cache/<teacher>/seed<k>.h5``:

* root attrs: ``teacher``, ``experiment``, ``seed``, ``spec_hash`` (of the teacher), ``task``,
  ``keys`` (JSON list), ``splits`` (JSON list of the split / subset names cached), ``confidence_temperature``;
* group ``cases/<case_id>`` per case of those splits (each case once), datasets:

  - ``logits`` float32 (S, C, H, W): the teacher's main output (segmentation logits; for reconstruction the
    predicted image (S, 1, H, W), stored under ``output``);
  - ``entropy`` float32 (S, H, W): normalised predictive entropy in [0, 1]
    (:func:`medkd.uncertainty.predictive_entropy`);
  - ``confidence`` float32 (S, H, W): max softmax probability at the configured temperature, in
    [1/C, 1] (:func:`medkd.uncertainty.temperature_confidence`);
  - ``mc_dropout`` float32 (S, H, W): class-mean variance of the softmax over ``mc_passes`` dropout
    passes, >= 0 (:func:`medkd.uncertainty.mc_dropout_variance`; only for teachers with dropout; the
    passes are seeded per case, so the cache is reproducible);
  - ``label`` float32 (S, H, W): annotation-boundary uncertainty from spatially varying label smoothing
    of the one-hot reference, in [0, 0.5] (:func:`medkd.uncertainty.label_uncertainty`).

Slices are in the slice store's order for each case, so a student maps (case, slice) to cached maps.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import h5py
import torch
from tqdm import tqdm

from medkd import uncertainty
from medkd.config import CACHED_SPLITS
from medkd.io import atomic_path, h5_empty
from medkd.datasets import DataBudget, load_split
from medkd.runtime import RunSettings, autocast, fix_mmap_threshold, forward_model, load_trained, to_device


@torch.no_grad()
def build_cache(teacher_dir: str | Path, store: str | Path, split_path: str | Path, out_path: str | Path,
                batch_size: int = 16, settings: RunSettings | None = None,
                splits: Sequence[str] = CACHED_SPLITS) -> dict:
    """Run the best teacher checkpoint over the cases of ``splits`` (split or subset names of the split
    file; a case in several is cached once) and write the cache file, under the teacher's training
    precision (``train.precision`` autocast; the stored maps are float32).

    Returns a small summary (cases, slices, keys).

    Raises:
        ValueError: no split names, or a name that is neither a split nor a subset of the split file.
    """
    if not splits:
        raise ValueError("build_cache: no split or subset names to cache")
    settings = settings or RunSettings()
    fix_mmap_threshold()  # outputs are written case by case: keep freed batches off the heap
    dev = settings.apply()
    model, spec = load_trained(teacher_dir, dev, settings)
    keys_unc = list(spec.cache.uncertainty)
    temp = spec.cache.confidence_temperature
    passes = spec.cache.mc_passes
    seg = spec.is_segmentation
    main_key = "logits" if seg else "output"
    nhwc = settings.nhwc(model)
    n_slices = 0
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as fh:
        cases_done = []
        for split_name in splits:
            data = load_split(spec, store, split_path, split_name, budget=DataBudget(settings.data_memory_mb))
            runs = data.case_slices()
            todo = sorted(set(runs) - set(cases_done))
            for cid in tqdm(todo, desc=f"cache {spec.model} {split_name}", unit="case", disable=None):
                idx = torch.as_tensor(runs[cid])
                grp = fh.create_group(f"cases/{cid}")
                out_sets: dict[str, h5py.Dataset] = {}
                for start in range(0, len(idx), batch_size):
                    # written batch by batch: a job holds one batch of outputs, never a whole case
                    batch = to_device(data.batch(idx[start : start + batch_size]), dev, nhwc)
                    with autocast(dev, spec.train.precision):
                        out = forward_model(model, batch)
                    logits = (out["out"] if isinstance(out, dict) else out).float().cpu()
                    maps = {main_key: logits}
                    if seg:
                        if "entropy" in keys_unc:
                            maps["entropy"] = uncertainty.predictive_entropy(logits)
                        if "confidence" in keys_unc:
                            maps["confidence"] = uncertainty.temperature_confidence(logits, temp)
                        if "mc_dropout" in keys_unc:
                            seed = zlib.crc32(f"{cid}:{start}".encode())
                            maps["mc_dropout"] = uncertainty.mc_dropout_variance(model, batch["image"], passes,
                                                                                 seed=seed).cpu()
                        if "label" in keys_unc:
                            target = data.take("target", idx[start : start + batch_size])
                            maps["label"] = uncertainty.label_uncertainty(target, max(2, logits.shape[1]))
                    for key, value in maps.items():
                        arr = value.numpy()
                        if key not in out_sets:
                            out_sets[key] = h5_empty(grp, key, (len(idx),) + arr.shape[1:], arr.dtype,
                                                     compress=key == main_key)
                        out_sets[key][start : start + arr.shape[0]] = arr
                n_slices += len(idx)
                cases_done.append(cid)
        keys = [main_key] + (keys_unc if seg else [])
        fh.attrs.update({
            "teacher": spec.model, "experiment": spec.experiment, "task": spec.task,
            "spec_hash": json.loads((Path(teacher_dir) / "summary.json").read_text())["spec_hash"],
            "keys": json.dumps(keys), "splits": json.dumps(list(splits)), "confidence_temperature": temp,
        })
    return {"cases": len(cases_done), "slices": n_slices, "keys": keys}
