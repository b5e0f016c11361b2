"""Did this run reproduce a reference run? Every number of ``all.csv`` against the same row of a reference
``all.csv``, within a per-metric tolerance.

A reviewer who reruns ``make reproduce`` on another machine gets slightly different numbers: torch,
oneDNN and MKL pick kernels by instruction set (AVX-512, AVX2, SSE), and their rounding differs, which a
few hundred optimisation steps amplify. The tolerances say how far a number may move for that reason
alone; they were measured by forcing other instruction sets on one machine (docs/reproducibility.md).
A number outside its tolerance is either a real difference (other code, other data, other library
versions) or a fragile model: when the row's model carries a health flag that says its seeds disagree
(``collapse``), the verdict says so instead of letting the tolerance hide or blame it.

Inputs:
    ``table``: this run's results/tables/all.csv. ``reference``: a reference all.csv (the same columns;
    only ``experiment, model, class, metric, convention, mean`` are read). ``tolerances``: {metric:
    absolute tolerance} plus ``default`` for metrics not listed (a metric missing from both is an error).

Rows of the conventions in :data:`NOT_COMPARED` (latency) are left out. Rows are matched on
``(experiment, model, class, metric, convention)``; ``class`` is empty for reconstruction metrics. A row present on one side only is reported (``missing`` / ``new``) and counts as
not reproduced, as does a NaN on one side only (NaN on both sides is equal: e.g. an HD95 of an empty mask).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from medkd.io import atomic_path

if TYPE_CHECKING:  # pandas is imported where it is used: the Snakefile reads DEFAULT_TOLERANCES while planning
    import pandas as pd

DEFAULT_TOLERANCES: dict[str, float] = {
    "dice": 0.15, "iou": 0.18, "precision": 0.17, "recall": 0.32,  # fractions (0-1)
    "hd95": 10.0,  # mm
    "psnr": 0.2, "ssim": 0.013, "nmse": 0.0004,  # dB; fractions
    "clean": 0.006, "corrupted": 0.032, "relative_drop": 0.037,  # robustness summaries
    "default": 0.1,  # a metric none of the above names
}
"""Absolute tolerance per metric name of all.csv (the config's ``reference_run.tolerance`` overrides an
entry): the largest difference measured on the embedded default between this CPU's kernels and torch,
oneDNN, MKL and OpenBLAS forced to AVX2 and to SSE kernels (2026-12-04, AMD EPYC), rounded up by at least
20 %. Short CPU-scale training turns last-bit differences into differences as large as a change of seed, so
these are wide; the median difference is far smaller (Dice 0.002, PSNR 0.01 dB). docs/reproducibility.md has
the measurement per metric."""

KEYS = ["experiment", "model", "class", "metric", "convention"]
COLUMNS = [*KEYS, "ours", "reference", "difference", "tolerance", "verdict", "note"]
NOT_COMPARED = ("cost",)
"""Conventions whose numbers measure the machine, not the method (``cost``: latency per slice); they are
left out of the comparison and of the reference."""
FRAGILE_FLAGS = ("collapse",)
"""Health flags that mean the model's seeds disagree: such a model may move past the tolerance between
machines because a seed lands on the other side of a collapse, and the verdict names the flag."""


def _keyed(df: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = [c for c in [*KEYS, "mean"] if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: lacks the columns {missing} of an all.csv")
    out = df.copy()
    for c in KEYS:
        out[c] = out[c].fillna("").astype(str)
    out = out[~out["convention"].isin(NOT_COMPARED)]
    if out.duplicated(KEYS).any():
        dup = out[out.duplicated(KEYS, keep=False)][KEYS].head(3).to_dict("records")
        raise ValueError(f"{source}: rows are not unique on {KEYS}, e.g. {dup}")
    return out.set_index(KEYS)


def tolerance_for(metric: str, tolerances: dict[str, float]) -> float:
    """The absolute tolerance of ``metric`` (its own entry, else ``default``)."""
    if metric in tolerances:
        return float(tolerances[metric])
    if "default" in tolerances:
        return float(tolerances["default"])
    raise ValueError(f"no tolerance for metric {metric!r} and no default among {sorted(tolerances)}")


def compare(table: pd.DataFrame, reference: pd.DataFrame, tolerances: dict[str, float],
            table_name: str = "all.csv", reference_name: str = "reference") -> pd.DataFrame:
    """One row per number of either table (columns :data:`COLUMNS`), in the reference's order, then the new
    rows. ``verdict``: ``within``, ``outside``, ``missing`` (in the reference only) or ``new`` (ours only).
    ``note`` names a fragile-model flag (:data:`FRAGILE_FLAGS`) of the row's model in either run (a seed
    that collapsed in one run and not in the other moves the mean by more than any kernel difference),
    else is empty."""
    import pandas as pd

    ours, ref = _keyed(table, table_name), _keyed(reference, reference_name)

    def flags_of(df: pd.DataFrame, key) -> set[str]:
        if "health" not in df.columns or key not in df.index or not isinstance(df.loc[key, "health"], str):
            return set()
        return set(df.loc[key, "health"].split(";")) & set(FRAGILE_FLAGS)

    rows = []
    for key in [*ref.index, *[k for k in ours.index if k not in ref.index]]:
        metric = key[KEYS.index("metric")]
        tol = tolerance_for(metric, tolerances)
        a = float(ours.loc[key, "mean"]) if key in ours.index else math.nan
        b = float(ref.loc[key, "mean"]) if key in ref.index else math.nan
        flags = sorted(flags_of(ours, key) | flags_of(ref, key))  # fragile in either run
        if key not in ours.index:
            verdict = "missing"
        elif key not in ref.index:
            verdict = "new"
        elif math.isnan(a) and math.isnan(b):
            verdict = "within"
        elif math.isnan(a) or math.isnan(b):
            verdict = "outside"
        else:
            verdict = "within" if abs(a - b) <= tol else "outside"
        note = f"model flagged {', '.join(flags)}: its seeds disagree, so it may move past the tolerance" if flags else ""
        rows.append({**dict(zip(KEYS, key)), "ours": a, "reference": b,
                     "difference": a - b if not (math.isnan(a) or math.isnan(b)) else math.nan,
                     "tolerance": tol, "verdict": verdict, "note": note})
    return pd.DataFrame(rows, columns=COLUMNS)


def identical(result: pd.DataFrame) -> pd.Series:
    """Rows whose two values agree to the reference's 8 significant digits (or are both NaN): what a rerun on
    the same kernels gives (the default is bit-identical there)."""
    a, b = result["ours"], result["reference"]
    both_nan = a.isna() & b.isna()
    close = (a - b).abs() <= 1e-7 * b.abs().clip(lower=1e-3)
    return both_nan | close.fillna(False)


def summary_lines(result: pd.DataFrame, reference_label: str) -> list[str]:
    """One line per experiment: ``reproduced: N/N numbers within tolerance of <reference> (I identical)`` or
    ``NOT reproduced: k/N ...`` followed by one indented line per number that is not, with both values."""
    lines = []
    for exp, rows in result.groupby("experiment", sort=False):
        ok = rows["verdict"] == "within"
        n, k = len(rows), int(ok.sum())
        head = "reproduced" if k == n else "NOT reproduced"
        same = int(identical(rows).sum())
        lines.append(f"{exp}: {head}: {k}/{n} numbers within tolerance of {reference_label} ({same} identical)")
        for r in rows[~ok].to_dict("records"):
            what = "/".join(x for x in (r["model"], r["class"], r["metric"], r["convention"]) if x)
            if r["verdict"] in ("missing", "new"):
                detail = "not in this run" if r["verdict"] == "missing" else "not in the reference"
            else:
                detail = (f"ours {r['ours']:.4g}, reference {r['reference']:.4g}, "
                          f"difference {r['difference']:+.4g} (tolerance {r['tolerance']:g})")
            lines.append(f"    {what}: {detail}" + (f"; {r['note']}" if r["note"] else ""))
    return lines


def markdown(result: pd.DataFrame, reference_label: str, about: dict | None) -> str:
    """results/tables/reproduced.md: the verdict lines, where the reference was made, the tolerances."""
    n, k = len(result), int((result["verdict"] == "within").sum())
    out = [f"# Reproduced? {k} of {n} numbers within tolerance of {reference_label}", ""]
    if about:
        out += ["Reference made on: " + ", ".join(f"{key} {value}" for key, value in about.items()), ""]
    out += ["```", *summary_lines(result, reference_label), "```", ""]
    tols = result.drop_duplicates("metric")[["metric", "tolerance"]].to_dict("records")
    out += ["Tolerances (absolute, per metric; why: docs/reproducibility.md): "
            + ", ".join(f"{t['metric']} {t['tolerance']:g}" for t in tols), ""]
    return "\n".join(out)


def no_reference_markdown() -> str:
    return ("# Reproduced? No reference run is named in this config\n\n"
            "Name one under `reference_run: {table: <all.csv of the reference run>}` to compare every number "
            "with it (docs/reproducibility.md).\n")


def run(table: str | Path, reference: str | Path | None, tolerances: dict[str, float], out_csv: str | Path,
        out_md: str | Path, about: dict | None = None) -> list[str]:
    """Compare and write ``out_csv`` (:data:`COLUMNS`) and ``out_md``; return the summary lines (what
    ``make reproduce`` prints). Without a reference both files say so and the lines are one sentence."""
    import pandas as pd

    from medkd.integrity import reading

    if reference is None:
        with atomic_path(out_csv) as tmp:
            pd.DataFrame(columns=COLUMNS).to_csv(tmp, index=False)
        with atomic_path(out_md) as tmp:
            tmp.write_text(no_reference_markdown())
        return ["no reference run named in the config (reference_run): nothing to compare"]
    with reading(table, "this run's all.csv"):
        ours = pd.read_csv(table)
    with reading(reference, "the reference all.csv"):
        ref = pd.read_csv(reference)
    result = compare(ours, ref, tolerances, str(table), str(reference))
    label = str(reference)
    with atomic_path(out_csv) as tmp:
        result.to_csv(tmp, index=False)
    with atomic_path(out_md) as tmp:
        tmp.write_text(markdown(result, label, about))
    return summary_lines(result, label)
