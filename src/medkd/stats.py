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
* ``ci_low``, ``ci_high``: the interval of the RECIPE's mean difference, over both sources of variance a
  reader cares about: the training seed and the test case (:func:`recipe_interval`). The (seed, case)
  differences are a crossed design (every seed's model is scored on the same cases), modelled as
  ``d[s, c] = mu + a_s + b_c + e_sc`` with independent seed, case and residual effects (a two-way random-
  effects ANOVA without replication); the variance of the grand mean is estimated from the mean squares,
  ``(sigma2_seed * C + sigma2_case * S + sigma2_res) / (S * C)`` with negative components set to zero, and
  the interval is a t interval with Satterthwaite's degrees of freedom (Satterthwaite 1946; Searle, Casella &
  McCulloch, *Variance Components*, 1992, ch. 4). With 3 seeds the degrees of freedom are small and the
  interval wide: a collapsed seed widens it. ``ci_method`` says which variant ran (one seed: cases only);
* ``ci_cases_low``, ``ci_cases_high``: the earlier interval, a percentile bootstrap that resamples CASES with
  replacement and keeps the seeds fixed (each resampled case keeps all its seeds; :func:`case_bootstrap`,
  :func:`scipy.stats.bootstrap`, seeded): it describes these training runs, not the recipe, and is kept
  beside the new one so that a reader sees what the seeds add;
* ``n_seeds``, ``seed_diffs``: the number of seeds and the mean difference of each seed over its cases
  (``";"``-separated, in seed order), so a collapsed seed is visible;
* ``p_better``: the share of (seed, case) pairs in which the model is better than its comparison (ties count
  one half; lower is better for :data:`LOWER_IS_BETTER`): the plug-in estimate of the probability that the
  model beats its comparison on a new seed and a new case;
