"""Paper verdicts: our interval around the paper's number, and the verdict of numbers not run here."""

import math

import numpy as np
import pandas as pd
import pytest

from medkd import report, verdicts
from medkd.reportpages import no_code_path_rows, paper_numbers, verdict_counts
from medkd.config import REPO_ROOT


def _metrics(values: dict[tuple[str, int], float], model="m", metric="dice", cls="wm", conv="engine"):
    return pd.DataFrame([{"experiment": "e", "model": model, "seed": s, "case": c, "class": cls, "metric": metric,
                          "convention": conv, "value": v} for (c, s), v in values.items()])


def test_value_ci_spans_seeds_and_cases_and_falls_back_to_seeds():
    vals = {(f"c{i}", s): 0.5 + 0.1 * i + 0.01 * s for i in range(4) for s in range(2)}
    low, high, method = verdicts.value_ci(_metrics(vals)[["case", "seed", "value"]])
    mean = np.mean(list(vals.values()))
    assert low < mean < high and method.startswith("95% t interval over seeds and cases")
    # one case, seeds 0.5 and 0.7: mean 0.6, variance 0.02 / 2 seeds, 1 df: 0.6 +- 12.706 * 0.1
    one_case = _metrics({("c0", 0): 0.5, ("c0", 1): 0.7})[["case", "seed", "value"]]
    low, high, method = verdicts.value_ci(one_case)
    assert (low, high) == pytest.approx((0.6 - 1.27062, 0.6 + 1.27062), abs=1e-5) and "over seeds (one case)" in method
    apart = _metrics({("c0", 0): 0.5, ("c1", 1): 0.7})[["case", "seed", "value"]]  # no case under both seeds
    low, high, method = verdicts.value_ci(apart)
    assert math.isnan(low) and method == "no interval: no case scored under every seed"
    low, high, method = verdicts.value_ci(_metrics({("c0", 0): 0.5})[["case", "seed", "value"]])
    assert math.isnan(low) and "1 case(s) x 1 seed(s)" in method


def test_verdicts_within_outside_and_no_ci():
    assert verdicts.verdict(0.6, 0.5, 0.7) == "within CI"
    assert verdicts.verdict(0.8, 0.5, 0.7) == "outside CI"
    assert verdicts.verdict(0.8, math.nan, math.nan).startswith("no CI")
    metrics = _metrics({(f"c{i}", 0): 0.5 + 0.05 * i for i in range(5)})
    table = report.aggregate([metrics])
    table["n_seeds"], table["sd"] = 1, math.nan
    cfg = {"reference": [{"model": "m", "metric": "dice", "class": "wm", "value": 0.6},
                         {"model": "m", "metric": "dice", "class": "wm", "value": 0.95},
                         {"model": "other", "metric": "dice", "class": "wm", "value": 0.9}]}
    v = verdicts.paper_verdicts("e", cfg, metrics, table, {"n_resamples": 999})
    assert list(v["verdict"]) == ["within CI", "outside CI", "no value here (not scored in this run)"]
    assert math.isclose(v["ours"].iloc[0], 0.6)


def test_paper_numbers_say_why_a_number_was_not_run(tmp_path):
    rows = no_code_path_rows(REPO_ROOT / "docs" / "not_reproduced.md")
    assert rows and all(r["why"] for r in rows) and any("KD-MRI" in r["paper"] for r in rows)
    run = {"experiments": {"ran": {"paper": "P. A paper", "setting": "ran"}}}
    verdicts = tmp_path / "ran_verdicts.csv"
    pd.DataFrame([{"experiment": "ran", "model": "m", "class": "wm", "metric": "dice", "convention": "engine",
                   "paper_value": 0.6, "source": "s", "ours": 0.61, "sd": 0.01, "n_cases": 3, "n_seeds": 2,
                   "ci_low": 0.55, "ci_high": 0.65, "ci_method": "x", "verdict": "within CI"}]).to_csv(verdicts, index=False)
    paper_cfg = {"datasets": {"gated": {"kind": "manual"}, "public": {"kind": "download"}},
                 "experiments": {"a": {"dataset": "gated", "paper": "Q. Other", "reference": [
                     {"model": "t", "metric": "psnr", "class": "image", "value": 30.0}]},
                                 "b": {"dataset": "public", "reference": [{"model": "t", "metric": "dice", "value": 0.9}]},
                                 "ran": {"dataset": "public", "reference": [{"model": "m", "metric": "dice", "value": 0.6}]}}}
    df = paper_numbers(run, paper_cfg, [verdicts], REPO_ROOT / "docs" / "not_reproduced.md")
    by_exp = dict(zip(df["experiment"], df["verdict"]))
    assert by_exp["ran"] == "within CI" and by_exp["a"] == "not run here (data gated: gated)"
    assert by_exp["b"].startswith("not run here (public data public")
    counts = verdict_counts(df)
    assert counts["within CI"] == 1 and counts["not run here"] == 2 and counts["no code path"] == len(rows)


