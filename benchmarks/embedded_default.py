"""Time the embedded default end to end: a fresh copy of the repository, `snakemake --cores 2`.

Copies the working tree (without results, data or .snakemake) to a temporary directory, runs the whole
DAG to results/tables/all.csv and prints the wall time and, per rule, the number of jobs and the time
spent in process start-up and imports before each step (from the "start-up X s" line every medkd job
logs), plus the summed training time. Target: under 15 minutes on 2 cores (goal 10).
Usage: ``python benchmarks/embedded_default.py [--cores 2] [--keep] [--no-forkserver]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
    ap.add_argument("--no-forkserver", action="store_true", help="every job starts its own interpreter")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="medkd-bench-"))
    wd = tmp / "repo"
    shutil.copytree(REPO, wd, ignore=lambda d, names: (SKIP & set(names)) if Path(d) == REPO else
                    {n for n in names if n == "__pycache__"})
    (wd / ".venv").symlink_to(REPO / ".venv")
    subprocess.run(["git", "init", "-q"], cwd=wd, check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if args.no_forkserver:
        env["MEDKD_FORKSERVER"] = "off"
    t0 = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--cores", str(args.cores),
                           "results/tables/all.csv"], cwd=wd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr[-5000:])
        raise SystemExit(f"workflow failed after {wall:.0f} s (copy kept in {wd})")
    print(f"embedded default, {args.cores} cores: {wall:.0f} s wall ({wall / 60:.1f} min), target < 15 min")
    startup: dict[str, list[float]] = {}
    step: dict[str, list[float]] = {}
    for log in (wd / "results" / "logs").rglob("*.log"):
        text = log.read_text(errors="replace")
        m = re.search(r"INFO medkd: (\S+): start-up ([0-9.]+) s", text)
        d = re.search(r"INFO medkd: \S+ done in ([0-9.]+) s", text)
        if m:
            startup.setdefault(m.group(1), []).append(float(m.group(2)))
            step.setdefault(m.group(1), []).append(float(d.group(1)) if d else 0.0)
    total_start, total_step = sum(map(sum, startup.values())), sum(map(sum, step.values()))
    print(f"  {'rule':16s} {'jobs':>5s} {'start-up s':>11s} {'step s':>9s}")
    for rule in sorted(startup):
        print(f"  {rule:16s} {len(startup[rule]):5d} {sum(startup[rule]):11.1f} {sum(step[rule]):9.1f}")
    share = total_start / max(total_start + total_step, 1e-9)
    print(f"  start-up and imports: {total_start:.1f} s of {total_start + total_step:.1f} s of job time ({share:.1%})")
    train_s = sum(json.loads(p.read_text())["train_seconds"] for p in (wd / "results").glob("*/models/*/seed*/summary.json"))
    print(f"  training (summary.json train_seconds, summed): {train_s:.0f} s")
    if not args.keep:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
