"""Paired statistics: pairing by case and seed, case bootstrap, Wilcoxon, Holm (golden values), coverage."""

import math

import numpy as np
import pandas as pd
import pytest

from scipy import stats as sst

from medkd.stats import (case_bootstrap, compare_experiment, comparisons, format_diff, holm, paired_differences,
                         paired_test, prob_better, recipe_interval, seed_differences, wilcoxon_p)


def per_case(model, values, seeds=(0,), metric="dice", cls="wm", conv="engine"):
    """values[case][seed index] -> rows of a per-case metrics CSV."""
    rows = []
    for i, per_seed in enumerate(values):
        for s, v in zip(seeds, per_seed):
            rows.append({"experiment": "e", "model": model, "seed": s, "case": f"c{i}", "class": cls, "metric": metric,
                         "convention": conv, "value": v})
    return pd.DataFrame(rows)


def test_pairing_needs_same_case_and_seed_and_drops_nan():
    a = per_case("kd", [[0.8, 0.7], [0.6, math.nan], [0.5, 0.5]], seeds=(0, 1))
    b = per_case("s", [[0.7, 0.9], [0.5, 0.4]], seeds=(0, 1))  # no case c2
    d = paired_differences(a, b)
    # pairs: (c0, 0) 0.1, (c0, 1) -0.2, (c1, 0) 0.1; (c1, 1) has a NaN, c2 has no partner
    assert list(zip(d["case"], d["seed"])) == [("c0", 0), ("c0", 1), ("c1", 0)]
    assert d["diff"].to_numpy() == pytest.approx([0.1, -0.2, 0.1])


def test_wilcoxon_golden_values():
    # all 5 differences positive: exact two-sided p = 2 * (1/2^5) = 0.0625
    assert wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(0.0625)
    # ranks 1..5, the negative one has rank 2: W- = 2; subsets of {1..5} with sum <= 2: {}, {1}, {2}
    # -> one-sided 3/32, two-sided 6/32 = 0.1875
    assert wilcoxon_p([1.0, -2.0, 3.0, 4.0, 5.0]) == pytest.approx(0.1875)
    assert wilcoxon_p([0.3, 0.1]) == pytest.approx(0.5)  # n = 2: the smallest possible p is 2/4
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0  # documented: no difference at all -> p = 1
    assert math.isnan(wilcoxon_p([0.2]))


def test_holm_golden_values():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is not a test: m = 2 here -> 2 * 0.02, max(0.04, 1 * 0.7)
    out = holm([math.nan, 0.02, 0.7])
    assert math.isnan(out[0]) and out[1:] == pytest.approx([0.04, 0.7])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # 2 * 0.6 capped at 1; monotone
    assert len(holm([])) == 0


def test_case_bootstrap_resamples_cases_with_all_their_seeds():
    # case a: two seeds with difference 0; case b: one seed with difference 1. Resampling cases (2 draws):
    # {a, a} -> 0, {a, b} -> (0 + 0 + 1) / 3, {b, b} -> 1, with probabilities 1/4, 1/2, 1/4.
    # (Resampling the three pairs independently would also produce 2/3.)
    res = case_bootstrap(["a", "a", "b"], [0.0, 0.0, 1.0], n_resamples=9999, seed=0)
    values, counts = np.unique(np.round(res.bootstrap_distribution, 9), return_counts=True)
    assert values == pytest.approx([0.0, 1 / 3, 1.0])
    assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.02)
    # percentile 95% CI: 2.5th and 97.5th percentiles of that distribution
    assert (res.confidence_interval.low, res.confidence_interval.high) == (0.0, 1.0)
    # reproducible: same seed, same interval
    again = case_bootstrap(["a", "a", "b"], [0.0, 0.0, 1.0], n_resamples=9999, seed=0)
    assert np.array_equal(res.bootstrap_distribution, again.bootstrap_distribution)


def test_case_bootstrap_golden_three_cases():
    # case means 0, 0, 1: the resample mean is k/3 with k ~ Binomial(3, 1/3): P = 8/27, 12/27, 6/27, 1/27.
    # 2.5th percentile: 0 (P(0) = 0.30); 97.5th: 1 (P(<= 2/3) = 26/27 = 0.963 < 0.975)
    res = case_bootstrap(["a", "b", "c"], [0.0, 0.0, 1.0], seed=1)
    assert (res.confidence_interval.low, res.confidence_interval.high) == (0.0, 1.0)


