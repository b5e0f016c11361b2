"""HTML pages of the Snakemake report (``make report`` -> results/report.html).

Snakemake's report shows registered files; these are the HTML ones, self-contained (inline CSS, figures
as data URIs), written from the files the tables, track and collect stages already wrote:

* ``results/report/overview.html`` - the landing page (``workflow/report/workflow.rst`` includes it):
  config, commit, data hashes, the experiments and their papers, how long the jobs took, the verdict
  counts of the paper numbers and the health summary (:func:`write_overview`);
* ``results/report/paper_numbers.html`` (+ ``results/tables/paper_numbers.csv``) - every paper number with
  its verdict (:func:`write_paper_numbers`);
* per experiment ``results/report/<exp>/table.html`` (the experiment table, notes, health, teacher vs
  student, paper numbers, robustness table), ``paper.html`` (the paper-layout table of its group) and
  ``models/<model>.html`` (one card per model: what it is, per-seed training and test figures, its MLflow
  runs and its loss-term curves) (:func:`write_experiment_pages`).

Verdicts (:func:`medkd.verdicts.verdict`): ``within CI`` / ``outside CI`` for numbers of experiments that
ran (our 95 % interval of the mean over seeds and cases, :func:`medkd.verdicts.value_ci`), ``not run here (data gated:
<dataset>)`` for experiments of ``config/paper.yaml`` on gated data (download kind ``manual``) that this
run did not include, ``not run here (...)`` for those on public data that it did not include, and ``no
code path (why)`` for the numbers docs/not_reproduced.md lists under "Reported, but no config produces
them". ``no CI (...)`` marks a number of an experiment that ran with a single test case and seed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from medkd import report as _report
from medkd.stats import digits
from medkd.io import atomic_path, read_json, read_jsonl

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;font-size:13px;color:#1e293b;background:#fff;
margin:12px 18px;line-height:1.4}
h1{font-size:20px;margin:4px 0 8px} h2{font-size:16px;margin:18px 0 6px} h3{font-size:14px;margin:14px 0 4px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:12px} caption{text-align:left;font-weight:600;padding:2px 0}
th,td{border:1px solid #cbd5e1;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f1f5f9} tr:nth-child(even) td{background:#f8fafc}
.within{color:#166534;font-weight:600}.outside{color:#b91c1c;font-weight:600}.gated,.nocode,.noci{color:#6b7280}
.note{color:#475569;font-size:12px} code{background:#f1f5f9;padding:0 3px}
#experiment-table td{white-space:nowrap}
"""

VERDICT_CLASS = (("within CI", "within"), ("outside CI", "outside"), ("not run here", "gated"),
                 ("no code path", "nocode"), ("no CI", "noci"), ("no value", "noci"))


