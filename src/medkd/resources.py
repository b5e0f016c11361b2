"""Cluster sizes of medkd's jobs (Snakemake resources ``runtime``, ``mem_mb``, ``gpu``), from the config.

The rules ask these functions (``workflow/rules/common.smk``: ``job_resources``), so a job's size follows the
experiment it belongs to instead of one size for every run. A job's ``runtime`` (minutes, SLURM ``-t``) and
``mem_mb`` (SLURM ``--mem``) are, first found first:

1. for ``train`` jobs, the model's entry in its experiment's ``resources.models``;
2. the experiment's ``resources.<rule>``;
3. the config's top-level ``resources.<rule>``;
4. otherwise ``runtime`` is :data:`DEFAULT_RUNTIME` of the rule and ``mem_mb`` is scaled from the data the job
   holds in memory (:func:`data_mb`: slices x channels x pixels of the dataset, read from the slice store's
   fingerprint once it exists; Snakemake shows ``<TBD>`` until then).

Both are multiplied by the attempt, so a job that ran out of time or memory asks for more when Snakemake
retries it (``retries`` in profiles/slurm); a training job that hit its time limit resumes from ``last.pt``.
``gpu`` is 1 for the rules that run a network unless the config's device is ``cpu``. None of this is hashed:
sizes are run settings. ``medkd plan`` prints the FLOPs-based estimate of each training job next to its
configured runtime.

Standard library only: the Snakefile imports this module in an environment holding nothing but Snakemake.
"""

from __future__ import annotations

import errno
import json
import math
import os
from typing import Any, Mapping

NETWORK_RULES = ("train", "cache", "infer", "robustness")
SIZED_RULES = ("convert", "undersample", "train", "cache", "infer", "evaluate", "robustness")

# minutes; generous on purpose (a queue punishes a too-small limit harder than a large one), and a retried job
# gets attempt x this. Paper-scale experiments set their own train runtimes (config/experiments/*.yaml).
DEFAULT_RUNTIME = {"convert": 240, "undersample": 120, "train": 720, "cache": 60, "infer": 60, "evaluate": 60,
                   "robustness": 240}
# MB a job needs before its data: interpreter, torch, and for GPU jobs the CUDA context's host memory
BASE_MB = {"cpu": 2000, "gpu": 6000}
DEFAULT_MB = {"convert": 4000, "undersample": 4000}  # hold one raw volume at a time: no data scaling


def configured(cfg: Mapping, rule: str, exp: str | None = None, model: str | None = None) -> dict:
    """The ``runtime``/``mem_mb`` the config sets for a job (see the module docstring for the order)."""
    out: dict[str, int] = {}
    layers = [cfg.get("resources", {}).get(rule, {})]
    if exp is not None:
        e = cfg["experiments"][exp].get("resources", {})
        layers.append(e.get(rule, {}))
        if rule == "train" and model is not None:
            layers.append(e.get("models", {}).get(model, {}))
    for layer in layers:
        out.update({k: int(v) for k, v in layer.items() if k in ("runtime", "mem_mb")})
    return out


def uses_gpu(cfg: Mapping, rule: str) -> bool:
    return rule in NETWORK_RULES and cfg.get("device", "auto") != "cpu"


def gpu(cfg: Mapping, rule: str, local_gpus: int | None = None) -> int:
    """The ``gpu`` resource (the SLURM plugin turns 1 into ``--gpus=1``; locally the profile's
    ``resources: gpu=<n>`` lets at most n such jobs run at once).

    ``local_gpus``: None for a cluster run (the node's GPUs are the scheduler's business); for a local run
    the GPUs this machine shows (:func:`visible_gpus`): with none, device ``auto`` runs on the CPU, so its
    jobs ask for no GPU and are not serialised behind a limit meant for GPUs.
    """
    if not uses_gpu(cfg, rule):
        return 0
    if local_gpus is not None and local_gpus == 0 and cfg.get("device", "auto") == "auto":
        return 0
    return 1


