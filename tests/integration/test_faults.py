"""Reliability: kill anywhere (a few gauntlet trials; `make faults` runs the full gauntlet), corrupted
intermediates fail clean, a full disk fails clean, concurrent runs do not corrupt each other."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from wfhelpers import REPO, VENV_BIN, snakemake

sys.path.insert(0, str(REPO / "tests" / "faults"))

import gauntlet  # noqa: E402

pytestmark = pytest.mark.slow

TEACHER = "results/tiny/models/teacher/seed0"
STUDENT_KD = "results/tiny/models/student_kd/seed0"
STORE = "results/slices/embedded.h5"
SPLIT = "results/splits/tiny.json"


def _clone(src: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dest)], check=True)
    return dest


def _cli(wd: Path, argv: list[str], capsys) -> tuple[int, str]:
    """Run `medkd <argv>` in-process in ``wd``; (exit code, what it logged to stderr)."""
    from medkd.cli import main

    capsys.readouterr()
    old = os.getcwd()
    os.chdir(wd)
    try:
        code = main(argv)
    finally:
        os.chdir(old)
        logging.getLogger().handlers.clear()
    return code, capsys.readouterr().err


def _spec(wd: Path, model: str) -> str:
    from medkd.config import load_config, model_spec

    return model_spec(load_config(wd / "tiny.yaml", root=wd), "tiny", model).to_json()


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip(path: Path, at: float = 0.6) -> None:
    """Alter one byte in place (same size, same mtime: silent corruption)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _no_output(path: Path) -> None:
    assert not path.exists(), f"{path} was written from a corrupt input"
    if path.parent.exists():
        assert not [p.name for p in path.parent.iterdir() if ".tmp-" in p.name]


# ------------------------------------------------------------------------------------------ 1. kill anywhere


@pytest.mark.parametrize("stage,target", [("evaluate", "job"), ("infer", "client"), ("track", "snakemake")])
def test_kill_then_rerun_gives_identical_results(tiny_workflow, tmp_path, stage, target):
    """A few representative trials of the gauntlet (tests/faults/gauntlet.py, `make faults` runs 22+):
    SIGKILL the job / its fork-server client / Snakemake during ``stage``, re-run the same command."""
    ref = tiny_workflow
    trial = gauntlet.Trial(n=0, stage=stage, target=target, delay=0.3)
    gauntlet.run_trial(trial, ref, gauntlet.fingerprint(ref), {}, tmp_path, config="tiny.yaml")
    print(gauntlet.table([trial]))
    assert trial.ok, trial.problems
    assert trial.identical and trial.rerun_jobs >= 1


# ------------------------------------------------------------------------------------------ 2. corruption


@pytest.fixture()
def wd(tiny_workflow, tmp_path):
    return _clone(tiny_workflow, tmp_path / "wd")


def _infer(out="results/x/pred.h5"):
    return ["infer", "--model-dir", TEACHER, "--store", STORE, "--split", SPLIT, "--out", out, "--device", "cpu"]


def _assert_clean_failure(code, text, names, *words):
    assert code == 2, text
    assert names in text, text
    assert "Rebuild it:" in text, text
    for w in words:
        assert w in text, text
    assert "Traceback" not in text.split("failed:")[-1].split("\n")[0]


def test_truncated_slice_store_stops_training(wd, capsys):
    _truncate(wd / STORE)
    out = wd / "results/x/teacher"
    code, text = _cli(wd, ["train", "--spec", _spec(wd, "teacher"), "--seed", "0", "--store", STORE, "--split", SPLIT,
                           "--fingerprint", "results/slices/embedded.json", "--out", str(out), "--device", "cpu"], capsys)
    _assert_clean_failure(code, text, STORE, "MD5", "--forcerun")
    _no_output(out / "model.pt")


def test_altered_slice_store_is_detected_by_its_hash(wd, capsys):
    _flip(wd / STORE)
    code, text = _cli(wd, _infer(), capsys)
    _assert_clean_failure(code, text, STORE, "MD5", "summary.json")
    _no_output(wd / "results/x/pred.h5")


