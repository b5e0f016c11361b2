"""Mixed precision on CPU: training throughput of the medkd engine in fp32 and under bf16 autocast.

The same synthetic store, U-Net, batch size, optimiser and threads as benchmarks/throughput.py; only
``train.precision`` differs (and, optionally, the channels_last run setting). Each variant is trained ``--repeats``
times, alternating, and the best epoch-averaged slices/s is kept (the machine may be shared). The final validation
loss is printed too: bf16 changes the numbers, which is why the precision is part of the spec hash.

bf16 autocast on a CPU pays off only where the CPU has bf16 instructions (AVX512-BF16 / AMX); elsewhere oneDNN
emulates them and it is much slower. Usage: ``python benchmarks/amp_cpu.py [--size 64] [--epochs 1] [--repeats 2]
[--channels-last]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import synthetic_store  # noqa: E402

from medkd.config import load_config, model_spec  # noqa: E402
from medkd.data.splits import make_split, write_split  # noqa: E402
from medkd.runtime import RunSettings  # noqa: E402
from medkd.train import TrainInputs, train  # noqa: E402


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return " ".join(f for f in wanted if f" {f}" in flags) or "none of " + ", ".join(wanted)


def run(tmp: Path, args, precision: str, channels_last: bool, k: int) -> dict:
    cfg = load_config({
        "device": "cpu", "threads": args.threads,
        "datasets": {"bench": {"kind": "embedded", "convert": {}}},
        "experiments": {"bench": {
            "dataset": "bench", "task": "segmentation",
            "classes": {"c0": [0], "c1": [1], "c2": [2], "c3": [3]},
            "models": {"m": {"role": "teacher", "arch": "unet", "arch_kwargs": {"base": args.base, "depth": 3},
                             "train": {"epochs": args.epochs, "batch_size": args.batch_size, "precision": precision,
                                       "optimizer": {"name": "adam", "lr": 1e-3}, "select": {"metric": "last"}},
                             "losses": [{"loss": "cross_entropy"}]}}}},
    })
    out = tmp / f"{precision}-{int(channels_last)}-{k}"
    summary = train(model_spec(cfg, "bench", "m"), 0, TrainInputs(store=tmp / "s.h5", split=tmp / "split.json"), out,
                    RunSettings(device="cpu", threads=args.threads, channels_last=channels_last), progress=False)
    hist = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    seen = sum(h["train_seconds"] * h["slices_per_second"] for h in hist)
    return {"slices_per_second": seen / sum(h["train_seconds"] for h in hist), "val_loss": hist[-1]["val_loss"],
            "params": summary["params"], "train_slices": summary["train_slices"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--cases", type=int, default=5, help="synthetic cases of 40 slices (60 % train, 20 % val)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true", help="also time fp32 and bf16 with channels_last")
    args = ap.parse_args()
    variants = [("fp32", False), ("bf16", False)] + ([("fp32", True), ("bf16", True)] if args.channels_last else [])
    best: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = synthetic_store(tmp / "s.h5", n_cases=args.cases, slices=40, size=args.size)
        write_split(make_split(cases, 0, fractions={"train": 0.6, "val": 0.2, "test": 0.2}), tmp / "split.json")
        for k in range(args.repeats):
            for v in variants:
                r = run(tmp, args, *v, k)
                if v not in best or r["slices_per_second"] > best[v]["slices_per_second"]:
                    best[v] = r
    first = best[variants[0]]
    print(f"torch {torch.__version__}, CPU flags: {cpu_flags()}, {args.threads} threads")
    print(f"model: unet base {args.base} depth 3 ({first['params']:,} params), {args.size}x{args.size}, batch "
          f"{args.batch_size}, {args.epochs} epochs x {first['train_slices']} slices, best of {args.repeats}")
    for (precision, cl), r in best.items():
        ratio = r["slices_per_second"] / first["slices_per_second"]
        print(f"{precision}{' channels_last' if cl else '':<14} {r['slices_per_second']:8.1f} slices/s  "
              f"x{ratio:5.2f}  final val_loss {r['val_loss']:.4f}")


if __name__ == "__main__":
    main()
