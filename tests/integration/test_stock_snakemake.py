"""The Snakefile needs nothing but Snakemake: it parses and plans (also through the SLURM profiles) in a virtualenv
holding only snakemake and the SLURM executor plugin from the package index, as on a cluster login node or a conda
user's base environment. And asking for conda where there is none stops before any job, naming `make reproduce`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wfhelpers import VENV_BIN, copy_repo, planned_jobs

pytestmark = pytest.mark.slow

STOCK = ["snakemake==9.27.1", "snakemake-executor-plugin-slurm==2.8.0"]
# medkd's numerical stack: none of it is installed with Snakemake and the plugin
ABSENT = ("torch", "scipy", "h5py", "tqdm", "matplotlib", "nibabel", "SimpleITK", "skimage", "mlflow")
# ... and what the Snakefile's medkd imports must not load even though the plugin pulls it in (pandas, numpy)
HEAVY = ABSENT + ("numpy", "pandas", "requests")


@pytest.fixture(scope="session")
def stock_venv(request) -> Path:
    """A virtualenv with only STOCK (and what pip pulls in for them), cached in .pytest_cache between runs."""
    root = Path(request.config.cache.mkdir("stock-snakemake"))
    venv, marker = root / "venv", root / "installed.txt"
    if not (marker.is_file() and marker.read_text() == "\n".join(STOCK) and (venv / "bin" / "snakemake").exists()):
        shutil.rmtree(venv, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                              "--disable-pip-version-check", *STOCK], capture_output=True, text=True, timeout=1200)
        if pip.returncode != 0:
            pytest.skip(f"cannot install {' '.join(STOCK)} from the package index (offline?): {pip.stderr[-500:]}")
        marker.write_text("\n".join(STOCK))
    return venv


def _env(bin_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX")}
    env["PATH"] = f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"
    return env


def _run(cmd, cwd, env, timeout=600):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_snakefile_parses_with_only_snakemake_and_the_slurm_plugin(stock_venv, tmp_path):
    wd = copy_repo(tmp_path / "repo")
    (wd / ".venv").unlink()  # nothing of the project's virtualenv is reachable
    shutil.copy(wd / "tests" / "integration" / "tiny.yaml", wd / "tiny.yaml")
    env, py, smk = _env(stock_venv / "bin"), str(stock_venv / "bin" / "python"), str(stock_venv / "bin" / "snakemake")

    # the stock environment really is bare: none of medkd's numerical dependencies
    missing = _run([py, "-c", f"import importlib.util as u; print([m for m in {ABSENT!r} if u.find_spec(m)])"], wd, env)
    assert missing.stdout.strip() == "[]", missing.stdout + missing.stderr
    # what the Snakefile imports from medkd pulls in none of them either
    probe = ("import sys; sys.path.insert(0, 'src'); import medkd.config, medkd.spec, medkd.codehash, medkd.resources, "
             "medkd.data.sources.fetch, medkd.data.sources.spec; "
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    loaded = _run([py, "-c", probe], wd, env)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr

    for args in (["results/tables/all.csv", "--configfile", "tiny.yaml"],  # the tiny config
                 ["results/tables/all.csv"],  # the embedded default
                 ["results/tables/all.csv", "--configfile", "tiny.yaml", "--config", "device=auto",
                  "--profile", "profiles/site-slurm", "--workflow-profile", "profiles/slurm"]):  # through SLURM
        proc = _run([smk, "-n", *args], wd, env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        jobs = planned_jobs(proc.stdout)
        assert jobs["train"] >= 3 and jobs["collect"] == 1, proc.stdout[-2000:]
    assert "gpu=1" in proc.stdout and "slurm_account=your_account" in proc.stdout
    assert not (wd / "results").exists()


@pytest.mark.parametrize("flag", [["--sdm", "conda"], ["--use-conda"]])
def test_conda_without_conda_stops_before_any_job(flag, tmp_path):
    env = _env(VENV_BIN)
    if shutil.which("conda", path=env["PATH"]):
        pytest.skip("conda is installed here")
    wd = copy_repo(tmp_path / "repo")
    shutil.copy(wd / "tests" / "integration" / "tiny.yaml", wd / "tiny.yaml")
    proc = _run([str(VENV_BIN / "snakemake"), "--cores", "1", "results/tables/all.csv", *flag,
                 "--configfile", "tiny.yaml"], wd, env)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "there is no `conda` on PATH" in text and "`make reproduce`" in text, text[-3000:]
    assert not (wd / "results").exists() and not (wd / "data").exists()  # no job ran
    print(next(line for line in text.splitlines() if "no `conda` on PATH" in line))
