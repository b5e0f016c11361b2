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

Per experiment and rule it also prints what the jobs ask for as :func:`medkd.resources.size` sizes them (from the
rehearsal's measurements, ``--measured``, and bounded by the site's partitions, ``--partitions``: the site
profile, whose ``config: {gpu_speedup}`` it also reads), the partition each lands in (the SLURM plugin's
selection rule, :mod:`medkd.partitions`), and GPU-hours from the measurement beside the FLOPs estimate. Only the
config is read: it works before any data exists.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from medkd import partitions as partmod
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


split_fraction = resources.split_fraction  # moved to medkd.resources (the Snakefile sizes with it)


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
    rule_sizes: dict[str, dict[str, "RuleSize"]] = field(default_factory=dict)  # experiment (or "(data)") -> rule
    sizing_source: str = ""
    errors: list[str] = field(default_factory=list)  # jobs that fit no partition

    def hours(self, rule: str) -> float:
        return self.pflop.get(rule, 0.0) * 1e15 / (self.tflops * 1e12) / 3600

    @property
    def total_hours(self) -> float:
        compute = sum(self.hours(r) for r in self.pflop)
        return compute + sum(self.gpu_jobs.values()) * self.overhead_min / 60


@dataclass
class RuleSize:
    """What one experiment's jobs of one rule ask for (:func:`medkd.resources.size`)."""

    jobs: int = 0
    runtime: int = 0  # largest request, minutes
    mem_mb: int = 0  # largest request
    partitions: Counter = field(default_factory=Counter)  # where the plugin sends them
    basis: set = field(default_factory=set)  # configured / measured / default (runtime/mem_mb)
    gpu_hours: float = 0.0  # measured need (before margins) of the jobs that run on a GPU
    measured: int = 0  # jobs whose runtime is measured

    def add(self, size: "resources.JobSize", n: int = 1) -> None:
        self.jobs += n
        self.runtime = max(self.runtime, size.runtime)
        self.mem_mb = max(self.mem_mb, size.mem_mb)
        self.partitions[size.partition or "-"] += n
        self.basis.add(size.basis)
        if size.basis.startswith("measured"):
            self.measured += n
            if size.gpu:
                self.gpu_hours += n * size.need_runtime / 60


def workflow_submissions(profile: Path = Path(__file__).resolve().parents[2] / "profiles" / "slurm" / "profile.yaml") -> int:
    """1 + the ``retries`` of medkd's SLURM workflow profile: how often a training job that hits its time limit
    is submitted again (resuming from last.pt)."""
    import yaml

    try:
        return 1 + int((yaml.safe_load(profile.read_text()) or {}).get("retries", 0))
    except OSError:
        return 1


def size_jobs(plan: "Plan", cfg: Mapping, measured: Mapping | None, partitions: list | None) -> None:
    """Fill ``plan.rule_sizes`` (and ``plan.errors``) with every cluster job's size."""
    exps = cfg["experiments"]
    threads = int(cfg.get("threads", 1))
    submissions = workflow_submissions()

    def fingerprint(ds: str) -> dict:  # the estimate's counts where the store's fingerprint is not there yet
        return {"n_slices": plan.sizes[ds].slices, "convert": {"size": cfg["datasets"][ds]["convert"].get("size",
                                                                                                          [64, 64])}}

    def add(group: str, rule: str, n: int, **kw) -> None:
        try:
            sz = resources.size(cfg, rule, measured=measured, partitions=partitions, submissions=submissions, **kw)
        except resources.SizingError as exc:
            plan.errors.append(str(exc))
            return
        plan.rule_sizes.setdefault(group, {}).setdefault(rule, RuleSize()).add(sz, n)

    for ds in plan.sizes:
        add("(data)", "convert", 1, dataset=ds, job=f"convert dataset={ds}")
    for ds, mask in sorted({(e["dataset"], e["kspace"]["name"]) for e in exps.values() if e["task"] != "segmentation"}):
        add("(data)", "undersample", 1, dataset=ds, job=f"undersample dataset={ds}, mask={mask}")
    for name, e in exps.items():
        seeds = len(experiment_seeds(cfg, name))
        ds = e["dataset"]
        common = dict(exp=name, fingerprint=fingerprint(ds), dataset_size=(plan.sizes[ds].cases, plan.sizes[ds].slices))
        cached = set()
        for model in e["models"]:
            spec = model_spec(cfg, name, model)
            cached.update(spec.cached_teachers())
            for rule in ("train", "infer", "evaluate") + (("robustness",) if "robustness" in e and
                                                           spec.role != "baseline" else ()):
                add(name, rule, seeds, model=model, threads=threads if rule in resources.NETWORK_RULES else 1,
                    job=f"{rule} exp={name}, model={model}", **common)
        for t in sorted(cached):
            add(name, "cache", seeds, model=t, threads=threads, job=f"cache exp={name}, model={t}", **common)


