"""The one training engine, for every role: teachers, students alone, students with distillation.

A job trains one (experiment, model, seed) of a typed :class:`medkd.spec.ModelSpec`. :func:`train` is a
short sequence of named steps:

1. :func:`build` - load the training subset and validation split into memory (:mod:`medkd.datasets`)
   with the cached teacher outputs the loss terms read (``cache:<key>`` taps); build the model from the
   registry, the :class:`~medkd.objective.Objective` (each loss's ``setup`` hook receives the teachers'
   summaries), online teachers (frozen, loaded from their best checkpoint), optimiser and schedule;
   :func:`precompute_teachers` runs the online teachers once over the training and validation slices and
   keeps their outputs and tapped features in memory, so an epoch reads them instead of running the
   teachers again (frozen teachers in eval mode give the same values every epoch, up to float rounding
   between batch compositions; in batches of the training batch size, which CPU convolutions of some
   models prefer; runs of one epoch and runs above ``PRECOMPUTE_LIMIT_BYTES`` run the teachers per
   batch as before);
2. :func:`resume` - continue from ``last.pt`` when it was written for the same spec hash and seed;
3. :func:`train_epoch` - one pass over a seeded permutation of the training slices;
4. :func:`validate` and :func:`select` - score the validation split after every epoch and keep the best
   weights by the selection metric; :func:`checkpoint` writes ``last.pt`` every epoch (model,
   optimiser, schedule, loss-term state, RNG states, epoch history);
5. :func:`finish` - ``model.pt`` (best weights), ``summary.json``, ``config.json`` (spec, seed, inputs),
   ``env.json`` (versions, run settings, git commit, data hash); ``epochs.jsonl`` has one line per epoch
   (``time``: wall-clock Unix time at the end of the epoch; ``summary.json`` has ``started_at`` and
   ``ended_at``, Unix times of the training job, the start of its first epoch when it resumed).

Selection metrics: ``val_dice`` (mean foreground Dice of argmax predictions, pixels pooled over the
validation slices; higher is better), ``val_loss`` (the full weighted objective on validation data,
lower), ``val_mse`` (reconstruction MSE, lower), ``val_term`` (the unweighted validation value of the
loss term(s) named by ``select.term``, summed, lower; e.g. P-CD's validation cross-entropy, MTMS's
validation DiceLoss, KD-MRI's attention-map MSE), ``last`` (the final epoch). Every epoch record also
holds each term's unweighted validation value as ``val_term:<index>:<loss name>``.

Run settings (:class:`~medkd.runtime.RunSettings`: device, threads, channels_last, cuDNN switches) are not
part of the spec: a run moved from CPU to GPU resumes the same checkpoint. ``train.precision`` (fp32, bf16,
fp16) is: every forward pass (training, validation) runs under :func:`medkd.runtime.autocast`, and fp16
scales the loss with a GradScaler.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from medkd import datasets
from medkd.distill.taps import TapRecorder, main_output
from medkd.io import append_jsonl, atomic_path, exclusive_folder, read_json, write_json
from medkd.models import count_parameters
from medkd.objective import Objective
from medkd.optim import build_optimizer, build_scheduler
from medkd.provenance import environment_record
from medkd.integrity import reading, sha256
from medkd.runtime import (
    RunSettings, autocast, build_from_spec, class_indices, forward_model, grad_scaler, load_trained, load_weights,
    to_device,
)
from medkd.spec import ModelSpec, term_keys

log = logging.getLogger("medkd.train")

PRECOMPUTE_LIMIT_BYTES = 2 * 1024**3  # online teachers' outputs kept per job; above it they run per batch


@dataclass
class TrainInputs:
    """Files a training job reads. ``teacher_dirs``: model dirs of online teachers (same seed);
    ``caches``: cache files of cached teachers; ``teacher_summaries``: summary.json of every teacher;
    ``init_dir``: model dir whose ``model.pt`` initialises the model."""

    store: Path
    split: Path
    teacher_dirs: dict[str, Path] = field(default_factory=dict)
    caches: dict[str, Path] = field(default_factory=dict)
    init_dir: Path | None = None
    data_hash: str | None = None
    teacher_summaries: dict[str, Path] = field(default_factory=dict)

    def record(self) -> dict:
        return {
            "store": str(self.store), "split": str(self.split),
            "teacher_dirs": {k: str(v) for k, v in self.teacher_dirs.items()},
            "caches": {k: str(v) for k, v in self.caches.items()},
            "init_dir": str(self.init_dir) if self.init_dir else None,
            "teacher_summaries": {k: str(v) for k, v in self.teacher_summaries.items()},
        }


@dataclass
class Run:
    """Everything :func:`build` makes for one job; read-only for the later steps."""

    spec: ModelSpec
    seed: int
    device: torch.device
    train_data: datasets.SliceData
    val_data: datasets.SliceData
    model: nn.Module
    objective: Objective
    recorder: TapRecorder
    teachers: dict  # online teacher name -> (frozen model, its TapRecorder)
    optimizer: torch.optim.Optimizer | None
    scheduler: object
    scaler: torch.amp.GradScaler
    metric: str
    mode: str
    settings: RunSettings = field(default_factory=RunSettings)

    precomputed: dict = field(default_factory=dict)  # "train"/"val" -> teacher -> TeacherOutputs
    nhwc: bool = False  # the student's memory layout (RunSettings.nhwc): batches are moved in it

    def to_device(self, batch: dict) -> dict:
        return to_device(batch, self.device, self.nhwc)

    def teacher_outputs(self, split: str, index: torch.Tensor, batch: dict) -> dict:
        """Online teacher name -> (tap reader, output) on the slices ``index`` of ``split`` ("train" or
        "val"): read from :attr:`precomputed`, or by running the teachers on ``batch``."""
        if not self.teachers:
            return {}
        pre = self.precomputed.get(split)
        if pre is not None:
            return {name: outputs.select(index) for name, outputs in pre.items()}
        with torch.no_grad():
            return {name: (rec, forward_model(t, batch)) for name, (t, rec) in self.teachers.items()}

    def autocast(self):
        return autocast(self.device, self.spec.train.precision)


@dataclass
class TrainState:
    """What changes from epoch to epoch, and what a checkpoint restores."""

    generator: torch.Generator
    next_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: float | None = None
    best_epoch: int | None = None


# ------------------------------------------------------------------------------------------ build


def attach_caches(spec: ModelSpec, inputs: TrainInputs, data: datasets.SliceData,
                  budget: datasets.DataBudget | None = None) -> None:
    """Attach the cached teacher maps every ``cache:<key>`` tap of the spec reads (in memory within
    ``budget``, streamed beyond it)."""
    taps = spec.teacher_taps()
    for teacher in spec.cached_teachers():
        if teacher not in inputs.caches:
            raise ValueError(f"model {spec.model!r} reads cached outputs of {teacher!r} but no cache file was given")
        keys = sorted(t[6:] for t in taps[teacher] if t.startswith("cache:"))
        summary = inputs.teacher_summaries.get(teacher)
        expected = read_json(summary).get("spec_hash") if summary is not None else None
        datasets.attach_cache(data, teacher, inputs.caches[teacher], keys, spec_hash=expected, budget=budget)


def selection(spec: ModelSpec) -> tuple[str, str]:
    """(metric, mode) of checkpoint selection. Raises ValueError for a metric the task lacks."""
    metric = spec.train.select.metric
    if metric == "val_dice" and not spec.is_segmentation:
        raise ValueError("select metric val_dice needs a segmentation task")
    if metric == "val_mse" and spec.is_segmentation:
        raise ValueError("select metric val_mse needs a reconstruction task")
    if metric == "last":
        return metric, "max"  # the score of epoch k is k
    if metric == "val_term":
        if not spec.train.select.term:
            raise ValueError("select metric val_term needs select.term")
        term_keys(spec.losses, spec.train.select.term)  # raises for a term the model lacks
    return metric, spec.train.select.mode or ("max" if metric == "val_dice" else "min")


def load_online_teachers(spec: ModelSpec, inputs: TrainInputs, device: torch.device,
                         settings: RunSettings | None = None) -> dict:
    taps = spec.teacher_taps()
    teachers = {}
    for name in spec.online_teachers():
        if name not in inputs.teacher_dirs:
            raise ValueError(f"model {spec.model!r} taps teacher {name!r} online but no teacher dir was given")
        tmodel, _ = load_trained(inputs.teacher_dirs[name], device, settings)
        for p in tmodel.parameters():
            p.requires_grad_(False)
        teachers[name] = (tmodel, TapRecorder(tmodel, [t for t in taps[name] if not t.startswith("cache:")]))
    return teachers


def build(spec: ModelSpec, seed: int, inputs: TrainInputs, device: torch.device,
          settings: RunSettings | None = None) -> Run:
    """Data, model, objective, online teachers, optimiser and schedule of one job.

    Raises:
        ValueError: empty data, a missing cache or teacher dir, nothing to train.
    """
    tcfg = spec.train
    settings = settings or RunSettings()
    metric, mode = selection(spec)
    torch.manual_seed(seed)
    budget = datasets.DataBudget(settings.data_memory_mb)
    train_data = datasets.load_split(spec, inputs.store, inputs.split, tcfg.subset, budget=budget)
    val_data = datasets.load_split(spec, inputs.store, inputs.split, tcfg.val_split, budget=budget)
    if len(train_data) == 0 or len(val_data) == 0:
        raise ValueError(f"{spec.model}: empty training ({len(train_data)}) or validation ({len(val_data)}) data")
    attach_caches(spec, inputs, train_data, budget)
    attach_caches(spec, inputs, val_data, budget)

    model = build_from_spec(spec).to(device)
    if inputs.init_dir is not None:
        model.load_state_dict(load_weights(Path(inputs.init_dir), device))
        log.info("initialised from %s", inputs.init_dir)
    model = settings.prepare(model, "train")
    summaries = {name: read_json(path) for name, path in inputs.teacher_summaries.items()}
    objective = Objective(spec.losses, summaries).to(device)
    recorder = TapRecorder(model, objective.student_taps())
    teachers = load_online_teachers(spec, inputs, device, settings)

    params = [p for p in model.parameters() if p.requires_grad] + [p for p in objective.parameters() if p.requires_grad]
    if tcfg.epochs > 0 and not params:
        raise ValueError(f"{spec.model}: nothing to train (no parameters); set train.epochs to 0 for a baseline")
    optimizer = build_optimizer(params, tcfg.optimizer) if params else None
    scheduler = build_scheduler(optimizer, tcfg.scheduler, tcfg.epochs) if optimizer else None
    run = Run(spec=spec, seed=seed, device=device, train_data=train_data, val_data=val_data, model=model,
              objective=objective, recorder=recorder, teachers=teachers, optimizer=optimizer, scheduler=scheduler,
              scaler=grad_scaler(device, tcfg.precision), metric=metric, mode=mode, settings=settings,
              nhwc=settings.nhwc(model, "train"))
    if teachers and tcfg.epochs > 1:  # with one epoch each slice meets the teacher once anyway
        # the teachers' outputs count against the data budget too
        t0, budget = time.perf_counter(), min(PRECOMPUTE_LIMIT_BYTES, budget.left)
        for split, data in (("train", train_data), ("val", val_data)):
            pre = precompute_teachers(run, data, batch_size=tcfg.batch_size, limit_bytes=budget)
            if pre is None:
                run.precomputed.clear()
                break
            run.precomputed[split] = pre
            budget -= sum(p.nbytes for p in pre.values())
        if run.precomputed:
            log.info("online teachers %s precomputed on %d + %d slices in %.1f s", sorted(teachers),
                     len(train_data), len(val_data), time.perf_counter() - t0)
    return run


class RecordedTaps(TapRecorder):
    """The tapped features of one batch, read from precomputed tensors; resolves taps like the
    :class:`TapRecorder` that recorded them (``out``, ``out:<key>``, module paths)."""

    def __init__(self, features: dict[str, torch.Tensor]):  # noqa: super().__init__ would register hooks
        self.features = features
        self._handles = []


@dataclass
class TeacherOutputs:
    """One online teacher's output and tapped features on every slice of a split, stacked on dim 0."""

    output: "torch.Tensor | dict[str, torch.Tensor]"
    features: dict[str, torch.Tensor]

    def select(self, index: torch.Tensor) -> tuple[RecordedTaps, object]:
        """(tap reader, output) of the slices at positions ``index``."""
        out = ({k: v[index] for k, v in self.output.items()} if isinstance(self.output, dict)
               else self.output[index])
        return RecordedTaps({k: v[index] for k, v in self.features.items()}), out

    @property
    def nbytes(self) -> int:
        tensors = list(self.output.values()) if isinstance(self.output, dict) else [self.output]
        return sum(t.numel() * t.element_size() for t in tensors + list(self.features.values()))


