"""The typed, frozen model spec: everything a train, cache or infer job needs to know about one model.

A :class:`ModelSpec` is built once from the schema-validated config (:func:`medkd.config.model_spec`)
or from the JSON a rule passes on the command line (:meth:`ModelSpec.from_json`). Defaults live in one
place, the JSON schema (``workflow/schemas/config.schema.yaml``): :meth:`ModelSpec.from_dict` validates
its input against the schema's ``model`` definition, which fills every default, and the dataclasses
below declare no defaults of their own. Keys the schema leaves optional and that have no default (an
optimiser's ``betas``, a model's ``compare_to``) are ``None`` here.

Why dataclasses and not pydantic: the schema already validates and fills defaults (Snakemake validates
with it too), so a second validation layer would duplicate it; frozen dataclasses give attribute
access, immutability and type hints with no new dependency, and this module imports neither torch nor
Snakemake (the Snakefile builds specs to hash them).

What is NOT in a spec: run settings (device, threads, channels_last, cudnn_benchmark, deterministic, paths).
They are passed on the command line by the rule, recorded in ``env.json``, and never hashed, so moving a run
from CPU to GPU or changing its threads neither re-trains a model nor breaks its resume. The arithmetic
precision (``train.precision``) is in the spec: it changes the numbers a recipe produces.

Mapping-valued fields (``classes``, ``arch_kwargs``, loss ``kwargs``, ``fidelity``) are read-only
:class:`types.MappingProxyType` views; :meth:`ModelSpec.to_dict` returns plain JSON-ready data, and
``ModelSpec.from_dict(spec.to_dict()) == spec``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, fields
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Mapping

Tap = str | tuple[str, ...]

__all__ = [
    "CacheSpec", "LossSpec", "ModelSpec", "OptimizerSpec", "SchedulerSpec", "SelectSpec", "TrainSpec",
    "canonical_json", "spec_hash", "term_keys",
]


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces: the form every hash in medkd is taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def spec_hash(spec: "ModelSpec | Mapping") -> str:
    """First 12 hex digits of the SHA-256 of the spec's canonical JSON."""
    data = spec.to_dict() if isinstance(spec, ModelSpec) else spec
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:12]