def esc(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return html.escape(str(x))


def page(title: str, body: str, level: str = "h1") -> str:
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><{level}>{esc(title)}</{level}>\n{body}\n</body></html>\n")


def table_html(df: pd.DataFrame, table_id: str = "", caption: str = "", verdict_col: str | None = None) -> str:
    """A DataFrame as an escaped HTML table (empty cells for NaN); ``verdict_col`` cells get a class."""
    if df is None or not len(df):
        return "<p class=\"note\">(no rows)</p>"
    attrs = f" id=\"{esc(table_id)}\"" if table_id else ""
    out = [f"<table{attrs}>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in df.columns) + "</tr></thead><tbody>")
    for row in df.itertuples(index=False):
        cells = []
        for col, v in zip(df.columns, row):
            cls = ""
            if col == verdict_col and isinstance(v, str):
                cls = next((f" class=\"{c}\"" for prefix, c in VERDICT_CLASS if v.startswith(prefix)), "")
            cells.append(f"<td{cls}>{esc(_fmt(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _fmt(v):
    if isinstance(v, float) and not math.isnan(v):
        return f"{v:.4g}"
    return v


def verdict_frame(v: pd.DataFrame) -> pd.DataFrame:
    """The displayed columns of a verdicts CSV (:data:`medkd.verdicts.VERDICT_COLUMNS`)."""
    rows = []
    for r in v.to_dict("records"):
        d = digits(r["metric"])
        ours = _report._cell(float(r["ours"]), float(r["sd"]), math.nan, r["metric"]) if pd.notna(r["ours"]) else ""
        ci = f"[{r['ci_low']:.{d}f}, {r['ci_high']:.{d}f}]" if pd.notna(r["ci_low"]) else ""
        rows.append({"model": r["model"], "class": r["class"], "metric": r["metric"], "convention": r["convention"],
                     "paper": f"{float(r['paper_value']):.{d}f}", "ours (mean ± sd over seeds)": ours,
                     "95% CI (ours)": ci, "verdict": r["verdict"], "n cases x seeds":
                         f"{int(r['n_cases'])} x {int(r['n_seeds'])}" if pd.notna(r["n_cases"]) else "",
                     "source": r.get("source", "")})
    return pd.DataFrame(rows)


def _png_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _read_csv(path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path and Path(path).exists() else None


# ------------------------------------------------------------------------------------------ experiment pages


def write_experiment_pages(exp: str, exp_cfg: dict, table_csv, stats_csv, verdicts_csv, model_dirs: list,
                           metric_csvs: list, out_dir, paper_csv=None, robustness_csv=None, runs_json=None) -> None:
    """``<out_dir>/table.html``, ``<out_dir>/paper.html`` and ``<out_dir>/models/<model>.html``."""
    out_dir = Path(out_dir)
    table = pd.read_csv(table_csv)
    task = exp_cfg["task"]
    stats = _read_csv(stats_csv)
    verdicts = _read_csv(verdicts_csv)
    wide = _report.wide_table(table, task, exp_cfg.get("regions"))
    main, details = main_and_details(wide, task)
    body = [f"<p>{esc(exp_cfg.get('description', ''))}</p>" if exp_cfg.get("description") else "",
            f"<p><b>Paper:</b> {esc(exp_cfg.get('paper', 'none given'))}<br><b>Dataset:</b> {esc(exp_cfg['dataset'])}, "
            f"<b>task:</b> {esc(task)}</p>",
            "<h2>Experiment table</h2>",
            table_html(main, "experiment-table", f"{_report.MAIN_METRICS[task][0]}: mean ± sd over seeds of the "
                       "per-case mean (paper value in brackets); Δ: the difference to the vs model [95% CI over seeds "
                       "and cases]"),
            "<h3>Details</h3>",
            table_html(details, "experiment-details", "the other metrics, conventions and the cost of each model"),
            "<ul class=\"note\">" + "".join(f"<li>{esc(n)}</li>" for n in _report.table_notes(exp_cfg, task)
                                            + _report.repeated_columns_note(wide)) + "</ul>",
            "<h2>Health</h2>", _health_html(table)]
    if stats is not None and len(stats):
        kd = _report.kd_effects_frame(stats)
        if len(kd):
            body += ["<h2>KD effect in detail</h2>", table_html(kd, "kd-effects"),
                     "<ul class=\"note\">" + "".join(f"<li>{esc(n)}</li>" for n in _report.kd_effects_notes(stats))
                     + "</ul>"]
        tvs = _report.teacher_student_frame(stats)
        if len(tvs):
            body += ["<h2>Teacher vs student</h2>", table_html(tvs, "teacher-vs-student"),
                     f"<p class=\"note\">{esc(_report.teacher_student_note(stats, exp))}</p>"]
    body.append("<h2>Paper numbers</h2>")
    if verdicts is not None and len(verdicts):
        body += [table_html(verdict_frame(verdicts), "paper-verdicts", verdict_col="verdict"),
                 f"<p class=\"note\">Interval: {esc('; '.join(sorted(set(verdicts['ci_method'].dropna()))))}.</p>"]
    else:
        body.append("<p class=\"note\">This experiment has no <code>reference</code> entries: no paper number is "
                    "compared here (the embedded configs carry none; config/paper.yaml does).</p>")
    robust = _read_csv(robustness_csv)
    if robust is not None:
        body += ["<h2>Robustness</h2>", table_html(robust, "robustness-table")]
    write_text(out_dir / "table.html", page(f"{exp}: experiment table", "\n".join(body)))

    pbody = []
    if paper_csv and Path(paper_csv).exists():
        pdf = pd.read_csv(paper_csv)
        header, rows, note = _report.paper_layout(pdf)
        group = exp_cfg.get("group")
        pbody += [f"<p>Group <code>{esc(group)}</code>: experiments "
                  f"{esc(', '.join(dict.fromkeys(pdf['experiment'])))} in the paper's layout.</p>",
                  table_html(pd.DataFrame(rows, columns=header), "paper-table", f"paper table {group}"),
                  f"<p class=\"note\">{esc(note)}</p>"]
    else:
        pbody.append("<p class=\"note\">This experiment belongs to no paper table (config <code>group</code>): "
                     "its paper layout is the experiment table.</p>")
        pbody.append(table_html(_report.wide_table(table, task, exp_cfg.get("regions")), "paper-table"))
    if verdicts is not None and len(verdicts):
        pbody += ["<h2>Paper numbers</h2>", table_html(verdict_frame(verdicts), "paper-verdicts", verdict_col="verdict")]
    write_text(out_dir / "paper.html", page(f"{exp}: paper layout", "\n".join(pbody)))

    runs = read_json(runs_json) if runs_json and Path(runs_json).exists() else {}
    metrics = pd.concat([pd.read_csv(p) for p in metric_csvs], ignore_index=True) if metric_csvs else None
    by_model: dict[str, list[Path]] = {}
    for d in model_dirs:
        by_model.setdefault(Path(d).parts[-2], []).append(Path(d))
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    for model in exp_cfg["models"]:
        write_text(out_dir / "models" / f"{model}.html",
                   model_card(exp, model, exp_cfg, table, by_model.get(model, []), metrics, runs))


def main_and_details(wide: pd.DataFrame, task: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The experiment table split to fit a 1,400 px page: the main table holds the model, its role and KD method,
    the first main metric per class (engine convention), the vs model, that metric's differences and the health
    flags; the details table holds the model and every other column (parameters, cost, the second main metric,
    other conventions and their differences)."""
    first = _report.MAIN_METRICS[task][0]

    def is_main(col: str) -> bool:
        name = col[2:] if col.startswith("Δ ") else col
        return name.startswith(f"{first} ") and "[" not in name

    main_cols = [c for c in wide.columns if c in ("model", "role", "kd", "vs", "health") or is_main(c)]
    detail_cols = ["model"] + [c for c in wide.columns if c not in main_cols]
    return wide[main_cols], wide[detail_cols]


def _health_html(table: pd.DataFrame) -> str:
    first = table.drop_duplicates("model")
    items = []
    for r in first.to_dict("records"):
        names = r.get("health") if isinstance(r.get("health"), str) else ""
        if names:  # health_notes: "flag: sentence" per flag
            items.append(f"<li><b>{esc(r['model'])}</b>: {esc(r.get('health_notes') or names)}</li>")
    if not items:
        return "<p>No flag: every model passed every check.</p>"
    return "<ul>" + "".join(items) + "</ul>"


def model_label(name: str, cfg: dict) -> str:
    """The report label of a model: ``student_kd: KD student (hinton)``."""
    if cfg["role"] == "teacher":
        kind = "teacher"
    elif cfg["role"] == "baseline":
        kind = "baseline"
    elif cfg.get("kd_method") and cfg["kd_method"] != "none":
        kind = f"KD student ({cfg['kd_method']})"
    else:
        kind = "student alone"
    return f"{name}: {kind}"


MLFLOW_UI = "http://127.0.0.1:5000"
"""Where ``make ui`` serves the MLflow UI: the model cards link their runs there."""


def run_link(runs: dict, exp: str, key: str) -> str:
    """An HTML link to run ``key`` of ``runs`` (the track stage's JSON) in the MLflow UI of ``make ui``, on the
    model-training view (``workflowType=machine_learning``; without it MLflow 3 opens its GenAI view), or "-"."""
    rid = runs.get(key)
    if not rid:
        return "-"
    exp_id = runs.get(exp)
    path = f"experiments/{exp_id}/runs/{rid}" if exp_id else f"runs/{rid}"
    return f'<a href="{MLFLOW_UI}/#/{path}?workflowType=machine_learning">{esc(rid)}</a>'


def model_card(exp: str, model: str, exp_cfg: dict, table: pd.DataFrame, dirs: list[Path],
               metrics: pd.DataFrame | None, runs: dict) -> str:
    cfg = exp_cfg["models"][model]
    info = [("experiment", exp), ("role", cfg["role"]), ("KD method", cfg.get("kd_method", "none")),
            ("teachers", ", ".join(cfg.get("teachers", [])) or "-"), ("compared to", cfg.get("compare_to", "-")),
            ("architecture", f"{cfg['arch']} {json.dumps(cfg.get('arch_kwargs', {}), sort_keys=True)}"),
            ("loss terms", "; ".join(f"{t.get('weight', 1.0)} x {t['loss']}"
                                     + (f" (teacher {t['teacher']}, {t.get('teacher_tap')})" if t.get("teacher") else "")
                                     for t in cfg.get("losses", []))),
            ]
    rows = [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in info]
    rows.append(f"<tr><th>MLflow parent run</th><td>{run_link(runs, exp, f'{exp}/{model}')} "
                f"(<code>make ui</code>)</td></tr>")
    rows += [f"<tr><th>MLflow run, {esc(d.name)}</th><td>{run_link(runs, exp, f'{exp}/{model}/{d.name}')}</td></tr>"
             for d in sorted(dirs, key=lambda p: p.name)]
    body = ["<table id=\"model-info\"><tbody>" + "".join(rows) + "</tbody></table>"]
    seeds = []
    for d in sorted(dirs, key=lambda p: p.name):
        s = read_json(d / "summary.json")
        seeds.append({"seed": s["seed"], "params": f"{int(s['params']):,}", "best epoch": s.get("best_epoch"),
                      f"best {s['select_metric']}": s.get("best_score"), "epochs": s.get("epochs"),
                      "train s": round(float(s.get("train_seconds", 0.0)), 2),
                      "started": _iso(s.get("started_at")), "ended": _iso(s.get("ended_at")),
                      "MLflow run": runs.get(f"{exp}/{model}/{d.name}", "")})
    body += ["<h2>Seeds</h2>", table_html(pd.DataFrame(seeds), "model-seeds")]
    if metrics is not None:
        main = _report.MAIN_METRICS[exp_cfg["task"]]
        sel = metrics[(metrics["model"] == model) & metrics["metric"].isin(main)]
        if len(sel):
            per = sel.groupby(["convention", "class", "metric", "seed"], sort=False)["value"].mean().unstack("seed")
            per.columns = [f"seed {c}" for c in per.columns]
            body += ["<h2>Test metrics per seed (mean over cases)</h2>", table_html(per.reset_index(), "model-test")]
    rows = table[(table["model"] == model)]
    flags = rows["health"].dropna().iloc[0] if "health" in rows and rows["health"].notna().any() else ""
    body.append(f"<h2>Health</h2><p>{esc(flags.replace(';', ', ')) or 'no flag'}</p>")
    curves = _term_curves(model, dirs)
    if curves:
        body += ["<h2>Loss terms per epoch</h2>", f"<img alt=\"loss terms of {esc(model)}\" src=\"{curves}\">"]
    return page(f"{exp} / {model_label(model, cfg)}", "\n".join(body))


def _iso(t) -> str:
    return datetime.fromtimestamp(float(t), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if t else ""


def _term_curves(model: str, dirs: list[Path]) -> str:
    """Data URI of a plot of every loss term (and the total) per epoch and seed, or '' without epochs."""
    hists = [(d.name, read_jsonl(d / "epochs.jsonl")) for d in sorted(dirs, key=lambda p: p.name)]
    if not any(h for _, h in hists):
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for seed, hist in hists:
        epochs = [h["epoch"] for h in hist]
        ax.plot(epochs, [h["train_loss"] for h in hist], marker="o", ms=3, label=f"total {seed}")
        for term in (hist[0].get("terms") or {}) if hist else {}:
            ax.plot(epochs, [h.get("terms", {}).get(term, np.nan) for h in hist], marker=".", ls="--",
                    label=f"{term} {seed}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (mean over slices)")
    ax.set_title(f"{model}: loss terms")
    ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    uri = _png_uri(fig)
    plt.close(fig)
    return uri


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# ------------------------------------------------------------------------------------------ paper numbers


def no_code_path_rows(not_reproduced_md: str | Path) -> list[dict]:
    """Rows of the table under "Reported, but no config produces them" of docs/not_reproduced.md."""
    text = Path(not_reproduced_md).read_text()
    m = re.search(r"^## Reported, but no config produces them\s*\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if not m:
        return []
    rows = []
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) >= 3 and cells[0] not in ("paper", "") and not set(cells[0]) <= set("-: "):
            rows.append({"paper": cells[0], "number": cells[1], "why": " | ".join(cells[2:])})
    return rows


def _paper_short(citation: str) -> str:
    """``Murugesan et al. KD-MRI`` of ``Murugesan et al. KD-MRI: A knowledge ...``."""
    return re.split(r"[:,(]", " ".join(citation.split()))[0].strip()[:60] if citation else ""


def paper_numbers(run_cfg: dict, paper_cfg: dict, verdict_csvs: list, not_reproduced_md) -> pd.DataFrame:
    """Every paper number with its verdict: the ``reference`` entries of the experiments that ran (our
    interval), those of ``paper_cfg`` experiments this run did not include (not run here, and why) and
    the numbers docs/not_reproduced.md says no config produces (no code path)."""
    cols = ["paper", "experiment", "setting", "model", "metric", "class", "convention", "paper_value", "ours",
            "ci_low", "ci_high", "verdict", "source"]
    rows = []
    for path in verdict_csvs:
        v = pd.read_csv(path)
        for r in v.to_dict("records"):
            e = run_cfg["experiments"][r["experiment"]]
            rows.append({"paper": _paper_short(e.get("paper", "")), "experiment": r["experiment"],
                         "setting": e.get("setting", r["experiment"]), **{k: r[k] for k in (
                             "model", "metric", "class", "convention", "paper_value", "ours", "ci_low", "ci_high",
                             "verdict", "source")}})
    for name, e in paper_cfg.get("experiments", {}).items():
        if name in run_cfg["experiments"] or not e.get("reference"):
            continue
        ds = e["dataset"]
        kind = paper_cfg["datasets"].get(ds, {}).get("kind", "")
        why = (f"not run here (data gated: {ds})" if kind == "manual"
               else f"not run here (public data {ds}; this run's config does not include {name})")
        for ref in e["reference"]:
            rows.append({"paper": _paper_short(e.get("paper", "")), "experiment": name, "setting": e.get("setting", name),
                         "model": ref["model"], "metric": ref["metric"], "class": ref.get("class", ""),
                         "convention": ref.get("convention", "engine"), "paper_value": float(ref["value"]),
                         "ours": math.nan, "ci_low": math.nan, "ci_high": math.nan, "verdict": why,
                         "source": ref.get("source", "")})
    for r in no_code_path_rows(not_reproduced_md):
        rows.append({"paper": r["paper"], "experiment": "", "setting": "", "model": "", "metric": r["number"],
                     "class": "", "convention": "", "paper_value": math.nan, "ours": math.nan, "ci_low": math.nan,
                     "ci_high": math.nan, "verdict": f"no code path ({r['why']})",
                     "source": "docs/not_reproduced.md"})
    return pd.DataFrame(rows, columns=cols)


def verdict_counts(df: pd.DataFrame) -> dict[str, int]:
    out = {}
    for v in df["verdict"]:
        key = next((p for p, _ in VERDICT_CLASS if str(v).startswith(p)), str(v))
        out[key] = out.get(key, 0) + 1
    return out


def write_paper_numbers(run_cfg: dict, paper_cfg: dict, verdict_csvs: list, not_reproduced_md, out_csv,
                        out_html, paper_config_name: str = "config/paper.yaml") -> pd.DataFrame:
    df = paper_numbers(run_cfg, paper_cfg, verdict_csvs, not_reproduced_md)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    counts = verdict_counts(df)
    shown = pd.DataFrame({
        "paper": df["paper"], "setting": df["setting"], "model": df["model"], "metric": df["metric"],
        "class": df["class"], "paper value": df["paper_value"].map(lambda x: "" if pd.isna(x) else f"{x:.4g}"),
        "ours": df["ours"].map(lambda x: "" if pd.isna(x) else f"{x:.4g}"),
        "95% CI (ours)": [f"[{lo:.4g}, {hi:.4g}]" if pd.notna(lo) else "" for lo, hi in zip(df["ci_low"], df["ci_high"])],
        "verdict": df["verdict"], "experiment": df["experiment"], "convention": df["convention"],
        "source": df["source"]})
    body = [f"<p>{len(df)} paper numbers: " + ", ".join(f"{esc(k)} {n}" for k, n in counts.items()) + ".</p>",
            "<p class=\"note\">The papers' numbers are the <code>reference</code> entries of the experiments "
            f"(the run's config and <code>{esc(paper_config_name)}</code>); docs/not_reproduced.md lists the numbers no "
            "config produces. Ours: mean over seeds of the per-case mean; CI: our 95% interval of the mean over "
            "training seeds and test cases (t interval from the variance components; over seeds when there is one "
            "case).</p>",
            table_html(shown, "paper-numbers", verdict_col="verdict")]
    write_text(out_html, page("Paper numbers and verdicts", "\n".join(body)))
    return df


# ------------------------------------------------------------------------------------------ landing page


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ ")


def log_span(logs_dir) -> tuple[datetime | None, datetime | None, int]:
    """(first, last, number of logs) of the timestamps medkd writes at the start and end of every job log."""
    first = last = None
    n = 0
    for p in Path(logs_dir).rglob("*.log"):
        stamps = [m.group(1) for line in p.read_text(errors="replace").splitlines() if (m := _LOG_TIME.match(line))]
        if not stamps:
            continue
        n += 1
        a, b = (datetime.strptime(s, "%Y-%m-%d %H:%M:%S") for s in (stamps[0], stamps[-1]))
        first = a if first is None or a < first else first
        last = b if last is None or b > last else last
    return first, last, n


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return (f"{h} h " if h else "") + (f"{m} min " if h or m else "") + f"{s} s"


def _reproduced_cell(rep: pd.DataFrame | None, experiment: str) -> str:
    """``12/12 within tolerance`` for one experiment's rows of reproduced.csv ('' without a comparison)."""
    if rep is None or not len(rep):
        return "no reference named" if rep is not None else ""
    sel = rep[rep["experiment"] == experiment]
    return f"{int((sel['verdict'] == 'within').sum())}/{len(sel)} within tolerance" if len(sel) else "not in the reference"


def _reproduced_section(rep: pd.DataFrame) -> str:
    """The landing page's comparison with the reference run: a sentence, then every number outside its
    tolerance with both values."""
    if not len(rep):
        return ("<p id=\"reproduced\">The config names no reference run (<code>reference_run</code>); "
                "nothing was compared.</p>")
    from medkd.reproduced import identical

    bad = rep[rep["verdict"] != "within"]
    same = int(identical(rep).sum())
    text = (f"<p id=\"reproduced\"><b>{len(rep) - len(bad)} of {len(rep)}</b> numbers of all.csv are within "
            f"tolerance of the reference run, {same} of them identical (the tolerance is how far a number moves "
            "between CPUs' instruction sets: docs/reproducibility.md; results/tables/reproduced.md).</p>")
    if not len(bad):
        return text
    cells = ["experiment", "model", "class", "metric", "ours", "reference", "difference", "tolerance", "verdict", "note"]
    rows = "".join("<tr>" + "".join(f"<td>{esc(_fmt(r[c]))}</td>" for c in cells) + "</tr>"
                   for r in bad.to_dict("records"))
    return (text + "<table id=\"not-reproduced\"><thead><tr>" + "".join(f"<th>{c}</th>" for c in cells)
            + f"</tr></thead><tbody>{rows}</tbody></table>")


def _fmt(value) -> str:
    """A cell: floats to 4 significant digits, NaN (a number one run lacks) empty."""
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    return str(value)


def write_overview(cfg: dict, config_files: list[str], all_csv, model_dirs: list, fingerprints: dict,
                   paper_numbers_csv, logs_dir, out_html, head_commit: dict | None = None,
                   reproduced_csv=None) -> None:
    """The landing page: what ran, on which code and data, how long it took, whether it reproduced the
    reference run, verdicts and health. ``cfg``: the run summary the Snakefile passes (description, seeds,
    device, config_hash, experiments: {name: paper, dataset, task, models, setting, group});
    ``reproduced_csv``: results/tables/reproduced.csv (medkd.reproduced), or None."""
    from medkd.provenance import git_commit

    df = pd.read_csv(all_csv)
    head = head_commit or git_commit()
    commits = sorted(set(df["git_commit"].dropna().astype(str)))
    summaries = [read_json(Path(d) / "summary.json") for d in model_dirs]
    starts = [s["started_at"] for s in summaries if s.get("started_at")]
    ends = [s["ended_at"] for s in summaries if s.get("ended_at")]
    train_sum = sum(float(s.get("train_seconds", 0.0)) for s in summaries)
    first, last, n_logs = log_span(logs_dir)
    pn = pd.read_csv(paper_numbers_csv) if paper_numbers_csv and Path(paper_numbers_csv).exists() else None
    rep = pd.read_csv(reproduced_csv).fillna({"class": "", "note": ""}) if reproduced_csv else None

    what = [("config", ", ".join(config_files) + (f" ({cfg.get('description')})" if cfg.get("description") else "")),
            ("config hash", cfg.get("config_hash", "")),
            ("seeds", ", ".join(str(s) for s in cfg.get("seeds", []))), ("device", cfg.get("device", "")),
            ("commit (of the jobs)", ", ".join(commits) or "unknown"),
            ("commit (now)", f"{head.get('commit')}" + (" (uncommitted changes)" if head.get("dirty") else ""))]
    for name, fp in fingerprints.items():
        what.append((f"data hash {name}", f"{fp.get('md5')} (MD5 of results/slices/{name}.h5; {fp.get('n_cases')} cases, "
                                           f"{fp.get('n_slices')} slices)"))
    if first and last:
        what.append(("run time", f"{_duration((last - first).total_seconds())}: the {n_logs} jobs behind these "
                                 f"results ran from {first:%Y-%m-%d %H:%M:%S} to {last:%Y-%m-%d %H:%M:%S} (job logs)"))
    if starts and ends:
        what.append(("training", f"{len(summaries)} training jobs, {_duration(train_sum)} of training epochs in total, "
                                 f"between {_iso(min(starts))} and {_iso(max(ends))}"))
    banner = []
    if cfg.get("rehearsal"):
        r = cfg["rehearsal"]
        banner = [f"<p id=\"rehearsal-banner\" style=\"background:#fde68a;padding:8px;font-weight:bold\">REHEARSAL "
                  f"on generated stand-in data, not results: every model at its paper size, image shape and batch "
                  f"size, trained {r.get('epochs')} epoch(s) of at most {r.get('steps')} steps, {r.get('seeds')} "
                  f"seed(s). It shows that the paper config runs end to end and what each job needs "
                  f"(results/rehearsal/resources.csv); no number here says anything about the papers.</p>"]
    head = headline_frame(df, {n: {"task": e["task"], "models": list(e["models"])}
                               for n, e in cfg["experiments"].items()})
    banner.append(f"<p id=\"run-banner\" style=\"font-size:15px;font-weight:bold\">{esc(run_banner(cfg, pn))}</p>")
    banner += ["<h2>Headline</h2>", table_html(head, "headline"),
               "<p class=\"note\">Main metric per model (engine convention): mean ± sd over seeds of the per-case mean; "
               "KD Δ: paired difference to the model it is compared with, with its 95% interval over training seeds "
               "and test cases (each experiment's table has the details); health: the model's flags (README: How to "
               "read the tables).</p>"]
    body = banner + ["<p>This report was built by <code>make report</code> from the files of a finished run. Each experiment "
            "is a category of the menu (experiment table, paper layout, figures with the qualitative panels, one "
            "card per model); <b>Overview</b> holds every paper number with its verdict and all.csv.</p>",
            "<h2>What ran</h2>",
            "<table id=\"run-info\"><tbody>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in what)
            + "</tbody></table>", "<h2>Experiments</h2>"]
    rows = []
    for name, e in cfg["experiments"].items():
        sel = df[df["experiment"] == name]
        counts = {}
        if pn is not None:
            counts = verdict_counts(pn[pn["experiment"] == name]) if len(pn) else {}
        rows.append("<tr>" + "".join([
            f"<td><a href=\"javascript:app.showCategory('{esc(name)}')\">{esc(name)}</a></td>",
            f"<td>{esc(e.get('paper', ''))}</td>", f"<td>{esc(e['dataset'])}</td>", f"<td>{esc(e['task'])}</td>",
            f"<td>{esc(', '.join(e['models']))}</td>",
            f"<td>{esc(sel['n_seeds'].max() if len(sel) else '')}</td>",
            f"<td>{esc(', '.join(f'{k} {n}' for k, n in counts.items()) or 'no reference')}</td>",
            f"<td>{esc(_reproduced_cell(rep, name))}</td>"]) + "</tr>")
    body.append("<table id=\"experiments\"><thead><tr><th>experiment</th><th>paper</th><th>dataset</th><th>task</th>"
                "<th>models</th><th>seeds</th><th>paper numbers</th><th>reference run</th></tr></thead><tbody>"
                + "".join(rows) + "</tbody></table>")
    if rep is not None:
        body += ["<h2>Reproduced?</h2>", _reproduced_section(rep)]
    if pn is not None:
        counts = verdict_counts(pn)
        body += ["<h2>Paper numbers</h2>",
                 f"<p id=\"verdicts\">{len(pn)} numbers of the papers: "
                 + ", ".join(f"<b>{esc(k)}</b> {n}" for k, n in counts.items())
                 + " (Overview, Paper numbers: every number with ours, our interval and the verdict).</p>"]
    body += ["<h2>Health</h2>", _health_summary(df)]
    write_text(out_html, f"<div id=\"medkd-overview\"><style>#medkd-overview table{{font-size:12px}}"
                         f"#medkd-overview th{{text-align:left}}</style><h1>medkd run report</h1>{''.join(body)}</div>\n")


def headline_frame(df: pd.DataFrame, experiments: dict) -> pd.DataFrame:
    """The landing page's answer first: per experiment (config order), model (config order) and class, the main
    metric (the task's first in :data:`medkd.stats.MAIN_METRICS`, engine convention) as mean ± sd over seeds,
    the KD difference to ``compared_to`` with its 95 % interval over seeds and cases, and the health flags
    (``ok`` when none). ``df``: all.csv; ``experiments``: {name: {"task", "models": [names]}}."""
    rows = []
    for exp, e in experiments.items():
        metric = _report.MAIN_METRICS[e["task"]][0]
        sel = df[(df["experiment"] == exp) & (df["metric"] == metric) & (df["convention"] == "engine")]
        order = {m: i for i, m in enumerate(e.get("models", []))}
        sel = sel.assign(_o=sel["model"].map(order).fillna(len(order))).sort_values(["_o", "class"], kind="stable")
        d = digits(metric)
        for r in sel.to_dict("records"):
            mean = f"{r['mean']:.{d}f}" + (f" ± {r['sd']:.{d}f}" if pd.notna(r.get("sd")) else "")
            delta = ""
            if isinstance(r.get("compared_to"), str) and r["compared_to"] and pd.notna(r.get("diff")):
                delta = f"{r['diff']:+.{d}f}"
                if pd.notna(r.get("ci_low")):
                    delta += f" [{r['ci_low']:.{d}f}, {r['ci_high']:.{d}f}]"
                delta += f" vs {r['compared_to']}"
            flags = r.get("health") if isinstance(r.get("health"), str) and r.get("health") else "ok"
            rows.append({"experiment": exp, "model": r["model"], "metric": f"{metric} {r['class']}", "mean ± sd": mean,
                         "KD Δ [95% CI seeds+cases]": delta, "health": flags.replace(";", ", ")})
    return pd.DataFrame(rows, columns=["experiment", "model", "metric", "mean ± sd", "KD Δ [95% CI seeds+cases]",
                                       "health"])


def run_banner(cfg: dict, pn: pd.DataFrame | None) -> str:
    """One sentence of what the run is: its config's description and how many paper numbers got a verdict."""
    what = cfg.get("description") or "this run"
    if pn is None or not len(pn):
        return f"{what}: no paper number is compared."
    judged = int(pn["verdict"].astype(str).str.startswith(("within", "outside")).sum())
    text = f"{what}: {judged} of {len(pn)} paper numbers have a verdict"
    if judged == 0:
        text += "; config/paper.yaml, on the papers' data, produces them"
    return text + "."


def _health_summary(df: pd.DataFrame) -> str:
    models = df.drop_duplicates(["experiment", "model"])
    items = []
    for r in models.to_dict("records"):
        names = r.get("health") if isinstance(r.get("health"), str) else ""
        if names:
            items.append(f"<li>{esc(r['experiment'])} / {esc(r['model'])}: {esc(names.replace(';', ', '))}</li>")
    n_models, n_exp = len(models), df["experiment"].nunique()
    if not items:
        return f"<p id=\"health\">All models healthy: no flag in {n_models} models of {n_exp} experiments.</p>"
    return (f"<p id=\"health\">{len(items)} of {n_models} models in {n_exp} experiments carry a flag "
            "(results/tables/health.md has every sentence):</p><ul>" + "".join(items) + "</ul>")