def _stackable(value) -> bool:
    return torch.is_tensor(value) or (isinstance(value, dict) and all(torch.is_tensor(v) for v in value.values()))


@torch.no_grad()
def precompute_teachers(run: Run, data: datasets.SliceData, batch_size: int = 16,
                        limit_bytes: int = PRECOMPUTE_LIMIT_BYTES) -> dict[str, TeacherOutputs] | None:
    """Every online teacher's output and tapped features on all slices of ``data``, in slice order, under
    the run's precision; None (the teachers then run per batch) when an output or a feature is not a
    tensor (or a dict of tensors), or when the tensors would exceed ``limit_bytes`` (estimated from the
    first batch, counting every online teacher)."""
    if not run.teachers or len(data) == 0:
        return None
    n = len(data)
    chunks: dict[str, list] = {name: [] for name in run.teachers}
    for start in range(0, n, batch_size):
        batch = run.to_device(data.batch(torch.arange(start, min(start + batch_size, n))))
        with run.autocast():
            for name, (teacher, rec) in run.teachers.items():
                out = forward_model(teacher, batch)
                feats = dict(rec.features)
                if not _stackable(out) or not all(torch.is_tensor(v) for v in feats.values()):
                    log.info("teacher %s: a tapped value is not a tensor; it runs with every batch", name)
                    return None
                chunks[name].append(TeacherOutputs(out, feats))
        if start == 0:
            per_slice = sum(c[0].nbytes for c in chunks.values()) / batch["image"].shape[0]
            if per_slice * n > limit_bytes:
                log.info("teacher outputs of %d slices would take %.0f MB (limit %.0f MB); teachers run with "
                         "every batch", n, per_slice * n / 2**20, limit_bytes / 2**20)
                return None
    result = {}
    for name, parts in chunks.items():
        first = parts[0].output
        output = ({k: torch.cat([p.output[k] for p in parts]) for k in first} if isinstance(first, dict)
                  else torch.cat([p.output for p in parts]))
        result[name] = TeacherOutputs(output, {k: torch.cat([p.features[k] for p in parts]) for k in parts[0].features})
    return result


