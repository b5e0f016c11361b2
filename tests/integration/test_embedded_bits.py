"""The embedded dataset is the same bytes whatever kernels the CPU offers (issue: the same numbers on any
machine). Each variant forces another code path that used to change the files: OpenBLAS's per-CPU kernels
(41 of 81 files changed under Prescott before the generator stopped using BLAS), numpy's SIMD dispatch and
glibc's AVX2/FMA variants of libm. Every variant must write exactly the files of the default run, and those
must hash to what data.dvc records."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from wfhelpers import REPO, VENV_BIN

pytestmark = pytest.mark.slow

VARIANTS = {
    "openblas-prescott": {"OPENBLAS_CORETYPE": "Prescott"},
    "openblas-haswell": {"OPENBLAS_CORETYPE": "Haswell"},
    "openblas-skylakex": {"OPENBLAS_CORETYPE": "SkylakeX"},
    "openblas-zen": {"OPENBLAS_CORETYPE": "Zen"},
    # numpy 2.4 groups its x86 dispatch targets; disabling them leaves the baseline (x86-64-v2) kernels
    "numpy-baseline": {"NPY_DISABLE_CPU_FEATURES": "X86_V3,X86_V4,AVX512_ICL"},
    # glibc then picks its SSE2 variants of libm (no FMA), as on a CPU without AVX2
    "glibc-no-fma": {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F,-AVX512DQ,-AVX"},
}


def _generate(out: Path, extra_env: dict[str, str]) -> dict[str, str]:
    spec = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["datasets"]["embedded"]
    env = {**os.environ, **extra_env}
    proc = subprocess.run([str(VENV_BIN / "python"), "-m", "medkd", "fetch", "--dataset", "embedded",
                           "--dataset-spec", json.dumps(spec), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {p.relative_to(out).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def _dvc_dir_md5(files: dict[str, str], prefix: str) -> str:
    """DVC 3's hash of a directory: md5 of the JSON list of {md5, relpath} sorted by path (what `dvc add`
    writes as ``<md5>.dir``)."""
    entries = [{"md5": md5, "relpath": f"{prefix}/{name}"} for name, md5 in sorted(files.items())]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _generate(tmp_path_factory.mktemp("default") / "embedded", {})


def test_default_kernels_write_what_data_dvc_records(reference):
    committed = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]
    assert len(reference) == committed["nfiles"] == 113  # 56 cases x (image, label) + dataset.json
    assert _dvc_dir_md5(reference, "embedded") + ".dir" == committed["md5"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forced_kernels_write_the_same_bytes(variant, reference, tmp_path):
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"{variant} names x86 kernels; this CPU is {platform.machine()}")
    got = _generate(tmp_path / "embedded", VARIANTS[variant])
    changed = sorted(name for name in reference if got.get(name) != reference[name])
    assert not changed and got.keys() == reference.keys(), (variant, changed)
