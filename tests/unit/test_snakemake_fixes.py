"""The scheduler work-around (medkd.snakemake_fixes): one pending re-evaluation timer, daemonic, on a fake
scheduler and on the installed Snakemake's JobScheduler."""

import threading
import time

from medkd import snakemake_fixes


class FakeScheduler:
    """What the original method uses: the ``_open_jobs`` semaphore its timer releases."""

    def __init__(self):
        self._open_jobs = threading.Semaphore(0)
        self.calls = 0

    def _schedule_reevalutation(self, delay):  # the original: a new timer on every call
        self.calls += 1
        threading.Timer(delay, self._open_jobs.release).start()


def _releases(sem: threading.Semaphore) -> int:
    n = 0
    while sem.acquire(blocking=False):
        n += 1
    return n


def test_original_multiplies_timers_and_the_fix_keeps_one():
    original = FakeScheduler()
    for _ in range(50):
        original._schedule_reevalutation(0.2)
    time.sleep(0.5)
    assert _releases(original._open_jobs) == 50  # the bug: every request wakes the loop once more

    class Patched(FakeScheduler):
        pass

    assert snakemake_fixes.single_reevaluation_timer(Patched) is True
    assert snakemake_fixes.single_reevaluation_timer(Patched) is False  # already patched
    s = Patched()
    before = threading.active_count()
    for _ in range(50):
        s._schedule_reevalutation(0.2)
    assert threading.active_count() == before + 1  # one timer thread pending, not 50
    assert s._medkd_reevaluation.daemon  # the exit of Snakemake does not wait for it
    time.sleep(0.5)
    assert _releases(s._open_jobs) == 1 and s.calls == 0
    s._schedule_reevalutation(0.05)  # after it fired, the next request starts a new timer
    time.sleep(0.3)
    assert _releases(s._open_jobs) == 1


def test_class_without_the_method_is_left_alone():
    class Other:
        pass

    assert snakemake_fixes.single_reevaluation_timer(Other) is False
    assert not hasattr(Other, "_schedule_reevalutation")


def test_installed_snakemake_has_the_patched_method():
    """The pinned Snakemake still has the method this patches (else apply() silently does nothing)."""
    from snakemake.scheduling.job_scheduler import JobScheduler

    assert hasattr(JobScheduler, "_schedule_reevalutation")
    snakemake_fixes.apply()
    assert getattr(JobScheduler._schedule_reevalutation, "_medkd_single_reevaluation_timer", False)


def test_apply_patches_the_installed_snakemake_in_the_client_only(monkeypatch):
    from snakemake.scheduling.job_scheduler import JobScheduler

    original = JobScheduler.__dict__["_schedule_reevalutation"]
    try:
        warnings = []
        assert snakemake_fixes.apply(is_main_process=False, warn=warnings.append) is False  # a job: untouched
        assert JobScheduler.__dict__["_schedule_reevalutation"] is original and not warnings
        assert snakemake_fixes.apply(is_main_process=True, warn=warnings.append) is True  # the client
        assert getattr(JobScheduler._schedule_reevalutation, "_medkd_single_reevaluation_timer", False)
        assert snakemake_fixes.apply(is_main_process=True, warn=warnings.append) is True  # idempotent
        assert not warnings
    finally:
        JobScheduler._schedule_reevalutation = original


def test_apply_warns_with_the_upstream_issue_when_the_method_is_missing(monkeypatch):
    from snakemake.scheduling import job_scheduler

    class WithoutIt:
        pass

    monkeypatch.setattr(job_scheduler, "JobScheduler", WithoutIt)
    warnings = []
    assert snakemake_fixes.apply(is_main_process=True, warn=warnings.append) is False
    assert len(warnings) == 1 and "snakemake/snakemake#3804" in warnings[0] and "9.27.1" in warnings[0]
