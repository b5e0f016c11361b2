"""Time the embedded default end to end: a fresh copy of the repository, `snakemake --cores 2`.

Copies the working tree (without results, data or .snakemake) to a temporary directory, runs the whole
DAG to results/tables/all.csv and prints the wall time and, per rule, the summed job times from the
rules' benchmark files and logs. Target: under 15 minutes on 2 cores.
Usage: ``python benchmarks/embedded_default.py [--cores 2] [--keep]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP = {".venv", "results", ".snakemake", "data", ".git", ".pytest_cache"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="medkd-bench-"))
    wd = tmp / "repo"
    shutil.copytree(REPO, wd, ignore=lambda d, names: (SKIP & set(names)) if Path(d) == REPO else
                    {n for n in names if n == "__pycache__"})
    (wd / ".venv").symlink_to(REPO / ".venv")
    subprocess.run(["git", "init", "-q"], cwd=wd, check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--cores", str(args.cores),
                           "results/tables/all.csv"], cwd=wd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr[-5000:])
        raise SystemExit(f"workflow failed after {wall:.0f} s (copy kept in {wd})")
    print(f"embedded default, {args.cores} cores: {wall:.0f} s wall ({wall / 60:.1f} min), target < 15 min")
    per_rule: dict[str, list[float]] = {}
    for tsv in (wd / "results" / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(wd / "results" / "benchmarks").parts[0]
        lines = tsv.read_text().splitlines()
        per_rule.setdefault(rule, []).append(float(lines[1].split("\t")[0]))
    for rule, times in sorted(per_rule.items()):
        print(f"  {rule:8s} {len(times):3d} jobs, {sum(times):7.1f} s summed, max {max(times):6.1f} s")
    if not args.keep:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
