"""Helpers for end-to-end runs: a copy of the repository, Snakemake with the test's virtualenv."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
TOP_LEVEL_SKIP = {".venv", "results", ".snakemake", "data", ".git", ".pytest_cache", "mlruns", "mlflow.db"}


def _ignore(directory: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    if Path(directory) == REPO:
        skip |= TOP_LEVEL_SKIP & set(names)
    if Path(directory) == REPO / ".dvc":
        skip |= {"cache", "tmp"} & set(names)  # a fresh clone has neither
    return skip


def copy_repo(dest: Path) -> Path:
    """Copy the working tree (code, config, workflow) without outputs, data or the virtualenv, link the
    virtualenv, and commit the copy to a fresh git repository (provenance records a commit)."""
    shutil.copytree(REPO, dest, ignore=_ignore)
    if (REPO / ".venv").exists():
        (dest / ".venv").symlink_to(REPO / ".venv")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=medkd-test", "-c", "user.email=test@localhost", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run with the test's virtualenv first on PATH; SIGKILL on timeout (subprocess.run does that)."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def snakemake(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "snakemake"), *args], cwd, timeout)




def run_tiny_config(tmp_root: Path, config_name: str, targets: list[str]) -> Path:
    """Copy the repository under ``tmp_root``, run ``tests/integration/<config_name>`` up to ``targets``
    with 2 cores, and return the working directory; on failure raise with Snakemake's stderr and the
    tails of the job logs."""
    wd = copy_repo(tmp_root / "repo")
    shutil.copy(wd / "tests" / "integration" / config_name, wd / config_name)
    proc = snakemake(["--cores", "2", *targets, "--configfile", config_name], wd)
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in (wd / "results" / "logs").rglob("*.log"))
        raise AssertionError(f"snakemake failed:\n{proc.stderr[-6000:]}\n{logs[-12000:]}")
    return wd


def planned_jobs(stdout: str) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table of a dry run into {rule: count} (empty: nothing to do)."""
    jobs = {}
    m = re.search(r"Job stats:\n(.*?)\n\n", stdout, re.S)
    if not m:
        return jobs
    for line in m.group(1).splitlines()[2:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            jobs[parts[0]] = int(parts[1])
    return jobs