def test_truncated_kspace_store_fails_clean(wd, capsys):
    spec = json.dumps({"kind": "cartesian_vd", "acceleration": 4, "centre_lines": 4, "axis": 0, "seed": 0,
                       "name": "m4"})
    ks = "results/kspace/embedded/m4.h5"
    code, text = _cli(wd, ["undersample", "--mask-spec", spec, "--store", STORE, "--out", ks], capsys)
    assert code == 0, text
    _truncate(wd / ks)
    from medkd.config import load_config, model_spec

    cfg = load_config(REPO / "tests/faults/faults.yaml", root=wd)
    rspec = model_spec(cfg, "recon", "recon").to_json()
    out = wd / "results/x/recon"
    code, text = _cli(wd, ["train", "--spec", rspec, "--seed", "0", "--store", ks, "--split", SPLIT,
                           "--out", str(out), "--device", "cpu"], capsys)
    _assert_clean_failure(code, text, ks, "k-space store", "undersample")
    _no_output(out / "model.pt")


@pytest.mark.parametrize("how", ["truncate", "spec_hash"])
def test_corrupt_cache_stops_the_student(wd, capsys, how):
    cache = wd / "results/tiny/cache/teacher/seed0.h5"
    if how == "truncate":
        _truncate(cache)
    else:
        import h5py

        with h5py.File(cache, "r+") as fh:
            fh.attrs["spec_hash"] = "0123456789ab"
    out = wd / "results/x/student_kd"
    code, text = _cli(wd, ["train", "--spec", _spec(wd, "student_kd"), "--seed", "0", "--store", STORE,
                           "--split", SPLIT, "--cache", f"teacher={cache.relative_to(wd)}",
                           "--teacher-summary", f"teacher={TEACHER}/summary.json", "--out", str(out),
                           "--device", "cpu"], capsys)
    _assert_clean_failure(code, text, "results/tiny/cache/teacher/seed0.h5",
                          "truncated or corrupt" if how == "truncate" else "spec hash")
    _no_output(out / "model.pt")


def test_cache_holds_only_the_named_splits_and_a_student_outside_them_stops(wd, capsys):
    """`medkd cache --splits val` caches exactly the validation cases; a student that trains on the
    training split then stops before training, naming the cache file and the missing case."""
    import h5py

    split = json.loads((wd / SPLIT).read_text())["splits"]
    cache = wd / "results/x/cache_val.h5"
    code, text = _cli(wd, ["cache", "--teacher-dir", TEACHER, "--store", STORE, "--split", SPLIT,
                           "--splits", "val,val", "--out", str(cache), "--device", "cpu"], capsys)
    assert code == 0, text
    with h5py.File(cache, "r") as fh:
        assert sorted(fh["cases"]) == sorted(split["val"])  # a name given twice is cached once
        assert json.loads(fh.attrs["splits"]) == ["val", "val"]
    out = wd / "results/x/student_kd"
    code, text = _cli(wd, ["train", "--spec", _spec(wd, "student_kd"), "--seed", "0", "--store", STORE,
                           "--split", SPLIT, "--cache", f"teacher={cache}",
                           "--teacher-summary", f"teacher={TEACHER}/summary.json", "--out", str(out),
                           "--device", "cpu"], capsys)
    assert code != 0 and str(cache) in text and f"teacher cache has no case {sorted(split['train'])[0]!r}" in text, text
    _no_output(out / "model.pt")


def test_truncated_predictions_stop_evaluation(wd, capsys):
    pred = "results/tiny/predictions/teacher/seed0.h5"
    _truncate(wd / pred)
    code, text = _cli(wd, ["evaluate", "--predictions", pred, "--model-dir", TEACHER, "--store", STORE,
                           "--split", SPLIT, "--out", "results/x/m.csv"], capsys)
    _assert_clean_failure(code, text, pred, "predictions file", "infer")
    _no_output(wd / "results/x/m.csv")


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_corrupt_model_checkpoint_is_detected(wd, capsys, how):
    (_truncate if how == "truncate" else _flip)(wd / TEACHER / "model.pt")
    code, text = _cli(wd, _infer(), capsys)
    _assert_clean_failure(code, text, f"{TEACHER}/model.pt", "SHA-256")
    _no_output(wd / "results/x/pred.h5")


