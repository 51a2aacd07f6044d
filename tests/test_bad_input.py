"""Bad input gets a clear error up front, and loses nothing (issue 11, section 4).

Reports the caller cannot unpickle, numbers the boss cannot wait on or count,
instructions of the wrong shape or depth, caller-given scheduler hooks, and a
journal that is not UTF-8: each with real bosses and workers (or the real
``python -m taylor``).
"""

from __future__ import annotations

import os
import time

import pytest

from taylor import ReportError, Worker, batch_main, run_as_server
from taylor.schedulers import LaxistScheduler

pytestmark = pytest.mark.timeout(60)

_CALLER = os.getpid()  # the test process; the boss and the workers are forks of it


def _load_outside_the_caller(name):
    if os.getpid() == _CALLER:
        raise RuntimeError(f"{name}: made to fail in the caller only")
    return CallerCannotLoad(name)


class CallerCannotLoad:
    """Pickles in the worker, unpickles (and pickles again) in the boss, fails to unpickle in the caller."""

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return (_load_outside_the_caller, (self.name,))


def _error_outside_the_caller(name):
    if os.getpid() == _CALLER:
        raise RuntimeError(f"{name}: made to fail in the caller only")
    return CallerCannotLoadError(name)


class CallerCannotLoadError(Exception):
    def __reduce__(self):
        return (_error_outside_the_caller, self.args)


def _load_once(name):
    return PicklesOnce(name, loaded=True)


class PicklesOnce:
    """Pickles in the worker, unpickles in the boss, and then refuses to pickle again."""

    def __init__(self, name, loaded=False):
        self.name, self.loaded = name, loaded

    def __reduce__(self):
        if self.loaded:
            raise TypeError(f"{self.name}: made to pickle only once")
        return (_load_once, (self.name,))


class Gathering(Worker):
    """Sleeps until ``gather_at`` (wall clock), so that many end together; then reports."""

    _footprint = dict(attr=dict(
        gather_at=dict(type=float),
        readable=dict(type=bool, optional=True, default=True),
        raises=dict(type=bool, optional=True, default=False),
        once=dict(type=bool, optional=True, default=False),
        linger=dict(type=float, optional=True, default=0.0),
    ))

    def _task(self):
        time.sleep(max(0.0, self.gather_at - time.time()) + self.linger)
        if self.raises:
            raise CallerCannotLoadError(self.name)
        if self.once:
            return PicklesOnce(self.name)
        return f"report of {self.name}" if self.readable else CallerCannotLoad(self.name)


# ------------------------------------------------- reports the caller cannot read
def _gathering(readable, **extra):
    at = time.time() + 1.0  # all started by then; they end within a millisecond of each other
    return dict(gather_at=[at] * len(readable), readable=readable,
                name=[f"w{i}" for i in range(len(readable))], **extra)


def test_unreadable_reports_fail_their_workers_alone_and_lose_no_other_entry():
    readable = [True, False, True, True, False, True, True, True]
    report = batch_main(None, _gathering(readable), scheduler=LaxistScheduler(), on_error="continue",
                        print_report=False)
    assert report["status"] == "finished"
    assert sorted(w["name"] for w in report.workers) == [f"w{i}" for i in range(8)]  # every entry, once
    for i, ok in enumerate(readable):
        entry = next(w for w in report.workers if w["name"] == f"w{i}")
        if ok:
            assert entry["status"] == "done" and entry["report"] == f"report of w{i}"
        else:
            error = entry["report"]
            assert entry["status"] == "failed" and isinstance(error, ReportError)
            text = str(error)
            assert f"'w{i}'" in text and "cannot unpickle" in text and "made to fail in the caller" in text
            assert "importable" in text and error.worker == f"w{i}"
    assert report["counts"]["done"] == 6 and report["counts"]["failed"] == 2
    assert not report.ok


def test_unreadable_report_under_abort_is_that_workers_error_and_keeps_the_others():
    readable = [True, True, False, True, True, True, True, True]
    with pytest.raises(ReportError, match="'w2'") as info:
        batch_main(None, _gathering(readable), scheduler=LaxistScheduler(), print_report=False)
    report = info.value.report
    assert report["status"] == "failed" and report["error"] is info.value
    assert sorted(w["name"] for w in report.workers) == [f"w{i}" for i in range(8)]
    assert [w["name"] for w in report.failures] == ["w2"]
    assert all(w["report"] == f"report of {w['name']}" for w in report.done)


def test_unreadable_report_under_abort_stops_the_run_promptly():
    boss = run_as_server(None, dict(gather_at=[0.0, 0.0], readable=[False, True], linger=[0.2, 30.0],
                                    name=["bad", "sleeper"]), scheduler=LaxistScheduler())
    start = time.monotonic()
    try:
        with pytest.raises(ReportError, match="'bad'") as info:
            boss.wait_till_finished()
    finally:
        boss.close()
    assert time.monotonic() - start < 10, "the sleeper had 30 s to go: the run was not stopped"
    report = info.value.report
    assert report["status"] == "failed"
    assert {w["name"]: w["status"] for w in report.workers} == {"bad": "failed", "sleeper": "stopped"}


def test_exception_the_caller_cannot_unpickle_is_a_report_error_with_its_traceback():
    report = batch_main(None, dict(gather_at=[0.0, 0.0], raises=[True, False], name=["raiser", "fine"]),
                        scheduler=LaxistScheduler(), on_error="continue", print_report=False)
    entry = next(w for w in report.workers if w["name"] == "raiser")
    assert entry["status"] == "failed" and isinstance(entry["report"], ReportError)
    assert "raised an exception" in str(entry["report"]) and "CallerCannotLoadError" in entry["traceback"]
    assert next(w for w in report.workers if w["name"] == "fine")["report"] == "report of fine"
    assert report["counts"]["failed"] == 1 and report["counts"]["done"] == 1


def test_report_the_boss_cannot_pickle_again_is_that_workers_error_not_the_boss_s():
    report = batch_main(None, dict(gather_at=[0.0, 0.0], once=[True, False], name=["once", "fine"]),
                        scheduler=LaxistScheduler(), on_error="continue", print_report=False)
    assert report["status"] == "finished"
    entry = next(w for w in report.workers if w["name"] == "once")
    assert entry["status"] == "failed" and isinstance(entry["report"], ReportError)
    assert "could read but not pickle again" in str(entry["report"]) and "pickle only once" in str(entry["report"])
    assert next(w for w in report.workers if w["name"] == "fine")["report"] == "report of fine"
