"""The same numbers on another instruction set, within the stated tolerance (docs/reproducibility.md): the tiny
config run with torch, oneDNN, MKL and OpenBLAS forced to their SSE kernels (as a CPU without AVX would run
them) against the tiny workflow on this CPU's best kernels. On a CPU that has nothing better than SSE the two
runs are the same; the test holds either way."""

from __future__ import annotations

import json


import pandas as pd
import pytest

from medkd.reproduced import DEFAULT_TOLERANCES, compare
from wfhelpers import run_tiny_config

pytestmark = pytest.mark.slow

FORCED = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
          "OPENBLAS_CORETYPE": "Prescott"}


def test_tiny_config_on_sse_kernels_is_within_tolerance(tiny_workflow, tmp_path, monkeypatch):
    import platform

    x86 = platform.machine().lower() in ("x86_64", "amd64")
    for key, value in FORCED.items():  # elsewhere only torch's portable kernels are forced: the others are x86 names
        if x86 or key == "ATEN_CPU_CAPABILITY":
            monkeypatch.setenv(key, value)
    wd = run_tiny_config(tmp_path, "tiny.yaml", ["results/tables/all.csv"])
    env = json.loads((wd / "results/tiny/models/teacher/seed0/env.json").read_text())
    assert env["kernels"]["torch_cpu_capability"] == "DEFAULT"  # the forced kernels really ran
    if x86:
        assert env["kernels"]["env"]["ONEDNN_MAX_CPU_ISA"] == "SSE41"
    native = pd.read_csv(tiny_workflow / "results/tables/all.csv")
    forced = pd.read_csv(wd / "results/tables/all.csv")
    result = compare(forced, native, DEFAULT_TOLERANCES)
    assert len(result) > 20 and set(result["verdict"]) <= {"within", "outside"}
    outside = result[result["verdict"] != "within"]
    assert outside.empty, outside.to_string()
    print(f"tiny config on SSE kernels: {len(result)} numbers within tolerance; largest |difference| per metric:",
          result.assign(a=result["difference"].abs()).groupby("metric")["a"].max().round(5).to_dict())
