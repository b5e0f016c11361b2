"""Training throughput of the medkd engine against a plain PyTorch loop, same model and data.

Builds a synthetic slice store (random images, 4 classes) in a temporary directory, then times

* ``engine``: :func:`medkd.train.train` (tap hooks, weighted objective, per-epoch validation and
  checkpointing; slices/s counted over the training batches only, as the engine reports them);
* ``plain``: a hand-written loop (randperm, index, forward, cross-entropy, backward, Adam step).

Both use the same U-Net, batch size, optimiser (Adam in torch's fused kernel, as :mod:`medkd.optim` builds
it), memory layout (the engine's default run setting for this architecture on CPU, channels-last for the
U-Net: :meth:`medkd.runtime.RunSettings.nhwc`), thread count and number of epochs, so the ratio is the
engine's own overhead. Target: the engine's
slices/s at least 0.9x the plain loop's. Also timed: the engine with its data streamed from the store batch
by batch (run setting ``data_memory_mb`` 0, :mod:`medkd.datasets`), as a job over its data budget runs. Usage: ``python benchmarks/throughput.py [--size 64] [--epochs 3]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medkd.config import load_config, model_spec
from medkd.data.splits import make_split, write_split
from medkd.data.store import SliceCase, write_store
from medkd.models import build_model
from medkd.runtime import RunSettings
from medkd.train import TrainInputs, train


def synthetic_store(path: Path, n_cases: int, slices: int, size: int) -> list[str]:
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n_cases):
        img = rng.normal(size=(slices, 1, size, size)).astype(np.float32)
        lab = rng.integers(0, 4, size=(slices, size, size), dtype=np.uint8)
        cases.append(SliceCase(f"c{i:02d}", img, lab, (1.0, 1.0, 1.0), np.eye(4),
                               {"source_image": "", "source_label": "", "original_shape": np.array([size, size, slices]),
                                "slice_indices": np.arange(slices)}))
    write_store(path, cases, {"dataset": "bench", "channel_names": ["x"], "label_names": {str(k): str(k) for k in range(4)},
                              "provenance": {"converter": "benchmark"}, "size": [size, size]})
    return [c.case_id for c in cases]


def _engine_rate(model_dir: Path) -> float:
    """Slices per second over the training batches of a finished engine run (its epochs.jsonl)."""
    hist = [json.loads(line) for line in (model_dir / "epochs.jsonl").read_text().splitlines()]
    return sum(h["train_seconds"] * h["slices_per_second"] for h in hist) / sum(h["train_seconds"] for h in hist)


def plain_loop(model, images, targets, epochs, batch_size, lr) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    gen = torch.Generator().manual_seed(0)
    seen, spent = 0, 0.0
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(images), generator=gen)
        for s in range(0, len(perm), batch_size):
            idx = perm[s : s + batch_size]
            loss = F.cross_entropy(model(images[idx]), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
        spent += time.perf_counter() - t0
    return seen / spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = synthetic_store(tmp / "s.h5", n_cases=10, slices=40, size=args.size)
        write_split(make_split(cases, 0, fractions={"train": 0.6, "val": 0.2, "test": 0.2}), tmp / "split.json")
        cfg = load_config({
            "threads": args.threads, "device": "cpu",
            "datasets": {"bench": {"kind": "embedded", "convert": {}}},
            "experiments": {"bench": {
                "dataset": "bench", "task": "segmentation",
                "classes": {"c0": [0], "c1": [1], "c2": [2], "c3": [3]},
                "models": {"m": {"role": "teacher", "arch": "unet", "arch_kwargs": {"base": args.base, "depth": 3},
                                 "train": {"epochs": args.epochs, "batch_size": args.batch_size,
                                           "optimizer": {"name": "adam", "lr": 1e-3}, "select": {"metric": "last"}},
                                 "losses": [{"loss": "cross_entropy"}]}}}},
        })
        spec = model_spec(cfg, "bench", "m")
        settings = RunSettings(device="cpu", threads=args.threads)
        summary = train(spec, 0, TrainInputs(store=tmp / "s.h5", split=tmp / "split.json"), tmp / "out", settings,
                        progress=False)
        engine = _engine_rate(tmp / "out")
        # the same job streaming its data from the store batch by batch (data_memory_mb 0)
        streamed_settings = RunSettings(device="cpu", threads=args.threads, data_memory_mb=0)
        train(spec, 0, TrainInputs(store=tmp / "s.h5", split=tmp / "split.json"), tmp / "out_stream",
              streamed_settings, progress=False)
        streamed = _engine_rate(tmp / "out_stream")

        torch.manual_seed(0)
        model = build_model("unet", in_channels=1, out_channels=4, base=args.base, depth=3)
        from medkd.datasets import load_segmentation
        from medkd.data.splits import cases_for, read_split

        data = load_segmentation(tmp / "s.h5", cases_for(read_split(tmp / "split.json"), "train"), [0],
                                 {k: list(v) for k, v in spec.classes.items()})
        images = data.tensors["image"]
        if settings.nhwc(model, "train"):  # the layout the engine trained in
            model = model.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        plain = plain_loop(model, images, data.tensors["target"], args.epochs, args.batch_size, 1e-3)
    print(f"model: unet base {args.base} depth 3 ({summary['params']:,} params), {args.size}x{args.size}, "
          f"batch {args.batch_size}, {args.epochs} epochs, {summary['train_slices']} training slices, "
          f"{args.threads} threads")
    print(f"engine: {engine:8.1f} slices/s")
    print(f"plain : {plain:8.1f} slices/s")
    print(f"ratio : {engine / plain:8.3f} (target >= 0.9)")
    print(f"engine, data streamed from the store: {streamed:8.1f} slices/s ({streamed / engine:.3f}x in memory)")


if __name__ == "__main__":
    main()