def visible_gpus(environ: Mapping[str, str] | None = None, dev: str = "/dev") -> int:
    """NVIDIA GPUs this process could use, without importing torch: the entries of ``CUDA_VISIBLE_DEVICES``
    when it is set (empty or ``-1``: none), else the ``/dev/nvidia<k>`` device files. Meant for the local
    machine of a local run only (a cluster's nodes are not this machine)."""
    import os
    import re

    env = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in env:
        ids = [i for i in env["CUDA_VISIBLE_DEVICES"].split(",") if i.strip()]
        return 0 if not ids or ids[0].strip() == "-1" else len(ids)
    try:
        return sum(1 for name in os.listdir(dev) if re.fullmatch(r"nvidia\d+", name))
    except OSError:
        return 0


def runtime(cfg: Mapping, rule: str, exp: str | None = None, model: str | None = None, attempt: int = 1) -> int:
    """Minutes of wall time for one job of ``rule``."""
    minutes = configured(cfg, rule, exp, model).get("runtime", DEFAULT_RUNTIME.get(rule, 60))
    return int(minutes) * max(1, int(attempt))


def data_mb(fingerprint: Mapping, exp_cfg: Mapping | None, rule: str) -> float:
    """MB of the tensors a job of ``rule`` holds for one dataset (all slices: a bound on any split), doubled for
    the copies made while loading (numpy arrays, then tensors).

    Per slice: segmentation images (channels used x H x W float32) and labels (int64); a training job also holds
    its cached teachers' maps (class logits plus the uncertainty maps). Reconstruction stores hold image, target
    and mask (float32) and k-space (complex64).
    """
    h, w = (fingerprint.get("convert") or {}).get("size", [64, 64])
    n = int(fingerprint.get("n_slices", 0))
    pixels = h * w
    if exp_cfg is None or exp_cfg.get("task", "segmentation") == "segmentation":
        channels = len(exp_cfg.get("channels", [0])) if exp_cfg else len(fingerprint.get("channel_names") or [0])
        per_slice = pixels * (4 * channels + 8)
        if rule == "train" and exp_cfg is not None:
            classes = len(exp_cfg.get("classes", {})) or 2
            teachers = {t for m in exp_cfg["models"].values() for t in m.get("teachers", [])}
            per_slice += len(teachers) * pixels * 4 * (classes + 4)
    else:
        per_slice = pixels * (4 + 4 + 4 + 8)
    return 2.0 * n * per_slice / 2**20


def mem_mb(cfg: Mapping, rule: str, exp: str | None = None, model: str | None = None, attempt: int = 1,
           fingerprint: Mapping | None = None) -> int:
    """MB of memory for one job of ``rule``: the configured value, or the base plus the job's data."""
    mb = configured(cfg, rule, exp, model).get("mem_mb")
    if mb is None:
        if rule in DEFAULT_MB:
            mb = DEFAULT_MB[rule]
        else:
            base = BASE_MB["gpu" if uses_gpu(cfg, rule) else "cpu"]
            exp_cfg = cfg["experiments"][exp] if exp is not None else None
            extra = data_mb(fingerprint, exp_cfg, rule) if fingerprint is not None else 0.0
            mb = int(math.ceil((base + extra) / 100.0) * 100)
    return int(mb) * max(1, int(attempt))


def read_fingerprint(path: str, needed_input: str) -> dict[str, Any]:
    """The slice store's fingerprint JSON. Raises FileNotFoundError naming ``needed_input`` (one of the job's
    input files) when that input does not exist yet, which Snakemake turns into a ``<TBD>`` resource that it
    evaluates again once the input is made."""
    if not os.path.exists(needed_input):
        raise FileNotFoundError(errno.ENOENT, "input not made yet", str(needed_input))
    with open(path) as fh:
        return json.load(fh)
