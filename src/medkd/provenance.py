"""Provenance records: git commit, file hashes and the software environment of a job.

nnU-Net makes every model folder self-describing by copying plans and fingerprints next to it; medkd
writes ``env.json`` (this module's :func:`environment_record`) and ``config.json`` next to every model.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

from medkd.config import REPO_ROOT
from medkd.io import file_md5  # noqa: F401  (re-exported for callers of provenance)


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


def environment_record(data_hash: str | None = None, torch_module=None) -> dict:
    """Versions, host, threads, git state and the data hash a job ran with.

    ``torch_module``: the caller's ``torch`` (jobs that run a network pass it); this module never imports
    torch itself, so the report and tracking steps that read provenance stay torch-free.
    """
    import numpy

    import medkd

    torch = torch_module
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "medkd": medkd.__version__,
        "torch": torch.__version__ if torch else None,
        "numpy": numpy.__version__,
        "cuda": (torch.version.cuda if torch.cuda.is_available() else None) if torch else None,
        "torch_threads": torch.get_num_threads() if torch else None,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "git": git_commit(),
        "data_hash": data_hash,
    }