def test_truncated_last_checkpoint_stops_resume(wd, capsys):
    out = wd / "results/x/teacher"
    out.mkdir(parents=True)
    for f in ("last.pt", "best.pt"):
        shutil.copy(wd / TEACHER / f, out / f)
    _truncate(out / "last.pt")
    # name it like a pipeline model dir so the hint applies
    target = wd / "results/tiny/models/teacher/seed0"
    for f in ("model.pt", "summary.json"):
        (target / f).unlink()
    shutil.copy(out / "last.pt", target / "last.pt")
    code, text = _cli(wd, ["train", "--spec", _spec(wd, "teacher"), "--seed", "0", "--store", STORE, "--split", SPLIT,
                           "--out", TEACHER, "--device", "cpu"], capsys)
    _assert_clean_failure(code, text, f"{TEACHER}/last.pt", "resume checkpoint", "restarts from epoch 0")
    _no_output(target / "model.pt")


def test_truncated_summary_json_fails_clean(wd, capsys):
    _truncate(wd / TEACHER / "summary.json")
    code, text = _cli(wd, _infer(), capsys)
    _assert_clean_failure(code, text, f"{TEACHER}/summary.json", "JSON file")
    _no_output(wd / "results/x/pred.h5")


def test_truncated_split_fails_clean(wd, capsys):
    _truncate(wd / SPLIT)
    code, text = _cli(wd, _infer(), capsys)
    _assert_clean_failure(code, text, SPLIT, "split", "--forcerun")
    _no_output(wd / "results/x/pred.h5")


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_metrics_csv_stops_tables(wd, capsys, keep):
    csvs = [f"results/tiny/metrics/{m}/seed0.csv" for m in ("teacher", "student", "student_kd")]
    _truncate(wd / csvs[1], keep)
    exp = json.dumps(json.loads(subprocess.run(
        [str(VENV_BIN / "python"), "-m", "medkd", "spec", "--config", "tiny.yaml", "--experiment", "tiny"],
        cwd=wd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(wd / "src")}).stdout))
    t = "results/x/t"
    code, text = _cli(wd, ["tables", "--experiment", "tiny", "--experiment-spec", exp, "--metrics", *csvs,
                           "--model-order", "teacher", "student", "student_kd", "--model-dirs",
                           *[f"results/tiny/models/{m}/seed0" for m in ("teacher", "student", "student_kd")],
                           "--csv", f"{t}.csv", "--md", f"{t}.md", "--tex", f"{t}.tex", "--png", f"{t}.png",
                           "--curves", f"{t}_c.png"], capsys)
    _assert_clean_failure(code, text, csvs[1], "metrics CSV", "evaluate")
    _no_output(wd / f"{t}.csv")


def test_truncated_fingerprint_stops_split(wd, capsys):
    _truncate(wd / "results/slices/embedded.json")
    code, text = _cli(wd, ["split", "--split-spec", json.dumps({"seed": 0, "fractions": {"train": 0.6, "val": 0.2,
                                                                                          "test": 0.2}}),
                           "--fingerprint", "results/slices/embedded.json", "--out", "results/x/s.json"], capsys)
    _assert_clean_failure(code, text, "results/slices/embedded.json", "convert")
    _no_output(wd / "results/x/s.json")


def test_corrupt_store_in_the_dag_then_rebuild(wd):
    """Through Snakemake: a silently altered slice store stops the first job that reads it (the log names the
    file and the rebuild command), nothing downstream is written; following the hint completes the run."""
    _flip(wd / STORE)
    before = {p: p.stat().st_mtime_ns for p in (wd / "results/tiny/predictions").rglob("*.h5")}
    proc = snakemake(["--cores", "2", "results/tables/all.csv", "--configfile", "tiny.yaml", "--forcerun", "infer"],
                     wd)
    assert proc.returncode != 0
    logs = "\n".join(p.read_text() for p in (wd / "results/logs/infer").rglob("*.log"))
    assert STORE in logs and "Rebuild it:" in logs and "MD5" in logs
    # the failed jobs' outputs are gone; a job Snakemake never started keeps its old file: none was rewritten
    for p in (wd / "results/tiny/predictions").rglob("*.h5"):
        assert before.get(p) == p.stat().st_mtime_ns, p
    (wd / STORE).unlink()
    proc = snakemake(["--cores", "2", "results/tables/all.csv", "--configfile", "tiny.yaml"], wd)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ------------------------------------------------------------------------------------------ 3. disk full


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture()
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "64k"):
        pytest.skip("needs root to mount a tmpfs")
    yield mnt
    _umount(mnt)


