"""DVC beyond the embedded data: one .dvc file per dataset folder, `make data-push` / `make data-pull` with the
remote named once (.dvc/config), here redirected to a local directory. One clone adds and pushes a dataset, a
second clone pulls it, and `dvc status` is clean."""

from __future__ import annotations

import filecmp
import os

from wfhelpers import REPO, VENV_BIN, copy_repo, run


def git(args, cwd):
    proc = run(["git", "-c", "user.name=medkd-test", "-c", "user.email=test@localhost", *args], cwd)
    assert proc.returncode == 0, proc.stderr
    return proc


def make(args, cwd):
    proc = run(["make", "--no-print-directory", *args], cwd, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_remote_is_named_in_one_place():
    config = (REPO / ".dvc" / "config").read_text()
    assert "remote = medkd-store" in config and "['remote \"medkd-store\"']" in config
    assert "medkd-store" not in (REPO / "Makefile").read_text().split("data-add:")[1]  # targets use the default


def test_one_clone_pushes_a_dataset_and_another_pulls_it(tmp_path):
    from medkd.data.embedded import generate_embedded

    store = tmp_path / "store"
    a = copy_repo(tmp_path / "a")
    generate_embedded(a / "datasets" / "mine", n_cases=3, seed=5, resolution_mm=6.0, lesion=False)
    make(["data-add", "DIR=datasets/mine"], a)
    assert (a / "datasets" / "mine.dvc").is_file()
    git(["add", "datasets/mine.dvc", "datasets/.gitignore"], a)
    git(["commit", "-qm", "data: add mine"], a)
    dvc = str(VENV_BIN / "dvc")
    assert run([dvc, "remote", "modify", "--local", "medkd-store", "url", str(store)], a).returncode == 0
    make(["data-push", "DVC_TARGETS=datasets/mine.dvc"], a)
    assert any(store.rglob("*")), "nothing was pushed"

    b = tmp_path / "b"
    git(["clone", "-q", str(a), str(b)], tmp_path)
    os.symlink(REPO / ".venv", b / ".venv")
    assert not (b / "datasets" / "mine").exists()
    assert run([dvc, "remote", "modify", "--local", "medkd-store", "url", str(store)], b).returncode == 0
    make(["data-pull", "DVC_TARGETS=datasets/mine.dvc"], b)
    cmp = filecmp.dircmp(a / "datasets" / "mine", b / "datasets" / "mine")
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    assert (b / "datasets" / "mine" / "dataset.json").read_bytes() == (a / "datasets" / "mine" / "dataset.json").read_bytes()
    status = run([dvc, "status", "datasets/mine.dvc"], b)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    cloud = run([dvc, "status", "--cloud", "datasets/mine.dvc"], b)
    assert cloud.returncode == 0 and "in sync" in cloud.stdout, cloud.stdout + cloud.stderr
