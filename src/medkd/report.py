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
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from medkd.io import atomic_path, read_json, read_jsonl

LONG_COLUMNS = [
    "experiment", "dataset", "task", "model", "role", "kd_method", "arch", "class", "metric", "convention",
    "mean", "sd", "n_seeds", "n_cases", "case_sd", "paper_value", "delta", "params", "flops", "fidelity", "seeds",
    "spec_hash", "data_hash", "git_commit",
]
MAIN_METRICS = {"segmentation": ["dice", "hd95"], "reconstruction": ["psnr", "ssim"], "super_resolution": ["psnr", "ssim"]}


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
                     model_dirs: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """Build and write the long table of one experiment (``out_csv``)."""
    frames = [pd.read_csv(p, keep_default_na=True) for p in metric_csvs]
    agg = aggregate(frames)
    info = {}
    for d in model_dirs:
        s = read_json(Path(d) / "summary.json")
        env = read_json(Path(d) / "env.json")
        info.setdefault(s["model"], {**s, "git_commit": env["git"]["commit"]})
    rows = []
    refs = exp_cfg.get("reference", [])
    for r in agg.to_dict("records"):
        model_info = info[r["model"]]
        paper = _reference_value(refs, r["model"], r["class"], r["metric"], r["convention"])
        rows.append({
            **{k: r[k] for k in ("model", "class", "metric", "convention", "mean", "sd", "n_seeds", "n_cases",
                                 "case_sd", "seeds")},
            "experiment": exp_name, "dataset": exp_cfg["dataset"], "task": exp_cfg["task"],
            "role": model_info["role"], "kd_method": model_info["kd_method"], "arch": model_info["arch"],
            "paper_value": paper, "delta": r["mean"] - paper if not math.isnan(paper) else math.nan,
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


def wide_table(table: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per model: params, latency and the main metrics of every class and convention."""
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
    return wide


def to_markdown(wide: pd.DataFrame, title: str, notes: list[str]) -> str:
    head = "| " + " | ".join(wide.columns) + " |\n|" + "---|" * len(wide.columns) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in wide.itertuples(index=False))
    return f"## {title}\n\n" + head + body + "\n" + "".join(f"- {n}\n" for n in notes)


def to_latex(wide: pd.DataFrame, title: str) -> str:
    def esc(s: str) -> str:
        return str(s).replace("_", r"\_").replace("±", r"$\pm$").replace("%", r"\%").replace("[", "{[}").replace("]", "{]}")

    cols = "l" * len(wide.columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(title)}}}", rf"\begin{{tabular}}{{{cols}}}",
             r"\hline", " & ".join(esc(c) for c in wide.columns) + r" \\", r"\hline"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in wide.itertuples(index=False)]
    lines += [r"\hline", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def table_notes(exp_cfg: dict, task: str) -> list[str]:
    notes = ["Cells: mean ± sd over seeds of the per-case mean; the paper's value in brackets."]
    if task == "segmentation":
        notes.append("Engine metrics per case on re-stacked volumes; HD95 in mm; a case with both masks empty "
                     "is excluded (NaN), one empty mask scores Dice 0 and HD95 = the volume diagonal.")
    else:
        notes.append("PSNR/SSIM/NMSE per volume, data_range = the volume maximum, SSIM 7x7 uniform window "
                     "averaged over slices (fastMRI convention).")
    for name, m in exp_cfg["models"].items():
        if m.get("fidelity"):
            notes.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in sorted(m["fidelity"].items())))
    return notes


def plot_experiment(table: pd.DataFrame, task: str, model_dirs: list[str | Path], title: str,
                    out_png: str | Path, out_curves: str | Path) -> None:
    """Bar chart of the first main metric per model and class; validation curves per model and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = MAIN_METRICS[task][0]
    sel = table[(table["metric"] == metric) & (table["convention"] == "engine")]
    classes = list(dict.fromkeys(sel["class"]))
    models = list(dict.fromkeys(sel["model"]))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(models) * max(1, len(classes)) / 2 + 2), 3.5))
    width = 0.8 / max(1, len(classes))
    for i, cls in enumerate(classes):
        grp = sel[sel["class"] == cls].set_index("model").reindex(models)
        ax.bar(np.arange(len(models)) + i * width, grp["mean"], width, yerr=grp["sd"].fillna(0), label=cls, capsize=3)
    ax.set_xticks(np.arange(len(models)) + width * (len(classes) - 1) / 2, models, rotation=20, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(title)
    if len(classes) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for d in model_dirs:
        cfg = read_json(Path(d) / "config.json")
        hist = read_jsonl(Path(d) / "epochs.jsonl")
        key = "val_dice" if task == "segmentation" else "val_mse"
        ys = [h.get(key, h["val_loss"]) for h in hist]
        ax.plot([h["epoch"] for h in hist], ys, marker="o", ms=3, label=f"{cfg['spec']['model']} s{cfg['seed']}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val_dice" if task == "segmentation" else "val_mse")
    ax.set_title(f"{title}: validation")
    ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    with atomic_path(out_curves) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_experiment_outputs(exp_name: str, exp_cfg: dict, metric_csvs, model_dirs, out: dict) -> pd.DataFrame:
    """All outputs of the tables stage for one experiment. ``out`` maps csv/md/tex/png/curves to paths."""
    table = experiment_table(exp_name, exp_cfg, metric_csvs, model_dirs, out["csv"])
    wide = wide_table(table, exp_cfg["task"])
    title = f"{exp_name} ({exp_cfg['dataset']}, {exp_cfg['task']})"
    with atomic_path(out["md"]) as tmp:
        tmp.write_text(to_markdown(wide, title, table_notes(exp_cfg, exp_cfg["task"])))
    with atomic_path(out["tex"]) as tmp:
        tmp.write_text(to_latex(wide, title))
    plot_experiment(table, exp_cfg["task"], model_dirs, title, out["png"], out["curves"])
    return table


def robustness_rows(path: str | Path, long_table: pd.DataFrame) -> pd.DataFrame:
    """Robustness summary (``<exp>_robustness.csv``) as long-format rows, convention ``robustness``."""
    exp = Path(path).name[: -len("_robustness.csv")]
    summ = pd.read_csv(path)
    info = long_table[long_table["experiment"] == exp].drop_duplicates("model").set_index("model")
    rows = []
    for r in summ.to_dict("records"):
        base = {c: info.loc[r["model"], c] for c in LONG_COLUMNS if c in info.columns and c not in
                ("class", "metric", "convention", "mean", "sd", "n_cases", "paper_value", "delta")}
        for metric, sd in (("clean", math.nan), ("corrupted", math.nan), ("relative_drop", r["relative_drop_sd"])):
            rows.append({**base, "experiment": exp, "model": r["model"], "class": "foreground", "metric": metric,
                         "convention": "robustness", "mean": r[metric], "sd": sd, "n_seeds": r["n_seeds"]})
    return pd.DataFrame(rows)


def collect(tables: list[str | Path], runs_json: str | Path, out_csv: str | Path,
            robustness: list[str | Path] = ()) -> pd.DataFrame:
    """Concatenate the experiments' long tables (and robustness summaries) into all.csv, adding the
    MLflow run ids of each row."""
    runs = read_json(runs_json)
    df = pd.concat([pd.read_csv(p) for p in tables], ignore_index=True)
    if robustness:
        df = pd.concat([df] + [robustness_rows(p, df) for p in robustness], ignore_index=True)
    df["mlflow_run_ids"] = [
        ";".join(runs.get(f"{e}/{m}/seed{s}", "") for s in str(seeds).split(";"))
        for e, m, seeds in zip(df["experiment"], df["model"], df["seeds"])
    ]
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    return df


def _gain(value: float, base: float) -> float:
    return 100.0 * (value - base) / base if base and not math.isnan(base) and not math.isnan(value) else math.nan


def paper_table(group: str, exp_cfgs: dict[str, dict], tables: dict[str, str | Path],
                out_csv: str | Path, out_md: str | Path) -> pd.DataFrame:
    """The paper's layout for a group of experiments: one row per (setting, model), the headline metrics
    with ours (mean ± sd over seeds), the paper's value and, for models with ``compare_to``, the relative
    gain in percent over that model (ours and the paper's)."""
    rows = []
    for exp, cfg in exp_cfgs.items():
        t = pd.read_csv(tables[exp])
        head = cfg.get("headline", {})
        conv = head.get("convention", "engine")
        two_sd_cases = head.get("spread", "seeds") == "cases_2sd"
        metrics = head.get("metrics") or MAIN_METRICS[cfg["task"]]
        sel = t[t["convention"] == conv]
        cls = head.get("class") or next((c for c in sel["class"] if c not in ("-",)), "-")
        sel = sel[sel["class"] == cls].set_index(["model", "metric"])
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
                ref = mcfg.get("compare_to")
                if ref and (ref, m) in sel.index:
                    row[f"{m}_gain_pct"] = _gain(r["mean"], sel.loc[(ref, m)]["mean"])
                    row[f"{m}_gain_pct_paper"] = _gain(r["paper_value"], sel.loc[(ref, m)]["paper_value"])
            rows.append(row)
    df = pd.DataFrame(rows)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    metric_names = [c for c in df.columns if c not in ("setting", "experiment", "model", "params", "convention", "class",
                                                       "spread")
                    and not c.endswith(("_sd", "_paper", "_gain_pct", "_gain_pct_paper"))]
    header = ["setting", "model", "params"] + [f"{m} ours (paper)" for m in metric_names]
    lines = [f"## {group}: paper table\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in df.to_dict("records"):
        cells = [str(r["setting"]), str(r["model"]), f"{r['params']:,}" if r["params"] is not None else ""]
        for m in metric_names:
            cell = _cell(r.get(m, math.nan), r.get(f"{m}_sd", math.nan), r.get(f"{m}_paper", math.nan), m)
            gain, gain_p = r.get(f"{m}_gain_pct", math.nan), r.get(f"{m}_gain_pct_paper", math.nan)
            if isinstance(gain, float) and not math.isnan(gain):
                cell += f", {gain:+.1f}%" + (f" ({gain_p:+.1f}%)" if not math.isnan(gain_p) else "")
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    conv = ", ".join(sorted(set(df["convention"])))
    spread = ", ".join(sorted(set(df["spread"].dropna()))) if "spread" in df else "sd over seeds"
    lines.append(f"\nConvention: {conv}. Cells: ours mean ± {spread} (paper's value); gains relative to "
                 "the model each row is compared with (config `compare_to`), ours (paper's).\n")
    with atomic_path(out_md) as tmp:
        tmp.write_text("\n".join(lines))
    return df