def test_paper_table_carries_the_verdicts(tmp_path):
    rows = [{"experiment": "e", "model": m, "class": "fg", "metric": "dice", "convention": "engine", "mean": mean,
             "sd": 0.01, "case_sd": 0.1, "paper_value": paper, "params": 100}
            for m, mean, paper in (("s1", 0.5, 0.7), ("kd", 0.6, 0.62))]
    pd.DataFrame(rows).to_csv(tmp_path / "e.csv", index=False)
    v = [{"experiment": "e", "model": m, "class": "fg", "metric": "dice", "convention": "engine", "paper_value": p,
          "source": "", "ours": o, "sd": 0.01, "n_cases": 4, "n_seeds": 2, "ci_low": lo, "ci_high": hi,
          "ci_method": "x", "verdict": verdicts.verdict(p, lo, hi)}
         for m, p, o, lo, hi in (("s1", 0.7, 0.5, 0.45, 0.55), ("kd", 0.62, 0.6, 0.55, 0.65))]
    pd.DataFrame(v).to_csv(tmp_path / "e_verdicts.csv", index=False)
    cfg = {"task": "segmentation", "setting": "s", "models": {"s1": {}, "kd": {}},
           "headline": {"class": "fg", "metrics": ["dice"]}}
    df = report.paper_table("g", {"e": cfg}, {"e": tmp_path / "e.csv"}, tmp_path / "p.csv", tmp_path / "p.md",
                            verdicts={"e": tmp_path / "e_verdicts.csv"})
    assert list(df["dice_verdict"]) == ["outside CI", "within CI"]
    md = (tmp_path / "p.md").read_text()
    assert "0.500 ± 0.010 (0.700) outside CI [0.450, 0.550]" in md and "within CI [0.550, 0.650]" in md


def test_model_cards_link_runs_on_the_training_view_of_make_ui():
    from medkd.reportpages import MLFLOW_UI, run_link

    runs = {"e": "7", "e/m": "abc", "e/m/seed0": "def"}
    assert run_link(runs, "e", "e/m") == (f'<a href="{MLFLOW_UI}/#/experiments/7/runs/abc?workflowType='
                                          'machine_learning">abc</a>')
    assert "#/runs/def?workflowType=machine_learning" in run_link({"e/m/seed0": "def"}, "e", "e/m/seed0")
    assert run_link(runs, "e", "e/other") == "-"
    assert MLFLOW_UI == "http://127.0.0.1:5000"  # what `make ui` serves (Makefile)


def test_headline_answers_first_main_metric_kd_difference_and_health():
    from medkd.reportpages import headline_frame, run_banner

    rows = [
        {"experiment": "e", "model": "kd", "class": "wm", "metric": "dice", "convention": "engine", "mean": 0.8123,
         "sd": 0.0101, "compared_to": "s", "diff": 0.0412, "ci_low": -0.0201, "ci_high": 0.1025, "health": "collapse"},
        {"experiment": "e", "model": "s", "class": "wm", "metric": "dice", "convention": "engine", "mean": 0.7711,
         "sd": 0.02, "compared_to": math.nan, "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan,
         "health": math.nan},
        {"experiment": "e", "model": "s", "class": "wm", "metric": "hd95", "convention": "engine", "mean": 3.0,
         "sd": 0.1, "compared_to": math.nan, "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan,
         "health": math.nan},
        {"experiment": "r", "model": "t", "class": "image", "metric": "psnr", "convention": "engine", "mean": 30.123,
         "sd": math.nan, "compared_to": math.nan, "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan,
         "health": "not_converged;equals_input"},
    ]
    head = headline_frame(pd.DataFrame(rows), {"e": {"task": "segmentation", "models": ["s", "kd"]},
                                               "r": {"task": "reconstruction", "models": ["t"]}})
    assert head.values.tolist() == [
        ["e", "s", "dice wm", "0.771 ± 0.020", "", "ok"],
        ["e", "kd", "dice wm", "0.812 ± 0.010", "+0.041 [-0.020, 0.102] vs s", "collapse"],
        ["r", "t", "psnr image", "30.12", "", "not_converged, equals_input"]]
    pn = pd.DataFrame({"verdict": ["not run here (data gated: x)", "no code path (y)", "within CI", "outside CI"]})
    assert run_banner({"description": "d"}, pn) == "d: 2 of 4 paper numbers have a verdict."
    assert run_banner({"description": "d"}, pn.iloc[:2]) == (
        "d: 0 of 2 paper numbers have a verdict; config/paper.yaml, on the papers' data, produces them.")


def test_experiment_page_splits_a_compact_main_table_from_the_details():
    from medkd.reportpages import main_and_details

    wide = pd.DataFrame(columns=["model", "role", "kd", "params", "GFLOPs", "latency_ms_per_slice", "dice csf",
                                 "hd95 csf", "dice wm [mtms_pooled]", "vs", "Δ dice csf", "Δ hd95 csf", "health"])
    main, details = main_and_details(wide, "segmentation")
    assert list(main.columns) == ["model", "role", "kd", "dice csf", "vs", "Δ dice csf", "health"]
    assert list(details.columns) == ["model", "params", "GFLOPs", "latency_ms_per_slice", "hd95 csf",
                                     "dice wm [mtms_pooled]", "Δ hd95 csf"]
