"""Atomic writes: no temporary file survives a killed writer, a full disk is a clean error."""

import errno
import os
import subprocess

import pytest

from medkd.integrity import rebuild_hint, with_hint
from medkd.io import DiskFullError, atomic_path, remove_stale_tmps, write_json


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".a.json.tmp-{dead}").write_text("half")
    (tmp_path / f".embedded.tmp-{dead}").mkdir()
    (tmp_path / f".embedded.tmp-{dead}" / "x").write_text("x")
    live = tmp_path / f".b.json.tmp-{os.getppid()}"
    live.write_text("being written")
    write_json(tmp_path / "c.json", {"ok": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c.json", live.name])
    assert remove_stale_tmps(tmp_path) == []


def test_disk_full_is_a_clean_error_and_leaves_nothing(tmp_path):
    with pytest.raises(DiskFullError, match="no space left on device"):
        with atomic_path(tmp_path / "out.h5") as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_rebuild_hints_name_the_rule():
    assert "--forcerun results/e/models/m/seed0/model.pt" in rebuild_hint("results/e/models/m/seed0/summary.json")
    assert "rule convert" in rebuild_hint("/abs/results/slices/embedded.h5")
    assert "restarts from epoch 0" in rebuild_hint("results/e/models/m/seed0/last.pt")
    assert "rule infer" in with_hint("results/e/predictions/m/seed0.h5: bad")
    assert with_hint("no file here") == "no file here"


def test_h5_dataset_refuses_before_hdf5_writes_when_space_is_short(tmp_path, monkeypatch):
    """The free-space check raises ENOSPC as a Python error (HDF5 itself may crash on a failed write); inside
    atomic_path that is a DiskFullError naming the destination, and nothing is left behind."""
    import h5py
    import numpy as np

    from medkd import io

    data = np.zeros((64, 64), np.float32)  # 16 KiB
    real_statvfs = os.statvfs

    class Tight:
        def __init__(self, st):
            self.f_frsize = st.f_frsize
            self.f_bavail = (io.H5_SPACE_MARGIN + data.nbytes - 1) // st.f_frsize  # one byte short at most

    monkeypatch.setattr(io.os, "statvfs", lambda d: Tight(real_statvfs(d)))
    with pytest.raises(DiskFullError, match=r"out\.h5: no space left on device.*dataset 'x'"):
        with io.atomic_path(tmp_path / "out.h5") as tmp, h5py.File(tmp, "w") as fh:
            io.h5_dataset(fh, "x", data)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(io.os, "statvfs", real_statvfs)
    with io.atomic_path(tmp_path / "out.h5") as tmp, h5py.File(tmp, "w") as fh:
        io.h5_dataset(fh, "x", data, compression="gzip")
    with h5py.File(tmp_path / "out.h5", "r") as fh:
        assert fh["x"].shape == (64, 64) and fh["x"].compression == "gzip"


def test_a_job_whose_client_is_gone_publishes_nothing(tmp_path, monkeypatch):
    """A fork-server job whose client was killed (Snakemake recorded a failure) must not rename its output
    into place afterwards; with a live client (or outside the fork server) the write goes through."""
    from medkd.io import ClientGoneError

    monkeypatch.setenv("MEDKD_CLIENT_PID", str(_dead_pid()))
    with pytest.raises(ClientGoneError, match=r"out\.json: not written: the job's client"):
        write_json(tmp_path / "out.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("MEDKD_CLIENT_PID", str(os.getppid()))
    write_json(tmp_path / "out.json", {"a": 1})
    monkeypatch.delenv("MEDKD_CLIENT_PID")
    write_json(tmp_path / "out2.json", {"a": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out2.json"]


def test_one_writer_per_folder_and_no_stale_lock_after_a_kill(tmp_path, monkeypatch):
    """exclusive_folder: a second writer of the same folder stops at once with a message naming the holder and
    the scancel command; a SIGKILLed holder leaves no lock behind."""
    import signal
    import subprocess
    import sys

    from medkd.io import FolderBusy, exclusive_folder

    folder = tmp_path / "model"
    code = ("import os, sys, time; from medkd.io import exclusive_folder\n"
            f"with exclusive_folder({str(folder)!r}, 'training job'):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    env = {**os.environ, "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "run-uuid-1"}
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy) as exc:
            with exclusive_folder(folder, "training job"):
                pytest.fail("entered a folder another process holds")
        message = str(exc.value)
        assert str(folder) in message and f"pid {holder.pid}" in message and "SLURM job 4242" in message
        assert "`scancel 4242`" in message and "`scancel --name run-uuid-1`" in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with exclusive_folder(folder) as held:  # the kernel released the killed holder's lock
        assert held == folder
    with exclusive_folder(folder):  # and ours on leaving the block
        pass
