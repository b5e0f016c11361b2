"""The tiny config end to end through a real single-node SLURM (scripts/slurm-test-cluster) with the project's
SLURM profiles (site profile profiles/slurm-local + workflow profile profiles/slurm).

Checked: every cluster job went through sbatch (its SLURM log exists, the scheduler's job-completion record too,
SLURM_JOB_ID is in the job's own log), train/cache/infer asked for and got the GPU partition and a (fake) GPU,
every job saw the client's config (same digest, no merge with config/config.yaml), and all.csv equals the local
run's to 1e-6. A second run is interrupted (SIGINT to the Snakemake client while a training job runs) and started
again: it finishes with the same numbers.

Needs root and the Debian packages slurmctld, slurmd, slurm-client and munge (.ci/run installs them with
`scripts/slurm-test-cluster install`); skipped with the reason otherwise. The daemons are stopped by their PIDs
when the module ends, also after a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from wfhelpers import REPO, VENV_BIN, copy_repo

pytestmark = pytest.mark.slow

CLUSTER = REPO / "scripts" / "slurm-test-cluster"
REMOTE_RULES = {"convert": 1, "train": 3, "cache": 1, "infer": 3, "evaluate": 3}  # tiny.yaml's cluster jobs
GPU_RULES = {"train", "cache", "infer"}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node cluster; yields the environment that points clients at it."""
    if os.geteuid() != 0:
        pytest.skip("SLURM test needs root (slurmd runs the jobs)")
    scratch = tmp_path_factory.mktemp("slurm")
    start = subprocess.run([str(CLUSTER), "start", str(scratch)], capture_output=True, text=True, timeout=300)
    try:
        if start.returncode == 3:
            pytest.skip(f"no SLURM here: {start.stderr.strip()}; .ci/run installs it")
        assert start.returncode == 0, start.stdout + start.stderr
        env = {**os.environ, "SLURM_CONF": str(scratch / "slurm.conf"),
               "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               "DVC_NO_ANALYTICS": "1", "MPLBACKEND": "Agg"}
        env.pop("SLURM_JOB_ID", None)
        yield {"env": env, "scratch": scratch}
    finally:
        subprocess.run([str(CLUSTER), "stop", str(scratch)], capture_output=True, timeout=120)
        for name in ("slurmd", "slurmctld", "munged"):  # stop removed every PID file it handled
            assert not (scratch / f"{name}.pid").exists(), name


def _command(config: str) -> list[str]:
    return [str(VENV_BIN / "snakemake"), "results/tables/all.csv", "--verbose",
            "--profile", "profiles/slurm-local", "--workflow-profile", "profiles/slurm",
            "--configfile", config, "--config", "device=auto"]


def _copy(tmp_path: Path) -> Path:
    wd = copy_repo(tmp_path / "repo")
    shutil.copy(wd / "tests" / "integration" / "tiny.yaml", wd / "tiny.yaml")
    return wd


def _failure(proc_out: str, wd: Path) -> str:
    logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted((wd / ".snakemake").rglob("slurm_logs/**/*.log")))
    return f"{proc_out[-8000:]}\n{logs[-8000:]}"


def _sbatch_calls(text: str) -> dict[str, list[str]]:
    """rule -> the sbatch command lines the plugin logged (--verbose)."""
    calls: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "sbatch call:" in line:
            call = line.split("sbatch call:", 1)[1].strip()
            rule = re.search(r"--comment '?rule_([A-Za-z0-9_]+?)(?:_wildcards_[^' ]*)?'?(?:\s|$)", call).group(1)
            calls.setdefault(rule, []).append(call)
    return calls


def _means(path: Path) -> pd.Series:
    df = pd.read_csv(path)
    df = df[~df["metric"].astype(str).str.contains("latency")]  # wall-clock rows differ between any two runs
    return df.set_index(["experiment", "model", "class", "metric", "convention"])["mean"].sort_index()


def _assert_same_numbers(local: Path, slurm: Path) -> int:
    a, b = _means(local), _means(slurm)
    assert list(a.index) == list(b.index)
    diff = (a - b).abs()
    assert ((diff <= 1e-6) | (a.isna() & b.isna())).all(), diff[diff > 1e-6]
    return len(a)


