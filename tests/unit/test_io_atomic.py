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
