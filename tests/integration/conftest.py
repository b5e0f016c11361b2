"""Fixtures for end-to-end runs."""

from __future__ import annotations

import shutil

import pytest

from wfhelpers import copy_repo, snakemake


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory):
    """The tiny config run through the whole DAG once; yields the working directory."""
    wd = copy_repo(tmp_path_factory.mktemp("wf") / "repo")
    shutil.copy(wd / "tests" / "integration" / "tiny.yaml", wd / "tiny.yaml")
    proc = snakemake(["--cores", "2", "results/tables/all.csv", "--configfile", "tiny.yaml"], wd)
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in (wd / "results" / "logs").rglob("*.log"))
        raise AssertionError(f"snakemake failed:\n{proc.stderr[-6000:]}\n{logs[-12000:]}")
    return wd
