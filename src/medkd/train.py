"""The one training engine, for every role: teachers, students alone, students with distillation.

A job trains one (experiment, model, seed) from its resolved spec (:func:`medkd.config.model_spec`):

1. loads the cases of its training subset and validation split into memory (:mod:`medkd.datasets`),
   plus the cached teacher outputs its loss terms read (``cache:<key>`` taps);
2. builds the model from the registry, the weighted loss terms, and any online teacher (a teacher
   whose intermediate features are tapped by module path; loaded from its best checkpoint, frozen);
3. optimises with the configured optimiser and schedule (stepped once per epoch); validates after every
   epoch on the validation split; keeps the best checkpoint by the configured selection metric;
4. writes a checkpoint every epoch (``last.pt``: model, optimiser, scheduler, loss-term state, RNG
   states, epoch log) and resumes from it automatically when a killed job is re-run with the same spec
   (a different spec hash starts afresh);
5. on completion writes ``model.pt`` (best weights), ``summary.json``, ``config.json`` (spec, seed,
   inputs), ``env.json`` (versions, git commit, data hash) and ``epochs.jsonl`` (one line per epoch).

Selection metrics: ``val_dice`` (mean foreground Dice of argmax predictions, pixels pooled over the
validation slices; higher is better), ``val_loss`` (the full weighted objective on validation data,
lower is better), ``val_mse`` (reconstruction MSE, lower), ``last`` (the final epoch).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from medkd import datasets
from medkd.config import cached_teachers, online_teachers, spec_hash, teacher_taps
from medkd.data.splits import cases_for, read_split
from medkd.distill import build_loss
from medkd.distill.taps import TapRecorder, main_output
from medkd.io import append_jsonl, atomic_path, read_json, write_json
from medkd.models import build_model, count_parameters
from medkd.provenance import environment_record

log = logging.getLogger("medkd.train")


@dataclass
class TrainInputs:
    """Files a training job reads. ``teacher_dirs``: model dirs of online teachers (same seed);
    ``caches``: cache files of cached teachers; ``init_dir``: model dir whose ``model.pt`` initialises."""

    store: Path
    split: Path
    teacher_dirs: dict[str, Path] = field(default_factory=dict)
    caches: dict[str, Path] = field(default_factory=dict)
    init_dir: Path | None = None
    data_hash: str | None = None
    teacher_summaries: dict[str, Path] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ building


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config asks for device 'cuda' but no CUDA device is available")
    return torch.device(name)


def model_channels(spec: dict) -> tuple[int, int]:
    """(in_channels, out_channels) of a spec's model; ``arch_kwargs`` may override out_channels
    (e.g. 1 for single-logit binary models)."""
    if spec["task"] == "segmentation":
        cin, cout = len(spec["channels"]), len(spec["classes"])
    else:
        cin, cout = 1, 1
    return cin, int(spec.get("arch_kwargs", {}).get("out_channels", cout))


def build_from_spec(spec: dict) -> nn.Module:
    cin, cout = model_channels(spec)
    kwargs = {k: v for k, v in spec.get("arch_kwargs", {}).items() if k != "out_channels"}
    return build_model(spec["arch"], in_channels=cin, out_channels=cout, **kwargs)


def load_trained(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The best weights of a finished model directory, in eval mode, and its spec."""
    model_dir = Path(model_dir)
    cfg = read_json(model_dir / "config.json")
    model = build_from_spec(cfg["spec"])
    state = torch.load(model_dir / "model.pt", map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg["spec"]


def build_optimizer(params, cfg: dict) -> torch.optim.Optimizer:
    name, lr, wd = cfg["name"], cfg["lr"], cfg["weight_decay"]
    extra = {}
    if "eps" in cfg:
        extra["eps"] = cfg["eps"]
    if name in ("adam", "adamw"):
        if "betas" in cfg:
            extra["betas"] = tuple(cfg["betas"])
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, weight_decay=wd, **extra)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=cfg.get("momentum", 0.0))
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=lr, weight_decay=wd, alpha=cfg.get("alpha", 0.99), momentum=cfg.get("momentum", 0.0), **extra
        )
    raise ValueError(f"unknown optimizer {name!r}")


