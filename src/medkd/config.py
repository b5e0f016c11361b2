"""Load, validate, resolve and hash medkd configs.

A config (``config/config.yaml`` for the embedded default, ``config/paper.yaml`` for paper scale) names
datasets and experiments; an experiment names its models (teachers and students), each with an
architecture, a training recipe and a weighted list of loss terms. The JSON schema in
``workflow/schemas/config.schema.yaml`` is the single definition of every key: this module and
Snakemake's ``validate`` both use it. Every object in it is closed, so a misspelt key is an error that
names the key and where it is.

Resolution turns one (experiment, model) into a typed :class:`medkd.spec.ModelSpec`: the frozen,
self-contained description a train, cache or infer job needs. Snakemake passes its JSON as a job
parameter, so changing one model's hyper-parameters changes only that model's spec and re-runs only
that model's chain. The spec's hash (:func:`spec_hash`) names the checkpoint a resumed job may continue
from. Run settings (``device``, ``threads``) stay in the config, reach jobs on the command line and are
never part of a spec.

This module imports neither torch nor Snakemake: the Snakefile imports it too.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

from medkd.errors import InputError
from medkd.io import load_yaml

from medkd.spec import ModelSpec, canonical_json, spec_hash, term_keys  # noqa: F401  (re-exported)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(InputError):
    """A config that does not follow the schema or refers to something that does not exist."""


def _with_defaults(validator_class):
    """A validator class that also fills ``default`` values of ``properties`` (jsonschema FAQ recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def schema_validator(schema: dict) -> jsonschema.protocols.Validator:
    """A JSON Schema (draft 2020-12) validator of ``schema`` that fills ``default`` values while validating.

    The one recipe for medkd's YAML files: this module's config schema and ``config/datasets.yaml``
    (:mod:`medkd.data.sources.spec`).
    """
    return _Validator(schema)


def validate_part(pointer: str, instance: dict, source: str) -> dict:
    """Validate ``instance`` against the part of the config schema at JSON pointer ``pointer`` (e.g.
    ``/$defs/dataset/properties/generator``) and return a copy with that part's defaults filled: how a
    step that receives one piece of the config gets its defaults from the one place they live.

    Raises:
        ConfigError: naming ``source`` and the key path.
    """
    schema = load_schema()
    part = schema
    for key in pointer.strip("/").split("/"):
        part = part[key]
    instance = copy.deepcopy(instance)
    errors = list(schema_validator({**part, "$defs": schema["$defs"]}).iter_errors(instance))
    if errors:
        raise ConfigError(format_error(jsonschema.exceptions.best_match(errors), source))
    return instance


_SCHEMA_CACHE: dict = {}


def load_schema() -> dict:
    """The config schema (parsed once per process and file version; a copy per call)."""
    stat = SCHEMA_PATH.stat()
    key = (stat.st_mtime_ns, stat.st_size)
    if _SCHEMA_CACHE.get("key") != key:
        with open(SCHEMA_PATH) as fh:
            _SCHEMA_CACHE.update(key=key, schema=load_yaml(fh))
    return copy.deepcopy(_SCHEMA_CACHE["schema"])


def _read_yaml(path: Path) -> dict:
    try:
        with open(path) as fh:
            data = load_yaml(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def _merge_includes(cfg: dict, root: Path, seen: tuple = ()) -> dict:
    """Merge the ``datasets`` and ``experiments`` of every ``include`` file under ``cfg`` (cfg wins)."""
    for key in ("datasets", "experiments"):
        if key in cfg and not isinstance(cfg[key], dict):
            raise ConfigError(f"invalid config at '{key}': must be a mapping, got {type(cfg[key]).__name__}")
    if not isinstance(cfg.get("include", []), list) or not all(isinstance(i, str) for i in cfg.get("include", [])):
        raise ConfigError("invalid config at 'include': must be a list of file names or patterns")
    merged = {"datasets": {}, "experiments": {}}
    paths = []
    for rel in cfg.get("include", []):
        matches = sorted(root.glob(rel)) if any(ch in rel for ch in "*?[") else [root / rel]
        paths += matches
    for path in paths:
        rel = path
        path = path.resolve()
        if path in seen:
            raise ConfigError(f"include cycle through {path}")
        sub = _merge_includes(_read_yaml(path), root, seen + (path,))
        extra = set(sub) - {"datasets", "experiments", "include", "description"}
        if extra:
            raise ConfigError(f"{rel}: an included file may only hold datasets and experiments, found {sorted(extra)}")
        merged["datasets"].update(sub.get("datasets", {}))
        merged["experiments"].update(sub.get("experiments", {}))
    out = copy.deepcopy(cfg)
    out["datasets"] = {**merged["datasets"], **cfg.get("datasets", {})}
    out["experiments"] = {**merged["experiments"], **cfg.get("experiments", {})}
    return out


def format_error(err: jsonschema.ValidationError, source: str) -> str:
    where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
    return f"{source}: invalid config at '{where}': {err.message}"


def validate(cfg: dict, source: str = "config") -> dict:
    """Validate ``cfg`` against the schema, fill defaults (in a copy) and check cross-references.

    Raises:
        ConfigError: naming the offending key path, for the first schema error (the best match) or a
            broken reference (unknown dataset, teacher, split subset, init model).
    """
    cfg = copy.deepcopy(cfg)
    validator = schema_validator(load_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(format_error(jsonschema.exceptions.best_match(errors), source))
    _check_references(cfg, source)
    return cfg


def _check_references(cfg: dict, source: str) -> None:
    for exp_name, exp in cfg["experiments"].items():
        where = f"{source}: experiments/{exp_name}"
        if exp["dataset"] not in cfg["datasets"]:
            raise ConfigError(f"{where}/dataset: unknown dataset {exp['dataset']!r}")
        if exp["task"] == "segmentation" and len(exp.get("classes", {})) < 2:
            raise ConfigError(f"{where}/classes: a segmentation experiment needs at least two classes")
        for region, members in exp.get("regions", {}).items():
            unknown = [m for m in members if m not in exp.get("classes", {})]
            if unknown:
                raise ConfigError(f"{where}/regions/{region}: unknown classes {unknown}")
        if exp["task"] != "segmentation" and "kspace" not in exp:
            raise ConfigError(f"{where}/kspace: a {exp['task']} experiment needs a kspace entry (name and mask spec)")
        split_names = {"train", "val", "test"} | set(exp["split"].get("subsets", {}))
        for sub_name, sub in exp["split"].get("subsets", {}).items():
            if sub["of"] not in {"train", "val", "test"}:
                raise ConfigError(f"{where}/split/subsets/{sub_name}/of: must be train, val or test")
        models = exp["models"]
        for model_name, model in models.items():
            mwhere = f"{where}/models/{model_name}"
            for teacher in model["teachers"]:
                if teacher not in models:
                    raise ConfigError(f"{mwhere}/teachers: unknown model {teacher!r}")
                if models[teacher]["role"] != "teacher":
                    raise ConfigError(f"{mwhere}/teachers: {teacher!r} has role {models[teacher]['role']!r}, not teacher")
            if model["role"] == "teacher" and model["teachers"]:
                raise ConfigError(f"{mwhere}/teachers: a teacher cannot have teachers")
            ref = model.get("compare_to")
            if ref is not None and (ref not in models or ref == model_name):
                raise ConfigError(f"{mwhere}/compare_to: unknown model {ref!r}")
            init = model.get("init_from")
            if init is not None and (init not in models or init == model_name):
                raise ConfigError(f"{mwhere}/init_from: unknown model {init!r}")
            for key in ("subset", "val_split"):
                if model["train"][key] not in split_names:
                    raise ConfigError(f"{mwhere}/train/{key}: unknown split or subset {model['train'][key]!r}")
            if "losses" not in model:
                raise ConfigError(f"{mwhere}/losses: required")
            select = model["train"]["select"]
            if select["metric"] == "val_term":
                if "term" not in select:
                    raise ConfigError(f"{mwhere}/train/select/term: required with metric val_term")
                try:
                    term_keys(model["losses"], _as_list(select["term"]))
                except ValueError as err:
                    raise ConfigError(f"{mwhere}/train/select/term: {err}") from None
            elif "term" in select:
                raise ConfigError(f"{mwhere}/train/select/term: only with metric val_term")
            _check_name(model["arch"], "model", f"{mwhere}/arch")
            for i, term in enumerate(model["losses"]):
                _check_name(term["loss"], "loss", f"{mwhere}/losses/{i}/loss")
                teachers = _as_list(term.get("teacher"))
                for teacher in teachers:
                    if teacher not in model["teachers"]:
                        raise ConfigError(
                            f"{mwhere}/losses/{i}/teacher: {teacher!r} is not among this model's teachers {model['teachers']}"
                        )
                _check_taps(term, "student_tap", f"{mwhere}/losses/{i}/student_tap", None)
                if teachers:
                    for teacher in teachers:
                        _check_taps(term, "teacher_tap", f"{mwhere}/losses/{i}/teacher_tap", models[teacher])
        unknown = sorted(set(exp.get("resources", {}).get("models", {})) - set(models))
        if unknown:
            raise ConfigError(f"{where}/resources/models: unknown models {unknown}")
        _check_init_cycles(models, where)


# Keys a teacher cache holds besides its uncertainty maps (medkd.cache): segmentation logits, or the
# reconstructed image.
CACHE_MAIN_KEYS = ("logits", "output")
_MODULE_PATH = __import__("re").compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")


def _check_name(name: str, kind: str, where: str) -> None:
    """``name`` is registered in the ``kind`` registry (found statically: no torch import)."""
    known = _registered(kind)
    if known and name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=1)
        raise ConfigError(f"{where}: unknown {kind} {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                          + f"; known: {', '.join(sorted(known))}")


_REGISTERED: dict = {}


def _registered(kind: str) -> dict:
    """Registered names of a registry, read statically once per process (medkd.codehash.registered)."""
    if kind not in _REGISTERED:
        from medkd.codehash import registered

        _REGISTERED[kind] = registered(kind)
    return _REGISTERED[kind]


def _check_taps(term: dict, key: str, where: str, teacher: dict | None) -> None:
    """Tap syntax at planning time: ``out``, ``out:<key>``, ``cache:<key>`` (teacher taps only, a key the
    teacher's cache holds) or a module path (``encoders.1``). Whether a module path exists in the network
    is checked when the job builds the model (``medkd.distill.taps`` names the missing module)."""
    taps = _as_list(term.get(key))
    if not taps:
        raise ConfigError(f"{where}: empty tap list")
    for tap in taps:
        if not isinstance(tap, str) or not tap:
            raise ConfigError(f"{where}: a tap must be a non-empty string, got {tap!r}")
        if tap == "out":
            continue
        head, sep, rest = tap.partition(":")
        if sep:
            if head == "out" and _MODULE_PATH.fullmatch(rest):
                continue
            if head == "cache" and teacher is not None:
                keys = set(CACHE_MAIN_KEYS) | set(teacher.get("cache", {}).get("uncertainty", []))
                if rest in keys:
                    continue
                raise ConfigError(f"{where}: {tap!r}: the teacher cache holds {sorted(keys)} (set the teacher's "
                                  "cache.uncertainty to add maps)")
            raise ConfigError(f"{where}: {tap!r} is not a tap: use out, out:<key>, "
                              + ("cache:<key> or " if teacher is not None else "") + "a module path")
        if not _MODULE_PATH.fullmatch(tap):
            raise ConfigError(f"{where}: {tap!r} is not a module path (e.g. encoders.1)")


def _check_init_cycles(models: dict, where: str) -> None:
    for start in models:
        seen, cur = [start], models[start].get("init_from")
        while cur is not None:
            if cur in seen:
                raise ConfigError(f"{where}: init_from cycle {' -> '.join(seen + [cur])}")
            seen.append(cur)
            cur = models[cur].get("init_from")


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def load_config(source: str | Path | dict, root: Path = REPO_ROOT) -> dict:
    """Read (if a path), merge includes, validate and fill defaults.

    Args:
        source: a YAML path or an already-loaded mapping (e.g. Snakemake's ``config``).
        root: directory that ``include`` paths are relative to.
    """
    if isinstance(source, dict):
        raw, name = source, "config"
    else:
        raw, name = _read_yaml(Path(source)), str(source)
    return validate(_merge_includes(raw, Path(root)), name)


# --------------------------------------------------------------------------------------------- queries


def config_digest(cfg: dict) -> str:
    """First 12 hex digits of the SHA-256 of a validated config's canonical JSON: the Snakemake client and
    the jobs it submits compare it (workflow/rules/common.smk)."""
    import hashlib

    return hashlib.sha256(canonical_json(cfg).encode()).hexdigest()[:12]


def experiment_seeds(cfg: dict, exp: str) -> list[int]:
    """Seeds of ``exp``: its own list, or the config's default list (a rehearsal: the first ``seeds`` of it)."""
    seeds = list(cfg["experiments"][exp].get("seeds") or cfg["seeds"])
    if cfg.get("rehearsal"):
        seeds = seeds[: cfg["rehearsal"]["seeds"]]
    return seeds


def rehearsed(train: dict, rehearsal: dict | None) -> dict:
    """A model's ``train`` entry under the config's ``rehearsal`` (unchanged without one): at most
    ``rehearsal.epochs`` epochs (0 stays 0) of at most ``steps`` optimisation steps, ``val_slices``
    validation slices; architecture, image size and batch size are untouched."""
    if not rehearsal:
        return train
    out = dict(train)
    out["epochs"] = min(int(train["epochs"]), int(rehearsal["epochs"]))
    out["max_steps"] = min(int(train.get("max_steps") or rehearsal["steps"]), int(rehearsal["steps"]))
    out["max_val_slices"] = min(int(train.get("max_val_slices") or rehearsal["val_slices"]),
                                int(rehearsal["val_slices"]))
    return out


def model_spec(cfg: dict, exp: str, model: str) -> ModelSpec:
    """The typed, self-contained spec of one model of one experiment (everything a job needs but run
    settings and paths)."""
    e = cfg["experiments"][exp]
    entry = copy.deepcopy(e["models"][model])
    entry["train"] = rehearsed(entry["train"], cfg.get("rehearsal"))
    return ModelSpec.from_dict({
        "experiment": exp,
        "model": model,
        "dataset": e["dataset"],
        "task": e["task"],
        "channels": list(e["channels"]),
        "classes": copy.deepcopy(e.get("classes", {})),
        **entry,
    })


CACHED_SPLITS = ("train", "val")  # a teacher cache's default: every case a student could train or validate on


def cache_splits(cfg: dict, exp: str, teacher: str) -> list[str]:
    """The split / subset names whose cases the cache of ``teacher`` must hold: the training subset and
    validation split of every model of ``exp`` that reads the teacher's cached outputs (``cache:*`` taps),
    without repeats, in the order met (models in config order, training subset before validation split).
    :data:`CACHED_SPLITS` when no model reads the cache (it is then only built on request)."""
    names: list[str] = []
    for model in cfg["experiments"][exp]["models"]:
        spec = model_spec(cfg, exp, model)
        if teacher in spec.cached_teachers():
            for name in (spec.train.subset, spec.train.val_split):
                if name not in names:
                    names.append(name)
    return names or list(CACHED_SPLITS)
