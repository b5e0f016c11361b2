"""Case-level splits: disjointness, determinism, counts, subsets, fixed splits, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medkd.data.splits import cases_for, make_split, read_split, validate_split, write_split

IDS = [f"case_{i:02d}" for i in range(20)]


def _all_cases(split):
    return [c for cases in split["splits"].values() for c in cases]


def test_splits_are_disjoint_cover_everything_and_sorted():
    split = make_split(reversed(IDS), seed=3)
    cases = _all_cases(split)
    assert len(cases) == len(set(cases)) == 20
    assert set(cases) == set(IDS)
    # 20 cases, 0.6/0.2/0.2 -> val floor(4.0) = 4, test 4, train 20 - 8 = 12
    assert {k: len(v) for k, v in split["splits"].items()} == {"train": 12, "val": 4, "test": 4}
    for cases in split["splits"].values():
        assert cases == sorted(cases)
    assert split["n_cases"] == 20 and split["seed"] == 3 and split["fixed"] is False


def test_assignment_follows_the_seeded_permutation_of_sorted_ids():
    split = make_split(IDS[::-1], seed=7)
    order = list(np.random.default_rng(7).permutation(np.array(sorted(IDS), dtype=object)))
    # other splits in sorted name order (test, val), then train takes the rest
    assert split["splits"]["test"] == sorted(order[:4])
    assert split["splits"]["val"] == sorted(order[4:8])
    assert split["splits"]["train"] == sorted(order[8:])


def test_deterministic_for_a_seed_and_different_for_another():
    assert make_split(IDS, seed=11) == make_split(list(reversed(IDS)), seed=11)
    assert make_split(IDS, seed=11)["splits"] != make_split(IDS, seed=12)["splits"]


def test_remainder_to_train_and_minimum_one_case():
    # n = 7: val floor(1.4) = 1, test floor(1.4) = 1, train 7 - 2 = 5
    assert {k: len(v) for k, v in make_split(IDS[:7], 0)["splits"].items()} == {"train": 5, "val": 1, "test": 1}
    # n = 3 with 0.8/0.1/0.1: floor(0.3) = 0 -> at least 1 each; train 1
    split = make_split(IDS[:3], 0, fractions={"train": 0.8, "val": 0.1, "test": 0.1})
    assert {k: len(v) for k, v in split["splits"].items()} == {"train": 1, "val": 1, "test": 1}
    # binary rounding: floor(0.29 * 100) must be 29, not 28
    ids = [f"c{i:03d}" for i in range(100)]
    split = make_split(ids, 0, fractions={"train": 0.42, "val": 0.29, "test": 0.29})
    assert len(split["splits"]["val"]) == 29 and len(split["splits"]["train"]) == 42
    # minimum of 1 overshooting n: a floor(3.6) = 3, b 1, c 1 -> 5 > 4; the largest gives one back
    split = make_split(IDS[:4], 0, fractions={"train": 0.0, "a": 0.9, "b": 0.05, "c": 0.05})
    assert {k: len(v) for k, v in split["splits"].items()} == {"train": 0, "a": 2, "b": 1, "c": 1}
    with pytest.raises(ValueError, match="at least one"):
        make_split(IDS[:2], 0)
    with pytest.raises(ValueError, match="sum"):
        make_split(IDS, 0, fractions={"train": 0.7, "val": 0.2, "test": 0.2})
    with pytest.raises(ValueError, match="train"):
        make_split(IDS, 0, fractions={"val": 0.5, "test": 0.5})
    with pytest.raises(ValueError, match="duplicate"):
        make_split(IDS + ["case_00"], 0)


def test_subset_is_within_its_parent_and_rounds_half_up():
    split = make_split(IDS, 5, subsets={"student_half": {"of": "train", "fraction": 0.5}})
    sub = split["subsets"]["student_half"]
    assert sub["of"] == "train"
    assert len(sub["cases"]) == 6  # round(0.5 * 12)
    assert set(sub["cases"]) <= set(split["splits"]["train"])
    assert cases_for(split, "student_half") == sub["cases"] == sorted(sub["cases"])
    # n = 7 -> train 7 - 1 - 1 = 5; fraction 0.5 -> floor(2.5 + 0.5) = 3 (Python's round would give 2)
    small = make_split(IDS[:7], 1, fractions={"train": 0.6, "val": 0.2, "test": 0.2},
                       subsets={"s": {"of": "train", "fraction": 0.5}, "tiny": {"of": "val", "fraction": 0.01}})
    assert len(small["splits"]["train"]) == 5 and len(small["subsets"]["s"]["cases"]) == 3
    assert len(small["subsets"]["tiny"]["cases"]) == 1  # at least one


def test_nested_subsets_are_nested_for_many_seeds():
    specs = {"quarter": {"of": "train", "fraction": 0.25}, "half": {"of": "train", "fraction": 0.5},
             "most": {"of": "train", "fraction": 0.9}, "half_of_half": {"of": "half", "fraction": 0.5}}
    for seed in range(10):
        split = make_split(IDS, seed, subsets=specs)
        subs = {k: set(v["cases"]) for k, v in split["subsets"].items()}
        assert subs["quarter"] <= subs["half"] <= subs["most"] <= set(split["splits"]["train"])
        assert subs["half_of_half"] <= subs["half"]
    # the subset does not depend on which other subsets are requested
    alone = make_split(IDS, 4, subsets={"half": specs["half"]})["subsets"]["half"]["cases"]
    assert alone == make_split(IDS, 4, subsets=specs)["subsets"]["half"]["cases"]


def test_bad_subsets():
    with pytest.raises(ValueError, match="parent"):
        make_split(IDS, 0, subsets={"s": {"of": "nope", "fraction": 0.5}})
    with pytest.raises(ValueError, match="fraction"):
        make_split(IDS, 0, subsets={"s": {"of": "train", "fraction": 1.5}})
    with pytest.raises(ValueError, match="cycle"):
        make_split(IDS, 0, subsets={"a": {"of": "b", "fraction": 0.5}, "b": {"of": "a", "fraction": 0.5}})
    with pytest.raises(ValueError, match="clash"):
        make_split(IDS, 0, subsets={"val": {"of": "train", "fraction": 0.5}})


def test_fixed_split_is_used_and_validated():
    fixed = {"train": ["case_03", "case_01"], "val": ["case_02"], "test": ["case_00"]}
    split = make_split(IDS[:5], 9, fixed=fixed, subsets={"s": {"of": "train", "fraction": 0.5}})
    assert split["fixed"] is True
    assert split["splits"] == {"train": ["case_01", "case_03"], "val": ["case_02"], "test": ["case_00"]}
    assert split["fractions"] == {"train": 0.4, "val": 0.2, "test": 0.2}  # realised len / n = 2/5, 1/5, 1/5
    assert set(split["subsets"]["s"]["cases"]) <= {"case_01", "case_03"}
    with pytest.raises(ValueError, match="not in the dataset.*ghost"):
        make_split(IDS[:5], 0, fixed={"train": ["ghost"], "test": ["case_00"]})
    with pytest.raises(ValueError, match="case_00.*both"):
        make_split(IDS[:5], 0, fixed={"train": ["case_00"], "test": ["case_00"]})
    with pytest.raises(ValueError, match="duplicate"):
        make_split(IDS[:5], 0, fixed={"train": ["case_01", "case_01"]})


def test_validate_split_catches_corruption():
    split = make_split(IDS, 2, subsets={"s": {"of": "train", "fraction": 0.5}})
    validate_split(split, IDS)
    overlap = json.loads(json.dumps(split))
    overlap["splits"]["test"].append(overlap["splits"]["train"][0])
    with pytest.raises(ValueError, match="in both"):
        validate_split(overlap)
    outside = json.loads(json.dumps(split))
    outside["subsets"]["s"]["cases"].append(outside["splits"]["val"][0])
    with pytest.raises(ValueError, match="outside its parent"):
        validate_split(outside)
    with pytest.raises(ValueError, match="not in the dataset"):
        validate_split(split, IDS[:10])


def test_write_read_round_trip_and_bad_files(tmp_path):
    split = make_split(IDS, 0, subsets={"s": {"of": "train", "fraction": 0.5}})
    path = tmp_path / "splits" / "toy.json"
    write_split(split, path)
    assert read_split(path) == split
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"  # key-sorted
    assert [p.name for p in path.parent.iterdir()] == ["toy.json"]
    with pytest.raises(ValueError, match="unknown split or subset 'nope'"):
        cases_for(split, "nope")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        read_split(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"splits": {"train": ["a"], "test": ["a"]}}))
    with pytest.raises(ValueError, match="wrong.json.*in both"):
        read_split(wrong)
