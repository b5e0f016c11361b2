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
        "kernels": kernel_record(torch),
    }


KERNEL_ENV_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR",
                   "OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "GLIBC_TUNABLES", "OMP_NUM_THREADS")
"""Environment variables that choose which CPU kernels produce a number (torch's vectorised ATen kernels,
oneDNN's convolutions, MKL's BLAS inside torch, numpy's OpenBLAS and SIMD dispatch, glibc's libm variants)."""


def kernel_record(torch_module=None) -> dict:
    """Which CPU kernels a job's arithmetic ran on: numbers may move slightly between instruction sets
    (docs/reproducibility.md), so every env.json says which produced its number.

    Keys: ``cpu`` (model name from /proc/cpuinfo, or ``platform.processor()``), ``torch_cpu_capability``
    (the ATen kernel set torch dispatches to: ``DEFAULT``, ``AVX2``, ``AVX512``...), ``torch_interop_threads``,
    ``numpy_blas`` (the BLAS library numpy's matrix products use, its kernel core and threads, from
    threadpoolctl), ``numpy_simd`` (numpy's SIMD targets found on this CPU) and ``env`` (the variables of
    :data:`KERNEL_ENV_VARS` that are set; an unset one means "the CPU's best").
    """
    record: dict = {"cpu": _cpu_model()}
    if torch_module is not None:
        record["torch_cpu_capability"] = torch_module.backends.cpu.get_cpu_capability()
        record["torch_interop_threads"] = torch_module.get_num_interop_threads()
    try:
        from threadpoolctl import threadpool_info

        record["numpy_blas"] = [{"api": i.get("internal_api"), "core": i.get("architecture"),
                                 "threads": i.get("num_threads")} for i in threadpool_info()
                                if i.get("user_api") == "blas"]
    except ImportError:  # threadpoolctl comes with scikit-learn/scipy stacks; the record is best effort
        record["numpy_blas"] = None
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

        record["numpy_simd"] = [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]
    except ImportError:
        record["numpy_simd"] = None
    record["env"] = {name: os.environ[name] for name in KERNEL_ENV_VARS if name in os.environ}
    return record


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
