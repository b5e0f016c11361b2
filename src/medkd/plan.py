"""``medkd plan``: what a config will cost before anything is submitted.

For a config it prints

* the jobs per rule, counted from the config exactly as the Snakefile expands them (:func:`count_jobs`; a test
  compares the counts with ``snakemake -n``);
* the size of every dataset: cases and 2-D slices from the slice store's fingerprint
  (``results/slices/<dataset>.json``) once converted, else an estimate (``size`` in config/datasets.yaml, or the
  MNI152 grid for the embedded data);
* the cost of every GPU job: forward FLOPs per slice measured with torch's ``FlopCounterMode`` on the model
  built on the meta device (no memory, no weights), times slices and epochs. A training step is counted as 3
  forward passes (forward + backward), an online teacher adds one forward pass per slice, validation one per
  epoch; the cache runs the teacher over train + val (x MC-dropout passes), inference over the test split,
  robustness over every corrupted copy of it;
* GPU-hours = FLOPs / sustained throughput. The throughput is an assumption (``--tflops``, default
  :data:`DEFAULT_TFLOPS` effective TFLOP/s), or measured from finished runs (``--calibrate results/``: FLOPs
  of their training epochs divided by their ``train_seconds``), plus a start-up allowance per GPU job.

Each training job's estimate is shown next to the runtime its SLURM job asks for (:mod:`medkd.resources`), with
``!`` where the estimate exceeds it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from medkd import resources
from medkd.config import REPO_ROOT, experiment_seeds, model_spec

DEFAULT_TFLOPS = 10.0  # effective (sustained) TFLOP/s of one GPU on these small 2-D networks: an assumption
DEFAULT_OVERHEAD_MIN = 2.0  # minutes per GPU job: interpreter, imports, data into memory, CUDA context
MNI152_SHAPE = (197, 233, 189)  # the embedded generator's template grid at 1 mm (medkd.data.embedded)


# ------------------------------------------------------------------------------------------ jobs per rule


def count_jobs(cfg: Mapping) -> Counter:
    """Jobs per rule of ``snakemake results/tables/all.csv`` for ``cfg`` (a validated config), nothing done yet.

    Mirrors workflow/rules/*.smk: fetch per embedded dataset, fetch_source per raw source of the others, convert
    per dataset, split per experiment, undersample per (dataset, mask), train/infer/evaluate per model and seed,
    cache per cached teacher and seed, robustness per non-baseline model and seed of experiments with a
    robustness suite, tables, panels and track per experiment, paper_table per group, collect once (the target results/tables/all.csv; `rule all` adds one local job).
    """
    exps = cfg["experiments"]
    used = sorted({e["dataset"] for e in exps.values()})
    jobs: Counter = Counter()
    for ds in used:
        d = cfg["datasets"][ds]
        if d["kind"] == "embedded":
            jobs["fetch"] += 1
    jobs["fetch_source"] = len({cfg["datasets"][ds].get("source", ds) for ds in used
                                if cfg["datasets"][ds]["kind"] != "embedded"})
    jobs["convert"] = len(used)
    jobs["undersample"] = len({(e["dataset"], e["kspace"]["name"]) for e in exps.values()
                               if e["task"] != "segmentation"})
    for name, e in exps.items():
        seeds = len(experiment_seeds(cfg, name))
        jobs["split"] += 1
        jobs["tables"] += 1
        jobs["panels"] += 1  # the qualitative panels track carries into MLflow
        jobs["track"] += 1
        models = e["models"]
        jobs["train"] += len(models) * seeds
        jobs["infer"] += len(models) * seeds
        jobs["evaluate"] += len(models) * seeds
        cached = {t for m in models for t in model_spec(cfg, name, m).cached_teachers()}
        jobs["cache"] += len(cached) * seeds
        if "robustness" in e:
            jobs["robustness"] += sum(m["role"] != "baseline" for m in models.values()) * seeds
            jobs["robustness_table"] += 1
    jobs["paper_table"] = len({e["group"] for e in exps.values() if "group" in e})
    jobs["collect"] = 1
    return Counter({k: v for k, v in jobs.items() if v})


# ------------------------------------------------------------------------------------------ data sizes


@dataclass
class DatasetSize:
    cases: float
    slices: float
    source: str  # "fingerprint" | "estimate: ..." | "unknown"


def dataset_size(cfg: Mapping, name: str, results: Path, source_specs: Mapping) -> DatasetSize:
    fp = Path(results) / "slices" / f"{name}.json"
    if fp.is_file():
        d = json.loads(fp.read_text())
        return DatasetSize(d["n_cases"], d["n_slices"], "fingerprint")
    ds = cfg["datasets"][name]
    conv = ds["convert"]
    if ds["kind"] == "embedded":
        g = ds.get("generator", {})
        n, res = g.get("n_cases", 10), g.get("resolution_mm", 2.0)
        keep = (1.0 if conv.get("min_foreground", 0.0) == 0 else 0.7) / conv.get("slice_step", 1)  # slices kept
        per_case = MNI152_SHAPE[conv.get("axis", 2)] / res * keep
        return DatasetSize(n, n * per_case, "estimate: MNI152 grid")
    size = source_specs.get(ds.get("source", name), {}).get("size")
    if not size:
        return DatasetSize(0, 0, "unknown (no size in config/datasets.yaml)")
    return DatasetSize(size["cases"], size["cases"] * size["slices_per_case"], "estimate: config/datasets.yaml")


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


# ------------------------------------------------------------------------------------------ FLOPs


def forward_flops(spec, size: tuple[int, int]) -> int:
    """FLOPs of one forward pass on one slice (torch's FlopCounterMode: 2 per multiply-accumulate of
    convolutions, linear layers and matmuls; FFTs and element-wise ops are not counted), on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from medkd.runtime import build_from_spec, forward_model

    h, w = size
    with torch.device("meta"):
        model = build_from_spec(spec).eval()
        cin, _ = spec.in_out_channels()
        batch = {"image": torch.zeros(1, cin, h, w), "kspace": torch.zeros(1, h, w, dtype=torch.complex64),
                 "mask": torch.zeros(1, h, w), "target": torch.zeros(1, 1, h, w)}
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            forward_model(model, batch)
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------------------ the plan


@dataclass
class TrainRow:
    experiment: str
    model: str
    arch: str
    gflop_slice: float  # forward, per slice
    epochs: int
    train_slices: float
    val_slices: float
    seeds: int
    pflop_job: float
    hours_job: float  # GPU hours per job incl. start-up
    runtime_min: int  # what the SLURM job asks for


@dataclass
class Plan:
    config: str
    device: str
    tflops: float
    tflops_source: str
    overhead_min: float
    jobs: Counter
    sizes: dict[str, DatasetSize]
    train: list[TrainRow] = field(default_factory=list)
    pflop: dict[str, float] = field(default_factory=dict)  # per rule
    gpu_jobs: dict[str, int] = field(default_factory=dict)

    def hours(self, rule: str) -> float:
        return self.pflop.get(rule, 0.0) * 1e15 / (self.tflops * 1e12) / 3600

    @property
    def total_hours(self) -> float:
        compute = sum(self.hours(r) for r in self.pflop)
        return compute + sum(self.gpu_jobs.values()) * self.overhead_min / 60


def calibrate(root: str | Path) -> tuple[float, int]:
    """Sustained TFLOP/s of finished training runs under ``root``: the FLOPs of their training epochs
    (3 x forward FLOPs per slice x slices x epochs) over their ``train_seconds``; and the number of runs."""
    flops = seconds = 0.0
    n = 0
    for path in Path(root).rglob("summary.json"):
        s = json.loads(path.read_text())
        if not s.get("epochs") or not s.get("train_seconds") or not s.get("flops_per_slice"):
            continue
        flops += 3.0 * s["flops_per_slice"] * s["train_slices"] * s["epochs"]
        seconds += s["train_seconds"]
        n += 1
    if not n or seconds <= 0:
        raise ValueError(f"no finished training run with FLOPs and train_seconds under {root}")
    return flops / seconds / 1e12, n


def make_plan(cfg: Mapping, config_name: str = "config", results: str | Path = "results",
              tflops: float = DEFAULT_TFLOPS, tflops_source: str = "assumed",
              overhead_min: float = DEFAULT_OVERHEAD_MIN) -> Plan:
    from medkd.data.sources.spec import load_datasets_yaml

    specs = load_datasets_yaml(REPO_ROOT / "config" / "datasets.yaml")
    exps = cfg["experiments"]
    plan = Plan(config=config_name, device=cfg.get("device", "auto"), tflops=tflops, tflops_source=tflops_source,
                overhead_min=overhead_min, jobs=count_jobs(cfg),
                sizes={ds: dataset_size(cfg, ds, Path(results), specs)
                       for ds in sorted({e["dataset"] for e in exps.values()})})
    gpu = plan.device != "cpu"
    flops_cache: dict[tuple, int] = {}

    def fwd(exp: str, model: str) -> int:
        spec = model_spec(cfg, exp, model)
        size = tuple(cfg["datasets"][spec.dataset]["convert"].get("size", [64, 64]))
        key = (spec.arch, canonical(spec.arch_kwargs), spec.in_out_channels(), size)
        if key not in flops_cache:
            flops_cache[key] = forward_flops(spec, size)
        return flops_cache[key]

    pflop: Counter = Counter()
    for name, e in exps.items():
        seeds = len(experiment_seeds(cfg, name))
        size = plan.sizes[e["dataset"]]
        frac = {s: split_fraction(e, s, size.cases) for s in ("val", "test")}
        cached_teachers = set()
        for model in e["models"]:
            spec = model_spec(cfg, name, model)
            f = fwd(name, model)
            f_online = sum(fwd(name, t) for t in spec.online_teachers())
            n_tr = size.slices * split_fraction(e, spec.train.subset, size.cases)
            n_val = size.slices * split_fraction(e, spec.train.val_split, size.cases)
            epochs = spec.train.epochs
            if epochs:
                job = epochs * (n_tr * (3 * f + f_online) + n_val * (f + f_online))
            else:  # a baseline: scored once on validation
                job = n_val * f
            hours = job / (tflops * 1e12) / 3600 + overhead_min / 60
            plan.train.append(TrainRow(name, model, spec.arch, f / 1e9, epochs, n_tr, n_val, seeds, job / 1e15, hours,
                                       resources.runtime(cfg, "train", name, model)))
            pflop["train"] += job * seeds / 1e15
            n_test = size.slices * frac["test"]
            pflop["infer"] += n_test * f * seeds / 1e15
            if "robustness" in e and spec.role != "baseline":
                r = e["robustness"]
                copies = 1 + len(r["corruptions"]) * len(r.get("severities", [1, 2, 3, 4, 5]))
                pflop["robustness"] += n_test * copies * f * seeds / 1e15
            cached_teachers.update(spec.cached_teachers())
        for t in cached_teachers:
            tspec = model_spec(cfg, name, t)
            passes = 1 + (tspec.cache.mc_passes if "mc_dropout" in tspec.cache.uncertainty else 0)
            n_cache = size.slices * (split_fraction(e, "train", size.cases) + frac["val"])
            pflop["cache"] += n_cache * fwd(name, t) * passes * seeds / 1e15
    plan.pflop = dict(pflop)
    plan.gpu_jobs = {r: plan.jobs.get(r, 0) for r in resources.NETWORK_RULES} if gpu else {}
    return plan


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=list)


# ------------------------------------------------------------------------------------------ text


def _num(x: float) -> str:
    if float(x).is_integer() or x >= 100:
        return f"{x:,.0f}"
    if x >= 1:
        return f"{x:.1f}"
    return f"{x:.2g}"


def format_plan(plan: Plan, per_model: bool = True) -> str:
    lines = [f"medkd plan: {plan.config} (device {plan.device}; {len({r.experiment for r in plan.train})} experiments)",
             "", "Jobs per rule (as `snakemake -n` expands them):"]
    where = {r: ("GPU" if r in plan.gpu_jobs else "cluster") for r in resources.SIZED_RULES}
    for rule, n in sorted(plan.jobs.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {rule:<17}{n:>6}  {where.get(rule, 'local')}")
    lines.append(f"  {'total':<17}{sum(plan.jobs.values()):>6}")
    lines += ["", "Data (cases, 2-D slices):"]
    for ds, s in plan.sizes.items():
        lines.append(f"  {ds:<18}{_num(s.cases):>8}{_num(s.slices):>10}  {s.source}")
    lines += ["", "Training jobs (forward GFLOP per slice measured with FlopCounterMode; a step = 3 forward passes;",
              f"GPU-h at {plan.tflops:.3g} TFLOP/s {plan.tflops_source}, + {plan.overhead_min:g} min start-up per job):"]
    header = f"  {'experiment':<22}{'model':<17}{'GFLOP/slice':>12}{'epochs':>7}{'train sl.':>10}{'seeds':>6}" \
             f"{'GPU-h/job':>10}{'runtime':>9}"
    if not per_model:  # one row per experiment
        lines.append(f"  {'experiment':<22}{'train jobs':>11}{'longest GPU-h/job':>19}{'its runtime':>12}"
                     f"{'GPU-h':>9}")
        for exp in dict.fromkeys(r.experiment for r in plan.train):
            rows = [r for r in plan.train if r.experiment == exp]
            longest = max(rows, key=lambda r: r.hours_job)
            flag = " !" if any(r.hours_job * 60 > r.runtime_min for r in rows) else ""
            lines.append(f"  {exp:<22}{sum(r.seeds for r in rows):>11}{longest.hours_job:>19.2f}"
                         f"{longest.runtime_min:>11}m{sum(r.hours_job * r.seeds for r in rows):>9.1f}{flag}")
    if per_model:
        lines.append(header)
        for r in plan.train:
            flag = " !" if r.hours_job * 60 > r.runtime_min else ""
            lines.append(f"  {r.experiment:<22}{r.model:<17}{r.gflop_slice:>12.3g}{r.epochs:>7}{_num(r.train_slices):>10}"
                         f"{r.seeds:>6}{r.hours_job:>10.2f}{r.runtime_min:>8}m{flag}")
    if any(r.hours_job * 60 > r.runtime_min for r in plan.train):
        lines.append("  ! the estimate exceeds the job's runtime: raise resources.models.<model>.runtime "
                     "(a timed-out job resumes from last.pt on its retry)")
    lines += ["", "Estimated GPU time:"]
    for rule in ("train", "cache", "infer", "robustness"):
        if rule in plan.pflop:
            lines.append(f"  {rule:<12}{plan.pflop[rule]:>12,.1f} PFLOP {plan.hours(rule):>10,.1f} GPU-h")
    n_gpu = sum(plan.gpu_jobs.values())
    lines.append(f"  {'start-up':<12}{n_gpu:>12} jobs  {n_gpu * plan.overhead_min / 60:>10,.1f} GPU-h")
    lines.append(f"  {'total':<12}{'':>18}{plan.total_hours:>10,.1f} GPU-h")
    if plan.device == "cpu":
        lines.append("  (device cpu: no job asks for a GPU; read GPU-h as hours of the throughput above)")
    return "\n".join(lines)