def _fill(mnt: Path, leave: int) -> Path:
    """Fill the filesystem until ``leave`` bytes are free."""
    filler = mnt / "filler"
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    with open(filler, "wb") as fh:
        try:
            fh.write(b"\0" * max(0, free - leave))
        except OSError:
            pass
    return filler


def _no_partial(mnt: Path, names: list[str]) -> None:
    left = [p.name for p in mnt.rglob("*") if ".tmp-" in p.name or p.name in names]
    assert not left, left


def _proc(wd: Path, argv: list[str]) -> tuple[int, str]:
    """`medkd <argv>` as its own process, as a job runs (HDF5 keeps no state across a failed write)."""
    p = subprocess.run([str(VENV_BIN / "python"), "-m", "medkd", *argv], cwd=wd, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(wd / "src")}, timeout=900)
    return p.returncode, p.stderr


def test_disk_full_convert_train_cache_fail_clean_then_complete(wd, small_fs):
    mnt = small_fs
    # convert: the slice store does not fit in 64 KiB
    c = json.dumps({"format": "msd", "size": [32, 32], "normalise": "zscore", "axis": 2, "min_foreground": 0.05})
    argv = ["convert", "--dataset", "embedded", "--convert-spec", c, "--src", "data/embedded",
            "--out", str(mnt / "embedded.h5"), "--fingerprint", str(mnt / "embedded.json")]
    code, text = _proc(wd, argv)
    # HDF5 can crash (SIGSEGV) when one of its writes fails with ENOSPC; medkd.io.h5_dataset checks the
    # free space first, so the job ends with its own message and exit 2, never -11
    assert code == 2 and "no space left on device" in text.lower(), text
    assert not (mnt / "embedded.h5").exists() and not (mnt / "embedded.json").exists()
    # train: the checkpoints do not fit
    filler = _fill(mnt, 8 * 1024)
    out = mnt / "teacher"
    targv = ["train", "--spec", _spec(wd, "teacher"), "--seed", "0", "--store", STORE, "--split", SPLIT,
             "--out", str(out), "--device", "cpu"]
    code, text = _proc(wd, targv)
    assert code == 2 and "no space left on device" in text.lower(), text
    assert not (out / "model.pt").exists() and not (out / "summary.json").exists()
    _no_partial(mnt, ["embedded.h5", "embedded.json", "cache.h5"])
    # cache: the teacher cache does not fit
    cargv = ["cache", "--teacher-dir", TEACHER, "--store", STORE, "--split", SPLIT, "--out", str(mnt / "cache.h5"),
             "--device", "cpu"]
    code, text = _proc(wd, cargv)
    assert code == 2 and "no space left on device" in text.lower(), text
    assert not (mnt / "cache.h5").exists()
    # space freed: the same commands complete, and training equals the uninterrupted run
    filler.unlink()
    subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
    for argv_ in (argv, targv, cargv):
        code, text = _proc(wd, argv_)
        assert code == 0, text
    assert (out / "model.pt").read_bytes() == (wd / TEACHER / "model.pt").read_bytes()
    _no_partial(mnt, [])


def test_disk_full_under_snakemake_then_complete(tiny_workflow, tmp_path):
    """results/ on a full filesystem: the run stops with a clear message in the job log and exit != 0;
    after space is freed the same command completes."""
    wd = _clone(tiny_workflow, tmp_path / "wd")
    shutil.rmtree(wd / "results")
    shutil.rmtree(wd / ".snakemake")
    if not _mount_tmpfs(wd / "results", "64k"):
        pytest.skip("needs root to mount a tmpfs")
    try:
        proc = snakemake(["--cores", "2", "results/tables/all.csv", "--configfile", "tiny.yaml"], wd)
        assert proc.returncode != 0
        log = (wd / "results/logs/convert/embedded.log").read_text()
        assert "no space left on device" in log.lower(), log[-2000:]
        assert not (wd / STORE).exists()
        subprocess.run(["mount", "-o", "remount,size=256m", str(wd / "results")], check=True)
        proc = snakemake(["--cores", "2", "results/tables/all.csv", "--configfile", "tiny.yaml"], wd)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (wd / "results/tables/all.csv").exists()
        assert not gauntlet.temporaries(wd)
    finally:
        _umount(wd / "results")


