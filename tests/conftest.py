"""Shared pytest settings: one torch thread per test process (the machine has 2 cores), and every test leaves
the thread variables of the environment as it found them.

Why the second: a test that calls ``medkd.cli.main`` in-process runs ``limit_threads``, which sets
OMP_NUM_THREADS and friends in ``os.environ`` for the libraries a job imports later. In a job that is right; in
the pytest process it leaked into every later subprocess, e.g. ``nproc`` (which obeys OMP_NUM_THREADS) in the
SLURM test cluster's set-up, which then declared a 1-CPU node on which 2-CPU jobs pended for ever."""

import os

import pytest
import torch

from medkd.cli import THREAD_VARIABLES

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _restore_thread_variables():
    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
