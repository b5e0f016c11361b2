"""Fixtures for end-to-end runs."""

from __future__ import annotations

import pytest

from wfhelpers import run_tiny_config, snakemake


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
