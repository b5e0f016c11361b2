"""Provenance records: git commit, file hashes and the software environment of a job.

nnU-Net makes every model folder self-describing by copying plans and fingerprints next to it; medkd
writes ``env.json`` (this module's :func:`environment_record`) and ``config.json`` next to every model.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

from medkd.config import REPO_ROOT


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """MD5 hex digest of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def git_commit(root: Path = REPO_ROOT) -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding the code."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        return {"commit": sha, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment_record(data_hash: str | None = None) -> dict:
    """Versions, host, threads, git state and the data hash a job ran with."""
    import numpy
    import torch

    import medkd

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "medkd": medkd.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "git": git_commit(),
        "data_hash": data_hash,
    }