def calibrate(root: str | Path) -> tuple[float, int]:
    """Sustained TFLOP/s of finished training runs under ``root``: the FLOPs of their training epochs
    (3 x forward FLOPs per slice x slices per epoch x epochs; slices per epoch at most ``max_steps`` x batch size
    when the run's config.json sets ``max_steps``) over their ``train_seconds``; and the number of runs."""
    flops = seconds = 0.0
    n = 0
    for path in Path(root).rglob("summary.json"):
        s = json.loads(path.read_text())
        if not s.get("epochs") or not s.get("train_seconds") or not s.get("flops_per_slice"):
            continue
        per_epoch = s["train_slices"]
        config = path.with_name("config.json")
        if config.is_file():
            train = json.loads(config.read_text()).get("spec", {}).get("train", {})
            if train.get("max_steps"):
                per_epoch = min(per_epoch, train["max_steps"] * train["batch_size"])
        flops += 3.0 * s["flops_per_slice"] * per_epoch * s["epochs"]
        seconds += s["train_seconds"]
        n += 1
    if not n or seconds <= 0:
        raise ValueError(f"no finished training run with FLOPs and train_seconds under {root}")
    return flops / seconds / 1e12, n


def make_plan(cfg: Mapping, config_name: str = "config", results: str | Path = "results",
              tflops: float = DEFAULT_TFLOPS, tflops_source: str = "assumed",
              overhead_min: float = DEFAULT_OVERHEAD_MIN, measured: str | Path | None = None,
              partitions: str | Path | None = None) -> Plan:
    """The plan of ``cfg``. ``measured``: the rehearsal CSV (default: the config's ``sizing.measured``);
    ``partitions``: the site's partition file, e.g. the site profile (its ``config: {gpu_speedup: ...}``, when
    the config states none, is used too)."""
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
            if epochs:  # slices per epoch: all, or max_steps batches (an epoch is then a round of them)
                n_ep = min(n_tr, spec.train.max_steps * spec.train.batch_size) if spec.train.max_steps else n_tr
                job = epochs * (n_ep * (3 * f + f_online) + n_val * (f + f_online))
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

    notes = []
    mpath = Path(measured) if measured else (REPO_ROOT / cfg["sizing"]["measured"] if cfg["sizing"].get("measured")
                                             else None)
    meas = resources.read_measured(mpath) if mpath is not None and mpath.is_file() else {}
    notes.append(f"measured: {mpath} ({sum(m.rows for m in meas.values())} rows)" if meas else
                 f"measured: none ({mpath or 'sizing.measured unset'} not found): default formulas")
    parts = None
    if partitions:
        parts = partmod.read(partitions)
        notes.append(f"partitions: {partitions} ({', '.join(p.name for p in parts)})")
        if cfg.get("gpu_speedup") is None:
            import yaml

            site = (yaml.safe_load(Path(partitions).read_text()) or {}).get("config") or {}
            if site.get("gpu_speedup"):
                cfg = {**cfg, "gpu_speedup": float(site["gpu_speedup"])}
    else:
        notes.append("partitions: none (requests unbounded)")
    notes.append(f"gpu_speedup: {cfg.get('gpu_speedup')}" if cfg.get("gpu_speedup") else
                 "gpu_speedup: not stated (GPU training jobs keep their default runtime)")
    plan.sizing_source = "; ".join(notes)
    size_jobs(plan, cfg, meas, parts)
    for row in plan.train:  # the runtime the job asks for, as the Snakefile sizes it
        size = plan.sizes[exps[row.experiment]["dataset"]]
        try:
            row.runtime_min = resources.size(cfg, "train", row.experiment, row.model, measured=meas, partitions=parts,
                                             dataset_size=(size.cases, size.slices),
                                             threads=int(cfg.get("threads", 1)),
                                             submissions=workflow_submissions()).runtime
        except resources.SizingError:
            pass  # listed in plan.errors
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
    lines += format_sizes(plan, per_rule=per_model)
    return "\n".join(lines)