def test_paired_test_edge_cases():
    zeros = pd.DataFrame({"case": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1], "diff": [0.0] * 4})
    r = paired_test(zeros)
    assert (r.diff, r.ci_low, r.ci_high, r.p) == (0.0, 0.0, 0.0, 1.0) and "zero" in r.note
    one = paired_test(zeros.iloc[:2].assign(diff=[0.1, 0.3]))
    assert one.diff == pytest.approx(0.2) and one.n_cases == 1 and one.n_pairs == 2
    assert math.isnan(one.ci_low) and math.isnan(one.p)
    assert one.note == "fewer than 2 paired cases (n = 1): no CI or p-value"
    none = paired_test(zeros.iloc[:0])
    assert math.isnan(none.diff) and none.note == "no paired (case, seed) values"
    # the Wilcoxon unit is the case: seeds are averaged first (case a: 0.2, case b: 0.4 -> n = 2, p = 0.5)
    two = paired_test(pd.DataFrame({"case": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1], "diff": [0.1, 0.3, 0.4, 0.4]}))
    assert two.n_cases == 2 and two.p == pytest.approx(0.5) and two.diff == pytest.approx(0.3)


def test_ci_covers_the_true_difference_at_about_the_nominal_rate():
    rng = np.random.default_rng(2024)
    n_cases, n_seeds, delta, covered = 20, 3, 0.3, 0
    for i in range(200):
        case_effect = rng.normal(delta, 1.0, n_cases)  # cases vary; seeds add noise around their case
        diffs = case_effect[:, None] + rng.normal(0.0, 0.5, (n_cases, n_seeds))
        res = case_bootstrap(np.repeat(np.arange(n_cases), n_seeds), diffs.ravel(), n_resamples=999, seed=i)
        covered += res.confidence_interval.low <= delta <= res.confidence_interval.high
    assert 0.88 <= covered / 200 <= 0.99


def crossed(block) -> pd.DataFrame:
    """block[seed][case] -> (case, seed, diff) rows."""
    return pd.DataFrame([{"case": f"c{c}", "seed": s, "diff": v} for s, row in enumerate(block) for c, v in enumerate(row)
                         if not math.isnan(v)])


def test_recipe_interval_golden_values():
    # [[0, 2], [2, 0]]: seed and case means all 1 -> MS_seed = MS_case = 0 < MS_res = 4 (residuals +-1, 1 df):
    # both components truncated to 0, Var(m) = MS_res / 4 = 1 with 1 df: 1 +- t(0.975, 1) = 1 +- 12.706
    r = recipe_interval(crossed([[0, 2], [2, 0]]))
    assert (r.mean, r.df, r.n_seeds, r.n_cases, r.method) == (1.0, pytest.approx(1.0), 2, 2, "seeds+cases")
    assert r.components == (0.0, 0.0, pytest.approx(4.0))
    assert (r.low, r.high) == pytest.approx((1 - 12.7062047, 1 + 12.7062047))
    # one seed: cases 0.1, 0.3, 0.5 -> variance 0.04, Var(m) = 0.04 / 3, 2 df: half width 4.3027 * 0.11547 = 0.49683
    one = recipe_interval(crossed([[0.1, 0.3, 0.5]]))
    assert one.method == "cases only" and one.df == pytest.approx(2.0)
    assert (one.low, one.high) == pytest.approx((0.3 - 0.496827, 0.3 + 0.496827), abs=1e-6)
    # no seed or case effect can hide in a constant block: the point interval
    flat = recipe_interval(crossed([[0.2, 0.2], [0.2, 0.2]]))
    assert (flat.low, flat.high) == (0.2, 0.2)
    # a case missing under one seed is left out of the block and named
    gap = recipe_interval(crossed([[0.1, 0.3, 0.5], [0.2, 0.4, math.nan]]))
    assert gap.n_cases == 2 and gap.note.endswith("c2")
    with pytest.raises(ValueError, match="complete seed x case block"):
        recipe_interval(crossed([[0.1]]))


def test_a_collapsed_seed_widens_the_recipe_interval_not_the_case_interval():
    """hinton_tissue's CSF case: two seeds agree, the third collapsed. Over cases with the seeds fixed the
    interval is razor-thin around the collapsed seed's pull; over seeds and cases it spans both outcomes."""
    rng = np.random.default_rng(7)
    block = np.array([[-0.55], [0.0], [0.0]]) + rng.normal(0.0, 0.01, (3, 8))  # seed 0 collapsed: -0.55 on every case
    diffs = crossed(block)
    rec = recipe_interval(diffs)
    cases = case_bootstrap(diffs["case"], diffs["diff"], n_resamples=999)
    assert cases.confidence_interval.high - cases.confidence_interval.low < 0.03
    assert rec.low < -0.55 and rec.high > 0.0  # the recipe may be as bad as the collapse or harmless
    assert seed_differences(diffs) == pytest.approx(block.mean(axis=1).tolist())


def test_prob_better_follows_the_metric_direction():
    assert prob_better([0.1, -0.1, 0.0, 0.2], "dice") == pytest.approx((2 + 0.5) / 4)
    assert prob_better([0.1, -0.1, 0.0, 0.2], "hd95") == pytest.approx((1 + 0.5) / 4)  # smaller HD95 wins
    assert math.isnan(prob_better([], "dice"))


