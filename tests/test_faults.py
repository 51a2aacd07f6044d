"""Fault injection, worker side: crashes, bad reports, timeouts, stopping, bad input.

Every worker here is a real process that really crashes or is really signalled.
The autouse fixture in conftest.py fails a test that leaves a descendant
running; programs that leave the process tree (new sessions) are tracked by
pid files and checked here.
"""

from __future__ import annotations

import json
import os
import signal
import time

import faultworkers  # noqa: F401 - registers the fault workers before any Boss exists
import pytest
import workers as _core_workers  # noqa: F401 - registers Noop
from processes import gone as _gone
from processes import kill as _kill
from processes import workers_of

import taylor
from taylor import Boss, batch_main, run_as_server
from taylor.schedulers import BaseScheduler, LaxistScheduler, MaxThreadsScheduler

pytestmark = pytest.mark.timeout(30)


def _entry(report, name):
    return next(w for w in report.workers if w["name"] == name)


# --------------------------------------------------------------- worker deaths
@pytest.mark.parametrize("crash, how, exitcode", [
    ("exit", "exit code 3", 3),
    ("sigkill", "killed by SIGKILL", -signal.SIGKILL),
    ("segfault", "killed by SIGSEGV", -signal.SIGSEGV),
])
def test_worker_death_aborts_the_run_naming_worker_instructions_and_cause(crash, how, exitcode):
    start = time.monotonic()
    with pytest.raises(taylor.WorkerDiedError) as info:
        batch_main(None, dict(crash=["hang", crash], name=["sleeper", "victim"], seconds=[30, 0]),
                   scheduler=LaxistScheduler(), print_report=False)
    elapsed = time.monotonic() - start
    error = info.value
    text = str(error)
    assert "'victim'" in text and how in text and f"crash='{crash}'" in text
    assert error.worker == "victim" and error.exitcode == exitcode and error.instructions["crash"] == crash
    report = error.report
    assert report["status"] == "failed"
    assert _entry(report, "victim")["status"] == "failed" and _entry(report, "victim")["exitcode"] == exitcode
    sleeper = _entry(report, "sleeper")
    assert sleeper["status"] == "stopped" and sleeper["exitcode"] == -signal.SIGTERM
    assert elapsed < 5, f"the abort took {elapsed:.1f} s; the sleeper had 30 s to go"
    assert not _gone([w["pid"] for w in report.workers], 0)


def test_worker_deaths_with_continue_are_reported_and_the_run_goes_on():
    report = batch_main(None, dict(crash=["exit", "sigkill", "segfault", "ok", "ok"]),
                        scheduler=MaxThreadsScheduler(max_threads=2), on_error="continue", print_report=False)
    assert report["status"] == "finished"
    by_crash = {w["instructions"]["crash"]: w for w in report.workers}
    assert [by_crash["ok"]["report"]] == ["fine"] and len(report.done) == 2
    for crash, how in (("exit", "exit code 3"), ("sigkill", "SIGKILL"), ("segfault", "SIGSEGV")):
        entry = by_crash[crash]
        assert entry["status"] == "failed" and isinstance(entry["report"], taylor.WorkerDiedError)
        assert how in str(entry["report"]) and entry["name"] in str(entry["report"])
    assert report["counts"]["failed"] == 3