def format_sizes(plan: Plan, per_rule: bool = True) -> list[str]:
    """What each experiment's jobs ask for, where they land, and their GPU-hours (measured and FLOPs)."""
    flops_h: Counter = Counter()
    for r in plan.train:
        flops_h[r.experiment] += r.hours_job * r.seeds
    lines = ["", "Job sizes (medkd.resources: configured > measured > default; bounded by the partitions):",
             f"  {plan.sizing_source}",
             "  runtime and mem_mb: the largest request of the rule's jobs (attempt 1); sized by: runtime/mem_mb;",
             "  GPU-h meas.: measured need of the GPU training jobs (before margins); GPU-h FLOPs: the estimate above"]
    if per_rule:
        lines.append(f"  {'experiment':<22}{'rule':<12}{'jobs':>5}{'runtime':>9}{'mem_mb':>9}  {'partition':<12}"
                     f"{'sized by':<22}{'GPU-h meas.':>12}{'GPU-h FLOPs':>12}")
        for exp, rules in plan.rule_sizes.items():
            for rule, rs in rules.items():
                part = ", ".join(f"{p}" if len(rs.partitions) == 1 else f"{p} x{n}" for p, n in rs.partitions.items())
                meas = f"{rs.gpu_hours:,.1f}" if rule == "train" and rs.measured else "-"
                fl = f"{flops_h[exp]:,.1f}" if rule == "train" else ""
                lines.append(f"  {exp:<22}{rule:<12}{rs.jobs:>5}{rs.runtime:>8}m{rs.mem_mb:>9,}  {part:<12}"
                             f"{','.join(sorted(rs.basis)):<22}{meas:>12}{fl:>12}")
    else:
        lines.append(f"  {'experiment':<22}{'jobs':>6}{'peak mem_mb':>12}{'GPU-h meas.':>12}{'GPU-h FLOPs':>12}  "
                     "partition per rule")
        for exp, rules in plan.rule_sizes.items():
            jobs = sum(rs.jobs for rs in rules.values())
            peak = max(rs.mem_mb for rs in rules.values())
            tr = rules.get("train")
            meas = f"{tr.gpu_hours:,.1f}" if tr and tr.measured else "-"
            fl = f"{flops_h[exp]:,.1f}" if exp in flops_h else ""
            where = " ".join(f"{r}:{'/'.join(rs.partitions)}" for r, rs in rules.items())
            lines.append(f"  {exp:<22}{jobs:>6}{peak:>12,}{meas:>12}{fl:>12}  {where}")
    total = sum(rs.gpu_hours for rules in plan.rule_sizes.values() for rs in rules.values())
    lines.append(f"  measured GPU-h of training jobs: {total:,.1f} (FLOPs estimate: {sum(flops_h.values()):,.1f})")
    if plan.errors:
        lines += ["", f"Jobs that fit no partition ({len(plan.errors)}; a run stops planning at the first):"]
        lines += [f"  {e}" for e in plan.errors]
    return lines
