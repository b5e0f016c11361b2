"""A job's memory does not grow with the dataset: a slice store ten times the data budget trains, caches and
infers (the `medkd` CLI, as the rules run it) with the peak RSS its log ends with (getrusage) within a margin of
the same jobs on a store a tenth of the size, which fits the budget. The control, the big store with no budget,
shows the test can fail: its training job holds the whole split."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from medkd.data.splits import make_split, write_split
from medkd.data.store import SliceCase, write_store
from medkd.datasets import segmentation_bytes

pytestmark = pytest.mark.slow

BUDGET_MB = 24
MARGIN_MB = 40  # allocator noise, h5py's chunk caches, one case of cache/infer output (16 MB logits)
SIZE = 128
CASES = 20
SPEC = {
    "experiment": "mem", "model": "m", "dataset": "mem", "task": "segmentation", "channels": [0],
    "classes": {"bg": [0], "a": [1], "b": [2], "c": [3]}, "role": "teacher", "arch": "unet",
    "arch_kwargs": {"base": 4, "depth": 2},
    "train": {"epochs": 1, "batch_size": 16, "optimizer": {"name": "adam", "lr": 0.01}, "select": {"metric": "val_dice"}},
    "losses": [{"loss": "cross_entropy"}],
    "cache": {"uncertainty": ["entropy"]},
}


def _store(path, slices_per_case: int) -> None:
    rng = np.random.default_rng(0)
    cases = []
    for i in range(CASES):
        label = rng.integers(0, 4, size=(slices_per_case, SIZE, SIZE), dtype=np.uint8)
        image = rng.normal(size=(slices_per_case, 1, SIZE, SIZE)).astype(np.float32) + label[:, None]
        cases.append(SliceCase(case_id=f"c{i:02d}", image=image, label=label, spacing=(1.0, 1.0, 1.0), affine=np.eye(4),
                               attrs={"source_image": "i", "source_label": "l", "original_shape": [SIZE, SIZE, 1],
                                      "slice_indices": list(range(slices_per_case))}))
    write_store(path, cases, {"dataset": "mem", "channel_names": ["x"], "label_names": {str(k): str(k) for k in range(4)},
                              "provenance": {}, "size": [SIZE, SIZE]})


def _peak(cmd: list[str]) -> int:
    proc = subprocess.run([sys.executable, "-m", "medkd", *cmd, "--device", "cpu"], capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    found = re.findall(r"peak RSS (\d+) MiB", text)
    assert found, text[-2000:]
    return int(found[-1])


def _stages(root, store, split, budget) -> dict[str, int]:
    spec = root / "spec.json"
    spec.write_text(json.dumps(SPEC))
    model = root / f"model_{store.stem}_{budget}"
    flags = ["--data-memory-mb", str(budget)]
    out = {"train": _peak(["train", "--spec-file", str(spec), "--seed", "0", "--store", str(store), "--split", str(split),
                           "--out", str(model), *flags])}
    out["cache"] = _peak(["cache", "--teacher-dir", str(model), "--store", str(store), "--split", str(split),
                          "--out", str(root / f"cache_{model.name}.h5"), *flags])
    out["infer"] = _peak(["infer", "--model-dir", str(model), "--store", str(store), "--split", str(split),
                          "--out", str(root / f"pred_{model.name}.h5"), *flags])
    return out


def test_peak_memory_does_not_grow_with_the_store(tmp_path):
    small, big = tmp_path / "small.h5", tmp_path / "big.h5"
    _store(small, 6)
    _store(big, 64)
    assert segmentation_bytes(CASES * 64, 1, SIZE, SIZE) >= 10 * BUDGET_MB * 2**20  # ten times the budget
    assert segmentation_bytes(CASES * 6, 1, SIZE, SIZE) <= BUDGET_MB * 2**20  # fits: held in memory
    split = tmp_path / "split.json"
    write_split(make_split([f"c{i:02d}" for i in range(CASES)], 0, fractions={"train": 0.6, "val": 0.2, "test": 0.2}),
                split)
    base = _stages(tmp_path, small, split, BUDGET_MB)
    streamed = _stages(tmp_path, big, split, BUDGET_MB)
    env = json.loads((tmp_path / f"model_big_{BUDGET_MB}" / "env.json").read_text())
    assert env["data_in_memory"] == {"train": False, "val": False}  # 768 and 256 slices: 144 and 48 MB
    for stage in ("train", "cache", "infer"):
        assert streamed[stage] <= base[stage] + BUDGET_MB + MARGIN_MB, (stage, base, streamed)
    # the control: without a budget the same training job holds the 768 training slices (144 MB as arrays)
    control = _peak(["train", "--spec-file", str(tmp_path / "spec.json"), "--seed", "0", "--store", str(big),
                     "--split", str(split), "--out", str(tmp_path / "control"), "--data-memory-mb", "1000000"])
    assert control >= base["train"] + 120, (control, base)
    print(f"peak RSS MiB: small store {base}, store 10x the budget streamed {streamed}, in memory (train) {control}")
