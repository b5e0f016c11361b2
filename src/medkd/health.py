"""Health flags: the outputs judge themselves.

Every model of an experiment is checked after evaluation; a flag has a stable name and a sentence that
states the number behind it and the bound it crossed (config ``health:``, defaults in the schema and in
:data:`HEALTH_DEFAULTS`). Flags never change a number, they explain it.

* ``non_finite``: a NaN or infinite ``train_loss`` or ``val_*`` value in any epoch of any seed
  (``epochs.jsonl`` of each model directory).
* ``not_converged``: for some seed, the validation curve of the selection metric (``train.select``;
  ``val_loss`` when selecting the last epoch), oriented so that higher is better, is still improving
  steeply at the end: with E >= 2 epochs and k = max(1, ceil(``converge_tail`` x E)) tail epochs, the
  last epoch is strictly the best, the total improvement s[E-1] - s[0] is positive, and the tail gain
  s[E-1] - s[E-1-k] exceeds ``converge_gain`` x the total improvement (defaults: the last 25 % of the
  epochs brought more than 10 % of the improvement since epoch 0). Models trained for 0 epochs
  (baselines) are not checked.
* ``collapse``: the seeds of a model disagree on the main metric (Dice per class, PSNR), on the
  per-seed means over test cases: sample sd over seeds > ``collapse_sd_dice`` / ``collapse_sd_psnr_db``,
  or one seed more than ``collapse_drop_dice`` / ``collapse_drop_psnr_db`` below the median of the other
  seeds. Needs at least 2 seeds.
* ``trivial_teacher``: a teacher no better than the trivial baseline. Segmentation: the test Dice of a
  target class (engine convention, mean over seeds of the per-case mean) is not above the Dice of
  predicting background everywhere (0 under the empty-mask policy: one empty mask scores 0, both empty
  cases are excluded) by more than ``margin_dice``. Reconstruction and super-resolution: the test PSNR
  is not above the input's (the experiment's ``baseline`` model with arch ``identity``: zero-filled or
  low-resolution image) by more than ``margin_psnr_db``.
* ``equals_input``: a reconstruction or super-resolution model (not the baseline itself) whose test PSNR
  equals the input's (the ``baseline`` model with arch ``identity``) on every (case, seed) pair within
  ``equal_psnr_db``: its output is its input, whatever its mean says.
* ``feature_stage``: a model none of whose loss terms reads its output (every term's ``student_tap`` is an
  inner layer: feature imitation only, e.g. KD-MRI's attention-transfer step). It is a stage that initialises
  the models that ``init_from`` it, not a model of the task: its test metrics score an output head that no loss
  trained.
* ``flagged_teacher``: a model distilled from a teacher (its ``teachers``) that is not sound: one that carries
  ``trivial_teacher``, ``collapse`` or ``non_finite`` (:data:`UNSOUND_TEACHER`). ``not_converged`` alone does
  not propagate: a teacher still improving at its last epoch can be a good teacher (the embedded default's
  short schedules flag most models so), and the student's own numbers show what it learnt.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medkd.io import read_json, read_jsonl

HEALTH_DEFAULTS = {
    "margin_dice": 0.05,
    "margin_psnr_db": 0.5,
    "collapse_sd_dice": 0.1,
    "collapse_sd_psnr_db": 1.0,
    "collapse_drop_dice": 0.2,
    "collapse_drop_psnr_db": 3.0,
    "converge_tail": 0.25,
    "converge_gain": 0.1,
    "equal_psnr_db": 0.01,
}
FLAGS = ("non_finite", "not_converged", "collapse", "trivial_teacher", "equals_input", "feature_stage",
         "flagged_teacher")
UNSOUND_TEACHER = ("non_finite", "collapse", "trivial_teacher")
"""The teacher flags that make its students ``flagged_teacher``."""
HEALTH_METRIC = {"segmentation": "dice", "reconstruction": "psnr", "super_resolution": "psnr"}


@dataclass(frozen=True)
class Flag:
    model: str
    flag: str
    sentence: str

    def text(self) -> str:
        return f"{self.flag}: {self.sentence}"


def _num(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _seed_means(metrics: pd.DataFrame, model: str, metric: str) -> pd.DataFrame:
    """Per (class, seed): the mean over test cases (NaN cases excluded), engine convention."""
    sel = metrics[(metrics["model"] == model) & (metrics["metric"] == metric) & (metrics["convention"] == "engine")]
    return sel.groupby(["class", "seed"], sort=True)["value"].mean().reset_index()


def _model_mean(metrics: pd.DataFrame, model: str, metric: str) -> dict[str, float]:
    """Per class: the mean over seeds of the per-case mean (the tables' ``mean``)."""
    per_seed = _seed_means(metrics, model, metric)
    return per_seed.groupby("class", sort=False)["value"].mean().to_dict()


# ------------------------------------------------------------------------------------------ checks


def check_non_finite(histories: dict[int, list[dict]]) -> str | None:
    """Sentence for NaN/inf train_loss or val_* values in any epoch, or None."""
    bad = []
    for seed, hist in sorted(histories.items()):
        for h in hist:
            for key in sorted(h):
                if key != "train_loss" and not key.startswith("val_"):
                    continue
                v = h[key]
                if v is None or (isinstance(v, (int, float)) and not math.isfinite(v)):
                    bad.append(f"seed {seed} epoch {h.get('epoch', '?')} {key} = {v}")
    if not bad:
        return None
    more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
    return ("non-finite training or validation values in epochs.jsonl: " + "; ".join(bad[:3]) + more
            + "; the model's numbers come from a diverged or broken run.")


def check_not_converged(histories: dict[int, list[dict]], metric: str, mode: str, tail: float = 0.25,
                        gain: float = 0.1) -> str | None:
    """Sentence for a validation curve still improving steeply at its last epoch (see module doc), or None."""
    parts = []
    for seed, hist in sorted(histories.items()):
        raw = [h.get(metric) for h in hist]
        if len(raw) < 2 or any(v is None or not math.isfinite(v) for v in raw):
            continue
        s = np.asarray(raw, dtype=float) * (1.0 if mode == "max" else -1.0)
        n = len(s)
        k = max(1, math.ceil(tail * n))
        total, tail_gain = s[-1] - s[0], s[-1] - s[-1 - k]
        if s[-1] > s[:-1].max() and total > 0 and tail_gain > gain * total:
            direction = "rose" if mode == "max" else "fell"
            if tail_gain <= total:
                share = f"{_pct(tail_gain / total)} of its total change of {_num(total, 4)} since epoch 0"
            else:  # the curve went below its start first: a ratio over 100 % would mean nothing
                share = (f"more than its whole net change of {_num(total, 4)} since epoch 0, having first gone "
                         "below its start")
            parts.append(f"seed {seed}: {metric} {direction} by {_num(tail_gain, 4)} in the last {k} of {n} epochs "
                         f"({share}) and the last epoch is its best")
    if not parts:
        return None
    return ("; ".join(parts) + f" (bound: at most {_pct(gain)} of the improvement in the last {_pct(tail)} of "
            f"the epochs): training stopped while the model was still improving.")


def check_collapse(metrics: pd.DataFrame, model: str, task: str, b: dict) -> str | None:
    """Sentence for seeds that disagree on the main metric beyond the bounds, or None."""
    metric = HEALTH_METRIC[task]
    if metric == "dice":
        sd_bound, drop_bound, unit, digits = b["collapse_sd_dice"], b["collapse_drop_dice"], "", 3
    else:
        sd_bound, drop_bound, unit, digits = b["collapse_sd_psnr_db"], b["collapse_drop_psnr_db"], " dB", 2
    per_seed = _seed_means(metrics, model, metric)
    parts = []
    for cls, grp in per_seed.groupby("class", sort=False):
        grp = grp.dropna(subset=["value"])
        if len(grp) < 2:
            continue
        seeds, v = grp["seed"].to_numpy(), grp["value"].to_numpy(dtype=float)
        sd = float(np.std(v, ddof=1))
        why = []
        if sd > sd_bound:
            why.append(f"sd over {len(v)} seeds {_num(sd, digits)}{unit} > {sd_bound:g}{unit}")
        for i in range(len(v)):
            drop = float(np.median(np.delete(v, i))) - v[i]
            if drop > drop_bound:
                why.append(f"seed {seeds[i]} is {_num(drop, digits)}{unit} below the median of the other seeds "
                           f"(bound {drop_bound:g}{unit})")
        if why:
            values = ", ".join(f"seed {s} {_num(x, digits)}" for s, x in zip(seeds, v))
            label = metric if cls in ("image", "-") else f"{metric} {cls}"
            parts.append(f"{label}: " + "; ".join(why) + f" (per-seed case means: {values})")
    if not parts:
        return None
    return "seeds disagree: " + "; ".join(parts) + ": the mean hides a failed or unstable seed."


def _input_baseline(exp_cfg: dict) -> str | None:
    """The experiment's input baseline: its ``baseline`` model with arch ``identity`` (zero-filled or
    low-resolution image), or None."""
    return next((m for m, c in exp_cfg["models"].items() if c["role"] == "baseline" and c["arch"] == "identity"), None)


def check_trivial_teacher(metrics: pd.DataFrame, model: str, exp_cfg: dict, b: dict) -> str | None:
    """Sentence for a teacher not better than the trivial baseline by the margin, or None."""
    task = exp_cfg["task"]
    if task == "segmentation":
        means = _model_mean(metrics, model, "dice")
        low = {c: v for c, v in means.items() if not (isinstance(v, float) and math.isnan(v)) and v <= b["margin_dice"]}
        if not low:
            return None
        values = ", ".join(f"{c} {_num(v)}" for c, v in low.items())
        return (f"test Dice of {values} (mean over seeds of the per-case mean) is within the margin "
                f"{b['margin_dice']:g} of the all-background prediction's Dice of 0 (empty-mask policy): for "
                f"{'this class' if len(low) == 1 else 'these classes'} the teacher is no better than predicting nothing.")
    base = _input_baseline(exp_cfg)
    if base is None:  # every shipped reconstruction config has one (zero_filled); say so if one does not
        logging.getLogger("medkd").warning("%s: no baseline model with arch identity, so the teacher %s cannot be "
                                           "checked against the input's PSNR (add e.g. zero_filled)", task, model)
        return None
    ours, inp = _model_mean(metrics, model, "psnr"), _model_mean(metrics, base, "psnr")
    if not ours or not inp:
        return None
    t, i = float(np.mean(list(ours.values()))), float(np.mean(list(inp.values())))
    if t > i + b["margin_psnr_db"]:
        return None
    return (f"test PSNR {t:.2f} dB is not above the input's ({base}) {i:.2f} dB by more than the margin "
            f"{b['margin_psnr_db']:g} dB (difference {t - i:+.2f} dB): the teacher does not improve on its input.")


def check_equals_input(metrics: pd.DataFrame, model: str, exp_cfg: dict, b: dict) -> str | None:
    """Sentence for a reconstruction/SR model whose per-case PSNR equals the input baseline's on every
    (case, seed) pair within ``equal_psnr_db``, or None (segmentation, no baseline, the baseline itself)."""
    base = _input_baseline(exp_cfg)
    if exp_cfg["task"] == "segmentation" or base is None or model == base:
        return None
    sel = metrics[(metrics["metric"] == "psnr") & (metrics["convention"] == "engine")]
    ours = sel[sel["model"] == model].set_index(["case", "seed"])["value"]
    inp = sel[sel["model"] == base].groupby("case")["value"].first()  # the input does not depend on the seed
    if ours.empty or inp.empty:
        return None
    diff = (ours - inp.reindex(ours.index.get_level_values("case")).to_numpy()).abs()
    if diff.isna().any() or diff.max() > b["equal_psnr_db"]:
        return None
    return (f"test PSNR equals the input's ({base}) on all {len(diff)} case-seed pairs (largest difference "
            f"{diff.max():.3f} dB, bound {b['equal_psnr_db']:g} dB): its output is its input.")


def check_feature_stage(losses: list[dict] | None, model: str, exp_cfg: dict) -> str | None:
    """Sentence for a model that trains no loss on its output (every term's student tap an inner layer), or
    None. ``losses``: the resolved spec's terms (``student_tap`` a name or a list of names; ``out`` and its named
    outputs ``out:<name>`` are the output)."""
    if not losses:
        return None
    taps = [t.get("student_tap", "out") for t in losses]

    def is_output(name) -> bool:  # "out" or one of its named outputs ("out:recon", "out:aux_2")
        return str(name) == "out" or str(name).startswith("out:")

    if any(is_output(x) for tap in taps for x in (tap if isinstance(tap, list) else [tap])):
        return None
    terms = "; ".join(f"{t['loss']} on {', '.join(tap) if isinstance(tap, list) else tap}" for t, tap in zip(losses, taps))
    followers = [m for m, c in exp_cfg["models"].items() if c.get("init_from") == model]
    role = f"a stage that initialises {', '.join(followers)}" if followers else "a feature-imitation stage"
    what = {"segmentation": "segmentation", "reconstruction": "reconstruction",
            "super_resolution": "super-resolution"}[exp_cfg["task"]]
    return (f"trains no loss on its output, only feature imitation ({terms}): {role}, not a {what} model; its "
            "test metrics score an output head no loss trained.")


# ------------------------------------------------------------------------------------------ driver


def _histories(model_dirs) -> dict[str, dict]:
    """model -> {"seeds": {seed: epochs}, "metric", "mode", "epochs"} from the model directories."""
    out: dict[str, dict] = {}
    for d in model_dirs:
        d = Path(d)
        cfg = read_json(d / "config.json")
        spec = cfg["spec"]
        sel = spec["train"].get("select", {})
        metric = sel.get("metric", "val_loss")
        mode = sel.get("mode") or ("max" if metric == "val_dice" else "min")
        if metric == "last":
            metric, mode = "val_loss", "min"
        entry = out.setdefault(spec["model"], {"seeds": {}, "metric": metric, "mode": mode,
                                               "losses": spec.get("losses")})
        entry["seeds"][int(cfg["seed"])] = read_jsonl(d / "epochs.jsonl")
    return out


def assess(exp_cfg: dict, metrics: pd.DataFrame, model_dirs, bounds: dict | None = None) -> list[Flag]:
    """Every flag of every model of one experiment, in config model order and :data:`FLAGS` order.

    ``metrics``: the concatenated per-case CSVs; ``model_dirs``: results/<exp>/models/<model>/seed<k>."""
    b = {**HEALTH_DEFAULTS, **(bounds or {})}
    hist = _histories(model_dirs)
    task = exp_cfg["task"]
    flags: dict[str, list[Flag]] = {m: [] for m in exp_cfg["models"]}
    for model, mcfg in exp_cfg["models"].items():
        h = hist.get(model, {"seeds": {}, "metric": "val_loss", "mode": "min"})
        checks = [
            ("non_finite", check_non_finite(h["seeds"])),
            ("not_converged", check_not_converged(h["seeds"], h["metric"], h["mode"], b["converge_tail"],
                                                  b["converge_gain"])),
            ("collapse", check_collapse(metrics, model, task, b)),
            ("trivial_teacher", check_trivial_teacher(metrics, model, exp_cfg, b) if mcfg["role"] == "teacher" else None),
            ("equals_input", check_equals_input(metrics, model, exp_cfg, b) if mcfg["role"] != "baseline" else None),
            ("feature_stage", check_feature_stage(h.get("losses"), model, exp_cfg) if mcfg["role"] != "baseline"
             else None),
        ]
        flags[model] = [Flag(model, name, s) for name, s in checks if s]
    for model, mcfg in exp_cfg["models"].items():  # teachers have no teachers (config check): one pass
        unsound = {t: [f.flag for f in flags.get(t, []) if f.flag in UNSOUND_TEACHER] for t in mcfg.get("teachers", [])}
        bad = [t for t, names in unsound.items() if names]
        if bad:
            names = "; ".join(f"{t} ({', '.join(unsound[t])})" for t in bad)
            flags[model].append(Flag(model, "flagged_teacher",
                                     f"distilled from a flagged teacher: {names}; what it learnt from "
                                     f"{'that teacher' if len(bad) == 1 else 'those teachers'} is suspect."))
    return [f for m in exp_cfg["models"] for f in flags[m]]


def model_health(flags: list[Flag]) -> dict[str, tuple[str, str]]:
    """model -> (flag names joined by ';', their sentences as 'flag: sentence' joined by ' ')."""
    out: dict[str, tuple[str, str]] = {}
    for f in flags:
        names, notes = out.get(f.model, ("", ""))
        out[f.model] = (f"{names};{f.flag}" if names else f.flag, f"{notes} {f.text()}" if notes else f.text())
    return out


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}" + ("" if k == 1 else "s")


