"""Fixtures for end-to-end runs."""

from __future__ import annotations

import pytest

from wfhelpers import run_tiny_config


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
