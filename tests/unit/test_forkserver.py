"""medkd.forkserver's protocol, against a real server (light: MEDKD_FORKSERVER_PRELOAD=numpy): exit codes,
standard streams, environment, working directory, umask and limits of the client; a client killed mid-job
kills its job; a killed server leaves a socket on which the next job runs on its own; the socket lives in a
private directory. Jobs are real ``medkd`` steps (``reproduced``: quick and torch-free)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medkd import forkserver

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv(forkserver.PRELOAD_VARIABLE, "numpy")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv(forkserver.SOCKET_VARIABLE, raising=False)
    monkeypatch.setenv("MEDKD_FORKSERVER_WAIT", "60")
    monkeypatch.setenv("PYTHONPATH", str(REPO / "src"))
    started = forkserver.start_for_run(str(REPO / "workflow" / "scripts" / "medkd"), tmp_path / "server.log")
    assert started is not None and os.path.exists(started[1]), (tmp_path / "server.log").read_text()
    yield started
    forkserver.stop(started)
    assert not os.path.exists(os.path.dirname(started[1]))  # the private directory is gone


def _client(sock: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medkd.forkserver", "run", sock, "--", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _reproduced(out: Path, table: str = "all.csv") -> list[str]:
    return ["reproduced", "--table", table, "--tolerances", "{}", "--csv", str(out / "r.csv"), "--md",
            str(out / "r.md")]


def test_socket_is_private_and_exported(server):
    proc, sock = server
    folder = os.stat(os.path.dirname(sock))
    assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.getuid()
    assert os.environ[forkserver.SOCKET_VARIABLE] == sock
    assert os.environ[forkserver.OWNER_VARIABLE].endswith(f":{os.getpid()}")


def test_exit_codes_streams_environment_directory_and_umask(server, tmp_path):
    _, sock = server
    ok = _client(sock, "--help")
    out, err = ok.communicate(timeout=60)
    assert ok.returncode == 0 and "usage: medkd" in out
    bad = _client(sock, "no-such-step")
    out, err = bad.communicate(timeout=60)
    assert bad.returncode == 2 and "invalid choice" in err

    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "MEDKD_RECORD_IMPORTS": str(tmp_path / "imports")}
    job = _client(sock, *_reproduced(Path("."), "missing.csv"), cwd=work, env=env)  # relative to the client's cwd
    out, err = job.communicate(timeout=60)
    assert job.returncode == 0, err  # no reference: the step writes that nothing was compared
    assert (work / "r.md").read_text().startswith("# Reproduced? No reference run")
    record = json.loads(next((tmp_path / "imports").glob("reproduced-*.json")).read_text())
    assert "medkd.reproduced" in record["modules"]  # the client's environment reached the job

    old = os.umask(0o077)
    try:
        job = _client(sock, *_reproduced(work), cwd=work)
        job.communicate(timeout=60)
    finally:
        os.umask(old)
    assert stat.S_IMODE((work / "r.md").stat().st_mode) == 0o600  # the client's umask, not the server's


def test_a_killed_client_kills_its_job(server, tmp_path):
    _, sock = server
    reader, writer = os.pipe()  # the job reads its table from stdin and waits there
    job = _client(sock, *_reproduced(tmp_path, "/dev/stdin"), "--reference", "/dev/stdin", stdin=reader)
    os.close(reader)
    deadline = time.time() + 30
    while time.time() < deadline and not _jobs("reproduced"):
        time.sleep(0.1)
    assert _jobs("reproduced"), "the job never started"
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=30)
    deadline = time.time() + 15
    while time.time() < deadline and _jobs("reproduced"):
        time.sleep(0.1)
    os.close(writer)
    assert not _jobs("reproduced")


def test_a_killed_server_leaves_jobs_that_run_on_their_own(server, tmp_path):
    proc, sock = server
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # the socket file may stay behind; either way the next job runs in its own interpreter, with one warning
    job = _client(sock, *_reproduced(tmp_path))
    out, err = job.communicate(timeout=120)
    assert job.returncode == 0, err
    assert "no fork server at" in err and "running the step in its own interpreter" in err
    assert (tmp_path / "r.md").exists()


def _jobs(step: str) -> list[int]:
    """Pids of this user's processes whose name is ``medkd:<step>`` (what a forked job calls itself)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == f"medkd:{step}"[:15] and entry.stat().st_uid == os.getuid():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found
