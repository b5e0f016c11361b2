"""workflow/scripts/medkd runs the project's interpreter: conda's python only inside an environment that
Snakemake built for the rule, never an environment that merely happens to be active (issue: interpreter
hijack). A fake environment's python records that it ran and fails."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WRAPPER = REPO / "workflow" / "scripts" / "medkd"


def _fake_env(prefix: Path) -> Path:
    (prefix / "bin").mkdir(parents=True)
    python = prefix / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "fake conda python ran: $*" > "{prefix}.ran"\nexit 97\n')
    python.chmod(0o755)
    return prefix


def _run(conda_prefix: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MEDKD_FORKSERVER", "SLURM_JOB_ID")}
    env.update(CONDA_PREFIX=str(conda_prefix), CONDA_DEFAULT_ENV="base")
    return subprocess.run([str(WRAPPER), "--help"], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "python").exists(), reason="needs the project's .venv")
def test_an_active_environment_is_ignored(tmp_path):
    base = _fake_env(tmp_path / "miniconda3")  # an active base environment on a login node
    proc = _run(base)
    assert proc.returncode == 0, proc.stderr
    assert "usage: medkd" in proc.stdout
    assert not Path(f"{base}.ran").exists()


@pytest.mark.parametrize("where", ["flag", "default-prefix"])
def test_an_environment_snakemake_built_is_used(tmp_path, where):
    if where == "flag":  # --conda-prefix anywhere: Snakemake's <env>.env_setup_done flag beside it
        env = _fake_env(tmp_path / "conda-envs" / "0123abcd")
        Path(f"{env}.env_setup_done").touch()
    else:  # Snakemake's default place
        env = _fake_env(tmp_path / "run" / ".snakemake" / "conda" / "0123abcd")
    proc = _run(env)
    assert proc.returncode == 97
    assert Path(f"{env}.ran").read_text().startswith("fake conda python ran: -m medkd --help")
