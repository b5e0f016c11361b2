"""Table aggregation: per-seed case means, mean/sd over seeds, NaN cases excluded, gains, paper values."""

import math

import pandas as pd
import pytest

from medkd.report import aggregate, paper_table


def frame(model, seed, values, metric="dice", cls="wm", conv="engine"):
    return pd.DataFrame({"experiment": "e", "model": model, "seed": seed, "case": [f"c{i}" for i in range(len(values))],
                         "class": cls, "metric": metric, "convention": conv, "value": values})


def test_aggregate_means_sds_and_nan_cases():
    # seed 0 cases: 0.8, 0.6, NaN (both masks empty) -> mean 0.7 over n = 2 cases, case sd = sqrt(0.02)
    # seed 1 cases: 0.9, 0.7, 0.5 -> mean 0.7... make it 0.9 mean: 1.0, 0.8, 0.9 -> mean 0.9, case sd 0.1
    # over seeds: mean (0.7 + 0.9) / 2 = 0.8, sd (ddof 1) = sqrt(((0.1)^2 + (0.1)^2) / 1) = 0.141421
    agg = aggregate([frame("s", 0, [0.8, 0.6, math.nan]), frame("s", 1, [1.0, 0.8, 0.9])])
    row = agg.iloc[0]
    assert row["mean"] == pytest.approx(0.8)
    assert row["sd"] == pytest.approx(math.sqrt(0.02))
    assert row["n_seeds"] == 2 and row["n_cases"] == 3
    assert row["case_sd"] == pytest.approx((math.sqrt(0.02) + 0.1) / 2)
    assert row["seeds"] == "0;1"


def test_single_seed_has_no_sd():
    agg = aggregate([frame("s", 0, [0.5, 0.7])])
    assert agg.iloc[0]["mean"] == pytest.approx(0.6) and math.isnan(agg.iloc[0]["sd"])


def test_paper_table_gain_and_paper_values(tmp_path):
    rows = []
    for model, mean, paper in (("s1", 0.5, 0.715), ("kd", 0.6, 0.772)):
        rows.append({"experiment": "e", "model": model, "class": "fg", "metric": "dice", "convention": "mtms_pooled",
                     "mean": mean, "sd": 0.01, "case_sd": 0.1, "paper_value": paper, "params": 57297})
    pd.DataFrame(rows).to_csv(tmp_path / "e.csv", index=False)
    cfg = {"task": "segmentation", "setting": "spleen", "models": {"s1": {}, "kd": {"compare_to": "s1"}},
           "headline": {"convention": "mtms_pooled", "class": "fg", "metrics": ["dice"], "spread": "cases_2sd"}}
    df = paper_table("mtms", {"e": cfg}, {"e": tmp_path / "e.csv"}, tmp_path / "p.csv", tmp_path / "p.md")
    kd = df[df.model == "kd"].iloc[0]
    # ours: (0.6 - 0.5) / 0.5 = +20 %; paper: (0.772 - 0.715) / 0.715 = +7.97 % (Table 4.2 prints +7.97%)
    assert kd["dice_gain_pct"] == pytest.approx(20.0)
    assert kd["dice_gain_pct_paper"] == pytest.approx(7.972, abs=1e-3)
    assert kd["dice_sd"] == pytest.approx(0.2)  # 2 x case sd
    md = (tmp_path / "p.md").read_text()
    assert "0.600 ± 0.200 (0.772), +20.0% (+8.0%)" in md


def test_paper_table_shows_paired_difference(tmp_path):
    rows = []
    for model, mean in (("s1", 0.5), ("kd", 0.6)):
        for conv in ("mtms_pooled", "engine"):
            rows.append({"experiment": "e", "model": model, "class": "fg", "metric": "dice", "convention": conv,
                         "mean": mean, "sd": 0.01, "case_sd": 0.1, "paper_value": math.nan, "params": 100})
    t = pd.DataFrame(rows)
    # the pooled convention has no per-case values: the engine's paired test is shown, labelled
    t.loc[(t.model == "kd") & (t.convention == "engine"), ["compared_to", "diff", "ci_low", "ci_high", "p", "p_holm"]] = \
        ["s1", 0.1, 0.05, 0.15, 0.03, 0.09]
    t.to_csv(tmp_path / "e.csv", index=False)
    cfg = {"task": "segmentation", "setting": "spleen", "models": {"s1": {}, "kd": {"compare_to": "s1"}},
           "headline": {"convention": "mtms_pooled", "class": "fg", "metrics": ["dice"]}}
    df = paper_table("mtms", {"e": cfg}, {"e": tmp_path / "e.csv"}, tmp_path / "p.csv", tmp_path / "p.md")
    kd = df[df.model == "kd"].iloc[0]
    assert kd["dice_diff"] == pytest.approx(0.1) and kd["dice_diff_convention"] == "engine"
    md = (tmp_path / "p.md").read_text()
    assert "| spleen | kd | 100 | 0.600 ± 0.010, +20.0%; Δ +0.100 [0.050, 0.150], p = 0.03, p_holm = 0.09 (engine) |" in md
    assert "| dice ours (paper) |" in md  # the stats columns are not taken for metrics


def test_gain_follows_the_metric_direction():
    from medkd.report import _gain

    assert _gain(0.6, 0.5, "dice") == pytest.approx(20.0)
    assert _gain(4.0, 5.0, "hd95") == pytest.approx(20.0)  # HD95 5 -> 4 mm is a 20 % gain
    assert _gain(5.19, 5.0, "hd95") == pytest.approx(-3.8)  # and 5 -> 5.19 mm a loss, not "+3.8 %"
    assert math.isnan(_gain(0.6, math.nan, "dice")) and math.isnan(_gain(0.6, 0.0, "dice"))


def test_a_region_that_is_one_class_is_shown_once():
    from medkd.report import drop_repeated_columns, repeated_columns_note

    wide = pd.DataFrame({"model": ["t", "s"], "dice lesion": ["0.85", "0.72"], "dice wt [region]": ["0.85", "0.72"],
                         "iou wt [region]": ["0.75", "0.57"], "vs": ["", "t"], "Δ dice lesion": ["", "-0.1"],
                         "Δ dice wt [region]": ["", "-0.1"], "dice wm [mtms_pooled]": ["0.85", "0.72"],
                         "health": ["", ""]})
    out = drop_repeated_columns(wide, {"wt": ["lesion"], "tc": ["lesion", "core"]})
    # the pooled column has the same numbers by coincidence (one case): kept; iou has no engine column: kept
    assert list(out.columns) == ["model", "dice lesion", "iou wt [region]", "vs", "Δ dice lesion",
                                 "dice wm [mtms_pooled]", "health"]
    assert repeated_columns_note(out) == ["Not repeated (the same numbers for every model): dice wt [region] = "
                                          "dice lesion; Δ dice wt [region] = Δ dice lesion."]
    assert list(drop_repeated_columns(wide).columns) == list(wide.columns)  # no regions: nothing dropped
    differ = wide.assign(**{"dice wt [region]": ["0.85", "0.70"]})
    assert "dice wt [region]" in drop_repeated_columns(differ, {"wt": ["lesion"]}).columns