def build_scheduler(optimizer, cfg: dict, epochs: int):
    name = cfg["name"]
    if name == "none":
        return None
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg["step_size"], gamma=cfg.get("gamma", 0.1))
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    raise ValueError(f"unknown scheduler {name!r}")


def resolve_teacher_weights(terms_cfg: list[dict], teacher_scores: dict[str, float]) -> list[dict]:
    """Replace ``kwargs.weights: val_score`` of multi-teacher terms by weights from each teacher's
    validation Dice at its selected epoch (:func:`medkd.distill.multi_teacher.teacher_weights_from_scores`,
    mode from ``kwargs.weight_mode``, default proportional). The Dice is used whatever metric the teacher
    selected on, so a teacher selected on a loss never gets a weight that grows with its loss."""
    out = []
    for t in terms_cfg:
        kwargs = dict(t["kwargs"])
        if kwargs.get("weights") == "val_score":
            from medkd.distill.multi_teacher import teacher_weights_from_scores

            names = t["teacher"] if isinstance(t["teacher"], list) else [t["teacher"]]
            missing = [n for n in names if teacher_scores.get(n) is None]
            if missing:
                raise ValueError(f"loss {t['loss']!r}: no validation Dice for teachers {missing} (segmentation only)")
            mode = kwargs.pop("weight_mode", "proportional")
            kwargs["weights"] = [float(w) for w in teacher_weights_from_scores([teacher_scores[n] for n in names], mode=mode)]
        out.append({**t, "kwargs": kwargs})
    return out


class Objective(nn.Module):
    """The weighted sum of a model's loss terms, with their taps."""

    def __init__(self, terms_cfg: list[dict]):
        super().__init__()
        self.cfg = terms_cfg
        self.terms = nn.ModuleList(build_loss(t["loss"], **t["kwargs"]) for t in terms_cfg)
        for t, term in zip(terms_cfg, self.terms):
            if term.needs_teacher and not t.get("teacher"):
                raise ValueError(f"loss {t['loss']!r} needs a teacher: set `teacher` in its config entry")

    def student_taps(self) -> list[str]:
        out = []
        for t in self.cfg:
            out += t["student_tap"] if isinstance(t["student_tap"], list) else [t["student_tap"]]
        return out

    def forward(self, output, recorder: TapRecorder, teacher_outputs: dict, batch: dict, epoch: int):
        """Returns (total loss, {term label: value})."""
        total, parts = 0.0, {}
        for i, (t, term) in enumerate(zip(self.cfg, self.terms)):
            student = recorder.get(t["student_tap"], output)
            teacher = None
            if t.get("teacher"):
                names = t["teacher"] if isinstance(t["teacher"], list) else [t["teacher"]]
                vals = [_teacher_tap(teacher_outputs, batch, n, t["teacher_tap"]) for n in names]
                teacher = vals if isinstance(t["teacher"], list) else vals[0]
            value = term(student, teacher, batch, epoch)
            parts[f"{i}:{t['loss']}"] = value.detach()
            if t["weight"] != 0:
                total = total + t["weight"] * value
        if not torch.is_tensor(total):
            total = torch.zeros((), device=batch["image"].device)
        return total, parts


def _teacher_tap(teacher_outputs: dict, batch: dict, name: str, tap):
    if isinstance(tap, list):
        return [_teacher_tap(teacher_outputs, batch, name, t) for t in tap]
    if tap.startswith("cache:"):
        return batch["cache"][name][tap[6:]]
    recorder, output = teacher_outputs[name]
    return recorder.get(tap, output)


# ------------------------------------------------------------------------------------------ data