def health_markdown(rows: list[tuple[str, str, str, str]], n_models: int, n_experiments: int) -> str:
    """The health summary (results/tables/health.md) of (experiment, model, flag, sentence) rows."""
    lines = ["# Health of every model", ""]
    if not rows:
        lines.append(f"All models healthy: no flag in {_n(n_models, 'model')} of {_n(n_experiments, 'experiment')}.")
        return "\n".join(lines) + "\n"
    flagged = {(e, m) for e, m, _, _ in rows}
    counts = {}
    for _, _, f, _ in rows:
        counts[f] = counts.get(f, 0) + 1
    lines.append(f"{_n(len(rows), 'flag')} on {len(flagged)} of {_n(n_models, 'model')} in "
                 f"{_n(n_experiments, 'experiment')} ("
                 + ", ".join(f"{f} {counts[f]}" for f in FLAGS if f in counts) + "). A flag explains a number; "
                 "it changes none (README: How to read the tables).")
    lines += ["", "## Flagged models", ""]
    by_model: dict[tuple[str, str], list[str]] = {}
    for e, m, f, _ in rows:
        by_model.setdefault((e, m), []).append(f)
    lines += [f"- {e} / {m}: {', '.join(fs)}" for (e, m), fs in by_model.items()]
    lines += ["", "## Details", ""]
    for e, m, f, s in rows:
        lines.append(f"- {e} / {m}: {f}: {s}")
    return "\n".join(lines) + "\n"