# ------------------------------------------------------------------------------------------ resume / checkpoint


def resume(run: Run, out_dir: Path) -> TrainState:
    """A fresh state, or the state of ``last.pt`` when it was written for this spec hash and seed."""
    state = TrainState(generator=torch.Generator().manual_seed(run.seed))
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if last_path.exists():
        with reading(last_path, "resume checkpoint"):
            ckpt = torch.load(last_path, map_location=run.device, weights_only=True)
        if ckpt.get("spec_hash") == run.spec.hash and int(ckpt.get("seed", -1)) == run.seed and best_path.exists():
            run.model.load_state_dict(ckpt["model"])
            if run.optimizer is not None:
                run.optimizer.load_state_dict(ckpt["optimizer"])
            run.objective.load_state_dict(ckpt["objective"])
            if run.scheduler is not None:
                run.scheduler.load_state_dict(ckpt["scheduler"])
            run.scaler.load_state_dict(ckpt["scaler"])
            state.generator.set_state(ckpt["generator"])
            torch.set_rng_state(ckpt["torch_rng"])
            state.next_epoch, state.history = int(ckpt["epoch"]) + 1, list(ckpt["history"])
            state.best, state.best_epoch = ckpt["best"], ckpt["best_epoch"]
            log.info("resumed from %s at epoch %d (of %d)", last_path, state.next_epoch, run.spec.train.epochs)
        else:
            log.info("ignoring %s: written for another spec or seed", last_path)
    with atomic_path(out_dir / "epochs.jsonl") as tmp:  # rewrite the log from the checkpoint's history
        tmp.write_text("".join(json.dumps(h, sort_keys=True) + "\n" for h in state.history))
    return state


