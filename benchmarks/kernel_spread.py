"""How far do the numbers move when the same code runs on another instruction set? (docs/reproducibility.md)

Runs a config (default: the embedded default) in a copy of the repository once per forced kernel set and
compares every number of its all.csv with a run on this CPU's best kernels (``--native``: the all.csv of a
finished run, e.g. ``results/tables/all.csv`` after ``make reproduce``, or none: the script runs it too).
torch's ATen kernels (ATEN_CPU_CAPABILITY), oneDNN's convolutions (ONEDNN_MAX_CPU_ISA), MKL inside torch
(MKL_ENABLE_INSTRUCTIONS) and numpy's OpenBLAS (OPENBLAS_CORETYPE) are forced together, as a CPU with
only that instruction set would run them. The embedded data is the same bytes under every set (tests/
integration/test_embedded_bits.py), so every difference comes from the arithmetic of training and
evaluation.

Prints, per metric: how many numbers, the largest and the 95th-percentile absolute difference, over the
models without a ``collapse`` flag and (separately) over the flagged ones; and writes every difference to
``--out`` (CSV). The tolerances of medkd.reproduced.DEFAULT_TOLERANCES were chosen from these figures.

Usage:
    python benchmarks/kernel_spread.py --native results/tables/all.csv --variants avx2 sse --keep /tmp/spread
    python benchmarks/kernel_spread.py --config tests/integration/tiny.yaml --variants native avx2 sse
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from medkd.reproduced import compare  # noqa: E402

VARIANTS = {
    "native": {},
    # a CPU with AVX2 and FMA but no AVX-512 (e.g. AMD Zen 2/3, Intel Haswell to Comet Lake)
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "OPENBLAS_CORETYPE": "Haswell"},
    # a CPU with SSE4 only: torch's scalar (non-vectorised) ATen kernels, oneDNN's SSE4.1 convolutions
    "sse": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
            "OPENBLAS_CORETYPE": "Prescott"},
}


def run_variant(name: str, config: str | None, root: Path, cores: int) -> Path:
    """Run the config in ``root/<name>`` (a copy of the tracked files) under the variant's kernels; return
    its all.csv."""
    wd = root / name
    if not (wd / "results" / "tables" / "all.csv").exists():
        shutil.rmtree(wd, ignore_errors=True)
        files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        for rel in filter(None, files.decode().split("\0")):
            src = REPO / rel
            if src.is_file():
                (wd / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, wd / rel)
        (wd / ".venv").symlink_to(REPO / ".venv")
        env = {**os.environ, **VARIANTS[name]}
        args = [str(REPO / ".venv" / "bin" / "snakemake"), "--cores", str(cores), "results/tables/all.csv"]
        if config:
            shutil.copy(REPO / config, wd / Path(config).name)
            args += ["--configfile", Path(config).name]
        start = time.time()
        with open(root / f"{name}.log", "w") as log:
            proc = subprocess.run(args, cwd=wd, env=env, stdout=log, stderr=subprocess.STDOUT)
        print(f"{name}: snakemake rc={proc.returncode} in {time.time() - start:.0f} s", flush=True)
        if proc.returncode:
            raise SystemExit(f"{name} failed: see {root / f'{name}.log'}")
    return wd / "results" / "tables" / "all.csv"


def spread(native: pd.DataFrame, other: pd.DataFrame, variant: str) -> pd.DataFrame:
    result = compare(other, native, {"default": 0.0})
    result["variant"] = variant
    result["flagged"] = result["note"].astype(bool)
    return result


def summarise(diffs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (variant, metric, flagged), sel in diffs.groupby(["variant", "metric", "flagged"]):
        d = sel["difference"].abs().dropna()
        rows.append({"variant": variant, "metric": metric, "models": "flagged collapse" if flagged else "others",
                     "n": len(sel), "n_nan": int(sel["difference"].isna().sum()),
                     "max_abs": float(d.max()) if len(d) else np.nan,
                     "p95_abs": float(np.percentile(d, 95)) if len(d) else np.nan,
                     "median_abs": float(d.median()) if len(d) else np.nan})
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", help="config file relative to the repository (default: the embedded default)")
    p.add_argument("--native", help="all.csv of a finished run on this CPU's best kernels (else runs 'native')")
    p.add_argument("--variants", nargs="+", default=["avx2", "sse"], choices=sorted(VARIANTS))
    p.add_argument("--keep", default="/tmp/medkd-kernel-spread", help="folder of the runs (reused if finished)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--out", help="CSV of every difference (default: <keep>/differences.csv)")
    args = p.parse_args()
    root = Path(args.keep)
    root.mkdir(parents=True, exist_ok=True)
    native_csv = Path(args.native) if args.native else run_variant("native", args.config, root, args.cores)
    native = pd.read_csv(native_csv)
    frames = []
    for name in args.variants:
        if name == "native" and not args.native:
            continue
        frames.append(spread(native, pd.read_csv(run_variant(name, args.config, root, args.cores)), name))
    diffs = pd.concat(frames, ignore_index=True)
    diffs.to_csv(args.out or root / "differences.csv", index=False)
    pd.set_option("display.width", 200)
    print(summarise(diffs).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    worst = diffs.assign(a=diffs["difference"].abs()).sort_values("a", ascending=False).head(12)
    print("\nlargest differences:")
    print(worst[["variant", "experiment", "model", "class", "metric", "convention", "reference", "ours",
                 "difference", "note"]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
