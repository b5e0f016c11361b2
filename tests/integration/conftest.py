"""Fixtures for end-to-end runs."""

from __future__ import annotations

import pytest

from wfhelpers import run_tiny_config


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory):
    """The tiny config run through the whole DAG once; yields the working directory."""
    return run_tiny_config(tmp_path_factory.mktemp("wf"), "tiny.yaml", ["results/tables/all.csv"])