# ------------------------------------------------------------------------------------------ 5. concurrency


def test_second_snakemake_is_refused_while_one_runs(wd):
    """Two invocations on one results/: the second is refused by Snakemake's lock and the first completes.
    The first re-trains every model, so it still holds the lock when the second checks it (a first run that
    ends while the second reads the lock files makes Snakemake's own check fail with FileNotFoundError)."""
    env = gauntlet.env()
    cmd = gauntlet.command("tiny.yaml") + ["--forcerun", "train"]
    first = subprocess.Popen(cmd, cwd=wd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((wd / ".snakemake/locks").glob("*.lock")):
            time.sleep(0.05)
        assert list((wd / ".snakemake/locks").glob("*.lock")), "the first run never took the lock"
        second = snakemake(["--cores", "2", "results/tables/all.csv", "--configfile", "tiny.yaml"], wd)
        assert second.returncode != 0
        assert "cannot be locked" in second.stdout + second.stderr
    finally:
        _, err = first.communicate(timeout=900)
    assert first.returncode == 0, err[-3000:]


def test_a_killed_snakemakes_lock_is_left_to_snakemake(wd):
    """medkd never touches Snakemake's locks: the lock of a Snakemake killed with SIGKILL refuses the next run
    with Snakemake's own message (which names --unlock), also while a job parses the Snakefile; `snakemake
    --unlock` clears it and the run completes."""
    env = gauntlet.env()
    first = subprocess.Popen(gauntlet.command("tiny.yaml") + ["--forcerun", "train"], cwd=wd, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((wd / ".snakemake/locks").glob("*.lock")):
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    gauntlet.wait_quiet(wd, 60)
    locks = sorted(p.name for p in (wd / ".snakemake/locks").glob("*.lock"))
    assert locks, "the killed run left no lock"
    refused = snakemake(["--cores", "1", "results/tables/all.csv", "--configfile", "tiny.yaml", "--forcerun", "collect"], wd)
    assert refused.returncode != 0 and "cannot be locked" in refused.stdout + refused.stderr
    assert "--unlock" in refused.stdout + refused.stderr
    # a parse of the Snakefile (what every cluster job does) leaves the lock alone
    parse = snakemake(["-n", "results/tables/all.csv", "--configfile", "tiny.yaml"], wd)
    assert parse.returncode == 0, parse.stderr[-2000:]
    assert sorted(p.name for p in (wd / ".snakemake/locks").glob("*.lock")) == locks
    unlock = snakemake(["--unlock", "results/tables/all.csv", "--configfile", "tiny.yaml"], wd)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    done = snakemake(["--cores", "2", "results/tables/all.csv", "--configfile", "tiny.yaml"], wd)
    assert done.returncode == 0, done.stderr[-3000:]


def test_reading_mlflow_while_track_writes_does_not_corrupt(wd):
    """`make ui` reads results/mlflow.db while the track rule writes it: readers see consistent data (or wait),
    the store passes SQLite's integrity check and holds every run afterwards."""
    (wd / "results/mlflow.db").unlink()
    (wd / "results/mlflow/runs/tiny.json").unlink()
    shutil.rmtree(wd / "results/mlflow/artifacts", ignore_errors=True)
    db = wd / "results/mlflow.db"
    stop, seen, errors = threading.Event(), [], []

    def reader():
        while not stop.is_set():
            if db.exists():
                try:
                    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
                        seen.append(con.execute("select count(*) from runs").fetchone()[0])
                except sqlite3.OperationalError as exc:
                    if "no such table" not in str(exc) and "locked" not in str(exc):
                        errors.append(str(exc))
            time.sleep(0.01)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        proc = snakemake(["--cores", "1", "results/mlflow/runs/tiny.json", "--configfile", "tiny.yaml", "--forcerun",
                          "track"], wd)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not errors, errors[:3]
    assert seen, "the readers never saw the store"
    with sqlite3.connect(db) as con:
        assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
        # 3 models x 1 seed: a parent run per model and a child run per seed
        assert con.execute("select count(*) from runs where lifecycle_stage = 'active'").fetchone()[0] == 6
