"""Foundation guarantees beyond the main run: resume after a kill, DVC-matched embedded data, lint,
and the SLURM profile's plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from wfhelpers import REPO, VENV_BIN, copy_repo, run, snakemake

pytestmark = pytest.mark.slow


def test_killed_training_resumes_from_last_checkpoint(tiny_workflow, tmp_path):
    """Kill `medkd train` mid-run (SIGKILL), re-run the same command: it resumes, no epoch is lost or
    repeated, and the result is complete."""
    wd = tiny_workflow
    spec = json.loads(run([str(VENV_BIN / "python"), "-m", "medkd", "spec", "--config", "tiny.yaml",
                           "--experiment", "tiny", "--model", "teacher"], wd).stdout)
    spec["train"]["epochs"] = 40
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    out = tmp_path / "teacher"
    cmd = [str(VENV_BIN / "python"), "-m", "medkd", "train", "--spec-file", str(spec_file), "--seed", "0",
           "--store", str(wd / "results/slices/embedded.h5"), "--split", str(wd / "results/splits/tiny.json"),
           "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=wd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "epochs.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = len(log.read_text().splitlines())
    assert 3 <= done_before < 40, done_before
    assert not (out / "summary.json").exists()

    second = run(cmd, wd, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr
    resumed_at = int(second.stderr.split("resumed from")[1].split("at epoch")[1].split()[0])
    assert resumed_at >= done_before - 1  # the kill may land between the log line and the checkpoint
    epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    assert epochs == list(range(40))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 40 and (out / "model.pt").exists()


def test_embedded_data_matches_committed_dvc_file(tmp_path):
    """Generating the default embedded dataset reproduces exactly what data.dvc records: on a fresh clone
    (no DVC cache) `dvc status` reports no modification, and `dvc add data` leaves data.dvc unchanged."""
    wd = copy_repo(tmp_path / "repo")
    assert not (wd / ".dvc" / "cache").exists()
    committed = (wd / "data.dvc").read_text()
    cfg = yaml.safe_load((wd / "config/config.yaml").read_text())
    spec = json.dumps(cfg["datasets"]["embedded"])
    gen = run([str(VENV_BIN / "python"), "-m", "medkd", "fetch", "--dataset", "embedded", "--dataset-spec", spec,
               "--out", "data/embedded"], wd, timeout=600)
    assert gen.returncode == 0, gen.stderr[-3000:]
    status = run([str(VENV_BIN / "dvc"), "status", "data.dvc"], wd)
    assert status.returncode == 0, status.stderr
    assert "modified" not in status.stdout, status.stdout  # only "not in cache" on a fresh clone
    cached = run(["scripts/dvc-cache-workspace"], wd)  # what make data-status / data-push run first
    assert cached.returncode == 0 and "data.dvc: cached" in cached.stdout, cached.stdout + cached.stderr
    status = run([str(VENV_BIN / "dvc"), "status", "data.dvc"], wd)
    assert "up to date" in status.stdout, status.stdout
    added = run([str(VENV_BIN / "dvc"), "add", "data"], wd)
    assert added.returncode == 0, added.stderr
    assert (wd / "data.dvc").read_text() == committed
    status = run([str(VENV_BIN / "dvc"), "status", "data.dvc"], wd)
    assert "up to date" in status.stdout, status.stdout
    (wd / "data/embedded/imagesTr/emb_000.nii.gz").write_bytes(b"other data")  # new data is not cached silently
    refused = run(["scripts/dvc-cache-workspace"], wd)
    assert refused.returncode != 0 and "differs from what the .dvc files record" in refused.stderr, refused.stderr
    assert (wd / "data.dvc").read_text() == committed


def test_lint_is_clean():
    """`snakemake --lint` (what `make lint` runs) exits 0 with no lint at all: no accepted exceptions."""
    proc = snakemake(["--lint"], REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "Congratulations, your workflow is in a good condition!" in out, out[-5000:]
    assert "Lints for" not in out, out[-5000:]


def test_slurm_profile_plans_gpu_training(tmp_path):
    """Through the site template and the workflow profile, network jobs ask for a GPU unless the config's device
    is cpu; sizes come from the config."""
    wd = copy_repo(tmp_path / "repo")
    profiles = ["--profile", "profiles/site-slurm", "--workflow-profile", "profiles/slurm"]
    for device, gpu in (("auto", "gpu=1"), ("cpu", "gpu=0")):
        proc = snakemake(["-n", "results/tables/all.csv", *profiles, "--config", f"device={device}"], wd, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = proc.stdout + proc.stderr
        train_blocks = [b for b in out.split("rule ")[1:] if b.startswith("train:")]
        assert train_blocks and all(gpu in b and "runtime=720" in b for b in train_blocks), device
        fetch_blocks = [b for b in out.split("rule ")[1:] if b.startswith("fetch:")]
        assert fetch_blocks and "gpu=" not in fetch_blocks[0]
        assert "slurm_account=your_account" in out
    # a dry run does not mark local rules; the Snakefile declares them
    local = (REPO / "Snakefile").read_text().split("localrules:")[1].split("rule all")[0]
    for rule in ("fetch", "tables", "track", "collect"):
        assert f"    {rule}," in local


def test_mlflow_ui_serves_the_runs(tiny_workflow):
    """`make ui`'s command serves the tracked runs over HTTP (started on a free port, then stopped)."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tiny_workflow / "results" / "mlflow.db"
    proc = subprocess.Popen([str(VENV_BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{db}",
                             "--host", "127.0.0.1", "--port", str(port)], cwd=tiny_workflow,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        body, deadline = None, time.time() + 120
        while time.time() < deadline and body is None:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
                                             data=b'{"max_results": 10}', headers={"Content-Type": "application/json"})
                body = json.loads(urllib.request.urlopen(req, timeout=5).read())
            except OSError:
                time.sleep(1)
        assert body is not None, "mlflow ui did not answer within 120 s"
        names = {e["name"] for e in body["experiments"]}
        assert "medkd-test/tiny" in names
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_run_settings_rerun_nothing(tiny_workflow):
    """Moving the finished tiny run to another device, thread count or memory layout plans no job: run settings
    are neither in the spec nor in a param Snakemake compares."""
    same = snakemake(["-n", "results/tables/all.csv", "--configfile", "tiny.yaml", "--config", "device=cuda",
                      "threads=2", "channels_last=True", "cudnn_benchmark=True"], tiny_workflow, timeout=300)
    assert same.returncode == 0, same.stderr[-3000:]
    assert "Nothing to be done" in same.stdout + same.stderr, same.stdout[-3000:]


def test_tiny_config_runs_with_the_snakefile_elsewhere(tmp_path):
    """A lab keeps results on scratch: `snakemake -s <repo>/Snakefile --directory <scratch>` from a third
    directory runs the tiny config (the default target: tables and report pages) and writes nothing but
    <scratch>."""
    scratch, elsewhere = tmp_path / "scratch" / "run1", tmp_path / "elsewhere"
    scratch.mkdir(parents=True)
    elsewhere.mkdir()
    (scratch / "tiny.yaml").write_text((REPO / "tests" / "integration" / "tiny.yaml").read_text())
    proc = run([str(VENV_BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(scratch), "--cores",
                "2", "all", "--configfile", str(scratch / "tiny.yaml")], elsewhere, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for target in ("results/tables/all.csv", "results/tables/reproduced.md", "results/report/overview.html",
                   "results/report/paper_numbers.html", "results/tiny/models/student_kd/seed0/model.pt",
                   "data/embedded/dataset.json"):
        assert (scratch / target).is_file(), target
    assert not any(elsewhere.iterdir())