def load_split_data(spec: dict, inputs: TrainInputs, split_name: str) -> datasets.SliceData:
    split = read_split(inputs.split)
    cases = cases_for(split, split_name)
    if spec["task"] == "segmentation":
        return datasets.load_segmentation(inputs.store, cases, spec["channels"], spec["classes"])
    return datasets.load_reconstruction(inputs.store, cases)


def _attach_caches(spec: dict, inputs: TrainInputs, data: datasets.SliceData) -> None:
    taps = teacher_taps(spec)
    for teacher in cached_teachers(spec):
        if teacher not in inputs.caches:
            raise ValueError(f"model {spec['model']!r} reads cached outputs of {teacher!r} but no cache file was given")
        keys = sorted(t[6:] for t in taps[teacher] if t.startswith("cache:"))
        datasets.attach_cache(data, teacher, inputs.caches[teacher], keys)


def to_device(batch: dict, device: torch.device) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, dict):
            out[k] = to_device(v, device)
        elif torch.is_tensor(v):
            out[k] = v.to(device, non_blocking=True)
        else:
            out[k] = v
    return out


def forward_model(model: nn.Module, batch: dict):
    keys = getattr(model, "input_keys", ("image",))
    return model(*[batch[k] for k in keys])


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


# ------------------------------------------------------------------------------------------ metrics