def _frozen(value: Any) -> Any:
    """Deep read-only copy: dicts -> MappingProxyType, lists -> tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _thawed(value: Any) -> Any:
    """Inverse of :func:`_frozen`: plain dicts and lists (JSON-ready); nested specs via ``to_dict``."""
    if isinstance(value, _Spec):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    return value


def _tap(value) -> Tap:
    return tuple(value) if isinstance(value, (list, tuple)) else value


class _Spec:
    """Shared ``to_dict``: fields in order, ``None`` (an absent optional key) left out."""

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = _thawed(value)
        return out


@dataclass(frozen=True)
class OptimizerSpec(_Spec):
    name: str  # adam | adamw | sgd | rmsprop
    lr: float
    weight_decay: float
    betas: tuple[float, float] | None
    momentum: float | None
    alpha: float | None  # RMSprop smoothing constant
    eps: float | None

    @classmethod
    def from_dict(cls, d: Mapping) -> "OptimizerSpec":
        betas = d.get("betas")
        return cls(name=d["name"], lr=float(d["lr"]), weight_decay=float(d["weight_decay"]),
                   betas=tuple(betas) if betas is not None else None, momentum=d.get("momentum"),
                   alpha=d.get("alpha"), eps=d.get("eps"))


@dataclass(frozen=True)
class SchedulerSpec(_Spec):
    name: str  # none | step | cosine; stepped once per epoch
    step_size: int | None
    gamma: float | None

    @classmethod
    def from_dict(cls, d: Mapping) -> "SchedulerSpec":
        return cls(name=d["name"], step_size=d.get("step_size"), gamma=d.get("gamma"))


@dataclass(frozen=True)
class SelectSpec(_Spec):
    metric: str  # val_dice | val_loss | val_mse | val_term | last
    mode: str | None  # min | max; None = the metric's natural direction
    term: tuple[str, ...] | None  # val_term: the loss term(s) whose unweighted validation values are summed

    @classmethod
    def from_dict(cls, d: Mapping) -> "SelectSpec":
        term = d.get("term")
        if term is not None:
            term = (term,) if isinstance(term, str) else tuple(term)
        return cls(metric=d["metric"], mode=d.get("mode"), term=term)


def term_keys(losses: "tuple[LossSpec, ...] | list", selectors: tuple[str, ...] | list) -> list[str]:
    """The logged names ``"<index>:<loss name>"`` of the loss terms ``selectors`` pick.

    A selector is a logged name (``"2:dice"``), an index (``"2"``) or a loss name (``"dice"``) that
    exactly one term of ``losses`` (LossSpecs or config dicts) carries.

    Raises:
        ValueError: a selector that matches no term, or a loss name that several terms share.
    """
    names = [t["loss"] if isinstance(t, Mapping) else t.loss for t in losses]
    keys = [f"{i}:{n}" for i, n in enumerate(names)]
    out = []
    for sel in selectors:
        sel = str(sel)
        if sel in keys:
            key = sel
        elif sel.isdigit() and int(sel) < len(keys):
            key = keys[int(sel)]
        else:
            hits = [k for k, n in zip(keys, names) if n == sel]
            if len(hits) != 1:
                why = "several terms carry it" if hits else "no term matches"
                raise ValueError(f"select term {sel!r}: {why} (terms: {', '.join(keys)})")
            key = hits[0]
        if key in out:
            raise ValueError(f"select term {sel!r} named twice")
        out.append(key)
    return out


@dataclass(frozen=True)
class TrainSpec(_Spec):
    epochs: int  # 0 = no optimisation (a baseline scored once)
    batch_size: int
    subset: str  # split or nested subset trained on
    val_split: str
    drop_last: bool
    precision: str  # fp32 | bf16 | fp16 (autocast; part of the recipe, hence of the hash)
    optimizer: OptimizerSpec
    scheduler: SchedulerSpec
    select: SelectSpec
    max_steps: int | None = None  # optimisation steps per epoch at most (a rehearsal); None: every batch
    max_val_slices: int | None = None  # validate on the first N slices only (a rehearsal); None: all

    @classmethod
    def from_dict(cls, d: Mapping) -> "TrainSpec":
        return cls(epochs=int(d["epochs"]), batch_size=int(d["batch_size"]), subset=d["subset"],
                   val_split=d["val_split"], drop_last=bool(d["drop_last"]), precision=d["precision"],
                   optimizer=OptimizerSpec.from_dict(d["optimizer"]),
                   scheduler=SchedulerSpec.from_dict(d["scheduler"]), select=SelectSpec.from_dict(d["select"]),
                   max_steps=d.get("max_steps"), max_val_slices=d.get("max_val_slices"))


@dataclass(frozen=True)
class LossSpec(_Spec):
    """One weighted term of the objective. ``teacher`` is None for task losses, a name, or a tuple of
    names (multi-teacher terms); taps are a string or a tuple of strings."""

    loss: str
    weight: float
    kwargs: Mapping[str, Any]
    student_tap: Tap
    teacher: Tap | None
    teacher_tap: Tap

    @classmethod
    def from_dict(cls, d: Mapping) -> "LossSpec":
        return cls(loss=d["loss"], weight=float(d["weight"]), kwargs=_frozen(d["kwargs"]),
                   student_tap=_tap(d["student_tap"]), teacher=_tap(d["teacher"]) if "teacher" in d else None,
                   teacher_tap=_tap(d["teacher_tap"]))

    @property
    def teachers(self) -> tuple[str, ...]:
        """The teacher names this term reads (empty for a task loss)."""
        if self.teacher is None:
            return ()
        return self.teacher if isinstance(self.teacher, tuple) else (self.teacher,)

    @property
    def teacher_taps(self) -> tuple[str, ...]:
        return self.teacher_tap if isinstance(self.teacher_tap, tuple) else (self.teacher_tap,)

    @property
    def student_taps(self) -> tuple[str, ...]:
        return self.student_tap if isinstance(self.student_tap, tuple) else (self.student_tap,)


@dataclass(frozen=True)
class CacheSpec(_Spec):
    uncertainty: tuple[str, ...]
    confidence_temperature: float
    mc_passes: int

    @classmethod
    def from_dict(cls, d: Mapping) -> "CacheSpec":
        return cls(uncertainty=tuple(d["uncertainty"]), confidence_temperature=float(d["confidence_temperature"]),
                   mc_passes=int(d["mc_passes"]))


@dataclass(frozen=True)
class ModelSpec(_Spec):
    """One model of one experiment.

    ``classes`` maps class name -> label values (segmentation; empty otherwise), in output-channel order
    (index 0 = background). ``channels`` are the input channels of the slice store.
    """

    experiment: str
    model: str
    dataset: str
    task: str  # segmentation | reconstruction | super_resolution
    channels: tuple[int, ...]
    classes: Mapping[str, tuple[int, ...]]
    role: str  # teacher | student | baseline
    arch: str
    arch_kwargs: Mapping[str, Any]
    kd_method: str
    compare_to: str | None
    teachers: tuple[str, ...]
    init_from: str | None
    fidelity: Mapping[str, Any]
    train: TrainSpec
    losses: tuple[LossSpec, ...]
    cache: CacheSpec

    # ------------------------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, d: Mapping) -> "ModelSpec":
        """Validate ``d`` (a model's config entry plus experiment, model, dataset, task, channels,
        classes) against the schema, filling defaults, and build the spec.

        Raises:
            medkd.config.ConfigError: naming the key path, if ``d`` does not follow the schema.
        """
        d = _validated_model(d)
        return cls(
            experiment=d["experiment"], model=d["model"], dataset=d["dataset"], task=d["task"],
            channels=tuple(int(c) for c in d["channels"]), classes=_frozen(d.get("classes", {})),
            role=d["role"], arch=d["arch"], arch_kwargs=_frozen(d["arch_kwargs"]), kd_method=d["kd_method"],
            compare_to=d.get("compare_to"), teachers=tuple(d["teachers"]), init_from=d.get("init_from"),
            fidelity=_frozen(d["fidelity"]), train=TrainSpec.from_dict(d["train"]),
            losses=tuple(LossSpec.from_dict(t) for t in d["losses"]), cache=CacheSpec.from_dict(d["cache"]),
        )

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        return cls.from_dict(json.loads(text))

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @property
    def hash(self) -> str:
        return spec_hash(self)

    # ------------------------------------------------------------------------------- queries
    @property
    def is_segmentation(self) -> bool:
        return self.task == "segmentation"

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def in_out_channels(self) -> tuple[int, int]:
        """(in_channels, out_channels) of the network; ``arch_kwargs.out_channels`` may override the
        output count (e.g. 1 for single-logit binary models)."""
        if self.is_segmentation:
            cin, cout = len(self.channels), len(self.classes)
        else:
            cin, cout = 1, 1
        return cin, int(self.arch_kwargs.get("out_channels", cout))

    def teacher_taps(self) -> dict[str, set[str]]:
        """teacher name -> the taps this model's loss terms read from it (``cache:*`` or module paths)."""
        taps: dict[str, set[str]] = {}
        for term in self.losses:
            for teacher in term.teachers:
                taps.setdefault(teacher, set()).update(term.teacher_taps)
        return taps

    def cached_teachers(self) -> list[str]:
        """Teachers whose cached outputs (``cache:*`` taps) the model reads."""
        return sorted(t for t, taps in self.teacher_taps().items() if any(x.startswith("cache:") for x in taps))

    def online_teachers(self) -> list[str]:
        """Teachers run during training (their taps are module paths or outputs)."""
        return sorted(t for t, taps in self.teacher_taps().items() if any(not x.startswith("cache:") for x in taps))


# ----------------------------------------------------------------------------------- validation

_CONTEXT = {
    "experiment": {"type": "string"}, "model": {"type": "string"}, "dataset": {"type": "string"},
    "task": {"enum": ["segmentation", "reconstruction", "super_resolution"]},
    "channels": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "classes": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "integer"}}},
}


@lru_cache(maxsize=1)
def _model_validator():
    from medkd.config import load_schema, schema_validator

    schema = load_schema()
    model = copy.deepcopy(schema["$defs"]["model"])
    model["properties"].update(_CONTEXT)
    model["required"] = sorted(set(model["required"]) | {"experiment", "model", "dataset", "task", "channels", "losses"})
    return schema_validator({**model, "$defs": schema["$defs"]})


def _validated_model(d: Mapping) -> dict:
    from medkd.config import ConfigError, format_error

    import jsonschema

    d = copy.deepcopy(_thawed(d))
    errors = list(_model_validator().iter_errors(d))
    if errors:
        raise ConfigError(format_error(jsonschema.exceptions.best_match(errors), "model spec"))
    return d