def test_worker_killed_from_outside_is_reported_within_a_second():
    boss = run_as_server(None, dict(crash=["hang"], name=["target"]), on_error="continue")
    try:
        deadline = time.monotonic() + 10
        while not workers_of(boss.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        (worker,) = workers_of(boss.pid)
        worker.kill()  # as the out-of-memory killer would
        killed = time.monotonic()
        report = boss.wait_till_finished()
        assert time.monotonic() - killed < 1.5
        (entry,) = report.workers
        assert entry["pid"] == worker.pid and "killed by SIGKILL" in str(entry["report"])
        assert "out-of-memory" in str(entry["report"])
    finally:
        boss.close()


def test_running_out_of_memory_is_reported_as_memory_error():
    with pytest.raises(MemoryError) as info:
        batch_main(None, dict(crash=["memory"], name=["greedy"]), print_report=False)
    report = info.value.report
    entry = _entry(report, "greedy")
    assert entry["status"] == "failed" and "bytearray" in entry["traceback"]
    assert isinstance(info.value.__cause__, taylor.RemoteTraceback)


# ---------------------------------------------------------------- bad reports
@pytest.mark.parametrize("crash, words", [
    ("unpicklable", "could not be pickled"),
    ("huge", "more than the limit of 1048576 bytes"),
    ("unloadable", "cannot unpickle"),
])
def test_report_that_cannot_travel_is_that_workers_error(crash, words):
    report = batch_main(None, dict(crash=[crash, "ok", "hang"], seconds=[0, 0, 0.3]),
                        scheduler=LaxistScheduler(), on_error="continue", max_report_bytes=1 << 20,
                        print_report=False)
    assert report["status"] == "finished"
    bad = next(w for w in report.workers if w["instructions"]["crash"] == crash)
    assert bad["status"] == "failed" and isinstance(bad["report"], taylor.ReportError)
    assert words in str(bad["report"]) and bad["name"] in str(bad["report"])
    assert sorted(w["report"] for w in report.done) == ["fine", "woke up"]


def test_unpicklable_report_aborts_like_any_worker_error():
    with pytest.raises(taylor.ReportError, match="could not be pickled") as info:
        batch_main(None, dict(crash=["unpicklable", "hang"]), scheduler=LaxistScheduler(), print_report=False)
    assert sorted(w["status"] for w in info.value.report.workers) == ["failed", "stopped"]


def test_exception_that_cannot_be_rebuilt_is_described_not_lost():
    with pytest.raises(taylor.WorkerError, match="NeedsTwoArgs: a/b") as info:
        batch_main(None, dict(crash=["badexc"]), print_report=False)
    assert "could not be pickled" in str(info.value)


def test_large_report_within_the_limit_arrives_whole_while_others_run():
    size = 32 << 20  # far more than a pipe holds: the boss must read it piecewise
    report = batch_main(None, dict(crash=["huge", "ok", "ok"], size=[size, 0, 0]),
                        scheduler=LaxistScheduler(), print_report=False)
    huge = next(w for w in report.workers if w["instructions"]["crash"] == "huge")
    assert huge["report"] == b"x" * size


# ------------------------------------------------------------------- timeouts
def test_worker_timeout_attribute_terminates_it_with_sigterm():
    start = time.monotonic()
    with pytest.raises(taylor.WorkerTimeoutError) as info:
        batch_main(None, dict(crash=["hang"], timeout=[0.5], name=["slow"]), print_report=False)
    assert time.monotonic() - start < 5
    error = info.value
    assert isinstance(error, TimeoutError) and error.worker == "slow"
    assert "'slow'" in str(error) and "timeout of 0.5 s" in str(error) and "SIGTERM" in str(error)
    assert error.exitcode == -signal.SIGTERM


def test_worker_ignoring_sigterm_is_killed_after_stop_grace():
    start = time.monotonic()
    with pytest.raises(taylor.WorkerTimeoutError) as info:
        batch_main(None, dict(crash=["stubborn"], timeout=[0.3], name=["deaf"]), stop_grace=0.5,
                   print_report=False)
    elapsed = time.monotonic() - start
    assert info.value.exitcode == -signal.SIGKILL and "SIGKILL" in str(info.value)
    assert 0.8 <= elapsed < 5


def test_boss_default_timeout_applies_to_workers_without_their_own():
    report = batch_main(None, dict(crash=["hang", "hang", "ok"], seconds=[30, 1.5, 0], timeout=[None, 5, None],
                                   name=["default", "own", "quick"]),
                        scheduler=LaxistScheduler(), timeout=0.5, on_error="continue", print_report=False)
    assert isinstance(_entry(report, "default")["report"], taylor.WorkerTimeoutError)
    assert "'default'" in str(_entry(report, "default")["report"])
    assert _entry(report, "own")["report"] == "woke up"  # its own 5 s outlasts the default
    assert _entry(report, "quick")["report"] == "fine"


# ------------------------------------------------------------------- stopping
def _children_of(pidfile, within=10.0):
    deadline = time.monotonic() + within
    while not os.path.exists(pidfile):
        assert time.monotonic() < deadline, "the worker never wrote its pid file"
        time.sleep(0.01)
    with open(pidfile) as f:
        return json.load(f)


@pytest.mark.parametrize("ignore_term", [False, True])
def test_stop_them_working_ends_workers_and_the_programs_they_started(tmp_path, ignore_term):
    pidfiles = [str(tmp_path / f"w{i}.json") for i in range(2)]
    boss = run_as_server(None, dict(crash=["children", "children"], pidfile=pidfiles,
                                    ignore_term=[ignore_term] * 2),
                         scheduler=LaxistScheduler(), stop_grace=0.5)
    started = []
    try:
        tree = [_children_of(p) for p in pidfiles]
        started = [t["worker"] for t in tree] + [c for t in tree for c in t["children"]]
        assert len(started) == 10 and _gone(started, 0) == started
        t0 = time.monotonic()
        boss.stop_them_working()
        report = boss.wait_till_finished()
        assert time.monotonic() - t0 < 5
        assert report["status"] == "stopped"
        expected = -signal.SIGKILL if ignore_term else -signal.SIGTERM
        assert [w["exitcode"] for w in report.workers] == [expected, expected]
        assert all(w["status"] == "stopped" for w in report.workers)
        assert not _gone(started, 3), "a worker or a program it started survived stop_them_working"
    finally:
        boss.close()
        _kill(_gone(started, 0))


def test_abort_also_ends_programs_started_by_other_workers(tmp_path):
    pidfile = str(tmp_path / "w.json")
    boss = run_as_server(None, dict(crash=["children", "hang"], pidfile=[pidfile, None], seconds=[30, 30]),
                         scheduler=LaxistScheduler(), stop_grace=0.5)
    started = []
    try:
        tree = _children_of(pidfile)
        started = [tree["worker"]] + tree["children"]
        victim = next(p for p in workers_of(boss.pid) if p.pid != tree["worker"])
        victim.send_signal(signal.SIGSEGV)
        with pytest.raises(taylor.WorkerDiedError, match="SIGSEGV"):
            boss.wait_till_finished()
        assert not _gone(started, 3)
    finally:
        boss.close()
        _kill(_gone(started, 0))


# ------------------------------------------------------------------ bad input
def _boss_is_idle(boss):
    """Nothing was queued in the boss and it started no process."""
    return boss.get_report()["counts"] == dict(done=0, failed=0, stopped=0, running=0, pending=0) \
        and not workers_of(boss.pid)


def test_bad_input_is_refused_in_the_caller_naming_the_culprit():
    boss = Boss(max_instructions_bytes=1 << 16)
    try:
        with pytest.raises(ValueError, match=r"same length; got noop: 2, value: 3"):
            boss.set_instructions(None, dict(noop=[True, True], value=[1, 2, 3]))
        with pytest.raises(ValueError, match="two workers would be named 'twin'"):
            boss.set_instructions(dict(noop=True), dict(name=["twin", "other", "twin"]))
        with pytest.raises(taylor.NoWorkerFitError) as info:
            boss.set_instructions(None, dict(crash=["ok", "explode"]))
        error = info.value
        assert error.instructions == {"crash": "explode"} and "['crash']" in str(error)
        assert "Crasher" in str(error) and "Not in values" in str(error) and error.whynot
        with pytest.raises(taylor.InstructionsError, match="worker 'bad' cannot be sent.*pickle"):
            boss.set_instructions(dict(noop=True), dict(name=["good", "bad"], payload=[1, lambda: 0]))
        with pytest.raises(taylor.InstructionsError, match="worker 'big' cannot be sent.*65536 bytes"):
            boss.set_instructions(dict(noop=True), dict(name=["small", "big"], payload=["x", "x" * 100000]))
        assert _boss_is_idle(boss)
        # Names refused above are free again; names sent are taken for the whole run.
        assert boss.set_instructions(dict(noop=True), dict(name=["twin", "good"])) == ["twin", "good"]
        with pytest.raises(ValueError, match="'good'"):
            boss.set_instructions(dict(noop=True), dict(name=["good"]))
        boss.make_them_work()
        assert sorted(w["name"] for w in boss.wait_till_finished().workers) == ["good", "twin"]
    finally:
        boss.close()


def test_thread_counts_must_not_be_negative_and_zero_means_all_cpus():
    with pytest.raises(taylor.InstructionsError, match="max_threads must be 0.*got -1"):
        MaxThreadsScheduler(max_threads=-1)
    assert MaxThreadsScheduler(max_threads=0).threads == len(os.sched_getaffinity(0))
    report = batch_main(dict(noop=True), dict(value=[1, 2, 3]), scheduler=MaxThreadsScheduler(max_threads=0),
                        print_report=False)
    assert report.ok


class _MemoryCapped(BaseScheduler):
    """A scheduler with a capacity (like the memory scheduler): refuses what can never fit."""

    _footprint = dict(attr=dict(capped_mib=dict(type=float)))

    def validate(self, instructions):
        for i in instructions:
            if i.memory > self.capped_mib:
                raise taylor.CapacityError(f"worker {i.name!r} asks for {i.memory:g} MiB, more than the "
                                           f"{self.capped_mib:g} MiB this scheduler can ever grant")

    def launchable(self, pending, workers, report):
        launch = list(pending)
        del pending[:]
        return launch, pending


class _NeverStarts(BaseScheduler):
    """A (buggy) scheduler that keeps everything for later, forever."""

    _footprint = dict(attr=dict(never=dict(type=bool, values=[True])))

    def launchable(self, pending, workers, report):
        return [], pending


def test_request_beyond_capacity_is_refused_before_anything_runs():
    boss = Boss(scheduler=_MemoryCapped(capped_mib=100.0))
    try:
        with pytest.raises(taylor.CapacityError, match="'hog' asks for 500 MiB") as info:
            boss.set_instructions(dict(noop=True), dict(name=["fits", "hog"], memory=[10, 500]))
        assert isinstance(info.value, ValueError)
        assert _boss_is_idle(boss)
    finally:
        boss.close()


def test_a_scheduler_that_never_starts_anything_fails_the_run_instead_of_hanging():
    start = time.monotonic()
    with pytest.raises(taylor.CapacityError, match="_NeverStarts starts none of the 2 pending") as info:
        batch_main(dict(noop=True), dict(value=[1, 2]), scheduler=_NeverStarts(never=True), print_report=False)
    assert time.monotonic() - start < 5
    assert [p["value"] for p in info.value.report["pending"]] == [1, 2]


def test_a_scheduler_that_stalls_after_some_work_fails_the_run():
    class _OneOnly(_NeverStarts):
        """Starts the first instruction, then nothing ever again (its state lives in the boss)."""

        started = False

        def launchable(self, pending, workers, report):
            if self.started:
                return [], pending
            self.started = True
            return [pending.pop(0)], pending

    with pytest.raises(taylor.CapacityError, match="starts none of the 2 pending") as info:
        batch_main(dict(noop=True), dict(value=[1, 2, 3]), scheduler=_OneOnly(never=True), print_report=False)
    assert [w["report"] for w in info.value.report.workers] == [1]


def test_instructions_the_boss_cannot_unpickle_fail_the_run_instead_of_vanishing():
    import sys
    import types

    boss = Boss()
    late = types.ModuleType("taylor_test_late_module")  # exists in the caller only: created after the fork
    exec("class Late:\n    pass\n", late.__dict__)
    late.Late.__module__ = late.__name__
    sys.modules[late.__name__] = late
    try:
        boss.set_instructions(dict(noop=True), dict(value=[1], payload=[late.Late()]))
        boss.make_them_work()
        with pytest.raises(taylor.InstructionsError, match="could not be unpickled.*taylor_test_late_module") as info:
            boss.wait_till_finished()
        assert info.value.report["status"] == "failed"
    finally:
        del sys.modules[late.__name__]
        boss.close()
