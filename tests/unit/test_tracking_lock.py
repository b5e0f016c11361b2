"""The track jobs of different experiments take turns on an SQLite store (medkd.tracking.store_lock)."""

from __future__ import annotations

import threading

from medkd.tracking import store_lock


def test_a_second_writer_waits_for_the_first(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    entered = threading.Event()

    def second():
        with store_lock(uri):
            entered.set()

    with store_lock(uri):
        t = threading.Thread(target=second)
        t.start()
        assert not entered.wait(0.5), "the second writer got the lock while the first held it"
    assert entered.wait(10), "the second writer never got the lock"
    t.join()
    assert (tmp_path / "mlflow.db.lock").exists()


def test_other_backends_are_not_locked(tmp_path):
    with store_lock("http://127.0.0.1:5000"):
        with store_lock("http://127.0.0.1:5000"):  # would deadlock if it locked anything
            pass
    assert not list(tmp_path.iterdir())


def test_a_killed_writers_half_built_store_is_removed(tmp_path):
    """A track job killed while MLflow built the store's schema leaves .mlflow.db.tmp-<pid>; the next
    call removes it and builds the store."""
    import subprocess

    from medkd.tracking import create_sqlite_store

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".mlflow.db.tmp-{dead.pid}"
    stale.write_bytes(b"SQLite format 3\0 half written")
    journal = tmp_path / f".mlflow.db.tmp-{dead.pid}-journal"  # SQLite's rollback journal beside it
    journal.write_bytes(b"\0" * 512)
    create_sqlite_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not stale.exists() and not journal.exists()
    assert (tmp_path / "mlflow.db").read_bytes()[:16] == b"SQLite format 3\0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


def test_mlflow_pickle_warning_is_kept_once_per_process(monkeypatch):
    """The filter on mlflow.pytorch keeps the first "Pickle or CloudPickle" warning, drops its repeats and
    lets every other record through."""
    import logging

    from medkd import tracking

    monkeypatch.delattr(tracking._pickle_warning_once, "seen", raising=False)

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("mlflow.pytorch", logging.WARNING, __file__, 1, msg, None, None)

    pickle = "Saving pytorch model by Pickle or CloudPickle format requires exercising caution"
    assert [tracking._pickle_warning_once(record(m)) for m in (pickle, pickle, "other", pickle, "other")] == [
        True, False, True, False, True]
