"""Fault-injection gauntlet: kill anywhere, re-run the same command, get the same numbers.

One uninterrupted reference run of ``tests/faults/faults.yaml`` (every stage: fetch, convert, split,
undersample, train, cache, infer, evaluate, tables, track, collect), then N seeded trials. A trial copies
the reference working directory, deletes the outputs of its stage and what depends on them (Snakemake
does not regenerate a missing intermediate whose consumers are up to date; ``fetch`` trials start from
nothing), starts ``snakemake``, waits until a
job of the stage is running, waits a seeded random delay (up to the stage's reference duration) and
sends SIGKILL to one of:

* ``job``: the process doing the work (in the fork server, or the direct interpreter);
* ``client``: the job's fork-server client (what Snakemake runs); the server must kill the job too (these
  trials set ``MEDKD_FORKSERVER_WAIT`` so every job runs in the server);
* ``snakemake``: the Snakemake process itself (its lock is stale afterwards; its jobs must not outlive it).

Then it re-runs the same command and checks: it completes; ``all.csv``'s numbers (all columns but run
ids, commit and the measured latency), every ``model.pt`` (bytes) and every prediction and cache file
(arrays and attributes, latency aside) equal the reference; no temporary file is left; the re-run ran
exactly the jobs that were not finished (planned before the kill minus those Snakemake finished).

    python tests/faults/gauntlet.py --trials 22 --seed 0 [--workdir DIR] [--keep]

Prints one row per trial (stage, moment, target, outcome, identical) and exits 1 if any trial failed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from wfhelpers import VENV_BIN, copy_repo, planned_jobs  # noqa: E402

STAGES = ["fetch", "convert", "split", "undersample", "train", "cache", "infer", "evaluate", "tables", "track",
          "collect"]
TARGETS = ["job", "client", "snakemake"]
CONFIG = "faults.yaml"
TARGET_FILE = "results/tables/all.csv"
# What a trial of each stage deletes before it starts: the stage's outputs and everything downstream of
# them (Snakemake does not regenerate a missing intermediate file whose consumers are up to date).
_TABLES = ["results/tables", "results/figures", "results/mlflow", "results/mlflow.db"]
_AFTER_TRAIN = ["results/*/models", "results/*/cache", "results/*/predictions", "results/*/metrics", *_TABLES]
STAGE_OUTPUTS = {
    "fetch": ["data", "results"],
    "convert": ["results/slices", "results/kspace", "results/splits", *_AFTER_TRAIN],
    "split": ["results/splits/recon.json", "results/recon", *_TABLES],
    "undersample": ["results/kspace", "results/recon", *_TABLES],
    "train": ["results/tiny/models/student_kd", "results/tiny/predictions/student_kd", "results/tiny/metrics/student_kd",
              "results/recon/models", "results/recon/predictions", "results/recon/metrics", *_TABLES],
    "cache": ["results/*/cache", "results/tiny/models/student_kd", "results/tiny/predictions/student_kd",
              "results/tiny/metrics/student_kd", *_TABLES],
    "infer": ["results/*/predictions", "results/*/metrics", *_TABLES],
    "evaluate": ["results/*/metrics", *_TABLES],
    "tables": _TABLES,
    "track": ["results/mlflow", "results/mlflow.db", "results/tables/all.csv", "results/tables/health.md"],
    "collect": ["results/tables/all.csv", "results/tables/health.md"],
}
IGNORED_COLUMNS = ("mlflow_run_ids", "git_commit")


def env(forkserver_wait: float = 0) -> dict:
    e = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
         "MPLBACKEND": "Agg"}
    if forkserver_wait:  # every job runs in the fork server, so a client can be killed
        e["MEDKD_FORKSERVER_WAIT"] = str(forkserver_wait)
    return e


def command(config: str = CONFIG) -> list[str]:
    return [str(VENV_BIN / "snakemake"), "--cores", "2", TARGET_FILE, "--configfile", config]


# ------------------------------------------------------------------------------------------ processes


def _read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def processes(cwd: Path) -> list[dict]:
    """Processes whose working directory is ``cwd``: pid, comm, argv."""
    out, cwd = [], str(cwd.resolve())
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/cwd") != cwd:
                continue
        except OSError:
            continue
        argv = _read(f"/proc/{entry.name}/cmdline").split("\0")
        out.append({"pid": int(entry.name), "comm": _read(f"/proc/{entry.name}/comm").strip(), "argv": argv})
    return out


def find_step(cwd: Path, step: str) -> tuple[int | None, int | None]:
    """(job pid, client pid) of a running ``medkd <step>``: the job is the fork-server child named
    ``medkd:<step>`` or a direct ``python -m medkd <step>``; the client is ``medkd.forkserver run ... -- step``."""
    job = client = None
    for p in processes(cwd):
        argv = p["argv"]
        if p["comm"] == f"medkd:{step}"[:15]:
            job = p["pid"]
        elif "medkd.forkserver" in argv and "run" in argv and "--" in argv:
            if argv[argv.index("--") + 1:argv.index("--") + 2] == [step]:
                client = p["pid"]
        elif "medkd" in argv and argv[argv.index("medkd") + 1:argv.index("medkd") + 2] == [step] and "-m" in argv:
            job = p["pid"]
    return job, client


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose
    return "zombie" not in _read(f"/proc/{pid}/status").split("State:")[-1][:20]


def wait_gone(pid: int, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not alive(pid):
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def wait_quiet(cwd: Path, timeout: float) -> list[dict]:
    """Wait until no process runs in ``cwd``; SIGKILL what is left after ``timeout`` and return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = processes(cwd)
        if not left:
            return []
        time.sleep(0.1)
    left = processes(cwd)
    for p in left:
        try:
            os.kill(p["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


# ------------------------------------------------------------------------------------------ comparison


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def h5_content(path: Path) -> str:
    """Hash of every dataset and attribute of an HDF5 file, measured timings aside."""
    import h5py
    import numpy as np

    h = hashlib.sha256()
    with h5py.File(path, "r") as fh:
        for k in sorted(fh.attrs):
            if k not in ("latency_ms_per_slice",):
                h.update(f"{k}={fh.attrs[k]!r}".encode())

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                h.update(name.encode())
                h.update(np.ascontiguousarray(obj[()]).tobytes())
            for k in sorted(obj.attrs):
                h.update(f"{name}@{k}={obj.attrs[k]!r}".encode())

        fh.visititems(visit)
    return h.hexdigest()


def all_csv_numbers(path: Path):
    import pandas as pd

    df = pd.read_csv(path)
    df = df.drop(columns=[c for c in IGNORED_COLUMNS if c in df.columns])
    df = df[df["convention"] != "cost"]  # measured inference latency: a timing, not a result
    return df.reset_index(drop=True)


def fingerprint(wd: Path) -> dict:
    out = {"models": {}, "predictions": {}, "caches": {}}
    for p in sorted(wd.glob("results/*/models/*/seed*/model.pt")):
        out["models"][str(p.relative_to(wd))] = sha(p)
    for p in sorted(wd.glob("results/*/predictions/*/seed*.h5")):
        out["predictions"][str(p.relative_to(wd))] = h5_content(p)
    for p in sorted(wd.glob("results/*/cache/*/seed*.h5")):
        out["caches"][str(p.relative_to(wd))] = h5_content(p)
    return out


def compare(ref: Path, wd: Path, ref_print: dict) -> list[str]:
    """Differences between a trial's outputs and the reference (empty: identical)."""
    problems = []
    a, b = all_csv_numbers(ref / TARGET_FILE), all_csv_numbers(wd / TARGET_FILE)
    if not a.equals(b):
        try:
            import pandas as pd

            pd.testing.assert_frame_equal(a, b, check_exact=True)
        except AssertionError as exc:
            problems.append(f"all.csv differs: {str(exc).splitlines()[0:3]}")
    got = fingerprint(wd)
    for kind in ("models", "predictions", "caches"):
        if got[kind] != ref_print[kind]:
            diff = sorted(k for k in set(got[kind]) | set(ref_print[kind])
                          if got[kind].get(k) != ref_print[kind].get(k))
            problems.append(f"{kind} differ: {diff}")
    return problems


def temporaries(wd: Path) -> list[str]:
    """Temporary files left under results/ and data/ (atomic writes' .<name>.tmp-<pid>, *.tmp)."""
    left = []
    for root in ("results", "data"):
        for p in (wd / root).rglob("*"):
            if ".tmp-" in p.name or p.name.endswith(".tmp") or p.name.endswith(".partial"):
                left.append(str(p.relative_to(wd)))
    return left


# ------------------------------------------------------------------------------------------ trials


@dataclass
class Trial:
    n: int
    stage: str
    target: str
    delay: float
    moment: str = ""
    outcome: str = ""
    planned: int = 0
    finished_before: int = 0
    rerun_jobs: int = 0
    identical: bool = False
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


def finished_jobs(text: str) -> int:
    return len(re.findall(r"Finished jobid: \d+", text))


def total_jobs(stats: dict) -> int:
    return sum(stats.values())


def dry_run(wd: Path, config: str) -> dict:
    proc = subprocess.run([*command(config), "-n"], cwd=wd, env=env(), capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"dry run failed in {wd}:\n{proc.stderr[-3000:]}")
    return planned_jobs(proc.stdout + "\n" + proc.stderr)


def step_seconds(ref: Path) -> dict[str, float]:
    """Longest reference duration of each step (from the jobs' logs: '<step> done in X s')."""
    out: dict[str, float] = {}
    for log in (ref / "results" / "logs").rglob("*.log"):
        for step, secs in re.findall(r"INFO medkd: (\S+) done in ([0-9.]+) s", _read(str(log))):
            out[step] = max(out.get(step, 0.0), float(secs))
    return out


def reference(root: Path, config: Path) -> Path:
    ref = copy_repo(root / "ref")
    shutil.copy(config, ref / CONFIG)
    proc = subprocess.run(command(), cwd=ref, env=env(), capture_output=True, text=True, timeout=1800,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"reference run failed:\n{proc.stderr[-5000:]}")
    return ref


def prepare(ref: Path, wd: Path, stage: str) -> None:
    subprocess.run(["cp", "-a", str(ref), str(wd)], check=True)
    for pattern in STAGE_OUTPUTS[stage]:
        for p in wd.glob(pattern):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def run_trial(trial: Trial, ref: Path, ref_print: dict, durations: dict, root: Path, config: str = CONFIG,
              keep: bool = False) -> Trial:
    t_start = time.monotonic()
    wd = root / f"trial{trial.n:02d}"
    prepare(ref, wd, trial.stage)
    trial.planned = total_jobs(dry_run(wd, config))
    out_path, err_path = wd / "killed_run.out", wd / "killed_run.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        smk = subprocess.Popen(command(config), cwd=wd, env=env(60 if trial.target == "client" else 0), stdout=out,
                               stderr=err, stdin=subprocess.DEVNULL)
        job = client = None
        t_seen = None
        while smk.poll() is None:
            job, client = find_step(wd, trial.stage)
            if job or client:
                t_seen = time.monotonic()
                break
            time.sleep(0.005)
        if t_seen is None:
            trial.moment = "stage never observed running"
            smk.wait(timeout=1800)
        else:
            while time.monotonic() - t_seen < trial.delay:
                time.sleep(0.005)
            job_alive = job is not None and alive(job)
            when = f"+{time.monotonic() - t_seen:.2f}s"
            if trial.target == "snakemake" or not (job_alive or (client and alive(client))):
                os.kill(smk.pid, signal.SIGKILL)
                killed = "snakemake" if trial.target == "snakemake" else "snakemake (the job had ended)"
                trial.moment = f"{when} {killed}"
            elif trial.target == "client" and client and alive(client):
                os.kill(client, signal.SIGKILL)
                gone = wait_gone(job, 8) if job else 0.0
                trial.moment = f"{when} client"
                trial.outcome = ("server killed its job" if gone is not None else "JOB SURVIVED ITS CLIENT") + "; "
                if gone is None:
                    trial.problems.append("the fork-server job outlived its killed client")
            else:
                target = job if job_alive else client
                os.kill(target, signal.SIGKILL)
                trial.moment = f"{when} job" + ("" if client else " (direct)")
            try:
                smk.wait(timeout=1800)
            except subprocess.TimeoutExpired:
                smk.kill()
                trial.problems.append("snakemake did not stop after the kill")
    orphans = wait_quiet(wd, 30)
    if orphans:
        trial.problems.append(f"processes outlived the run: {[p['comm'] for p in orphans]}")
    killed_text = out_path.read_text() + err_path.read_text()
    trial.finished_before = finished_jobs(killed_text)
    first_rc = smk.returncode
    if any((wd / ".snakemake" / "locks").glob("*")):  # a killed Snakemake leaves its lock: the user unlocks
        unlock = subprocess.run(command(config) + ["--unlock"], cwd=wd, env=env(), capture_output=True, text=True,
                                timeout=600, stdin=subprocess.DEVNULL)
        if unlock.returncode != 0:
            trial.problems.append(f"snakemake --unlock failed: {unlock.stderr[-500:]}")
        trial.outcome += "unlocked, "
    remaining = total_jobs(dry_run(wd, config))
    proc = subprocess.run(command(config), cwd=wd, env=env(), capture_output=True, text=True, timeout=1800,
                          stdin=subprocess.DEVNULL)
    (wd / "rerun.err").write_text(proc.stderr)
    trial.rerun_jobs = finished_jobs(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        trial.problems.append(f"re-run failed (exit {proc.returncode}): {proc.stderr[-800:]}")
    else:
        expected = trial.planned - trial.finished_before
        if not (remaining == trial.rerun_jobs == expected):
            trial.problems.append(f"job counts: planned {trial.planned}, finished before the kill "
                                  f"{trial.finished_before}, planned after {remaining}, re-run ran {trial.rerun_jobs}")
        diffs = compare(ref, wd, ref_print)
        trial.identical = not diffs
        trial.problems += diffs
        tmps = temporaries(wd)
        if tmps:
            trial.problems.append(f"temporary files left: {tmps}")
    trial.outcome += (f"killed run exit {first_rc}, re-run {'ok' if proc.returncode == 0 else 'FAILED'} "
                      f"({trial.rerun_jobs}/{trial.planned} jobs re-run)")
    trial.seconds = time.monotonic() - t_start
    if not keep and trial.ok:
        shutil.rmtree(wd, ignore_errors=True)
    return trial


def plan_trials(n: int, seed: int, durations: dict, stages: list[str] = STAGES,
                targets: list[str] = TARGETS) -> list[Trial]:
    rng = random.Random(seed)
    trials = []
    for i in range(n):
        stage = stages[i % len(stages)]  # every stage at least once when n >= len(stages)
        target = targets[(i // len(stages) + i) % len(targets)] if len(targets) > 1 else targets[0]
        delay = round(rng.uniform(0.0, max(0.05, durations.get(stage, 1.0))), 3)
        trials.append(Trial(n=i, stage=stage, target=target, delay=delay))
    return trials


def table(trials: list[Trial]) -> str:
    lines = ["| # | stage | target | moment | outcome | identical |", "|---|---|---|---|---|---|"]
    for t in trials:
        ident = "yes" if t.identical else "NO"
        outcome = t.outcome + ("" if t.ok else " - PROBLEMS: " + "; ".join(t.problems))
        lines.append(f"| {t.n} | {t.stage} | {t.target} | {t.moment} | {outcome} | {ident} |")
    ok = sum(t.ok for t in trials)
    lines.append("")
    lines.append(f"{ok}/{len(trials)} trials passed; stages covered: "
                 f"{', '.join(sorted({t.stage for t in trials}, key=STAGES.index))}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=22)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="where to put the runs (default: a temporary directory)")
    ap.add_argument("--config", default=str(HERE / CONFIG))
    ap.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    ap.add_argument("--keep", action="store_true", help="keep every trial's directory")
    ap.add_argument("--out", help="also write the table (markdown) here")
    ap.add_argument("--reference", help="reuse this finished reference run instead of making one")
    args = ap.parse_args(argv)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="medkd-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    print(f"reference run in {root / 'ref'} ...", flush=True)
    ref = Path(args.reference) if args.reference else reference(root, Path(args.config))
    ref_print = fingerprint(ref)
    durations = step_seconds(ref)
    print(f"reference done in {time.monotonic() - t0:.0f} s; step durations {durations}", flush=True)
    trials = plan_trials(args.trials, args.seed, durations, args.stages)
    for t in trials:
        run_trial(t, ref, ref_print, durations, root, keep=args.keep)
        print(f"trial {t.n:2d} {t.stage:11s} {t.target:9s} delay {t.delay:6.3f}s: {t.moment} -> {t.outcome}"
              f" identical={t.identical} {'OK' if t.ok else 'PROBLEMS: ' + '; '.join(t.problems)}"
              f" ({t.seconds:.0f} s)", flush=True)
    text = table(trials)
    print()
    print(text)
    print(f"\ntotal {time.monotonic() - t0:.0f} s")
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if all(t.ok for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