* ``p``: the two-sided Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`, zero differences
  dropped, exact distribution for small samples without ties) on the per-case differences averaged
  over seeds, so that cases are the independent units (n = number of cases, not cases x seeds);
* ``p_holm``: ``p`` adjusted with Holm's step-down method over every test of the experiment (all
  comparisons, classes, metrics and conventions with a finite ``p``).

Edge cases, recorded in ``note``: no pair -> everything NaN; fewer than 2 cases -> ``diff`` from the
pairs there are, CI and p NaN ("fewer than 2 paired cases"); all per-case differences zero -> CI
[0, 0] and p = 1 (no evidence of any difference; the signed-rank test is undefined with no non-zero
difference, and 1 keeps the row in the Holm family instead of silently dropping it).

With n test cases the smallest two-sided Wilcoxon p is 2 / 2^n (8 cases: 0.0078; 2 cases: 0.5), before Holm
multiplies it by the number of tests: the tables say so (:func:`medkd.report.kd_effects_notes`).

Why not a two-level bootstrap: resampling seeds and cases independently (the pigeonhole bootstrap, Owen,
Ann. Appl. Stat. 1(2), 2007) is the bootstrap for a crossed design, but a resample of 3 seeds can take only a
few values. benchmarks/interval_coverage.py (400 seeded runs, 24 cases, seed, case and residual SD 0.05, 0.05,
0.02) measured the coverage of the nominal 95 %: with 3 seeds the t interval 93.2 %, the pigeonhole bootstrap
82.5 %, the case bootstrap 48.7 %; with 10 seeds 96.0, 93.5 and 74.0 %; without a seed effect all three
cover (91.7-96.5 %). scipy.stats.bootstrap resamples one index set (``paired`` shares it between samples), so
neither a crossed bootstrap nor the mean-square interval is in a library this project uses; the mean squares
are a few lines of NumPy (:func:`recipe_interval`).
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
STATS_COLUMNS = ["experiment", "kind", "model", "compared_to", "class", "metric", "convention", "n_cases", "n_seeds",
                 "n_pairs", "diff", "ci_low", "ci_high", "ci_method", "ci_cases_low", "ci_cases_high", "seed_diffs",
                 "p_better", "p", "p_holm", "note"]
LOWER_IS_BETTER = frozenset({"hd95", "latency_ms_per_slice", "val_loss"})
"""Metrics where a smaller value is the better one (a "gain" and ``p_better`` follow the metric's direction)."""
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
    n_seeds: int = 0
    ci_method: str = ""
    ci_cases_low: float = math.nan
    ci_cases_high: float = math.nan
    seed_diffs: str = ""
    p_better: float = math.nan


@dataclass(frozen=True)
class RecipeInterval:
    """:func:`recipe_interval`'s answer: the interval, its centre (the mean of the complete seed x case block),
    degrees of freedom, the block's size, the variance components (seed, case, residual; negative estimates set
    to zero) and which variant ran (``method``), with a note when cases were left out."""

    low: float
    high: float
    mean: float
    df: float
    n_seeds: int
    n_cases: int
    components: tuple[float, float, float]
    method: str
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


def recipe_interval(diffs: pd.DataFrame, confidence: float = 0.95) -> RecipeInterval:
    """t interval of the recipe's mean difference from the crossed (seed x case) differences.

    ``diffs``: columns case, seed, diff (:func:`paired_differences`). Only cases scored under every seed enter
    (a complete S x C block; the others are named in ``note``). With S >= 2 seeds and C >= 2 cases, two-way ANOVA
    mean squares ``MS_seed = C * sum_s (mean_s - m)^2 / (S - 1)``, ``MS_case = S * sum_c (mean_c - m)^2 / (C - 1)``,
    ``MS_res = sum (d - mean_s - mean_c + m)^2 / ((S - 1)(C - 1))`` give the components ``sigma2_seed =
    (MS_seed - MS_res) / C``, ``sigma2_case = (MS_case - MS_res) / S``, ``sigma2_res = MS_res`` (negative ones set to
    0), ``Var(m) = (C sigma2_seed + S sigma2_case + sigma2_res) / (S C)``, a linear combination of the mean squares
    whose degrees of freedom are Satterthwaite's ``Var^2 / sum (a_i MS_i)^2 / df_i``; interval ``m +- t * sqrt(Var)``
    (method ``seeds+cases``). One seed: ``MS_case / C`` with C - 1 degrees of freedom (``cases only``: the seed
    variance cannot be estimated); one case: the seeds' variance / S with S - 1 (``seeds only``). Zero variance:
    the interval is the point [m, m].

    Raises:
        ValueError: no complete block of at least 2 values.
    """
    wide = diffs.pivot_table(index="seed", columns="case", values="diff", aggfunc="mean")
    complete = wide.columns[wide.notna().all(axis=0)]
    dropped = [str(c) for c in wide.columns if c not in set(complete)]
    block = wide[complete].to_numpy(dtype=float)
    n_seeds, n_cases = block.shape
    if n_seeds * n_cases < 2 or n_cases == 0:
        raise ValueError("recipe_interval needs a complete seed x case block of at least 2 values")
    note = f"cases not scored under every seed left out of the interval: {', '.join(dropped)}" if dropped else ""
    m = float(block.mean())
    if n_seeds >= 2 and n_cases >= 2:
        seed_means, case_means = block.mean(axis=1), block.mean(axis=0)
        df_s, df_c, df_e = n_seeds - 1, n_cases - 1, (n_seeds - 1) * (n_cases - 1)
        ms_s = n_cases * float(((seed_means - m) ** 2).sum()) / df_s
        ms_c = n_seeds * float(((case_means - m) ** 2).sum()) / df_c
        resid = block - seed_means[:, None] - case_means[None, :] + m
        ms_e = float((resid**2).sum()) / df_e
        use_s, use_c = ms_s > ms_e, ms_c > ms_e
        # Var(m) = sum_i a_i MS_i; the residual's coefficient absorbs the components that were not truncated
        coef = np.array([use_s, use_c, 1 - use_s - use_c], dtype=float) / (n_seeds * n_cases)
        ms, dfs = np.array([ms_s, ms_c, ms_e]), np.array([df_s, df_c, df_e], dtype=float)
        components = (max(0.0, (ms_s - ms_e) / n_cases), max(0.0, (ms_c - ms_e) / n_seeds), ms_e)
        method = "seeds+cases"
    elif n_seeds == 1:
        ms, dfs = np.array([float(block.var(ddof=1))]), np.array([n_cases - 1.0])
        coef, components, method = np.array([1.0 / n_cases]), (math.nan, float(ms[0]), math.nan), "cases only"
    else:
        ms, dfs = np.array([float(block.var(ddof=1))]), np.array([n_seeds - 1.0])
        coef, components, method = np.array([1.0 / n_seeds]), (float(ms[0]), math.nan, math.nan), "seeds only"
    var = float((coef * ms).sum())
    if not var > 0:
        return RecipeInterval(m, m, m, math.inf, n_seeds, n_cases, components, method, note)
    terms = (coef * ms) ** 2 / dfs
    dof = var**2 / float(terms.sum())
    half = float(sst.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(var)
    return RecipeInterval(m - half, m + half, m, dof, n_seeds, n_cases, components, method, note)


def seed_differences(diffs: pd.DataFrame) -> list[float]:
    """Mean difference of each seed over its cases, in seed order."""
    return [float(v) for v in diffs.groupby("seed", sort=True)["diff"].mean()]


def prob_better(diffs, metric: str) -> float:
    """Share of the paired differences in which the model is the better one (ties count 1/2; lower is better
    for :data:`LOWER_IS_BETTER`); NaN without differences."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return math.nan
    if metric in LOWER_IS_BETTER:
        d = -d
    return float(((d > 0).sum() + 0.5 * (d == 0).sum()) / d.size)


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


def paired_test(diffs: pd.DataFrame, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0,
                metric: str = "") -> PairedResult:
    """Mean difference, recipe interval (seeds and cases, :func:`recipe_interval`), case-bootstrap interval
    (seeds fixed), per-seed differences, ``p_better`` and the Wilcoxon p over cases of the output of
    :func:`paired_differences`; ``metric`` gives the direction of ``p_better``."""
    n_pairs = len(diffs)
    n_cases = int(diffs["case"].nunique()) if n_pairs else 0
    if n_pairs == 0:
        return PairedResult(0, 0, math.nan, math.nan, math.nan, math.nan, "no paired (case, seed) values")
    diff = float(diffs["diff"].mean())
    extra = {"n_seeds": int(diffs["seed"].nunique()),
             "seed_diffs": ";".join(f"{v:+.4g}" for v in seed_differences(diffs)),
             "p_better": prob_better(diffs["diff"], metric)}
    if n_cases < 2:
        return PairedResult(n_cases, n_pairs, diff, math.nan, math.nan, math.nan,
                            f"fewer than 2 paired cases (n = {n_cases}): no CI or p-value", **extra)
    case_means = diffs.groupby("case", sort=True)["diff"].mean().to_numpy()
    if np.all(diffs["diff"].to_numpy() == 0):
        return PairedResult(n_cases, n_pairs, 0.0, 0.0, 0.0, 1.0, "all paired differences are zero: p set to 1",
                            ci_method="all zero", ci_cases_low=0.0, ci_cases_high=0.0, **extra)
    try:
        rec = recipe_interval(diffs, confidence)
    except ValueError:  # no case scored under every seed: no interval over seeds and cases
        rec = RecipeInterval(math.nan, math.nan, diff, math.nan, extra["n_seeds"], 0, (math.nan,) * 3, "none",
                             "no case scored under every seed: no interval over seeds and cases")
    res = case_bootstrap(diffs["case"], diffs["diff"], confidence, n_resamples, seed)
    p = wilcoxon_p(case_means)
    notes = [n for n in (rec.note, "all per-case mean differences are zero: p set to 1"
                         if np.all(case_means == 0) else "") if n]
    return PairedResult(n_cases, n_pairs, diff, rec.low, rec.high, p, "; ".join(notes), ci_method=rec.method,
                        ci_cases_low=float(res.confidence_interval.low),
                        ci_cases_high=float(res.confidence_interval.high), **extra)


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
            r = paired_test(paired_differences(a, b), confidence, n_resamples, seed, metric)
            rows.append({"experiment": exp_name, "kind": kind, "model": model, "compared_to": ref, "class": cls,
                         "metric": metric, "convention": conv, "n_cases": r.n_cases, "n_seeds": r.n_seeds,
                         "n_pairs": r.n_pairs, "diff": r.diff, "ci_low": r.ci_low, "ci_high": r.ci_high,
                         "ci_method": r.ci_method, "ci_cases_low": r.ci_cases_low, "ci_cases_high": r.ci_cases_high,
                         "seed_diffs": r.seed_diffs, "p_better": r.p_better, "p": r.p, "note": r.note})
    out = pd.DataFrame(rows, columns=STATS_COLUMNS)
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else []
    return out


def digits(metric: str) -> int:
    """Decimals a table prints for ``metric``: 2 for HD95 (mm) and PSNR (dB), 3 otherwise."""
    return 2 if metric in ("hd95", "psnr") else 3


def format_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def _p_clause(name: str, p: float) -> str:
    """``p = 0.21``, or ``p < 0.001`` (not ``p = < 0.001``)."""
    text = format_p(p)
    return f"{name} {text}" if text.startswith("<") else f"{name} = {text}"


def format_diff(diff: float, low: float, high: float, p: float, p_holm: float, metric: str, note: str = "") -> str:
    """``+0.012 [-0.004, 0.029], p = 0.21, p_holm = 0.63`` (2 decimals for HD95/PSNR, 3 otherwise)."""
    if diff is None or math.isnan(diff):
        return f"n/a ({note})" if note else "n/a"
    d = digits(metric)
    text = f"{diff:+.{d}f}"
    if low is not None and not math.isnan(low):
        text += f" [{low:.{d}f}, {high:.{d}f}]"
    if p is not None and not math.isnan(p):
        text += f", {_p_clause('p', p)}, {_p_clause('p_holm', p_holm)}"
    elif note:
        text += f" ({note})"
    return text