def checkpoint(run: Run, state: TrainState, epoch: int, out_dir: Path) -> None:
    """Write ``last.pt`` atomically: everything :func:`resume` needs to continue after ``epoch``."""
    with atomic_path(out_dir / "last.pt") as tmp:
        torch.save({
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict() if run.optimizer is not None else None,
            "objective": run.objective.state_dict(),
            "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
            "scaler": run.scaler.state_dict(),
            "generator": state.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": epoch,
            "history": state.history,
            "best": state.best,
            "best_epoch": state.best_epoch,
            "spec_hash": run.spec.hash,
            "seed": run.seed,
        }, tmp)


# ------------------------------------------------------------------------------------------ epoch


def train_epoch(run: Run, state: TrainState, epoch: int) -> dict:
    """One pass over a seeded permutation of the training slices; returns the epoch's training figures
    (learning rate, mean loss and mean of each term, seconds, slices per second)."""
    tcfg, data = run.spec.train, run.train_data
    run.model.train()
    t0 = time.perf_counter()
    n, bs = len(data), tcfg.batch_size
    perm = torch.randperm(n, generator=state.generator)
    if tcfg.drop_last and n >= bs:
        perm = perm[: n - n % bs]
    if tcfg.max_steps is not None:  # a rehearsal: the first batches of the same permutation
        perm = perm[: tcfg.max_steps * bs]
    sums: dict[str, float] = {}
    total_sum, seen = 0.0, 0
    for start in range(0, len(perm), bs):
        index = perm[start : start + bs]
        batch = run.to_device(data.batch(index))
        with run.autocast():
            output = forward_model(run.model, batch)
            t_out = run.teacher_outputs("train", index, batch)
            loss, parts = run.objective(output, run.recorder, t_out, batch, epoch)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        b = batch["image"].shape[0]
        seen += b
        total_sum += float(loss.detach()) * b
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v) * b
    seconds = time.perf_counter() - t0
    lr = run.optimizer.param_groups[0]["lr"]
    if run.scheduler is not None:
        run.scheduler.step()
    return {
        "epoch": epoch, "lr": lr, "train_loss": total_sum / max(seen, 1),
        "terms": {k: v / max(seen, 1) for k, v in sums.items()},
        "train_seconds": seconds, "slices_per_second": seen / seconds if seconds > 0 else None,
    }