def pooled_dice(logits: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per-class (tp, fp, fn) counts ``(n_classes, 3)`` of argmax (or logit > 0 for one channel)."""
    pred = logits.argmax(1) if logits.shape[1] > 1 else (logits[:, 0] > 0).long()
    counts = torch.zeros(n_classes, 3, dtype=torch.float64)
    for c in range(1, n_classes):
        p, t = pred == c, target == c
        counts[c, 0] += (p & t).sum()
        counts[c, 1] += (p & ~t).sum()
        counts[c, 2] += (~p & t).sum()
    return counts


@torch.no_grad()
def validate(model, objective, recorder, teachers, data, spec, batch_size, device, epoch) -> dict:
    """Validation loss, and Dice (segmentation) or MSE (reconstruction), over the whole split."""
    model.eval()
    n_classes = len(spec["classes"]) if spec["task"] == "segmentation" else 0
    counts = torch.zeros(max(n_classes, 1), 3, dtype=torch.float64)
    loss_sum, sq_err, n_pix, n = 0.0, 0.0, 0, len(data)
    for start in range(0, n, batch_size):
        batch = to_device(data.batch(torch.arange(start, min(start + batch_size, n))), device)
        output = forward_model(model, batch)
        t_out = {name: (rec, forward_model(t, batch)) for name, (t, rec) in teachers.items()}
        loss, _ = objective(output, recorder, t_out, batch, epoch)
        b = batch["image"].shape[0]
        loss_sum += float(loss) * b
        pred = main_output(output).float()
        if n_classes:
            counts += pooled_dice(pred.cpu(), batch["target"].cpu(), n_classes)
        else:
            sq_err += float(((pred - batch["target"]) ** 2).sum())
            n_pix += batch["target"].numel()
    out = {"val_loss": loss_sum / n}
    if n_classes:
        tp, fp, fn = counts[1:, 0], counts[1:, 1], counts[1:, 2]
        denom = 2 * tp + fp + fn
        dice = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.ones_like(denom))
        out["val_dice"] = float(dice.mean())
    else:
        out["val_mse"] = sq_err / max(n_pix, 1)
    return out


# ------------------------------------------------------------------------------------------ loop


def _selection(spec: dict) -> tuple[str, str]:
    sel = spec["train"]["select"]
    metric = sel.get("metric", "val_loss")
    if metric == "val_dice" and spec["task"] != "segmentation":
        raise ValueError("select metric val_dice needs a segmentation task")
    if metric == "val_mse" and spec["task"] == "segmentation":
        raise ValueError("select metric val_mse needs a reconstruction task")
    mode = sel.get("mode") or ("max" if metric == "val_dice" else "min")
    return metric, mode


def _better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


def train(spec: dict, seed: int, inputs: TrainInputs, out_dir: str | Path, progress: bool | None = None) -> dict:
    """Train one model; returns the summary written to ``summary.json``.

    Raises:
        ValueError: inconsistent inputs (missing cache, unknown tap, split without cases).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(spec.get("threads", 1)))
    device = resolve_device(spec.get("device", "auto"))
    tcfg = spec["train"]
    hsh = spec_hash(spec)
    metric, mode = _selection(spec)

    torch.manual_seed(seed)
    train_data = load_split_data(spec, inputs, tcfg["subset"])
    val_data = load_split_data(spec, inputs, tcfg["val_split"])
    if len(train_data) == 0 or len(val_data) == 0:
        raise ValueError(f"{spec['model']}: empty training ({len(train_data)}) or validation ({len(val_data)}) data")
    _attach_caches(spec, inputs, train_data)
    _attach_caches(spec, inputs, val_data)

    model = build_from_spec(spec).to(device)
    if inputs.init_dir is not None:
        state = torch.load(Path(inputs.init_dir) / "model.pt", map_location=device, weights_only=True)
        model.load_state_dict(state)
        log.info("initialised from %s", inputs.init_dir)
    scores = {n: read_json(p).get("best_val", {}).get("val_dice") for n, p in inputs.teacher_summaries.items()}
    objective = Objective(resolve_teacher_weights(spec["losses"], scores)).to(device)
    recorder = TapRecorder(model, objective.student_taps())

    teachers = {}
    taps = teacher_taps(spec)
    for name in online_teachers(spec):
        if name not in inputs.teacher_dirs:
            raise ValueError(f"model {spec['model']!r} taps teacher {name!r} online but no teacher dir was given")
        tmodel, _ = load_trained(inputs.teacher_dirs[name], device)
        for p in tmodel.parameters():
            p.requires_grad_(False)
        teachers[name] = (tmodel, TapRecorder(tmodel, [t for t in taps[name] if not t.startswith("cache:")]))

    params = [p for p in model.parameters() if p.requires_grad] + [p for p in objective.parameters() if p.requires_grad]
    if tcfg["epochs"] > 0 and not params:
        raise ValueError(f"{spec['model']}: nothing to train (no parameters); set train.epochs to 0 for a baseline")
    optimizer = build_optimizer(params, tcfg["optimizer"]) if params else None
    scheduler = build_scheduler(optimizer, tcfg["scheduler"], tcfg["epochs"]) if optimizer else None
    use_amp = bool(tcfg.get("amp")) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    generator = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    start_epoch, best, best_epoch = 0, None, None
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if last_path.exists():
        ckpt = torch.load(last_path, map_location=device, weights_only=True)
        if ckpt.get("spec_hash") == hsh and int(ckpt.get("seed", -1)) == seed and best_path.exists():
            model.load_state_dict(ckpt["model"])
            if optimizer is not None:
                optimizer.load_state_dict(ckpt["optimizer"])
            objective.load_state_dict(ckpt["objective"])
            if scheduler is not None:
                scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            generator.set_state(ckpt["generator"])
            torch.set_rng_state(ckpt["torch_rng"])
            start_epoch, history = int(ckpt["epoch"]) + 1, list(ckpt["history"])
            best, best_epoch = ckpt["best"], ckpt["best_epoch"]
            log.info("resumed from %s at epoch %d (of %d)", last_path, start_epoch, tcfg["epochs"])
        else:
            log.info("ignoring %s: written for another spec or seed", last_path)
    epochs_log = out_dir / "epochs.jsonl"
    with atomic_path(epochs_log) as tmp:  # rewrite the log from the checkpoint's history
        tmp.write_text("".join(json.dumps(h, sort_keys=True) + "\n" for h in history))

    n, bs = len(train_data), tcfg["batch_size"]
    bar = tqdm(range(start_epoch, tcfg["epochs"]), desc=f"train {spec['model']} seed{seed}", unit="epoch",
               disable=(not progress) if progress is not None else None, file=sys.stderr)
    for epoch in bar:
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=generator)
        if tcfg["drop_last"] and n >= bs:
            perm = perm[: n - n % bs]
        sums: dict[str, float] = {}
        total_sum, seen = 0.0, 0
        for start in range(0, len(perm), bs):
            batch = to_device(train_data.batch(perm[start : start + bs]), device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                output = forward_model(model, batch)
                t_out = {}
                if teachers:
                    with torch.no_grad():
                        t_out = {name: (rec, forward_model(t, batch)) for name, (t, rec) in teachers.items()}
                loss, parts = objective(output, recorder, t_out, batch, epoch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            b = batch["image"].shape[0]
            seen += b
            total_sum += float(loss.detach()) * b
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * b
        train_time = time.perf_counter() - t0
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        val = validate(model, objective, recorder, teachers, val_data, spec, bs, device, epoch)
        score = val.get(metric, float(epoch)) if metric != "last" else float(epoch)
        improved = _better(score, best, "max" if metric == "last" else mode)
        if improved:
            best, best_epoch = score, epoch
            with atomic_path(best_path) as tmp:
                torch.save(model.state_dict(), tmp)
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": total_sum / max(seen, 1),
            "terms": {k: v / max(seen, 1) for k, v in sums.items()},
            **val,
            "train_seconds": train_time,
            "slices_per_second": seen / train_time if train_time > 0 else None,
            "best": improved,
        }
        history.append(record)
        append_jsonl(epochs_log, record)
        with atomic_path(last_path) as tmp:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "objective": objective.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "epoch": epoch,
                    "history": history,
                    "best": best,
                    "best_epoch": best_epoch,
                    "spec_hash": hsh,
                    "seed": seed,
                },
                tmp,
            )
        bar.set_postfix(loss=f"{record['train_loss']:.4f}", **{metric: f"{score:.4f}"})
        log.info("epoch %d: loss %.4f %s", epoch, record["train_loss"],
                 " ".join(f"{k} {v:.4f}" for k, v in val.items()))
    if not best_path.exists():  # epochs == 0: a baseline, scored once on validation
        val = validate(model, objective, recorder, teachers, val_data, spec, bs, device, 0)
        best, best_epoch = val.get(metric), None
        with atomic_path(best_path) as tmp:
            torch.save(model.state_dict(), tmp)
    recorder.remove()

    summary = {
        "experiment": spec["experiment"],
        "model": spec["model"],
        "seed": seed,
        "role": spec["role"],
        "kd_method": spec.get("kd_method", "none"),
        "arch": spec["arch"],
        "params": count_parameters(model),
        "trainable_params": count_parameters(model, trainable_only=True),
        "flops_per_slice": flops_per_slice(model, to_device(val_data.batch(torch.arange(1)), device)),
        "select_metric": metric,
        "best_epoch": best_epoch,
        "best_score": best,
        "best_val": {k: v for k, v in (history[best_epoch] if best_epoch is not None else val).items()
                     if k.startswith("val_")},
        "epochs": tcfg["epochs"],
        "train_slices": n,
        "val_slices": len(val_data),
        "train_seconds": sum(h["train_seconds"] for h in history),
        "spec_hash": hsh,
        "data_hash": inputs.data_hash,
    }
    write_json(out_dir / "config.json", {
        "spec": spec,
        "seed": seed,
        "spec_hash": hsh,
        "inputs": {
            "store": str(inputs.store), "split": str(inputs.split),
            "teacher_dirs": {k: str(v) for k, v in inputs.teacher_dirs.items()},
            "caches": {k: str(v) for k, v in inputs.caches.items()},
            "init_dir": str(inputs.init_dir) if inputs.init_dir else None,
            "teacher_summaries": {k: str(v) for k, v in inputs.teacher_summaries.items()},
        },
    })
    write_json(out_dir / "env.json", environment_record(inputs.data_hash))
    with atomic_path(out_dir / "model.pt") as tmp:
        shutil.copyfile(best_path, tmp)
    write_json(out_dir / "summary.json", summary)
    return summary
