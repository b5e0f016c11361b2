"""Config fuzzing (hypothesis): every mutation of config/config.yaml either plans cleanly or fails before
any job runs with a ConfigError naming the key; never another exception.

"Plans cleanly" is what the Snakefile does at planning time: load_config, then every model's typed spec,
seeds and code hash. A mutation that passes must therefore not fail later for a config reason; the
mutations are the kinds a user makes: wrong types, unknown keys, missing keys, out-of-range numbers,
misspelt model / loss / tap / teacher names.
"""

from __future__ import annotations

import copy

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medkd.codehash import code_hash
from medkd.config import REPO_ROOT, ConfigError, experiment_seeds, load_config, model_spec

BASE = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
N_EXAMPLES = int(__import__("os").environ.get("MEDKD_FUZZ_EXAMPLES", "300"))


def _paths(obj, prefix=()):
    """Every (path, value) of the merged config (includes resolved, so experiments are present)."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _merged():
    from medkd.config import _merge_includes

    cfg = _merge_includes(copy.deepcopy(BASE), REPO_ROOT)
    cfg.pop("include", None)
    return cfg


MERGED = _merged()
PATHS = [p for p, _ in _paths(MERGED) if p]
NAME_KEYS = {"arch", "loss", "teacher", "teacher_tap", "student_tap", "teachers", "dataset", "init_from",
             "compare_to", "subset", "val_split"}

values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
names = st.sampled_from(["unet", "unt", "kl_div", "kl_dvi", "cache:logits", "cache:logit", "cache:entropy",
                         "out", "out:recon", "bottleneck", "encoders.1", "enc oder", "cache:", ":x",
                         "teacher", "teachr", "student", "", "train", "val", "nope"])


@st.composite
def mutations(draw):
    cfg = copy.deepcopy(MERGED)
    path = draw(st.sampled_from(PATHS))
    kind = draw(st.sampled_from(["replace", "delete", "unknown_key", "number", "name"]))
    parent = cfg
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if kind == "replace":
        parent[last] = draw(values)
    elif kind == "delete":
        if isinstance(parent, list):
            parent.pop(last)
        else:
            del parent[last]
    elif kind == "unknown_key":
        target = parent[last] if isinstance(parent[last], dict) else parent
        if isinstance(target, dict):
            target[draw(st.sampled_from(["lr_", "epoch", "lossses", "arch_kwarg", "x"]))] = 1
        else:
            parent[last] = {"unexpected": 1}
    elif kind == "number":
        old = parent[last]
        if isinstance(old, bool) or not isinstance(old, (int, float)):
            parent[last] = draw(values)
        else:
            parent[last] = draw(st.sampled_from([-1, 0, -0.5, 1e12, old * 1000, float("inf"), float("nan")]))
    else:
        parent[last] = draw(names) if path[-1] in NAME_KEYS or isinstance(parent[last], str) else draw(values)
    return path, kind, cfg


def plan(cfg: dict) -> None:
    """What the Snakefile does with a config before any job runs."""
    c = load_config(cfg)
    for exp in c["experiments"]:
        experiment_seeds(c, exp)
        for model in c["experiments"][exp]["models"]:
            spec = model_spec(c, exp, model)
            spec.to_json()
            code_hash("train", model=[spec.arch], loss=[t.loss for t in spec.losses])


@settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=__import__("os").environ.get("MEDKD_FUZZ_RANDOM") != "1")
@given(mutations())
def test_every_mutation_plans_or_names_the_key(mutation):
    path, kind, cfg = mutation
    try:
        plan(cfg)
    except ConfigError as exc:
        msg = str(exc)
        assert "\n" not in msg.strip() or "Traceback" not in msg
        # the message names where the problem is: a key of the mutated path (or its parent mapping)
        keys = [str(k) for k in path]
        assert any(k in msg for k in keys) or "(top level)" in msg or "experiments" in msg, (path, kind, msg)
    except Exception as exc:  # anything else is a bug: report the mutation, not the 40 kB config
        raise AssertionError(f"mutation {kind} at {'/'.join(map(str, path))}: {type(exc).__name__}: {exc}") from None


def test_unknown_names_fail_at_planning_time():
    exp = next(e for e, x in MERGED["experiments"].items() if "student_kd" in x["models"]
               and any("teacher" in t for t in x["models"]["student_kd"]["losses"]))
    kd = next(i for i, t in enumerate(MERGED["experiments"][exp]["models"]["student_kd"]["losses"]) if "teacher" in t)
    cases = {
        ("models", "student_kd", "losses", kd, "loss"): ("kl_dvi", f"losses/{kd}/loss"),
        ("models", "teacher", "arch"): ("unte", "teacher/arch"),
        ("models", "student_kd", "losses", kd, "teacher_tap"): ("cache:logit", f"losses/{kd}/teacher_tap"),
        ("models", "student_kd", "losses", kd, "teacher"): ("teachr", f"losses/{kd}/teacher"),
        ("models", "student_kd", "losses", 0, "student_tap"): ("out:", "losses/0/student_tap"),
    }
    for path, (value, where) in cases.items():
        cfg = copy.deepcopy(MERGED)
        node = cfg["experiments"][exp]
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        with pytest.raises(ConfigError, match=where.replace("/", "/")):
            plan(cfg)
