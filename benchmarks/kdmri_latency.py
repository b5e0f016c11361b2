"""KD-MRI's efficiency claim on this machine: per-slice CPU latency and parameters, teacher vs student.

KD-MRI (Murugesan et al., MIDL 2020) reports for its DC-CNN student 65% fewer parameters than the
teacher (49,285 vs 141,765: 65.2%) and about 2x faster CPU inference (1.5x on GPU; knee, 640x368). The
VDSR student has 185,857 parameters against the teacher's 333,569 (44.3% fewer).

This script times one forward pass per slice (batch 1, ``torch.no_grad``, eval mode, after warm-up
passes) of the four networks at ``--size`` x ``--size`` (default 256x256) on the CPU with ``--threads``
threads and prints, per pair, the median and mean milliseconds per slice, the speed-up (teacher median /
student median) and the parameter reduction. The DC-CNNs get a real 4x Cartesian variable-density mask
(10 centre lines, :func:`medkd.data.kspace.make_mask`) and the undersampled k-space of a random image, so
the float64 FFTs of their data-consistency layers are timed too.

Usage: ``python benchmarks/kdmri_latency.py [--size 256] [--repeats 20] [--warmup 3] [--threads 1] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from medkd.data.kspace import fft2_ortho, ifft2_ortho, make_mask
from medkd.io import write_json
from medkd.models import build_model, count_parameters

PAIRS = {"dccnn": ("dccnn_teacher", "dccnn_student"), "vdsr": ("vdsr_teacher", "vdsr_student")}
PAPER = {"dccnn": "65% fewer parameters, ~2x faster CPU inference (knee 640x368)",
         "vdsr": "333K vs 185K parameters (no latency reported)"}


def slice_inputs(size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """One slice of DC-CNN/VDSR inputs: ``image`` (1, 1, size, size) zero-filled magnitude, ``kspace``
    (1, size, size) complex64 undersampled k-space and ``mask`` (1, size, size) of a 4x mask with 10 centre
    lines (fewer below 40x40, where 4x leaves fewer than 10 lines in all).

    Raises:
        ValueError: ``size < 8``.
    """
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(1, size, size, generator=gen, dtype=torch.float64)
    spec = {"kind": "cartesian_vd", "acceleration": 4, "centre_lines": min(10, size // 4), "axis": 0, "seed": seed}
    mask, _ = make_mask(spec, (size, size), "latency")
    m = torch.from_numpy(mask)[None]
    kspace = fft2_ortho(target) * m
    image = ifft2_ortho(kspace).abs().float()[:, None]
    return {"image": image, "kspace": kspace.to(torch.complex64), "mask": m}


@torch.no_grad()
def time_forward(model: nn.Module, inputs: dict[str, torch.Tensor], repeats: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``repeats`` single-slice forward passes, after ``warmup`` untimed ones.

    Raises:
        ValueError: ``repeats < 1`` or ``warmup < 0``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    args = [inputs[k] for k in getattr(model, "input_keys", ("image",))]
    for _ in range(warmup):
        model(*args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(*args)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def benchmark(size: int = 256, repeats: int = 20, warmup: int = 3, threads: int = 1) -> dict[str, dict]:
    """Latency and parameters of every teacher/student pair in :data:`PAIRS`.

    Returns:
        ``{pair: {"teacher": {"arch", "params", "median_ms", "mean_ms"}, "student": {...},
        "param_reduction_pct", "speedup"}}``; ``speedup`` = teacher median / student median.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    inputs = slice_inputs(size)
    out: dict[str, dict] = {}
    for pair, archs in PAIRS.items():
        row: dict = {}
        for role, arch in zip(("teacher", "student"), archs):
            model = build_model(arch, in_channels=1, out_channels=1).eval()
            times = time_forward(model, inputs, repeats, warmup)
            row[role] = {"arch": arch, "params": count_parameters(model),
                         "median_ms": statistics.median(times), "mean_ms": statistics.fmean(times)}
        row["param_reduction_pct"] = 100.0 * (1 - row["student"]["params"] / row["teacher"]["params"])
        row["speedup"] = row["teacher"]["median_ms"] / row["student"]["median_ms"]
        out[pair] = row
    return out


def format_report(results: dict[str, dict], size: int, threads: int) -> str:
    lines = [f"KD-MRI latency per slice, CPU, {size}x{size}, batch 1, {threads} thread(s)"]
    for pair, row in results.items():
        for role in ("teacher", "student"):
            r = row[role]
            lines.append(f"  {r['arch']:14s} {r['params']:>9,d} params  median {r['median_ms']:8.2f} ms  "
                         f"mean {r['mean_ms']:8.2f} ms")
        lines.append(f"  {pair}: {row['param_reduction_pct']:.1f}% fewer parameters, {row['speedup']:.2f}x faster "
                     f"(paper: {PAPER[pair]})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = ap.parse_args()
    results = benchmark(args.size, args.repeats, args.warmup, args.threads)
    print(format_report(results, args.size, args.threads))
    if args.json:
        write_json(args.json, {"size": args.size, "threads": args.threads, "repeats": args.repeats, **results})


if __name__ == "__main__":
    main()
