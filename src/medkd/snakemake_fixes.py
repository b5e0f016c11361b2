"""Work-around for a Snakemake scheduler bug that burns a core during long local runs; applied by the Snakefile
in the Snakemake client only (``workflow.is_main_process``), never in a job that re-parses the Snakefile.

**The bug** (Snakemake 8.17 to at least 9.27, the pinned version; upstream: snakemake/snakemake#3804 "Snakemake
forkbombing itself", PR #3744 on the rate limiter re-running the main loop). The job rate limiter
(``--max-jobs-per-timespan``, default ``100/1s``, always on) makes every pass of the scheduler loop that leaves
ready jobs waiting start a ``threading.Timer`` that wakes the loop again one timespan later. That woken pass
starts another timer, so every finished job adds one more timer chain that never ends. On the embedded default
(373 jobs, 2 cores, ready jobs always waiting for a core) the Snakemake process held ~185 threads after
10 minutes (each timer waking the loop once a second) and used 16-22 % of a core: CPU the two training
jobs did not get.

**The fix.** At most one re-evaluation timer is pending per scheduler. A second request while one is pending
is dropped, because the pending one already wakes the loop, which then re-checks the rate limit and the
queue. The timer is a daemon thread, so Snakemake's exit does not wait up to one timespan for it. Everything
else (job completion waking the loop, the rate limit itself) is unchanged.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("medkd.snakemake_fixes")

_PATCHED = "_medkd_single_reevaluation_timer"


def single_reevaluation_timer(scheduler_cls: type) -> bool:
    """Replace ``scheduler_cls._schedule_reevalutation`` (Snakemake's spelling) with the one-timer version.

    Returns True when patched, False when the method is missing (another Snakemake version: left alone) or
    already patched. The scheduler must have the ``_open_jobs`` semaphore the original timer releases.
    """
    original = getattr(scheduler_cls, "_schedule_reevalutation", None)
    if original is None or getattr(original, _PATCHED, False):
        return False
    lock = threading.Lock()

    def _schedule_reevalutation(self, delay) -> None:
        with lock:
            pending = getattr(self, "_medkd_reevaluation", None)
            if pending is not None and pending.is_alive():
                return
            timer = threading.Timer(delay, self._open_jobs.release)
            timer.daemon = True
            self._medkd_reevaluation = timer
            timer.start()

    setattr(_schedule_reevalutation, _PATCHED, True)
    _schedule_reevalutation.__doc__ = f"medkd: one pending re-evaluation timer at a time (was {original!r})"
    scheduler_cls._schedule_reevalutation = _schedule_reevalutation
    return True


UPSTREAM = "snakemake/snakemake#3804"
"""The upstream issue of the bug this module works around (named in the warning when the patch cannot apply)."""
TESTED_VERSIONS = ("9.27.1",)
"""Snakemake versions whose scheduler this patch was read against and tested on (requirements.lock pins 9.27.1)."""


def apply(is_main_process: bool = True, warn=None) -> bool:
    """Patch the installed Snakemake's ``JobScheduler`` in the client only.

    ``is_main_process``: Snakemake's ``workflow.is_main_process`` (False inside a job that re-parses the
    Snakefile: a SLURM job step, a conda or script job); nothing is patched there, since only the client
    schedules. ``warn``: called with one line when the running Snakemake lacks the method this patches
    (another version: the scheduler is left as it is and the bug, if still there, costs CPU); default:
    Snakemake's logger's ``warning``.

    Returns True when patched (or already patched), False otherwise.
    """
    if not is_main_process:
        return False
    try:
        from snakemake.scheduling.job_scheduler import JobScheduler
    except ImportError:
        JobScheduler = None
    original = getattr(JobScheduler, "_schedule_reevalutation", None) if JobScheduler is not None else None
    if original is None:
        import importlib.metadata

        try:
            version = importlib.metadata.version("snakemake")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        message = (f"medkd: the scheduler work-around for {UPSTREAM} (one re-evaluation timer instead of one "
                   f"per finished job) was not applied: Snakemake {version} has no "
                   f"snakemake.scheduling.job_scheduler.JobScheduler._schedule_reevalutation (tested on "
                   f"{', '.join(TESTED_VERSIONS)}). If {UPSTREAM} is not fixed in it, long local runs "
                   "lose up to a fifth of a core to the scheduler (src/medkd/snakemake_fixes.py).")
        if warn is None:
            from snakemake.logging import logger

            warn = logger.warning
        warn(message)
        return False
    return single_reevaluation_timer(JobScheduler) or getattr(original, _PATCHED, False)