def test_recipe_interval_covers_when_seeds_vary_and_the_case_interval_does_not():
    """Seeded simulation of the default's design (3 seeds, 24 cases): d = 0 + seed + case + residual effects with
    SD 0.05, 0.05, 0.02. The interval over seeds and cases covers the true mean at about 95 %; the bootstrap
    over cases with the seeds fixed describes the three trained models and misses the recipe's mean about
    half the time. Without a seed effect both cover."""
    rng = np.random.default_rng(2026)
    runs = 300
    for seed_sd, lowest_old, highest_old in ((0.05, 0.0, 0.7), (0.0, 0.88, 1.0)):
        new = old = 0
        for i in range(runs):
            block = rng.normal(0, seed_sd, (3, 1)) + rng.normal(0, 0.05, (1, 24)) + rng.normal(0, 0.02, (3, 24))
            diffs = crossed(block)
            r = recipe_interval(diffs)
            new += r.low <= 0.0 <= r.high
            ci = case_bootstrap(diffs["case"], diffs["diff"], n_resamples=999, seed=i).confidence_interval
            old += ci.low <= 0.0 <= ci.high
        assert 0.90 <= new / runs <= 0.99, (seed_sd, new / runs)
        assert lowest_old <= old / runs <= highest_old, (seed_sd, old / runs)


def test_no_case_under_every_seed_gives_no_recipe_interval_not_an_error():
    diffs = pd.DataFrame({"case": ["a", "b", "c", "d"], "seed": [0, 0, 1, 1], "diff": [0.1, 0.2, 0.3, 0.1]})
    r = paired_test(diffs, n_resamples=999)
    assert math.isnan(r.ci_low) and r.ci_method == "none" and "no case scored under every seed" in r.note
    assert r.ci_cases_low <= r.diff <= r.ci_cases_high and r.p == pytest.approx(0.125)


def test_paired_test_reports_both_intervals_seeds_and_p_better():
    diffs = crossed([[0.05, 0.02, 0.05], [0.04, 0.02, 0.04]])
    r = paired_test(diffs, metric="dice")
    rec = recipe_interval(diffs)
    assert (r.ci_low, r.ci_high, r.ci_method) == (rec.low, rec.high, "seeds+cases")
    assert (r.ci_cases_low, r.ci_cases_high) == pytest.approx((0.02, 0.045))
    assert r.n_seeds == 2 and r.seed_diffs == "+0.04;+0.03333" and r.p_better == 1.0
    assert sst.t.ppf(0.975, rec.df) > 2  # few seeds: small df, wide t quantile


def test_compare_experiment_kinds_holm_and_pooled_conventions_skipped():
    cfg = {"task": "segmentation", "models": {
        "teacher": {"role": "teacher"}, "s": {"role": "student"},
        "kd": {"role": "student", "compare_to": "s", "teachers": ["teacher"]}}}
    assert comparisons(cfg) == [("kd_effect", "kd", "s"), ("teacher_vs_student", "teacher", "s"),
                                ("teacher_vs_student", "teacher", "kd")]
    vals = {"teacher": [0.9, 0.8, 0.85, 0.95], "s": [0.5, 0.6, 0.55, 0.7], "kd": [0.6, 0.65, 0.6, 0.8]}
    frames = [per_case(m, [[v] for v in vs]) for m, vs in vals.items()]
    frames += [per_case(m, [[v] for v in vs], metric="hd95") for m, vs in vals.items()]
    frames += [per_case(m, [[0.5]], conv="mtms_pooled").assign(case="ALL") for m in vals]
    out = compare_experiment("e", cfg, pd.concat(frames))
    assert set(out["convention"]) == {"engine"} and len(out) == 3 * 2
    kd = out[(out.kind == "kd_effect") & (out.metric == "dice")].iloc[0]
    assert kd["diff"] == pytest.approx(0.075) and kd["p"] == pytest.approx(0.125)  # 4 positive of 4: 2/16
    # Holm over the 6 tests of the experiment: each p = 0.125 -> 6 * 0.125 capped at 1
    assert out["p"].to_numpy() == pytest.approx([0.125] * 6)
    assert out["p_holm"].to_numpy() == pytest.approx([0.75] * 6)
    tvs = out[(out.kind == "teacher_vs_student") & (out.compared_to == "s") & (out.metric == "dice")].iloc[0]
    assert tvs["model"] == "teacher" and tvs["diff"] == pytest.approx(0.2875)


def test_format_diff():
    assert format_diff(0.0123, -0.0041, 0.0289, 0.2134, 0.6311, "dice") == "+0.012 [-0.004, 0.029], p = 0.21, p_holm = 0.63"
    assert format_diff(-1.234, -2.5, 0.1, 0.0004, 0.002, "psnr") == "-1.23 [-2.50, 0.10], p < 0.001, p_holm = 0.002"
    assert format_diff(0.2, math.nan, math.nan, math.nan, math.nan, "dice", "fewer than 2 paired cases (n = 1): no CI "
                       "or p-value") == "+0.200 (fewer than 2 paired cases (n = 1): no CI or p-value)"