def pooled_dice(logits: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per-class (tp, fp, fn) counts ``(n_classes, 3)`` of argmax (or logit > 0 for one channel)."""
    pred = class_indices(logits) if logits.shape[1] > 1 else (logits[:, 0] > 0).long()
    counts = torch.zeros(n_classes, 3, dtype=torch.float64)
    for c in range(1, n_classes):
        p, t = pred == c, target == c
        counts[c, 0] += (p & t).sum()
        counts[c, 1] += (p & ~t).sum()
        counts[c, 2] += (~p & t).sum()
    return counts


@torch.no_grad()
def validate(run: Run, epoch: int) -> dict:
    """Validation loss, and Dice (segmentation) or MSE (reconstruction), over the whole split."""
    model, data, spec = run.model, run.val_data, run.spec
    model.eval()
    n_classes = spec.n_classes if spec.is_segmentation else 0
    counts = torch.zeros(max(n_classes, 1), 3, dtype=torch.float64)
    loss_sum, sq_err, n_pix, n, bs = 0.0, 0.0, 0, len(data), spec.train.batch_size
    if spec.train.max_val_slices is not None:  # a rehearsal: the first slices of the split
        n = min(n, spec.train.max_val_slices)
    term_sums: dict[str, float] = {}
    for start in range(0, n, bs):
        index = torch.arange(start, min(start + bs, n))
        batch = run.to_device(data.batch(index))
        with run.autocast():
            output = forward_model(model, batch)
            t_out = run.teacher_outputs("val", index, batch)
            loss, parts = run.objective(output, run.recorder, t_out, batch, epoch)
        b = batch["image"].shape[0]
        loss_sum += float(loss) * b
        for key, value in parts.items():
            term_sums[key] = term_sums.get(key, 0.0) + float(value) * b
        pred = main_output(output).float()
        if n_classes:
            counts += pooled_dice(pred.cpu(), batch["target"].cpu(), n_classes)
        else:
            sq_err += float(((pred - batch["target"]) ** 2).sum())
            n_pix += batch["target"].numel()
    out = {"val_loss": loss_sum / n}
    out.update({f"val_term:{key}": v / n for key, v in term_sums.items()})
    if spec.train.select.metric == "val_term":
        out["val_term"] = sum(out[f"val_term:{key}"] for key in term_keys(spec.losses, spec.train.select.term))
    if n_classes:
        tp, fp, fn = counts[1:, 0], counts[1:, 1], counts[1:, 2]
        denom = 2 * tp + fp + fn
        dice = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.ones_like(denom))
        out["val_dice"] = float(dice.mean())
    else:
        out["val_mse"] = sq_err / max(n_pix, 1)
    return out


def select(run: Run, state: TrainState, record: dict, out_dir: Path) -> bool:
    """Keep ``best.pt`` when the epoch's selection score beats the best so far (NaN never does)."""
    epoch = record["epoch"]
    score = float(epoch) if run.metric == "last" else record[run.metric]
    better = not math.isnan(score) and (
        state.best is None or (score > state.best if run.mode == "max" else score < state.best))
    if better:
        state.best, state.best_epoch = score, epoch
        with atomic_path(out_dir / "best.pt") as tmp:
            torch.save(run.model.state_dict(), tmp)
    return better


# ------------------------------------------------------------------------------------------ finish


@torch.no_grad()
def flops_per_slice(model: nn.Module, batch: dict) -> int:
    """FLOPs of one forward pass on the first slice of ``batch`` (torch's FlopCounterMode: 2 per
    multiply-accumulate of convolutions, linear layers and matmuls; FFTs, norms and activations are not
    counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    one = {k: (v[:1] if torch.is_tensor(v) else v) for k, v in batch.items() if k != "cache"}
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            forward_model(model, one)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def finish(run: Run, state: TrainState, inputs: TrainInputs, settings: RunSettings, out_dir: Path,
           started_at: float | None = None) -> dict:
    """Write model.pt, summary.json, config.json and env.json; return the summary."""
    spec, best_path = run.spec, out_dir / "best.pt"
    val = None
    if not best_path.exists():  # epochs == 0: a baseline, scored once on validation
        val = validate(run, 0)
        state.best, state.best_epoch = val.get(run.metric), None
        with atomic_path(best_path) as tmp:
            torch.save(run.model.state_dict(), tmp)
    run.recorder.remove()
    best_record = state.history[state.best_epoch] if state.best_epoch is not None else val
    summary = {
        "experiment": spec.experiment, "model": spec.model, "seed": run.seed, "role": spec.role,
        "kd_method": spec.kd_method, "arch": spec.arch,
        "params": count_parameters(run.model),
        "trainable_params": count_parameters(run.model, trainable_only=True),
        "flops_per_slice": flops_per_slice(run.model, run.to_device(run.val_data.batch(torch.arange(1)))),
        "precision": spec.train.precision,
        "select_metric": run.metric,
        "best_epoch": state.best_epoch,
        "best_score": state.best,
        "best_val": {k: v for k, v in (best_record or {}).items() if k.startswith("val_")},
        "epochs": spec.train.epochs,
        "train_slices": len(run.train_data),
        "val_slices": len(run.val_data),
        "train_seconds": sum(h["train_seconds"] for h in state.history),
        "spec_hash": spec.hash,
        "data_hash": inputs.data_hash,
        "started_at": min([started_at or time.time()] + [h["time"] - h["train_seconds"] for h in state.history
                                                         if "time" in h]),
        "ended_at": time.time(),
    }
    write_json(out_dir / "config.json", {"spec": spec.to_dict(), "seed": run.seed, "spec_hash": spec.hash,
                                         "inputs": inputs.record()})
    write_json(out_dir / "env.json", {**environment_record(inputs.data_hash, torch), "run_settings": settings.record(),
                                      "memory_format": "channels_last" if run.nhwc else "contiguous",
                                      "data_in_memory": {"train": not run.train_data.streaming,
                                                         "val": not run.val_data.streaming}})
    with atomic_path(out_dir / "model.pt") as tmp:
        shutil.copyfile(best_path, tmp)
    summary["model_sha256"] = sha256(out_dir / "model.pt")  # checked by every stage that loads model.pt
    write_json(out_dir / "summary.json", summary)
    return summary


# ------------------------------------------------------------------------------------------ train


def train(spec: ModelSpec, seed: int, inputs: TrainInputs, out_dir: str | Path,
          settings: RunSettings = RunSettings(), progress: bool | None = None) -> dict:
    """Train one model; returns the summary written to ``summary.json``.

    Raises:
        ValueError: inconsistent inputs (missing cache, unknown tap, split without cases).
        medkd.io.FolderBusy: another job is writing ``out_dir`` (nothing was touched).
    """
    out_dir = Path(out_dir)
    with exclusive_folder(out_dir, "training job"):  # never two jobs in one model folder (e.g. an orphan)
        return _train(spec, seed, inputs, out_dir, settings, progress)


def _train(spec: ModelSpec, seed: int, inputs: TrainInputs, out_dir: Path, settings: RunSettings,
           progress: bool | None) -> dict:
    started_at = time.time()
    run = build(spec, seed, inputs, settings.apply(), settings)
    state = resume(run, out_dir)
    bar = tqdm(range(state.next_epoch, spec.train.epochs), desc=f"train {spec.model} seed{seed}", unit="epoch",
               disable=(not progress) if progress is not None else None, file=sys.stderr)
    for epoch in bar:
        record = train_epoch(run, state, epoch)
        record.update(validate(run, epoch))
        record["best"] = select(run, state, record, out_dir)
        record["time"] = time.time()
        state.history.append(record)
        append_jsonl(out_dir / "epochs.jsonl", record)
        checkpoint(run, state, epoch, out_dir)
        bar.set_postfix(loss=f"{record['train_loss']:.4f}", **{run.metric: f"{record.get(run.metric, epoch):.4f}"})
        log.info("epoch %d: loss %.4f %s", epoch, record["train_loss"],
                 " ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("val_")))
    return finish(run, state, inputs, settings, out_dir, started_at)
