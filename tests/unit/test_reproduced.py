"""medkd.reproduced: every number of a run against a reference run, within a per-metric tolerance."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from medkd.reproduced import COLUMNS, compare, run, summary_lines, tolerance_for

TOL = {"dice": 0.01, "psnr": 0.1, "default": 0.05}


def _table(rows):
    return pd.DataFrame(rows, columns=["experiment", "model", "class", "metric", "convention", "mean", "health"])


REF = _table([
    ["seg", "teacher", "wm", "dice", "engine", 0.800, ""],
    ["seg", "student", "wm", "dice", "engine", 0.700, "collapse"],
    ["seg", "student", "wm", "hd95", "engine", math.nan, ""],
    ["rec", "teacher", None, "psnr", "engine", 30.00, ""],
    ["rec", "old", None, "psnr", "engine", 28.00, ""],
])


def test_within_outside_missing_new_and_nan_rules():
    ours = _table([
        ["seg", "teacher", "wm", "dice", "engine", 0.8099, ""],  # +0.0099 <= 0.01
        ["seg", "student", "wm", "dice", "engine", 0.650, "not_converged;collapse"],  # -0.05 > 0.01, fragile
        ["seg", "student", "wm", "hd95", "engine", math.nan, ""],  # NaN on both sides: equal
        ["rec", "teacher", None, "psnr", "engine", 30.11, ""],  # +0.11 > 0.1
        ["rec", "new", None, "psnr", "engine", 27.0, ""],
    ])
    got = compare(ours, REF, TOL)
    assert list(got.columns) == COLUMNS
    assert got["verdict"].tolist() == ["within", "outside", "within", "outside", "missing", "new"]
    assert got.loc[0, "difference"] == pytest.approx(0.0099)
    assert got.loc[1, "tolerance"] == 0.01 and got.loc[2, "tolerance"] == 0.05  # hd95 takes the default
    assert "collapse" in got.loc[1, "note"] and got.loc[3, "note"] == ""
    assert got.loc[3, "class"] == ""  # reconstruction rows have no class

    lines = summary_lines(got, "ref.csv")
    assert lines[0] == "seg: NOT reproduced: 2/3 numbers within tolerance of ref.csv (1 identical)"
    assert lines[1].startswith("    student/wm/dice/engine: ours 0.65, reference 0.7, difference -0.05 (tolerance 0.01)")
    assert "flagged collapse" in lines[1]
    assert lines[2] == "rec: NOT reproduced: 0/3 numbers within tolerance of ref.csv (0 identical)"
    assert "teacher/psnr/engine: ours 30.11, reference 30, difference +0.11" in lines[3]
    assert lines[4] == "    old/psnr/engine: not in this run" and lines[5] == "    new/psnr/engine: not in the reference"


def test_an_identical_run_reproduces_everything(tmp_path):
    ref = tmp_path / "ref.csv"
    REF.to_csv(ref, index=False)
    lines = run(ref, ref, TOL, tmp_path / "r.csv", tmp_path / "r.md", about={"cpu": "X"})
    assert lines == [f"seg: reproduced: 3/3 numbers within tolerance of {ref} (3 identical)",
                     f"rec: reproduced: 2/2 numbers within tolerance of {ref} (2 identical)"]
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("# Reproduced? 5 of 5 numbers within tolerance") and "cpu X" in md
    assert pd.read_csv(tmp_path / "r.csv")["verdict"].eq("within").all()


def test_nan_on_one_side_only_is_outside():
    ours = REF.copy()
    ours.loc[0, "mean"] = math.nan
    assert compare(ours, REF, TOL)["verdict"].tolist()[0] == "outside"


def test_no_reference_writes_a_sentence(tmp_path):
    lines = run(tmp_path / "x.csv", None, TOL, tmp_path / "r.csv", tmp_path / "r.md")
    assert "no reference run" in lines[0]
    assert "No reference run is named" in (tmp_path / "r.md").read_text()
    assert pd.read_csv(tmp_path / "r.csv").columns.tolist() == COLUMNS


def test_bad_tables_are_refused_with_the_file_named(tmp_path):
    with pytest.raises(ValueError, match="lacks the columns"):
        compare(REF.drop(columns=["metric"]), REF, TOL, "mine.csv")
    with pytest.raises(ValueError, match="not unique"):
        compare(pd.concat([REF, REF.head(1)]), REF, TOL)
    with pytest.raises(ValueError, match="no tolerance for metric 'dice'"):
        tolerance_for("dice", {"psnr": 1.0})
    bad = tmp_path / "bad.csv"
    bad.write_text("not,a\ncsv")
    with pytest.raises(Exception, match="bad.csv"):
        run(bad, bad, TOL, tmp_path / "r.csv", tmp_path / "r.md")
    assert not (tmp_path / "r.md").exists()  # nothing half-written


def test_landing_page_section_names_each_number_outside_tolerance():
    from medkd.reportpages import _reproduced_cell, _reproduced_section

    ours = REF.copy()
    ours.loc[3, "mean"] = 31.0
    rep = compare(ours, REF, TOL)
    rep[["class", "note"]] = rep[["class", "note"]].fillna("")
    html = _reproduced_section(rep)
    assert "<b>4 of 5</b>" in html and "4 of them identical" in html
    assert html.count("<tr>") == 2  # header + the one number outside
    assert "<td>31</td><td>30</td><td>1</td><td>0.1</td><td>outside</td>" in html
    assert _reproduced_cell(rep, "seg") == "3/3 within tolerance"
    assert _reproduced_cell(rep, "rec") == "1/2 within tolerance"
    assert _reproduced_cell(rep.iloc[:0], "seg") == "no reference named"


def test_latency_is_not_compared():
    cost = _table([["seg", "teacher", "-", "latency_ms_per_slice", "cost", 3.4, ""]])
    got = compare(pd.concat([REF, cost]), REF, TOL)
    assert "latency_ms_per_slice" not in set(got["metric"]) and len(got) == len(REF)


def test_a_flag_of_the_reference_run_also_marks_the_row_fragile():
    ours = REF.copy()
    ours["health"] = ""
    got = compare(ours, REF, TOL)
    assert "collapse" in got.loc[1, "note"]  # the reference's student collapsed, ours did not
    assert got.loc[0, "note"] == ""


def test_reference_takes_the_kernels_from_the_runs_env_json(tmp_path):
    import json

    from medkd.cli import main

    results = tmp_path / "results"
    (results / "tables").mkdir(parents=True)
    table = REF.assign(seeds="0;1", git_commit="abc", sd=0.0, n_seeds=2, n_cases=3)
    table = pd.concat([table, _table([["seg", "teacher", "-", "latency_ms_per_slice", "cost", 3.4, ""]])
                      .assign(seeds="0;1", git_commit="abc")])
    table.to_csv(results / "tables" / "all.csv", index=False)
    kernels = {"cpu": "Test CPU", "torch_cpu_capability": "AVX2"}
    for exp, model in {("seg", "teacher"), ("seg", "student"), ("rec", "teacher"), ("rec", "old")}:
        for seed in (0, 1):
            folder = results / exp / "models" / model / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "env.json").write_text(json.dumps({"platform": "P", "torch": "T", "kernels": kernels}))
    out = tmp_path / "ref" / "run.csv"
    out.parent.mkdir()
    assert main(["reference", "--table", str(results / "tables" / "all.csv"), "--out", str(out)]) == 0
    written = pd.read_csv(out)
    assert len(written) == len(REF) and "latency_ms_per_slice" not in set(written["metric"])
    about = json.loads(out.with_suffix(".json").read_text())
    assert about["models"] == 8 and about["kernels"] == [kernels] and about["git_commit_of_the_jobs"] == ["abc"]
    assert run(results / "tables" / "all.csv", out, TOL, tmp_path / "r.csv", tmp_path / "r.md")[0].endswith("(3 identical)")
