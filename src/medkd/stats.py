"""Paired statistics of model comparisons within an experiment (is the KD effect more than noise?).

Comparisons, per experiment:

* ``kd_effect``: every model with a ``compare_to`` against that model (e.g. the KD student against the
  same student trained alone); difference = model - compare_to;
* ``teacher_vs_student``: every teacher against every student; difference = teacher - student.

Each comparison is made for the experiment's main metrics (:data:`MAIN_METRICS`, as in the tables: Dice
and HD95 per class for segmentation, PSNR and SSIM for reconstruction and super-resolution), in every
convention that is scored per case (``engine``, ``region``, ``pcd_per_image``; pooled conventions such as
``mtms_pooled`` have a single "case" ``ALL`` and are not tested), on the per-case metric CSVs
(``results/<exp>/metrics/<model>/seed<k>.csv``).

Pairing: a value of the model and one of the reference form a pair when they share the case id AND
the seed (same test volume, same training seed). Pairs where either value is NaN (e.g. both masks
empty) are dropped. Reported per (comparison, class, metric, convention):

* ``diff``: the mean paired difference over all (case, seed) pairs;
* ``ci_low``, ``ci_high``: a percentile bootstrap confidence interval (95 % by default) that resamples
  CASES with replacement, each resampled case keeping all its seeds (a cluster bootstrap: the seeds of
  one case are not independent observations). Implemented with :func:`scipy.stats.bootstrap` on two
  paired samples, the per-case sum of differences and the per-case number of pairs, with the statistic
  sum(sums) / sum(counts); ``paired=True`` resamples both with the same case indices, so the statistic
  of a resample is exactly the mean over all pairs of the resampled cases. Seeded (``seed``), so the
  interval is reproducible;
* ``p``: the two-sided Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`, zero differences
  dropped, exact distribution for small samples without ties) on the per-case differences averaged
  over seeds, so that cases are the independent units (n = number of cases, not cases x seeds);
* ``p_holm``: ``p`` adjusted with Holm's step-down method over every test of the experiment (all
  comparisons, classes, metrics and conventions with a finite ``p``).

Edge cases, recorded in ``note``: no pair -> everything NaN; fewer than 2 cases -> ``diff`` from the
pairs there are, CI and p NaN ("fewer than 2 paired cases"); all per-case differences zero -> CI
[0, 0] and p = 1 (no evidence of any difference; the signed-rank test is undefined with no non-zero
difference, and 1 keeps the row in the Holm family instead of silently dropping it).

With the embedded default's 2 test cases the smallest possible Wilcoxon p is 0.5: at that scale the
intervals and p-values say how little two cases can show, not whether KD works.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sst

MAIN_METRICS = {"segmentation": ["dice", "hd95"], "reconstruction": ["psnr", "ssim"],
                "super_resolution": ["psnr", "ssim"]}
STATS_DEFAULTS = {"n_resamples": 9999, "confidence": 0.95, "seed": 0}
STATS_COLUMNS = ["experiment", "kind", "model", "compared_to", "class", "metric", "convention", "n_cases", "n_pairs",
                 "diff", "ci_low", "ci_high", "p", "p_holm", "note"]
NOT_PER_CASE = {"cost", "robustness", "mtms_pooled"}


@dataclass
class PairedResult:
    n_cases: int
    n_pairs: int
    diff: float
    ci_low: float
    ci_high: float
    p: float
    note: str = ""


def paired_differences(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """(case, seed, diff = a - b) for the (case, seed) pairs present and finite in both frames, which hold
    columns case, seed, value (one row per case and seed)."""
    cols = ["case", "seed", "value"]
    for name, f in (("a", a), ("b", b)):
        if f.duplicated(["case", "seed"]).any():
            raise ValueError(f"paired_differences: {name} has several values for one (case, seed)")
    m = a[cols].merge(b[cols], on=["case", "seed"], suffixes=("_a", "_b"), how="inner")
    m["diff"] = m["value_a"].astype(float) - m["value_b"].astype(float)
    m = m[np.isfinite(m["diff"])]
    return m[["case", "seed", "diff"]].sort_values(["case", "seed"]).reset_index(drop=True)


def case_bootstrap(cases, diffs, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0):
    """Percentile bootstrap CI of the mean paired difference, resampling cases (clusters of seeds).

    Returns scipy's ``BootstrapResult`` (``confidence_interval``, ``bootstrap_distribution``)."""
    d = pd.DataFrame({"case": np.asarray(cases), "diff": np.asarray(diffs, dtype=float)})
    g = d.groupby("case", sort=True)["diff"]
    sums, counts = g.sum().to_numpy(), g.count().to_numpy().astype(float)
    if len(sums) < 2:
        raise ValueError("case_bootstrap needs at least 2 cases")

    def mean_of_pairs(s, c, axis=-1):
        return s.sum(axis=axis) / c.sum(axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate distributions (identical case means) are fine here
        return sst.bootstrap((sums, counts), mean_of_pairs, paired=True, vectorized=True, method="percentile",
                             n_resamples=n_resamples, confidence_level=confidence,
                             rng=np.random.default_rng(seed))


def wilcoxon_p(case_means) -> float:
    """Two-sided Wilcoxon signed-rank p-value of per-case mean differences (zeros dropped); 1.0 when
    every difference is zero; NaN for fewer than 2 cases."""
    x = np.asarray(case_means, dtype=float)
    if len(x) < 2:
        return math.nan
    if np.all(x == 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample / ties notices: scipy picks the right method
        return float(sst.wilcoxon(x, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaN entries stay NaN and are not counted in the family.

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


def paired_test(diffs: pd.DataFrame, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0) -> PairedResult:
    """Mean difference, case-bootstrap CI and Wilcoxon p of the output of :func:`paired_differences`."""
    n_pairs = len(diffs)
    n_cases = int(diffs["case"].nunique()) if n_pairs else 0
    if n_pairs == 0:
        return PairedResult(0, 0, math.nan, math.nan, math.nan, math.nan, "no paired (case, seed) values")
    diff = float(diffs["diff"].mean())
    if n_cases < 2:
        return PairedResult(n_cases, n_pairs, diff, math.nan, math.nan, math.nan,
                            f"fewer than 2 paired cases (n = {n_cases}): no CI or p-value")
    case_means = diffs.groupby("case", sort=True)["diff"].mean().to_numpy()
    if np.all(diffs["diff"].to_numpy() == 0):
        return PairedResult(n_cases, n_pairs, 0.0, 0.0, 0.0, 1.0, "all paired differences are zero: p set to 1")
    res = case_bootstrap(diffs["case"], diffs["diff"], confidence, n_resamples, seed)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    p = wilcoxon_p(case_means)
    note = "all per-case mean differences are zero: p set to 1" if np.all(case_means == 0) else ""
    return PairedResult(n_cases, n_pairs, diff, lo, hi, p, note)


def comparisons(exp_cfg: dict) -> list[tuple[str, str, str]]:
    """(kind, model, reference) of an experiment: compare_to pairs first, then teacher vs student."""
    models = exp_cfg["models"]
    out = [("kd_effect", m, c["compare_to"]) for m, c in models.items() if c.get("compare_to")]
    teachers = [m for m, c in models.items() if c["role"] == "teacher"]
    students = [m for m, c in models.items() if c["role"] == "student"]
    out += [("teacher_vs_student", t, s) for t in teachers for s in students]
    return out


def compare_experiment(exp_name: str, exp_cfg: dict, metrics: pd.DataFrame, n_resamples: int = 9999,
                       confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Every comparison of an experiment (:func:`comparisons`) on its per-case metrics (the concatenated
    per-case CSVs), with Holm-adjusted p-values over the experiment; columns :data:`STATS_COLUMNS`."""
    main = MAIN_METRICS[exp_cfg["task"]]
    df = metrics[metrics["metric"].isin(main) & ~metrics["convention"].isin(NOT_PER_CASE)
                 & (metrics["case"].astype(str) != "ALL")]
    keys = df[["class", "metric", "convention"]].drop_duplicates()
    keys = keys.assign(_m=keys["metric"].map({m: i for i, m in enumerate(main)}),
                       _e=keys["convention"] != "engine").sort_values(["_e", "convention", "_m", "class"])
    rows = []
    for kind, model, ref in comparisons(exp_cfg):
        for cls, metric, conv in keys[["class", "metric", "convention"]].itertuples(index=False):
            sel = df[(df["class"] == cls) & (df["metric"] == metric) & (df["convention"] == conv)]
            a, b = sel[sel["model"] == model], sel[sel["model"] == ref]
            if a.empty or b.empty:
                continue
            r = paired_test(paired_differences(a, b), confidence, n_resamples, seed)
            rows.append({"experiment": exp_name, "kind": kind, "model": model, "compared_to": ref, "class": cls,
                         "metric": metric, "convention": conv, "n_cases": r.n_cases, "n_pairs": r.n_pairs,
                         "diff": r.diff, "ci_low": r.ci_low, "ci_high": r.ci_high, "p": r.p, "note": r.note})
    out = pd.DataFrame(rows, columns=STATS_COLUMNS)
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else []
    return out


def format_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def format_diff(diff: float, low: float, high: float, p: float, p_holm: float, metric: str, note: str = "") -> str:
    """``+0.012 [-0.004, 0.029], p = 0.21, p_holm = 0.63`` (2 decimals for HD95/PSNR, 3 otherwise)."""
    if diff is None or math.isnan(diff):
        return f"n/a ({note})" if note else "n/a"
    digits = 2 if metric in ("hd95", "psnr") else 3
    text = f"{diff:+.{digits}f}"
    if low is not None and not math.isnan(low):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    if p is not None and not math.isnan(p):
        text += f", p = {format_p(p)}, p_holm = {format_p(p_holm)}"
    elif note:
        text += f" ({note})"
    return text
