"""Cluster sizes of medkd's jobs (Snakemake resources ``runtime``, ``mem_mb``, ``gpu``), from the config, the
rehearsal's measurements and the site's partitions.

The rules ask these functions (``workflow/rules/common.smk``: ``job_resources``), so a job's size follows the
experiment it belongs to instead of one size for every run. A job's ``runtime`` (minutes, SLURM ``-t``) and
``mem_mb`` (SLURM ``--mem``) are, first found first (:func:`size`):

1. configured: for ``train`` jobs the model's entry in its experiment's ``resources.models``, then the
   experiment's ``resources.<rule>``, then the config's top-level ``resources.<rule>``;
2. measured: the job's row of the rehearsal CSV (``sizing.measured``; every job of the config run at full
   image, model and batch size on CPU for a couple of optimisation steps, :func:`read_measured`):
   ``mem_mb`` = peak RSS x ``sizing.memory_margin`` (+ :data:`GPU_HOST_MB` when the job runs on a GPU);
   ``runtime`` of a training job = (step_s x steps per epoch x epochs, + validation at 1/3 of a step per batch)
   / ``gpu_speedup`` (stated by the site; a CPU job: 1) + ``sizing.startup_min``, x ``sizing.runtime_margin``,
   rounded up to 10 minutes. Other rules keep the default runtime (their rehearsal rows processed a few
   slices only);
3. otherwise ``runtime`` is :data:`DEFAULT_RUNTIME` of the rule and ``mem_mb`` the base plus the data the job
   holds in memory, at most the data engine's budget ``data_memory_mb`` (:func:`data_mb`: slices x channels x
   pixels of the dataset, read from the slice store's fingerprint once it exists; Snakemake shows ``<TBD>``
   until then).

``mem_mb`` is multiplied by the attempt (a retried job asks for more memory); ``runtime`` is not (a training
job that hit its limit resumes from ``last.pt``, the same limit lets it finish). With the site's partitions
(``partition_file``, :mod:`medkd.partitions`) no request exceeds the partition that can take the job (GPU jobs:
partitions with ``max_gpu`` > 0; CPU jobs: CPU partitions when one fits), the attempt's memory included, and a
job whose own need (before margins) fits no partition stops planning (:class:`SizingError` names the job, its
need and the partitions). ``gpu`` is 1 for the rules that run a network unless the config's device is ``cpu``.
None of this is hashed: sizes are run settings.

Standard library only: the Snakefile imports this module in an environment holding nothing but Snakemake.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from medkd import partitions as _partitions

NETWORK_RULES = ("train", "cache", "infer", "robustness")
SIZED_RULES = ("convert", "undersample", "train", "cache", "infer", "evaluate", "robustness")

# minutes; generous on purpose (a queue punishes a too-small limit harder than a large one), and a retried job
# gets attempt x this. Paper-scale experiments set their own train runtimes (config/experiments/*.yaml).
DEFAULT_RUNTIME = {"convert": 240, "undersample": 120, "train": 720, "cache": 60, "infer": 60, "evaluate": 60,
                   "robustness": 240}
# MB a job needs before its data: interpreter, torch, and for GPU jobs the CUDA context's host memory
BASE_MB = {"cpu": 2000, "gpu": 6000}
DEFAULT_MB = {"convert": 4000, "undersample": 4000}  # hold one raw volume at a time: no data scaling
DEFAULT_DATA_MEMORY_MB = 4096
"""Default of the run setting ``data_memory_mb``: MB of slice data (images, targets, k-space, teacher caches) one
job may hold in memory (:class:`medkd.datasets.DataBudget`); larger splits and caches are streamed from disk."""
GPU_HOST_MB = BASE_MB["gpu"] - BASE_MB["cpu"]  # host memory of the CUDA context, on top of a CPU measurement
# the config's `sizing` block when a caller passes a config without it (the schema holds the same defaults)
SIZING_DEFAULTS = {"measured": None, "memory_margin": 1.5, "runtime_margin": 1.5, "startup_min": 10}


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


def runtime(cfg: Mapping, rule: str, exp: str | None = None, model: str | None = None, attempt: int = 1,
            **sizing) -> int:
    """Minutes of wall time for one job of ``rule`` (the same on every attempt; see :func:`size`)."""
    return size(cfg, rule, exp, model, attempt, **sizing).runtime


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
           fingerprint: Mapping | None = None, **sizing) -> int:
    """MB of memory for one job of ``rule`` (grows with the attempt, capped by the partitions; see :func:`size`)."""
    return size(cfg, rule, exp, model, attempt, fingerprint=fingerprint, **sizing).mem_mb


def default_mem_mb(cfg: Mapping, rule: str, exp: str | None = None, fingerprint: Mapping | None = None) -> int:
    """Today's formula, for a job without configured or measured memory: the base plus the job's data in memory,
    at most the data engine's budget ``data_memory_mb`` (the engine streams batches from the stores)."""
    if rule in DEFAULT_MB:
        return DEFAULT_MB[rule]
    base = BASE_MB["gpu" if uses_gpu(cfg, rule) else "cpu"]
    exp_cfg = cfg["experiments"][exp] if exp is not None else None
    extra = data_mb(fingerprint, exp_cfg, rule) if fingerprint is not None else 0.0
    extra = min(extra, float(cfg.get("data_memory_mb", DEFAULT_DATA_MEMORY_MB)))
    return _ceil_to(base + extra, 100)