def test_tiny_config_through_slurm(slurm, tmp_path, request):
    tiny_workflow = request.getfixturevalue("tiny_workflow")  # the local run, after the cluster (skip early)
    wd = _copy(tmp_path)
    t0 = time.monotonic()
    # The client's lock: its jobs re-parse the Snakefile on the node, and none may touch it. The client runs in
    # its own PID namespace where unshare(1) allows (as if on a login node: its pid means nothing to the jobs).
    lock_seen, stop = [], threading.Event()

    def watch_locks():
        while not stop.is_set():
            lock_seen.append(sorted(p.name for p in (wd / ".snakemake" / "locks").glob("*.lock")))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_locks, daemon=True)
    watcher.start()
    unshare = ["unshare", "--pid", "--fork", "--mount-proc"] if shutil.which("unshare") else []
    if unshare and subprocess.run([*unshare, "true"], capture_output=True).returncode != 0:
        unshare = []
    proc = subprocess.run([*unshare, *_command("tiny.yaml")], cwd=wd, env=slurm["env"], capture_output=True,
                          text=True, timeout=1800, stdin=subprocess.DEVNULL)
    stop.set()
    watcher.join(timeout=5)
    seconds = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, _failure(out, wd)
    print(f"tiny config through SLURM: {seconds:.0f} s (client in its own PID namespace: {bool(unshare)})")
    held = [i for i, names in enumerate(lock_seen) if names]
    assert held, "the client never held its lock"
    # from the first sighting to the last, the lock never vanished and never changed: no job removed it
    assert all(lock_seen[i] == lock_seen[held[0]] for i in range(held[0], held[-1] + 1)), lock_seen
    assert "stale lock" not in out

    # every cluster job went through sbatch: the plugin's call, the SLURM log, the scheduler's completion record
    calls = _sbatch_calls(out)
    assert {r: len(c) for r, c in calls.items()} == REMOTE_RULES
    for rule, rule_calls in calls.items():
        for call in rule_calls:
            if rule in GPU_RULES:
                assert " -p gpu" in call and "--gpus=1" in call, call
            else:
                assert " -p cpu" in call and "--gpus" not in call, call
            assert "-A medkdtest" in call and "--cpus-per-task=1" in call and " -t " in call and "--mem " in call
    print("sbatch call of a train job:", calls["train"][0])
    slurm_logs = sorted((wd / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(slurm_logs) == sum(REMOTE_RULES.values())
    job_ids = {p.stem for p in slurm_logs}
    assert len(job_ids) == len(slurm_logs)
    jobcomp = (slurm["scratch"] / "log" / "jobcomp.txt").read_text().splitlines()
    completed = {re.search(r"JobId=(\d+)", line).group(1): line for line in jobcomp}
    for job_id in job_ids:
        assert "JobState=COMPLETED" in completed[job_id], completed.get(job_id)

    # in each job: its SLURM_JOB_ID and, for the network rules, the GPU partition and the fake GPU
    for rule, n in REMOTE_RULES.items():
        logs = sorted((wd / "results" / "logs" / rule).rglob("*.log"))
        assert len(logs) == n, rule
        for log in logs:
            text = log.read_text()
            m = re.search(r"SLURM_JOB_ID=(\d+) partition=(\w+) cpus=(\d+) gpus=(\S+) CUDA_VISIBLE_DEVICES=(\S+)", text)
            assert m, (log, text[-1500:])
            assert m.group(1) in job_ids
            if rule in GPU_RULES:
                assert (m.group(2), m.group(4), m.group(5)) == ("gpu", "1", "0"), m.group(0)
            else:
                assert m.group(2) == "cpu", m.group(0)
    env_ids = {(p / "env.json").read_text().split('"slurm_job_id": "')[1].split('"')[0]
               for p in (wd / "results" / "tiny" / "models").glob("*/seed0")}
    assert len(env_ids) == 3 and env_ids <= job_ids

    # jobs saw the client's config: the same digest, nothing merged from config/config.yaml
    client = re.search(r"medkd config (\w+) \(client", out).group(1)
    for log in slurm_logs:
        text = log.read_text()
        assert f"medkd config {client} (job)" in text, text[-2000:]
        assert "is extended by" not in text and "config/config.yaml" not in text

    n = _assert_same_numbers(tiny_workflow / "results" / "tables" / "all.csv", wd / "results" / "tables" / "all.csv")
    assert n > 20


def test_interrupted_client_restarts_with_the_same_numbers(slurm, tmp_path, request):
    tiny_workflow = request.getfixturevalue("tiny_workflow")
    wd = _copy(tmp_path)
    env = slurm["env"]
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        first = subprocess.Popen(_command("tiny.yaml"), cwd=wd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 600
            running = None
            while time.monotonic() < deadline and first.poll() is None:  # wait for a running training job
                q = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %k"], env=env, capture_output=True,
                                   text=True)
                running = next((ln.split()[0] for ln in q.stdout.splitlines() if "rule_train" in ln), None)
                if running:
                    break
                time.sleep(1)
            assert running, log_path.read_text()[-4000:]
            first.send_signal(signal.SIGINT)
            rc = first.wait(timeout=180)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    text = log_path.read_text()
    assert rc != 0, text[-3000:]
    assert not (wd / "results" / "tables" / "all.csv").exists()
    # the interrupted job was cancelled in SLURM, not left running
    for _ in range(30):
        state = subprocess.run(["squeue", "-h", "-t", "all", "-j", running, "-o", "%T"], env=env,
                               capture_output=True, text=True).stdout.strip()
        if state and state not in ("RUNNING", "COMPLETING", "PENDING"):
            break
        time.sleep(1)
    assert state in ("CANCELLED", "COMPLETED", "FAILED"), state

    second = subprocess.run(_command("tiny.yaml"), cwd=wd, env=env, capture_output=True, text=True, timeout=1800,
                            stdin=subprocess.DEVNULL)
    out = second.stdout + second.stderr
    assert second.returncode == 0, _failure(out, wd)
    assert "rule_train" in out  # the interrupted training was submitted again
    _assert_same_numbers(tiny_workflow / "results" / "tables" / "all.csv", wd / "results" / "tables" / "all.csv")


# One paper experiment of each of the five papers, rehearsed through SLURM (config/rehearsal.yaml over
# config/paper.yaml): stand-in data in the real layouts, every model at its paper size, image shape and batch
# size, one optimisation step. The cheapest experiment of each paper (results/rehearsal/resources.csv).
REHEARSED = ("kdmri_acdc_4x", "mtms_spleen_honest", "pcd_busi_honest", "teachformer_hecktor", "brats_kd")


def test_paper_rehearsal_of_each_paper_through_slurm(slurm, tmp_path):
    from medkd import rehearsal

    wd = copy_repo(tmp_path / "repo")
    targets = [f"results/tables/{e}.csv" for e in REHEARSED]
    cmd = [str(VENV_BIN / "snakemake"), *targets, "--verbose", "--profile", "profiles/slurm-local",
           "--workflow-profile", "profiles/slurm", "--configfile", "config/paper.yaml", "config/rehearsal.yaml"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=wd, env=slurm["env"], capture_output=True, text=True, timeout=3600,
                          stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, _failure(out, wd)
    calls = _sbatch_calls(out)
    rows = rehearsal.collect(wd)
    per_rule = {}
    for r in rows:
        per_rule[r["rule"]] = per_rule.get(r["rule"], 0) + 1
    print(f"rehearsal of {', '.join(REHEARSED)} through SLURM: {seconds / 60:.1f} min, "
          f"{sum(len(c) for c in calls.values())} sbatch jobs; jobs per rule {per_rule}")
    # every network job went through sbatch to the GPU partition, and each experiment trained all its models
    for rule in ("train", "infer", "evaluate", "convert"):
        assert len(calls.get(rule, [])) == per_rule.get(rule), (rule, per_rule)
    for call in calls["train"] + calls["infer"]:
        assert " -p gpu" in call and "--gpus=1" in call, call
    from medkd.config import load_config

    cfg = load_config(str(wd / "config" / "paper.yaml"))
    for exp in REHEARSED:
        trained = {r["model"] for r in rows if r["rule"] == "train" and r["experiment"] == exp}
        assert trained == set(cfg["experiments"][exp]["models"]), exp
        table = (wd / "results" / "tables" / f"{exp}.md").read_text()
        assert "REHEARSAL on stand-in data" in table.splitlines()[0], table[:300]
        verdicts = pd.read_csv(wd / "results" / "tables" / f"{exp}_verdicts.csv")
        assert verdicts.empty or verdicts["verdict"].str.startswith("rehearsal").all(), verdicts["verdict"]
        fingerprint = (wd / "results" / "slices" / f"{cfg['experiments'][exp]['dataset']}.json").read_text()
        assert '"standin": true' in fingerprint
    # the largest jobs at full shape: a train step of every rehearsed model was measured
    assert all(r["step_s"] and r["step_s"] > 0 for r in rows if r["rule"] == "train" and r["steps"])
