"""The site's SLURM partitions, as snakemake-executor-plugin-slurm reads them, and the partition a job lands in.

The file is the plugin's partition file (``slurm-partition-config``; the site profile holds it in its
``partitions:`` block): ``partitions: {<name>: {max_runtime, max_mem_mb, max_gpu, max_threads, ...}}``, absent
limits unbounded, ``max_gpu`` 0. :func:`score` is a re-implementation of the plugin's
``Partition.score_job_fit`` (snakemake_executor_plugin_slurm/partitions.py, 2.8) for the resources medkd's jobs
set (``runtime``, ``mem_mb``, ``gpu``, ``threads``): the plugin's own function needs a Snakemake job object, and
this module must run where the plugin is not installed (local runs, ``medkd plan``). A unit test compares the
two. The plugin sends a job to the eligible partition with the highest score (ties: the first in the file) and,
when none is eligible, logs "No suitable partition found ... Falling back" and submits to the cluster's default
partition: medkd never lets a job get that far (:mod:`medkd.resources` stops planning instead).

Standard library only at import (PyYAML, a Snakemake dependency, is imported by :func:`read` alone).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

INF = math.inf


@dataclass(frozen=True)
class Partition:
    name: str
    max_runtime: float = INF  # minutes
    max_mem_mb: float = INF
    max_gpu: int = 0
    max_threads: float = INF
    max_cpus_per_task: float = INF
    cluster: Optional[str] = None  # multi-cluster partitions: never eligible for medkd's jobs (no cluster asked)

    def describe(self) -> str:
        def lim(v, unit):
            return "unlimited" if math.isinf(v) else f"{v:,.0f}{unit}"

        return (f"{self.name} (max_runtime {lim(self.max_runtime, ' min')}, max_mem_mb {lim(self.max_mem_mb, ' MB')}, "
                f"max_gpu {self.max_gpu})")


def minutes(value: Any) -> float:
    """A partition's ``max_runtime`` in minutes, in the formats the plugin accepts (utils.parse_time_to_minutes):
    a number of minutes, ``"6d"``/``"12h"``/``"30m"``/``"2d12h"``, or SLURM's ``D-HH:MM:SS``, ``HH:MM:SS``,
    ``MM:SS`` (read, like the plugin, as hours:minutes), ``D-HH``."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    if "-" in text or ":" in text:
        days, _, rest = text.rpartition("-") if "-" in text else ("0", "", text)
        parts = [int(p) for p in rest.split(":")]
        if "-" in text:  # D-HH, D-HH:MM, D-HH:MM:SS
            h, m, s = (parts + [0, 0])[:3]
        elif len(parts) == 3:
            h, m, s = parts
        else:  # MM:SS is read as HH:MM by the plugin
            h, m, s = parts[0], parts[1], 0
        return int(days or 0) * 1440 + h * 60 + m + s / 60
    found = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not found or not any(found.groups()):
        raise ValueError(f"max_runtime {value!r} is not a time the SLURM plugin reads")
    d, h, m, s = (int(g or 0) for g in found.groups())
    return d * 1440 + h * 60 + m + s / 60


def from_mapping(partitions: Mapping[str, Mapping]) -> list[Partition]:
    """Partitions of the plugin's ``partitions:`` mapping (limits medkd does not use are ignored)."""
    out = []
    for name, lim in partitions.items():
        lim = lim or {}
        cluster = next((lim[k] for k in ("slurm_cluster", "cluster", "clusters") if k in lim), None)
        out.append(Partition(
            name=str(name),
            max_runtime=round(minutes(lim["max_runtime"])) if "max_runtime" in lim else INF,
            max_mem_mb=float(lim.get("max_mem_mb", INF)),
            max_gpu=int(lim.get("max_gpu", 0)),
            max_threads=float(lim.get("max_threads", INF)),
            max_cpus_per_task=float(lim.get("max_cpus_per_task", INF)),
            cluster=cluster))
    return out


def read(path: str | Path) -> list[Partition]:
    """The partitions of a partition file (the site profile itself, or a file of its own)."""
    import yaml

    with open(path) as fh:
        doc = yaml.safe_load(fh)
    if not isinstance(doc, dict) or not isinstance(doc.get("partitions"), dict):
        raise ValueError(f"{path}: no `partitions:` mapping (the SLURM plugin's partition file format)")
    return from_mapping(doc["partitions"])


def score(p: Partition, runtime: float, mem_mb: float, gpu: int = 0, threads: int = 1) -> Optional[float]:
    """The plugin's fit score of a job on partition ``p`` (higher fits better), None when ``p`` cannot take it.

    Same terms as ``Partition.score_job_fit``: requested / limit for mem_mb and runtime (finite limits only; a
    request above a limit excludes the partition), threads / max_threads twice (the plugin counts the job's
    threads and then its --cpus-per-task, the same number for medkd's jobs) and threads / max_cpus_per_task,
    gpu / max_gpu for a GPU job (a partition without GPUs excluded), -1 for a CPU job on a GPU partition.
    """
    if p.cluster is not None:
        return None
    s = 0.0
    for need, limit in ((mem_mb, p.max_mem_mb), (runtime, p.max_runtime)):
        if need > 0 and not math.isinf(limit):
            if need > limit:
                return None
            s += need / limit
    threads = max(1, int(threads))
    for limit in (p.max_threads, p.max_threads, p.max_cpus_per_task):
        if not math.isinf(limit):
            if threads > limit:
                return None
            s += threads / limit
    if gpu == 0 and p.max_gpu > 0:
        s -= 1
    if gpu > 0:
        if p.max_gpu == 0 or gpu > p.max_gpu:
            return None
        s += gpu / p.max_gpu
    return s


def choose(partitions: Iterable[Partition], runtime: float, mem_mb: float, gpu: int = 0,
           threads: int = 1) -> Optional[Partition]:
    """The partition the plugin sends the job to (``get_best_partition``: highest score, the first on ties), or
    None where the plugin would fall back to the cluster's default partition."""
    best, best_score = None, None
    for p in partitions:
        sc = score(p, runtime, mem_mb, gpu, threads)
        if sc is not None and (best_score is None or sc > best_score):
            best, best_score = p, sc
    return best
