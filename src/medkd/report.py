"""Tables and figures: per-experiment results with their spread, origin and the paper's numbers.

Aggregation, for every (model, class, metric, convention): the mean over cases (NaN cases, e.g. both
masks empty, are excluded and not counted in ``n_cases``) per seed, then the mean and the sample
standard deviation (ddof 1; empty for a single seed) over seeds. ``case_sd`` is the standard deviation
over cases (ddof 1) averaged over seeds: KD-MRI and fastMRI report mean ± 2·case_sd over volumes, which
paper tables show with ``headline.spread: cases_2sd``. The long table has one row per
aggregate with the paper's value (from the experiment's ``reference`` list) and the difference
``delta = mean - paper_value``.

Outputs per experiment: ``results/tables/<exp>.csv`` (long format), ``<exp>.md`` and ``<exp>.tex``
(one row per model, ``mean ± sd`` cells, the paper value in brackets), ``results/figures/<exp>.png``
(main metric per model with sd error bars) and ``results/figures/<exp>_curves.png`` (validation curve of
every model and seed).

Paired statistics (:mod:`medkd.stats`) and health flags (:mod:`medkd.health`) are added to the long
table: on the rows of the main metrics of a model with ``compare_to``, the paired difference to that
model (``compared_to``, ``diff``, ``ci_low``/``ci_high`` over seeds and cases, ``ci_method``, ``ci_cases_low``/
``ci_cases_high`` over cases with the seeds fixed, ``seed_diffs``, ``p_better``, ``p``, ``p_holm``, ``stats_note``;
:mod:`medkd.stats`); on every row
of a model, its flags (``health``: names joined by ``;``, empty = no flag; ``health_notes``: the
sentences). Every comparison, teacher vs student included, is written to ``<exp>_stats.csv``.
Markdown and LaTeX cells are escaped (:func:`md_escape`, :func:`latex_escape`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from medkd import health as _health
from medkd import stats as _stats
from medkd.io import atomic_path, read_json
from medkd.stats import MAIN_METRICS, format_diff

STATS_FIELDS = ["compared_to", "diff", "ci_low", "ci_high", "ci_method", "ci_cases_low", "ci_cases_high", "seed_diffs",
                "p_better", "p", "p_holm", "stats_note"]
CI_TEXT = ("95% CI over seeds and cases (t interval from the seed, case and residual variance components, "
           "Satterthwaite df: medkd.stats.recipe_interval)")
P_TEXT = ("p: two-sided Wilcoxon signed-rank test whose unit is a test case (its difference averaged over the "
          "seeds; n = cases)")
HEALTH_FIELDS = ["health", "health_notes"]
LONG_COLUMNS = [
    "experiment", "dataset", "task", "model", "role", "kd_method", "arch", "class", "metric", "convention",
    "mean", "sd", "n_seeds", "n_cases", "case_sd", "paper_value", "delta", *STATS_FIELDS, *HEALTH_FIELDS,
    "params", "flops", "fidelity", "seeds", "spec_hash", "data_hash", "git_commit",
]

_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\|*`<>$&#~"})


def md_escape(value) -> str:
    """A Markdown (GFM) table cell: backslash-escape the characters that end a cell or start markup
    (``\\ | * ` < > $ & # ~``) and ``_`` at a word boundary (an intraword ``_`` as in ``student_kd`` is
    literal in GFM and stays readable). Brackets are left alone: without a link definition ``[x]`` is
    literal."""
    text = str(value).translate(_MD_SPECIAL).replace("\n", " ")
    return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "[": "{[}", "]": "{]}", "±": r"$\pm$", "Δ": r"$\Delta$", "<": r"\textless{}", ">": r"\textgreater{}",
                "−": "-"}


def latex_escape(value) -> str:
    """A LaTeX table cell: the ten special characters escaped (as pandas' ``to_latex(escape=True)``),
    brackets braced (safe after ``\\\\``), ± and Δ in math mode."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(value))


def _reference_value(refs: list[dict], model: str, cls: str, metric: str, convention: str):
    for r in refs:
        if r["model"] == model and r["metric"] == metric and r.get("class", cls) == cls \
                and r.get("convention", convention) == convention:
            return float(r["value"])
    return math.nan


def aggregate(metric_frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-seed case means, then mean/sd over seeds, per (model, class, metric, convention)."""
    df = pd.concat(metric_frames, ignore_index=True)
    keys = ["model", "class", "metric", "convention"]
    per_seed = df.groupby(keys + ["seed"], sort=False).agg(
        value=("value", "mean"), n_cases=("value", "count"),
        case_sd=("value", lambda v: float(np.std(v.dropna(), ddof=1)) if v.notna().sum() > 1 else math.nan),
    ).reset_index()
    agg = per_seed.groupby(keys, sort=False).agg(
        mean=("value", "mean"),
        sd=("value", lambda v: float(np.std(v.dropna(), ddof=1)) if v.notna().sum() > 1 else math.nan),
        n_seeds=("value", "count"),
        n_cases=("n_cases", "max"),
        case_sd=("case_sd", "mean"),
        seeds=("seed", lambda s: ";".join(str(x) for x in sorted(s))),
    ).reset_index()
    return agg


def experiment_table(exp_name: str, exp_cfg: dict, metric_csvs: list[str | Path],
                     model_dirs: list[str | Path], out_csv: str | Path, comparisons: pd.DataFrame | None = None,
                     flags: list | None = None) -> pd.DataFrame:
    """Build and write the long table of one experiment (``out_csv``).

    ``comparisons`` (:func:`medkd.stats.compare_experiment`): its ``kd_effect`` rows fill the stats
    columns of the compared model's rows; ``flags`` (:func:`medkd.health.assess`) fill ``health`` and
    ``health_notes`` on every row of the flagged model."""
    frames = [pd.read_csv(p, keep_default_na=True) for p in metric_csvs]
    agg = aggregate(frames)
    info = {}
    for d in model_dirs:
        s = read_json(Path(d) / "summary.json")
        env = read_json(Path(d) / "env.json")
        info.setdefault(s["model"], {**s, "git_commit": env["git"]["commit"]})
    stats_by = {}
    if comparisons is not None:
        for c in comparisons[comparisons["kind"] == "kd_effect"].to_dict("records"):
            stats_by[(c["model"], c["class"], c["metric"], c["convention"])] = {
                **{k: c[k] for k in STATS_FIELDS if k in c}, "stats_note": c["note"] or ""}
    health_by = _health.model_health(flags or [])
    rows = []
    refs = exp_cfg.get("reference", [])
    for r in agg.to_dict("records"):
        model_info = info[r["model"]]
        paper = _reference_value(refs, r["model"], r["class"], r["metric"], r["convention"])
        flag_names, flag_notes = health_by.get(r["model"], ("", ""))
        rows.append({
            **{k: r[k] for k in ("model", "class", "metric", "convention", "mean", "sd", "n_seeds", "n_cases",
                                 "case_sd", "seeds")},
            "experiment": exp_name, "dataset": exp_cfg["dataset"], "task": exp_cfg["task"],
            "role": model_info["role"], "kd_method": model_info["kd_method"], "arch": model_info["arch"],
            "paper_value": paper, "delta": r["mean"] - paper if not math.isnan(paper) else math.nan,
            **stats_by.get((r["model"], r["class"], r["metric"], r["convention"]), {}),
            "health": flag_names, "health_notes": flag_notes,
            "params": model_info["params"], "flops": model_info.get("flops_per_slice"),
            "fidelity": json.dumps(exp_cfg["models"][r["model"]].get("fidelity", {}), sort_keys=True),
            "spec_hash": model_info["spec_hash"], "data_hash": model_info["data_hash"],
            "git_commit": model_info["git_commit"],
        })
    table = pd.DataFrame(rows, columns=LONG_COLUMNS)
    order = {m: i for i, m in enumerate(exp_cfg["models"])}
    table = table.sort_values(["model", "convention", "class", "metric"], key=lambda c: c.map(order) if c.name == "model" else c)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table


def _cell(mean: float, sd: float, paper: float, metric: str) -> str:
    digits = 2 if metric in ("hd95", "psnr", "latency_ms_per_slice") else 3
    text = f"{mean:.{digits}f}" if not math.isnan(mean) else "n/a"
    if not math.isnan(sd):
        text += f" ± {sd:.{digits}f}"
    if not math.isnan(paper):
        text += f" ({paper:.{digits}f})"
    return text


def wide_table(table: pd.DataFrame, task: str, regions: dict | None = None) -> pd.DataFrame:
    """One row per model: params, latency and the main metrics of every class and convention (a region column
    that repeats a class column by definition once: :func:`drop_repeated_columns`)."""
    main = MAIN_METRICS[task]
    models = list(dict.fromkeys(table["model"]))
    wide = pd.DataFrame({"model": models})
    first = table.drop_duplicates("model").set_index("model")
    wide["role"] = [first.loc[m, "role"] for m in models]
    wide["kd"] = [first.loc[m, "kd_method"] for m in models]
    wide["params"] = [f"{int(first.loc[m, 'params']):,}" for m in models]
    wide["GFLOPs"] = [f"{first.loc[m, 'flops'] / 1e9:.3f}" if pd.notna(first.loc[m, "flops"]) else "" for m in models]
    sel = table[table["metric"].isin(main + ["latency_ms_per_slice"]) |
                (table["convention"] != "engine") & (table["convention"] != "cost")]
    for (conv, cls, metric), grp in sel.groupby(["convention", "class", "metric"], sort=False):
        col = metric if conv == "cost" else f"{metric} {cls}" + ("" if conv == "engine" else f" [{conv}]")
        by_model = grp.set_index("model")
        wide[col] = [_cell(by_model.loc[m, "mean"], by_model.loc[m, "sd"], by_model.loc[m, "paper_value"], metric)
                     if m in by_model.index else "" for m in models]
    compared = table[_text(table.get("compared_to")) != ""] if "compared_to" in table else table.iloc[:0]
    if len(compared):
        vs = compared.drop_duplicates("model").set_index("model")["compared_to"]
        wide["vs"] = [vs.get(m, "") for m in models]
        for (conv, cls, metric), grp in compared.groupby(["convention", "class", "metric"], sort=False):
            col = f"Δ {metric} {cls}" + ("" if conv == "engine" else f" [{conv}]")
            by_model = grp.set_index("model")
            # compact: the difference and its interval; p, p_holm and both intervals are in "KD effect in detail"
            wide[col] = [format_diff(*(by_model.loc[m, k] for k in ("diff", "ci_low", "ci_high")), math.nan, math.nan,
                                     metric) if m in by_model.index else "" for m in models]
    if "health" in table:
        h = table.drop_duplicates("model").set_index("model")["health"]
        wide["health"] = [_text(h.loc[[m]]).iloc[0].replace(";", "; ") for m in models]
    return drop_repeated_columns(wide, regions)


def drop_repeated_columns(wide: pd.DataFrame, regions: dict | None = None) -> pd.DataFrame:
    """Drop a region column that is an engine column by definition: a region of ``regions`` (config
    ``regions``: {region: [classes]}) made of one class scores that class, so ``dice wt [region]`` repeats
    ``dice lesion`` (BraTS' whole tumour as the embedded lesion). Dropped only when the cells are also equal for
    every model; a coincidence of values (one test case: pooled = per-case) drops nothing.
    ``wide.attrs["same_as"]`` maps each dropped column to the one kept (:func:`repeated_columns_note`)."""
    same_as = {}
    for region, members in (regions or {}).items():
        if len(members) != 1:
            continue
        suffix = f" {region} [region]"
        for col in (c for c in wide.columns if c.endswith(suffix)):
            kept = col[: -len(suffix)] + f" {members[0]}"  # "Δ dice wt [region]" -> "Δ dice lesion"
            if kept in wide.columns and [str(v) for v in wide[col]] == [str(v) for v in wide[kept]]:
                same_as[col] = kept
    out = wide.drop(columns=list(same_as))
    out.attrs["same_as"] = same_as
    return out


def repeated_columns_note(wide: pd.DataFrame) -> list[str]:
    """The note naming the columns :func:`drop_repeated_columns` left out (none: no note)."""
    same = wide.attrs.get("same_as") or {}
    if not same:
        return []
    return ["Not repeated (the same numbers for every model): " + "; ".join(f"{d} = {k}" for d, k in same.items()) + "."]


def _text(col) -> pd.Series:
    """A text column with missing values (NaN after a CSV round trip) as empty strings."""
    if col is None:
        return pd.Series(dtype=str)
    return col.astype(object).where(col.notna(), "").astype(str)


def _md_table(wide: pd.DataFrame) -> str:
    head = "| " + " | ".join(md_escape(c) for c in wide.columns) + " |\n|" + "---|" * len(wide.columns) + "\n"
    return head + "".join("| " + " | ".join(md_escape(v) for v in row) + " |\n" for row in wide.itertuples(index=False))


def to_markdown(wide: pd.DataFrame, title: str, notes: list[str], sections: list[str] = ()) -> str:
    """The experiment table (header on line 3), its notes, then extra Markdown ``sections``."""
    text = f"## {md_escape(title)}\n\n" + _md_table(wide) + "\n" + "".join(f"- {md_escape(n)}\n" for n in notes)
    return text + "".join("\n" + sec for sec in sections)


def to_latex(wide: pd.DataFrame, title: str) -> str:
    cols = "l" * len(wide.columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(title)}}}", rf"\begin{{tabular}}{{{cols}}}",
             r"\hline", " & ".join(latex_escape(c) for c in wide.columns) + r" \\", r"\hline"]
    lines += [" & ".join(latex_escape(v) for v in row) + r" \\" for row in wide.itertuples(index=False)]
    lines += [r"\hline", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def health_section(flags: list, bounds: dict | None = None) -> str:
    """The "Health" list of an experiment's Markdown table: one line per flag, or all healthy."""
    b = {**_health.HEALTH_DEFAULTS, **(bounds or {})}
    lines = ["### Health", ""]
    if not flags:
        lines.append(f"- No flag: every model passed every check (bounds: Dice margin {b['margin_dice']}, PSNR margin "
                     f"{b['margin_psnr_db']} dB, seed sd {b['collapse_sd_dice']} Dice / {b['collapse_sd_psnr_db']} dB, "
                     f"convergence: more than {b['converge_gain']:.0%} of the gain in the last "
                     f"{b['converge_tail']:.0%} of the epochs).")
    for f in flags:
        lines.append(f"- {md_escape(f.model)}: {md_escape(f.flag)}: {md_escape(f.sentence)}")
    return "\n".join(lines) + "\n"


def teacher_student_frame(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Teacher - student paired differences, one row per (teacher, student), a column per main metric."""
    tvs = comparisons[comparisons["kind"] == "teacher_vs_student"] if len(comparisons) else comparisons
    if not len(tvs):
        return pd.DataFrame()
    pairs = list(dict.fromkeys(zip(tvs["model"], tvs["compared_to"])))
    wide = pd.DataFrame({"comparison": [f"{t} - {st}" for t, st in pairs]})
    for (conv, cls, metric), grp in tvs.groupby(["convention", "class", "metric"], sort=False):
        col = f"{metric} {cls}" + ("" if conv == "engine" else f" [{conv}]")
        by = {(r["model"], r["compared_to"]): r for r in grp.to_dict("records")}
        wide[col] = [format_diff(by[k]["diff"], by[k]["ci_low"], by[k]["ci_high"], by[k]["p"], by[k]["p_holm"], metric,
                                 by[k]["note"] if isinstance(by[k]["note"], str) else "") if k in by else ""
                     for k in pairs]
    return wide


def teacher_student_note(comparisons: pd.DataFrame, experiment: str) -> str:
    n_tests = int(comparisons["p"].notna().sum())
    return (f"Paired differences teacher - student (same case, same seed): mean [{CI_TEXT}], {P_TEXT}, "
            f"p_holm = Holm-adjusted over the {n_tests} tests of this "
            f"experiment (every comparison, class, metric; all in `{experiment}_stats.csv`).")


def comparisons_section(comparisons: pd.DataFrame) -> str:
    """Teacher - student paired differences of an experiment as a Markdown table (empty if none)."""
    wide = teacher_student_frame(comparisons)
    if not len(wide):
        return ""
    tvs = comparisons[comparisons["kind"] == "teacher_vs_student"]
    return ("### Teacher vs student\n\n" + _md_table(wide) + "\n"
            f"- {teacher_student_note(comparisons, tvs['experiment'].iloc[0])}\n")


def smallest_p(n_cases: int) -> float:
    """The smallest two-sided p the exact Wilcoxon signed-rank test can give with ``n_cases`` non-zero
    differences: every sign agreeing, 2 / 2^n (8 cases: 0.0078; 24: 1.2e-7)."""
    return 2.0 / 2.0**n_cases if n_cases > 0 else math.nan


def kd_effects_frame(comparisons: pd.DataFrame) -> pd.DataFrame:
    """"KD effect in detail": one row per KD comparison, class and main metric: the difference, its interval
    over seeds and cases beside the one over cases with the seeds fixed, the difference of each seed,
    P(better) on a new seed and case, p (unit: a case) and p_holm, and whether it survives Holm at 0.05."""
    kd = comparisons[comparisons["kind"] == "kd_effect"] if len(comparisons) else comparisons
    rows = []
    for r in kd.to_dict("records"):
        d = _stats.digits(r["metric"])

        def ci(lo, hi):
            return f"[{lo:.{d}f}, {hi:.{d}f}]" if pd.notna(lo) else "n/a"

        conv = "" if r["convention"] == "engine" else f" [{r['convention']}]"
        seeds = str(r["seed_diffs"]) if pd.notna(r.get("seed_diffs")) else ""
        rows.append({
            "comparison": f"{r['model']} - {r['compared_to']}", "metric": f"{r['metric']} {r['class']}{conv}",
            "Δ": f"{r['diff']:+.{d}f}" if pd.notna(r["diff"]) else "n/a",
            "CI seeds+cases": ci(r["ci_low"], r["ci_high"]), "CI cases (seeds fixed)": ci(r["ci_cases_low"], r["ci_cases_high"]),
            "Δ per seed": ", ".join(f"{float(v):+.{d}f}" for v in seeds.split(";") if v),
            "P(better)": f"{r['p_better']:.2f}" if pd.notna(r.get("p_better")) else "n/a",
            "p (cases)": f"{_stats.format_p(r['p'])} (n={r['n_cases']})", "p_holm": _stats.format_p(r["p_holm"]),
            "Holm 0.05": "yes" if pd.notna(r["p_holm"]) and r["p_holm"] < 0.05 else "no",
        })
    return pd.DataFrame(rows)


def kd_effects_notes(comparisons: pd.DataFrame) -> list[str]:
    """What the columns of :func:`kd_effects_frame` mean, with the smallest p this design can reach."""
    kd = comparisons[comparisons["kind"] == "kd_effect"]
    n_cases = int(kd["n_cases"].max())
    n_tests = int(comparisons["p"].notna().sum())
    return [f"CI seeds+cases: {CI_TEXT}; it is the interval of the recipe (a new training seed, a new test case). "
            "CI cases (seeds fixed): the percentile bootstrap over cases that keeps these seeds' models, so it "
            "describes these training runs only. Δ per seed: the mean difference of each seed over the cases.",
            "P(better): share of (seed, case) pairs where the model is the better one (ties count 1/2; lower is "
            "better for HD95), the plug-in estimate of the chance it wins on a new seed and case.",
            f"{P_TEXT}. With {n_cases} cases the smallest p it can reach is {smallest_p(n_cases):.2g}; Holm over "
            f"this experiment's {n_tests} tests multiplies the smallest p by {n_tests}, so a comparison survives "
            f"Holm at 0.05 only if {n_tests} x p < 0.05."]


def kd_effects_section(comparisons: pd.DataFrame) -> str:
    """The "KD effect in detail" Markdown section (empty without a KD comparison)."""
    wide = kd_effects_frame(comparisons)
    if not len(wide):
        return ""
    return ("### KD effect in detail\n\n" + _md_table(wide) + "\n"
            + "".join(f"- {md_escape(n)}\n" for n in kd_effects_notes(comparisons)))


def table_notes(exp_cfg: dict, task: str) -> list[str]:
    notes = ["Cells: mean ± sd over seeds of the per-case mean; the paper's value in brackets."]
    if task == "segmentation":
        notes.append("Engine metrics per case on re-stacked volumes; HD95 in mm; a case with both masks empty "
                     "is excluded (NaN), one empty mask scores Dice 0 and HD95 = the volume diagonal.")
    else:
        notes.append("PSNR/SSIM/NMSE per volume, data_range = the volume maximum, SSIM 7x7 uniform window "
                     "averaged over slices (fastMRI convention).")
    if any(m.get("compare_to") for m in exp_cfg["models"].values()):
        notes.append(f"Δ columns: paired difference to the model in the vs column (same case and seed), mean [{CI_TEXT}]; "
                     "p-values, the interval with the seeds fixed and the difference of each seed are under KD effect "
                     f"in detail ({P_TEXT}; p_holm: Holm over every test of this experiment).")
    notes.append("health: flag names (empty = no flag), explained under Health.")
    for name, m in exp_cfg["models"].items():
        if m.get("fidelity"):
            notes.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in sorted(m["fidelity"].items())))
    return notes


def write_experiment_outputs(exp_name: str, exp_cfg: dict, metric_csvs, model_dirs, out: dict,
                             health_cfg: dict | None = None, stats_cfg: dict | None = None) -> pd.DataFrame:
    """All outputs of the tables stage for one experiment. ``out`` maps csv/md/tex/png/curves (and
    optionally stats, the comparisons CSV) to paths; ``health_cfg`` and ``stats_cfg`` are the config's
    ``health`` and ``stats`` entries (defaults: :data:`medkd.health.HEALTH_DEFAULTS`,
    :data:`medkd.stats.STATS_DEFAULTS`)."""
    from medkd.integrity import METRIC_COLUMNS as COLUMNS, check_metrics_csv

    for p in metric_csvs:  # a truncated or altered metrics file stops the stage, naming it
        check_metrics_csv(p, COLUMNS)
    metrics = pd.concat([pd.read_csv(p) for p in metric_csvs], ignore_index=True)
    scfg = {**_stats.STATS_DEFAULTS, **(stats_cfg or {})}
    comparisons = _stats.compare_experiment(exp_name, exp_cfg, metrics, n_resamples=scfg["n_resamples"],
                                            confidence=scfg["confidence"], seed=scfg["seed"])
    flags = _health.assess(exp_cfg, metrics, model_dirs, health_cfg)
    table = experiment_table(exp_name, exp_cfg, metric_csvs, model_dirs, out["csv"], comparisons, flags)
    if out.get("stats"):
        with atomic_path(out["stats"]) as tmp:
            comparisons.to_csv(tmp, index=False)
    from medkd.figures import plot_experiment
    from medkd.verdicts import paper_verdicts, verdicts_section

    verdicts = paper_verdicts(exp_name, exp_cfg, metrics, table, stats_cfg)
    if out.get("verdicts"):
        with atomic_path(out["verdicts"]) as tmp:
            verdicts.to_csv(tmp, index=False)
    wide = wide_table(table, exp_cfg["task"], exp_cfg.get("regions"))
    title = f"{exp_name} ({exp_cfg['dataset']}, {exp_cfg['task']})"
    if exp_cfg.get("rehearsal"):
        title = f"REHEARSAL on stand-in data, not results: {title}"
    sections = [s for s in (health_section(flags, health_cfg), kd_effects_section(comparisons),
                            comparisons_section(comparisons), verdicts_section(verdicts)) if s]
    with atomic_path(out["md"]) as tmp:
        tmp.write_text(to_markdown(wide, title, table_notes(exp_cfg, exp_cfg["task"]) + repeated_columns_note(wide),
                                   sections))
    with atomic_path(out["tex"]) as tmp:
        tmp.write_text(to_latex(wide, title))
    plot_experiment(table, exp_cfg["task"], model_dirs, title, out["png"], out["curves"], metrics)
    return table


def robustness_rows(path: str | Path, long_table: pd.DataFrame) -> pd.DataFrame:
    """Robustness summary (``<exp>_robustness.csv``) as long-format rows, convention ``robustness``."""
    exp = Path(path).name[: -len("_robustness.csv")]
    summ = pd.read_csv(path)
    info = long_table[long_table["experiment"] == exp].drop_duplicates("model").set_index("model")
    rows = []
    for r in summ.to_dict("records"):
        base = {c: info.loc[r["model"], c] for c in LONG_COLUMNS if c in info.columns and c not in
                ("class", "metric", "convention", "mean", "sd", "n_cases", "paper_value", "delta", *STATS_FIELDS)}
        for metric, sd in (("clean", math.nan), ("corrupted", math.nan), ("relative_drop", r["relative_drop_sd"])):
            rows.append({**base, "experiment": exp, "model": r["model"], "class": "foreground", "metric": metric,
                         "convention": "robustness", "mean": r[metric], "sd": sd, "n_seeds": r["n_seeds"]})
    return pd.DataFrame(rows)


def collect(tables: list[str | Path], runs_jsons: list[str | Path], out_csv: str | Path,
            robustness: list[str | Path] = (), health_md: str | Path | None = None) -> pd.DataFrame:
    """Concatenate the experiments' long tables (and robustness summaries) into all.csv, adding the
    MLflow run ids of each row (``runs_jsons``: the track stage's {run key: run id} file of every
    experiment); write the health summary of every model to ``health_md`` (default:
    ``health.md`` beside ``out_csv``)."""
    runs = {}
    for path in runs_jsons:
        runs.update(read_json(path))
    from medkd.integrity import reading

    frames = []
    for p in tables:
        with reading(p, "experiment table"):
            frames.append(pd.read_csv(p))
            if not {"experiment", "model", "seeds", "mean"} <= set(frames[-1].columns):
                raise ValueError(f"columns {list(frames[-1].columns)[:5]}... lack experiment/model/seeds/mean")
    df = pd.concat(frames, ignore_index=True)
    if robustness:
        df = pd.concat([df] + [robustness_rows(p, df) for p in robustness], ignore_index=True)
    df["mlflow_run_ids"] = [
        ";".join(runs.get(f"{e}/{m}/seed{s}", "") for s in str(seeds).split(";"))
        for e, m, seeds in zip(df["experiment"], df["model"], df["seeds"])
    ]
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(health_md or Path(out_csv).with_name("health.md")) as tmp:
        tmp.write_text(health_report(df))
    return df


def health_report(df: pd.DataFrame) -> str:
    """results/tables/health.md from the long table: every flag with its experiment, model and sentence."""
    models = df.drop_duplicates(["experiment", "model"])
    rows = []
    for r in models.to_dict("records"):
        names = [n for n in _text(pd.Series([r.get("health")])).iloc[0].split(";") if n]
        notes = _text(pd.Series([r.get("health_notes")])).iloc[0]
        starts, pos = [], 0
        for n in names:  # health_notes: "flag: sentence" in flag order, joined by spaces
            starts.append(notes.find(f"{n}: ", pos))
            pos = max(pos, starts[-1] + 1)
        for i, n in enumerate(names):
            end = starts[i + 1] if i + 1 < len(names) else len(notes)
            sentence = notes[starts[i] + len(n) + 2:end].strip() if starts[i] >= 0 else ""
            rows.append((r["experiment"], r["model"], n, sentence))
    return _health.health_markdown(rows, len(models), df["experiment"].nunique())


def _gain(value: float, base: float, metric: str = "") -> float:
    """Relative improvement over ``base`` in percent, in the metric's direction: positive is better, so for a
    metric of :data:`medkd.stats.LOWER_IS_BETTER` (HD95) a reduction is a gain; NaN without a base."""
    if not base or math.isnan(base) or math.isnan(value):
        return math.nan
    sign = -1.0 if metric in _stats.LOWER_IS_BETTER else 1.0
    return sign * 100.0 * (value - base) / base


def paper_table(group: str, exp_cfgs: dict[str, dict], tables: dict[str, str | Path],
                out_csv: str | Path, out_md: str | Path, verdicts: dict[str, str | Path] | None = None) -> pd.DataFrame:
    """The paper's layout for a group of experiments: one row per (setting, model), the headline metrics
    with ours (mean ± sd over seeds), the paper's value and, for models with ``compare_to``, the relative
    gain in percent over that model (ours and the paper's). ``verdicts`` (experiment -> its
    ``<exp>_verdicts.csv``, :func:`paper_verdicts`) add our interval and the verdict to every cell with a
    paper value (``<metric>_ci_low_ours``, ``<metric>_ci_high_ours``, ``<metric>_verdict``)."""
    rows = []
    for exp, cfg in exp_cfgs.items():
        t = pd.read_csv(tables[exp])
        from medkd.verdicts import VERDICT_COLUMNS

        v = pd.read_csv(verdicts[exp]) if verdicts and exp in verdicts else pd.DataFrame(columns=VERDICT_COLUMNS)
        v_by = {(r["model"], str(r["class"]), r["metric"], r["convention"]): r for r in v.to_dict("records")}
        head = cfg.get("headline", {})
        conv = head.get("convention", "engine")
        two_sd_cases = head.get("spread", "seeds") == "cases_2sd"
        metrics = head.get("metrics") or MAIN_METRICS[cfg["task"]]
        sel = t[t["convention"] == conv]
        cls = head.get("class") or next((c for c in sel["class"] if c not in ("-",)), "-")
        sel = sel[sel["class"] == cls].set_index(["model", "metric"])
        has_stats = "diff" in t.columns
        by_conv = t[t["class"] == cls].set_index(["model", "metric", "convention"]) if has_stats else None
        for model, mcfg in cfg["models"].items():
            row = {"setting": cfg.get("setting", exp), "experiment": exp, "model": model,
                   "params": int(t[t.model == model]["params"].iloc[0]) if (t.model == model).any() else None,
                   "convention": conv, "class": cls}
            for m in metrics:
                if (model, m) not in sel.index:
                    continue
                r = sel.loc[(model, m)]
                row[f"{m}"] = r["mean"]
                row[f"{m}_sd"] = 2 * r["case_sd"] if two_sd_cases else r["sd"]
                row["spread"] = "2 sd over cases" if two_sd_cases else "sd over seeds"
                row[f"{m}_paper"] = r["paper_value"]
                vr = v_by.get((model, str(cls), m, conv))
                if vr is not None:
                    row.update({f"{m}_ci_low_ours": vr["ci_low"], f"{m}_ci_high_ours": vr["ci_high"],
                                f"{m}_verdict": vr["verdict"]})
                ref = mcfg.get("compare_to")
                if ref and (ref, m) in sel.index:
                    row[f"{m}_gain_pct"] = _gain(r["mean"], sel.loc[(ref, m)]["mean"], m)
                    row[f"{m}_gain_pct_paper"] = _gain(r["paper_value"], sel.loc[(ref, m)]["paper_value"], m)
                if ref and has_stats:  # paired statistics: the headline convention, else the engine's per-case values
                    for c in dict.fromkeys((conv, "engine")):
                        if (model, m, c) in by_conv.index and pd.notna(by_conv.loc[(model, m, c), "diff"]):
                            st = by_conv.loc[(model, m, c)]
                            row.update({f"{m}_diff": st["diff"], f"{m}_ci_low": st["ci_low"],
                                        f"{m}_ci_high": st["ci_high"], f"{m}_p": st["p"], f"{m}_p_holm": st["p_holm"],
                                        f"{m}_diff_convention": c,
                                        f"{m}_stats_note": _text(pd.Series([st.get("stats_note")])).iloc[0]})
                            break
            rows.append(row)
    df = pd.DataFrame(rows)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    header, cells, note = paper_layout(df)
    lines = [f"## {group}: paper table\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in cells]
    lines.append(f"\n{note}\n")
    with atomic_path(out_md) as tmp:
        tmp.write_text("\n".join(lines))
    return df


def paper_layout(df: pd.DataFrame) -> tuple[list[str], list[list[str]], str]:
    """(header, rows of unescaped cells, footnote) of a paper table frame (:func:`paper_table`'s CSV,
    also after a CSV round trip): ours mean ± spread (paper's value), gains, verdict with our interval,
    paired difference."""
    metric_names = [c for c in df.columns if c not in ("setting", "experiment", "model", "params", "convention", "class",
                                                       "spread")
                    and not c.endswith(("_sd", "_paper", "_gain_pct", "_gain_pct_paper", "_diff", "_ci_low", "_ci_high",
                                        "_p", "_p_holm", "_diff_convention", "_stats_note", "_ci_low_ours",
                                        "_ci_high_ours", "_verdict"))]
    header = ["setting", "model", "params"] + [f"{m} ours (paper)" for m in metric_names]
    rows = []
    for r in df.to_dict("records"):
        params = r.get("params")
        cells = [str(r["setting"]), str(r["model"]),
                 f"{int(params):,}" if params is not None and not (isinstance(params, float) and math.isnan(params)) else ""]
        for m in metric_names:
            cell = _cell(r.get(m, math.nan), r.get(f"{m}_sd", math.nan), r.get(f"{m}_paper", math.nan), m)
            gain, gain_p = r.get(f"{m}_gain_pct", math.nan), r.get(f"{m}_gain_pct_paper", math.nan)
            if isinstance(gain, float) and not math.isnan(gain):
                cell += f", {gain:+.1f}%" + (f" ({gain_p:+.1f}%)" if not math.isnan(gain_p) else "")
            ver = r.get(f"{m}_verdict")
            if isinstance(ver, str) and ver:
                lo, hi = r.get(f"{m}_ci_low_ours", math.nan), r.get(f"{m}_ci_high_ours", math.nan)
                d = _stats.digits(m)
                cell += (f" {ver} [{lo:.{d}f}, {hi:.{d}f}]" if isinstance(lo, float) and not math.isnan(lo)
                         else f" {ver}")
            diff = r.get(f"{m}_diff", math.nan)
            if isinstance(diff, float) and not math.isnan(diff):
                c = r[f"{m}_diff_convention"]
                note = r.get(f"{m}_stats_note", "")
                note = "" if not isinstance(note, str) else note
                cell += "; Δ " + format_diff(diff, r[f"{m}_ci_low"], r[f"{m}_ci_high"], r[f"{m}_p"], r[f"{m}_p_holm"], m,
                                             note) + ("" if c == r["convention"] else f" ({c})")
            cells.append(cell)
        rows.append(cells)
    conv = ", ".join(sorted(set(df["convention"])))
    spread = ", ".join(sorted(set(df["spread"].dropna()))) if "spread" in df else "sd over seeds"
    note = (f"Convention: {conv}. Cells: ours mean ± {spread} (paper's value); gains (positive = better: for HD95 a "
            "reduction) relative to "
            "the model each row is compared with (config `compare_to`), ours (paper's); Δ: paired difference to "
            f"that model (same case and seed), [{CI_TEXT}], {P_TEXT}, and Holm-adjusted p_holm within the "
            "experiment; (engine) when the headline "
            "convention is not per case and the engine's per-case values were tested instead. Verdict after a "
            "paper value: is the paper's value within our 95% interval [low, high] of the mean (the same t "
            "interval over seeds and cases; over seeds when there is one case)?")
    return header, rows, note