def _ceil_to(x: float, step: int) -> int:
    return int(math.ceil(round(x, 6) / step) * step)


# ------------------------------------------------------------------------------------------ measurements


@dataclass(frozen=True)
class Measured:
    """One job's row of the rehearsal CSV (the largest over its seeds)."""

    wall_s: float
    peak_rss_mb: float
    steps: int
    step_s: Optional[float]  # mean seconds per optimisation step (train rows)
    slices: int
    batch_size: Optional[int]
    device: str
    rows: int = 1


MEASURED_COLUMNS = ("experiment", "rule", "model", "seed", "wall_s", "peak_rss_mb", "steps", "step_s", "slices",
                    "batch_size", "device")


def read_measured(path: str | os.PathLike) -> dict[tuple[str, str, str], Measured]:
    """The rehearsal's CSV as {(rule, experiment, model): Measured}, seeds merged (largest peak, step and wall
    time). ``experiment``/``model`` are empty for jobs without them; a ``convert``/``undersample`` row names
    its dataset (or an experiment of it) in ``experiment``."""
    out: dict[tuple[str, str, str], Measured] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(MEASURED_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: columns {sorted(missing)} missing (expected {', '.join(MEASURED_COLUMNS)})")
        for row in reader:
            num = lambda k, conv=float: conv(float(row[k])) if (row.get(k) or "").strip() else None  # noqa: E731
            m = Measured(wall_s=num("wall_s") or 0.0, peak_rss_mb=num("peak_rss_mb") or 0.0,
                         steps=num("steps", int) or 0, step_s=num("step_s"), slices=num("slices", int) or 0,
                         batch_size=num("batch_size", int), device=row.get("device", ""))
            key = (row["rule"].strip(), row["experiment"].strip(), row["model"].strip())
            if key in out:
                o = out[key]
                m = Measured(max(o.wall_s, m.wall_s), max(o.peak_rss_mb, m.peak_rss_mb), max(o.steps, m.steps),
                             max(o.step_s or 0.0, m.step_s or 0.0) or None, max(o.slices, m.slices),
                             o.batch_size or m.batch_size, o.device or m.device, o.rows + 1)
            out[key] = m
    return out


def find_measured(measured: Mapping | None, cfg: Mapping, rule: str, exp: str | None = None,
                  model: str | None = None, dataset: str | None = None) -> Optional[Measured]:
    """The measurement of one job: by (rule, experiment, model); convert/undersample jobs (per dataset) by their
    dataset or, failing that, the largest row of an experiment on that dataset."""
    if not measured:
        return None
    if exp is not None:
        return measured.get((rule, exp, model or ""))
    if dataset is None:
        return None
    names = {dataset} | {e for e, c in cfg.get("experiments", {}).items() if c.get("dataset") == dataset}
    rows = [m for (r, e, _), m in measured.items() if r == rule and e in names]
    return max(rows, key=lambda m: m.peak_rss_mb) if rows else None


def split_fraction(exp: Mapping, split: str, n_cases: float) -> float:
    """Fraction of the dataset's cases in split (or nested subset) ``split`` of an experiment."""
    s = exp.get("split", {})
    fixed = s.get("fixed") or {}
    if split in fixed:
        return len(fixed[split]) / n_cases if n_cases else 0.0
    subsets = s.get("subsets") or {}
    if split in subsets:
        return subsets[split]["fraction"] * split_fraction(exp, subsets[split]["of"], n_cases)
    if fixed:  # a fixed split without this name holds none of it
        return 0.0
    return float((s.get("fractions") or {}).get(split, 0.0))


def train_minutes(m: Measured, train: Mapping, exp_cfg: Mapping, cases: float, slices: float,
                  speedup: float, startup_min: float) -> float:
    """Minutes one training job needs, from its measured step time (before the margin): optimisation steps
    (train slices / batch size per epoch, at most ``max_steps`` when set: an epoch is then a round of that many
    steps) x epochs, plus one validation pass per epoch (forward only: 1/3 of a step per batch), divided by the
    GPU speed-up, plus the start-up. An epoch-less model (a baseline) is scored once on validation."""
    bs = m.batch_size or int(train.get("batch_size", 1))
    n_tr = slices * split_fraction(exp_cfg, train.get("subset", "train"), cases)
    n_val = slices * split_fraction(exp_cfg, train.get("val_split", "val"), cases)
    epochs = int(train.get("epochs", 0))
    per_epoch = math.ceil(n_tr / bs)
    if train.get("max_steps"):
        per_epoch = min(per_epoch, int(train["max_steps"]))
    steps = epochs * per_epoch + max(1, epochs) * math.ceil(n_val / bs) / 3.0
    return steps * float(m.step_s) / speedup / 60.0 + startup_min


# ------------------------------------------------------------------------------------------ one job's size


def needs_fingerprint(cfg: Mapping, rule: str, exp: str | None = None, model: str | None = None,
                      measured: Mapping | None = None, dataset: str | None = None) -> bool:
    """Whether the job's memory comes from the default formula, which reads the slice store's fingerprint."""
    return ("mem_mb" not in configured(cfg, rule, exp, model) and rule not in DEFAULT_MB
            and find_measured(measured, cfg, rule, exp, model, dataset) is None)


class SizingError(ValueError):
    """A job that fits no partition of the site."""


@dataclass(frozen=True)
class JobSize:
    runtime: int  # minutes asked for
    mem_mb: int  # MB asked for (this attempt)
    need_runtime: float  # before margins: what the job is expected to use
    need_mem_mb: float
    basis: str  # "configured" | "measured" | "default", runtime/mem_mb (e.g. "measured/measured")
    partition: Optional[str]  # where the SLURM plugin sends it (None: no partitions known)
    gpu: int


def size(cfg: Mapping, rule: str, exp: str | None = None, model: str | None = None, attempt: int = 1, *,
         fingerprint: Mapping | None = None, measured: Mapping | None = None,
         partitions: Sequence[_partitions.Partition] | None = None, dataset_size: tuple[float, float] | None = None,
         threads: int = 1, dataset: str | None = None, job: str | None = None, submissions: int = 1) -> JobSize:
    """``runtime`` and ``mem_mb`` of one job (module docstring), bounded by ``partitions``.

    ``submissions``: how many times Snakemake may submit one job (1 + its ``retries``). A training job that hits
    its time limit resumes from ``last.pt`` on the next submission, so its time need may span that many
    submissions of the longest partition's limit (it then asks for that limit each time); other rules must fit
    one submission.

    ``measured``: :func:`read_measured`'s mapping; ``dataset_size``: (cases, slices) of the experiment's
    dataset (fingerprint or estimate) for a measured training runtime; ``threads``: the job's CPUs (the plugin
    matches them against ``max_threads``); ``job``: the job's name in a :class:`SizingError`.
    """
    sizing = {**SIZING_DEFAULTS, **(cfg.get("sizing") or {})}
    conf = configured(cfg, rule, exp, model)
    g = gpu(cfg, rule)
    m = find_measured(measured, cfg, rule, exp, model, dataset)
    attempt = max(1, int(attempt))

    if "runtime" in conf:
        need_rt = rt = float(conf["runtime"])
        basis_rt = "configured"
    else:
        need_rt = rt = float(DEFAULT_RUNTIME.get(rule, 60))
        basis_rt = "default"
        speedup = cfg.get("gpu_speedup") if g else 1.0
        if rule == "train" and m is not None and m.step_s and speedup and dataset_size and exp and model:
            cases, slices = dataset_size
            if slices:
                need_rt = train_minutes(m, cfg["experiments"][exp]["models"][model].get("train", {}),
                                        cfg["experiments"][exp], cases, slices, float(speedup),
                                        float(sizing["startup_min"]))
                rt = _ceil_to(need_rt * float(sizing["runtime_margin"]), 10)
                basis_rt = "measured"
    if "mem_mb" in conf:
        need_mem = mem = float(conf["mem_mb"])
        basis_mem = "configured"
    elif m is not None and m.peak_rss_mb > 0:
        host = GPU_HOST_MB if g else 0
        need_mem = m.peak_rss_mb + host
        mem = _ceil_to(m.peak_rss_mb * float(sizing["memory_margin"]) + host, 100)
        basis_mem = "measured"
    else:
        need_mem = mem = float(default_mem_mb(cfg, rule, exp, fingerprint))
        basis_mem = "default"
    mem *= attempt  # runtime is not multiplied: a training job resumes from last.pt

    landed = None
    if partitions:
        rt, mem, landed = _bound(list(partitions), rt, mem, need_rt, need_mem, g, threads,
                                 job or " ".join(x for x in (rule, exp, model) if x),
                                 max(1, int(submissions)) if rule == "train" else 1)
    return JobSize(int(math.ceil(rt)), int(math.ceil(mem)), need_rt, need_mem, f"{basis_rt}/{basis_mem}",
                   landed, g)


def _bound(parts: list, rt: float, mem: float, need_rt: float, need_mem: float, g: int, threads: int,
           job: str, submissions: int = 1) -> tuple[float, float, Optional[str]]:
    """Clamp a request to the partitions that can take the job's need (its time over at most ``submissions``
    submissions of a partition's limit); the partition the plugin then picks."""
    eligible = [p for p in parts if _partitions.score(p, 0, 0, g, threads) is not None]
    fits = [p for p in eligible if need_rt <= p.max_runtime * submissions and need_mem <= p.max_mem_mb]
    if not g:  # a CPU job stays off the GPU partitions while a CPU partition takes it
        fits = [p for p in fits if p.max_gpu == 0] or fits
    if not fits:
        what = "a GPU, " if g else ""
        raise SizingError(
            f"medkd: job `{job}` needs {what}{need_rt:,.0f} min"
            f"{f' (over at most {submissions} submissions, resuming from last.pt)' if submissions > 1 else ''}"
            f" and {need_mem:,.0f} MB ({threads} CPU"
            f"{'s' if threads != 1 else ''}), more than any partition {'with GPUs ' if g else ''}of the site "
            f"takes: {'; '.join(p.describe() for p in parts)}. Give it less (its `resources:` in the config, "
            f"a smaller model or batch) or add a partition that can take it to the site's partition file.")
    best = max(fits, key=lambda p: (min(rt, p.max_runtime), min(mem, p.max_mem_mb)))
    rt, mem = min(rt, best.max_runtime), min(mem, best.max_mem_mb)
    landed = _partitions.choose(parts, rt, mem, g, threads)
    return rt, mem, landed.name if landed else None


def read_fingerprint(path: str, needed_input: str) -> dict[str, Any]:
    """The slice store's fingerprint JSON. Raises FileNotFoundError naming ``needed_input`` (one of the job's
    input files) when that input does not exist yet, which Snakemake turns into a ``<TBD>`` resource that it
    evaluates again once the input is made."""
    if not os.path.exists(needed_input):
        raise FileNotFoundError(errno.ENOENT, "input not made yet", str(needed_input))
    with open(path) as fh:
        return json.load(fh)
