"""Every step's log ends with its wall time, CPU time and peak memory (the figures Snakemake's benchmark files
miss for jobs run by the fork server, which measure the client)."""

from __future__ import annotations

import re
import subprocess
import sys

from medkd.cli import main, resource_use
from medkd.config import REPO_ROOT


def test_the_done_line_names_wall_cpu_and_peak_rss(capsys):
    assert main(["spec", "--config", str(REPO_ROOT / "config" / "config.yaml"), "--dataset", "embedded"]) == 0
    err = capsys.readouterr().err  # main() logs to stderr, as a job's log file receives it
    line = [text.split("INFO medkd: ", 1)[1] for text in err.splitlines() if " done in " in text]
    assert len(line) == 1, err
    m = re.fullmatch(r"spec done in ([0-9.]+) s \(CPU ([0-9.]+) s, peak RSS ([0-9]+) MiB\)", line[0])
    assert m, line[0]
    assert int(m.group(3)) > 10  # this interpreter, with NumPy and torch loaded, holds far more than 10 MiB
    # the benchmark script and the fault gauntlet read the wall time with this pattern
    assert re.search(r"spec done in ([0-9.]+) s", line[0]).group(1) == m.group(1)


def test_cpu_counts_waited_for_children():
    """A child that burns ~0.4 s of CPU shows in the parent's figure once it has been waited for (the
    embedded generator's worker processes are such children)."""

    def cpu() -> float:
        return float(re.match(r"CPU ([0-9.]+) s", resource_use()).group(1))

    before = cpu()
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"],
                   check=True)
    assert cpu() - before >= 0.35


def test_peak_rss_is_the_jobs_own_not_its_parents():
    """Linux carries ``ru_maxrss`` over ``execve``: a tiny child of a parent holding 600 MiB reported >= 600 MiB.
    The done line counts the job's own address space (VmHWM), so the child reports what a bare interpreter
    holds, and a child that itself touches 300 MiB reports at least that."""
    code = ("import sys\nx = bytearray(int(sys.argv[1]) * 2**20)\nfor i in range(0, len(x), 4096): x[i] = 1\n"
            "from medkd.cli import resource_use\nprint(resource_use())")
    ballast = bytearray(600 * 2**20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1

    def child_peak(mib: int) -> int:
        out = subprocess.run([sys.executable, "-c", code, str(mib)], capture_output=True, text=True, check=True).stdout
        return int(re.search(r"peak RSS (\d+) MiB", out).group(1))

    assert child_peak(0) < 300, "the parent's 600 MiB were counted"
    assert 300 <= child_peak(300) < 600
    del ballast


def test_the_heap_threshold_is_fixed_on_glibc():
    """Cache and infer fix glibc's mmap threshold (medkd.runtime.fix_mmap_threshold: freed batch tensors
    return to the OS instead of growing the heap case by case; tests/integration/test_bounded_memory.py fails
    without it); elsewhere it says it did nothing."""
    import os

    import pytest

    from medkd.runtime import fix_mmap_threshold

    try:
        glibc = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):
        glibc = False
    if not glibc:
        pytest.skip("not a glibc system")
    assert fix_mmap_threshold() is True and fix_mmap_threshold(1 << 20) is True
