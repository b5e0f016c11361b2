"""Every paper number gets a verdict: ours beside the paper's, with our 95 % interval.

:func:`value_ci` is the interval of our mean over both sources of variance, training seeds and test cases (the
t interval of :func:`medkd.stats.recipe_interval`); :func:`verdict` says whether the paper's value lies inside it;
:func:`paper_verdicts` builds the ``<exp>_verdicts.csv`` rows and :func:`verdicts_section` their Markdown.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from medkd import stats as _stats
from medkd.report import _cell, md_escape

VERDICT_COLUMNS = ["experiment", "model", "class", "metric", "convention", "paper_value", "source", "ours", "sd",
                   "n_cases", "n_seeds", "ci_low", "ci_high", "ci_method", "verdict"]


def value_ci(values: pd.DataFrame, confidence: float = 0.95) -> tuple[float, float, str]:
    """Interval of the mean of ``values`` (columns case, seed, value; NaN dropped) over seeds and cases.

    The t interval of :func:`medkd.stats.recipe_interval` (two-way random-effects variance components,
    Satterthwaite df) on the complete seed x case block: over cases alone with one seed, over seeds alone with
    a single case (or a pooled convention, case ``ALL``); with one case and one seed there is no interval.
    Returns (low, high, method)."""
    v = values[np.isfinite(values["value"].astype(float))]
    if v["case"].nunique() < 2 and v["seed"].nunique() < 2:
        return math.nan, math.nan, f"no interval: {v['case'].nunique()} case(s) x {v['seed'].nunique()} seed(s)"
    try:
        rec = _stats.recipe_interval(v.rename(columns={"value": "diff"})[["case", "seed", "diff"]], confidence)
    except ValueError:  # no case scored under every seed
        return math.nan, math.nan, "no interval: no case scored under every seed"
    unit = {"seeds+cases": "seeds and cases", "cases only": "cases (one seed)", "seeds only": "seeds (one case)"}
    method = f"{confidence:.0%} t interval over {unit[rec.method]}, Satterthwaite df {rec.df:.3g}"
    return rec.low, rec.high, method + (f"; {rec.note}" if rec.note else "")


REHEARSAL_VERDICT = "rehearsal (stand-in data, capped training: no verdict)"
"""The verdict of every paper number in a rehearsal (config ``rehearsal``): its numbers say the pipeline
ran at the paper's shapes, nothing about the paper."""


def verdict(paper: float, low: float, high: float) -> str:
    """``within CI`` / ``outside CI`` of our interval, or ``no CI (...)`` when there is none."""
    if math.isnan(low) or math.isnan(high):
        return "no CI (fewer than 2 cases and 2 seeds)"
    return "within CI" if low <= paper <= high else "outside CI"


def paper_verdicts(exp_name: str, exp_cfg: dict, metrics: pd.DataFrame, table: pd.DataFrame,
                   stats_cfg: dict | None = None) -> pd.DataFrame:
    """One row per ``reference`` entry of the experiment: the paper's value, ours (the table's mean ± sd
    over seeds), our interval (:func:`value_ci` on the per-case values of every seed) and the verdict
    (:data:`REHEARSAL_VERDICT` for every row when ``exp_cfg`` carries the config's ``rehearsal``)."""
    scfg = {**_stats.STATS_DEFAULTS, **(stats_cfg or {})}
    rows = []
    for ref in exp_cfg.get("reference", []):
        model, metric = ref["model"], ref["metric"]
        conv = ref.get("convention", "engine")
        cls = ref.get("class") or next(iter(table.loc[(table["model"] == model) & (table["metric"] == metric)
                                                      & (table["convention"] == conv), "class"]), "-")
        sel = metrics[(metrics["model"] == model) & (metrics["metric"] == metric) & (metrics["convention"] == conv)
                      & (metrics["class"].astype(str) == str(cls))]
        trow = table[(table["model"] == model) & (table["metric"] == metric) & (table["convention"] == conv)
                     & (table["class"].astype(str) == str(cls))]
        base = {"experiment": exp_name, "model": model, "class": cls, "metric": metric, "convention": conv,
                "paper_value": float(ref["value"]), "source": ref.get("source", "")}
        if sel.empty or trow.empty:
            rows.append({**base, "ours": math.nan, "sd": math.nan, "n_cases": 0, "n_seeds": 0, "ci_low": math.nan,
                         "ci_high": math.nan, "ci_method": "", "verdict": "no value here (not scored in this run)"})
            continue
        low, high, method = value_ci(sel[["case", "seed", "value"]], scfg["confidence"])
        t = trow.iloc[0]
        rows.append({**base, "ours": float(t["mean"]), "sd": float(t["sd"]), "n_cases": int(t["n_cases"]),
                     "n_seeds": int(t["n_seeds"]), "ci_low": low, "ci_high": high, "ci_method": method,
                     "verdict": REHEARSAL_VERDICT if exp_cfg.get("rehearsal")
                     else verdict(float(ref["value"]), low, high)})
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def verdicts_section(verdicts: pd.DataFrame) -> str:
    """The "Paper numbers" list of an experiment's Markdown table (empty without ``reference``)."""
    if not len(verdicts):
        return ""
    lines = ["### Paper numbers", "", "| model | class | metric | convention | paper | ours | 95% CI (ours) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in verdicts.to_dict("records"):
        digits = _stats.digits(r["metric"])
        ci = f"[{r['ci_low']:.{digits}f}, {r['ci_high']:.{digits}f}]" if not math.isnan(r["ci_low"]) else "n/a"
        lines.append("| " + " | ".join(md_escape(x) for x in (
            r["model"], r["class"], r["metric"], r["convention"], f"{r['paper_value']:.{digits}f}",
            _cell(r["ours"], r["sd"], math.nan, r["metric"]), ci, r["verdict"])) + " |")
    methods = sorted({m for m in verdicts["ci_method"] if m})
    lines += ["", "- Interval: " + md_escape("; ".join(methods) or "none") + ". Verdict: the paper's value inside or "
              "outside our interval."]
    return "\n".join(lines) + "\n"
