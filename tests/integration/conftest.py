"""Fixtures for end-to-end runs."""

from __future__ import annotations

import pytest

from wfhelpers import run_tiny_config, snakemake


@pytest.fixture(scope="session", autouse=True)
def recorded_imports(tmp_path_factory):
    """Every step of every end-to-end run writes the medkd modules it imported here (MEDKD_RECORD_IMPORTS,
    medkd.cli.record_imports); test_codehash_closure.py holds them against medkd.codehash's static closure."""
    import os

    folder = tmp_path_factory.mktemp("imports")
    saved = os.environ.get("MEDKD_RECORD_IMPORTS")
    os.environ["MEDKD_RECORD_IMPORTS"] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop("MEDKD_RECORD_IMPORTS", None)
    else:
        os.environ["MEDKD_RECORD_IMPORTS"] = saved


@pytest.fixture(scope="session", autouse=True)
def active_conda_environment(tmp_path_factory):
    """Every end-to-end run happens with a conda environment active, as on a cluster login node where conda's
    base is on by default: CONDA_PREFIX names a fake environment whose python records that it ran and fails.
    Jobs (local, fork server, SLURM) must run the project's interpreter, never this one (workflow/scripts/
    medkd); the session fails at its end if anything ran it."""
    import os
    from pathlib import Path

    prefix = tmp_path_factory.mktemp("conda") / "miniconda3"
    (prefix / "bin").mkdir(parents=True)
    marker = Path(f"{prefix}.ran")
    (prefix / "bin" / "python").write_text(f'#!/bin/sh\necho "$*" >> "{marker}"\nexit 97\n')
    (prefix / "bin" / "python").chmod(0o755)
    saved = {k: os.environ.get(k) for k in ("CONDA_PREFIX", "CONDA_DEFAULT_ENV")}
    os.environ.update(CONDA_PREFIX=str(prefix), CONDA_DEFAULT_ENV="base")
    yield prefix
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    assert not marker.exists(), f"a job ran the active conda environment's python: {marker.read_text()[:500]}"



@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory):
    """The tiny config run through the whole DAG once; yields the working directory.
    MEDKD_TINY_WORKFLOW=<dir> reuses a finished run (a copy of it) instead, for quick local iterations."""
    import os
    import shutil
    from pathlib import Path

    if os.environ.get("MEDKD_TINY_WORKFLOW"):
        dest = tmp_path_factory.mktemp("wf") / "repo"
        shutil.copytree(os.environ["MEDKD_TINY_WORKFLOW"], dest, symlinks=True)
        return Path(dest)
    return run_tiny_config(tmp_path_factory.mktemp("wf"), "tiny.yaml", ["results/tables/all.csv"])


@pytest.fixture(scope="session")
def tiny_report(tiny_workflow):
    """results/report.html of the tiny run, built as `make report` builds it (the default target `all`,
    then Snakemake's --report with the report stylesheet); yields its path."""
    wd = tiny_workflow
    for args in (["--cores", "2", "all", "--configfile", "tiny.yaml"],
                 ["--report", "results/report.html", "--report-stylesheet", "workflow/report/style.css",
                  "--configfile", "tiny.yaml"]):
        proc = snakemake(args, wd)
        assert proc.returncode == 0, proc.stderr[-6000:]
    return wd / "results" / "report.html"
