"""Bad input gets a clear error up front, and loses nothing (issue 11, section 4).

Reports the caller cannot unpickle, numbers the boss cannot wait on or count,
instructions of the wrong shape or depth, caller-given scheduler hooks, and a
journal that is not UTF-8: each with real bosses and workers (or the real
``python -m taylor``).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taylor import Boss, InstructionsError, ReportError, Worker, batch_main, run_as_server
from taylor.checks import MAX_SECONDS
from taylor.schedulers import LaxistScheduler, MaxMemoryScheduler, MaxThreadsScheduler

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


def run_taylor(*args):
    """The real console entry point (python -m taylor), as a batch script runs it."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    return subprocess.run([sys.executable, "-m", "taylor", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)

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
    """Pickles in the worker, unpickles where it arrives, and then refuses to pickle again."""

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


_HOOK_MARK = "TAYLOR_TEST_HOOKED"


def mark_hooked(worker):
    """A caller-given scheduler hook: leaves a trace the task reports."""
    os.environ[_HOOK_MARK] = f"hooked {worker.name}"


class Hooked(Worker):
    """Reports what the hooks did to its process: the marker, and the CPUs it may use."""

    _footprint = dict(attr=dict(hooked_task=dict(type=bool, values=[True])))

    def _task(self):
        return os.environ.get(_HOOK_MARK), sorted(os.sched_getaffinity(0))


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
    assert report["status"] == "failed" and str(report["error"]) == str(info.value)  # a copy is raised
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


def test_a_report_reaches_the_caller_as_its_worker_pickled_it_the_boss_never_pickles_it_again():
    """The boss passes a worker's report on untouched: one that would refuse a second pickling
    (as one the boss unpickled and pickled again once did) arrives, loaded once, in the caller."""
    report = batch_main(None, dict(gather_at=[0.0, 0.0], once=[True, False], name=["once", "fine"]),
                        scheduler=LaxistScheduler(), on_error="continue", print_report=False)
    assert report["status"] == "finished" and report.ok
    entry = next(w for w in report.workers if w["name"] == "once")
    assert entry["status"] == "done"
    assert isinstance(entry["report"], PicklesOnce) and entry["report"].name == "once" and entry["report"].loaded
    assert next(w for w in report.workers if w["name"] == "fine")["report"] == "report of fine"


# ------------------------------------------------------------------- timeouts
_BAD_SECONDS = [math.nan, math.inf, -math.inf, -1.0, 0.0, MAX_SECONDS + 1, 30 * 86400.0, "soon", True]


@pytest.mark.parametrize("value", _BAD_SECONDS)
def test_boss_timeout_the_poller_cannot_take_is_refused_up_front(value):
    with pytest.raises(ValueError, match="timeout must be a number of seconds"):
        Boss(timeout=value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.5, MAX_SECONDS + 1])
def test_boss_stop_grace_the_poller_cannot_take_is_refused_up_front(value):
    with pytest.raises(ValueError, match="stop_grace must be a number of seconds"):
        Boss(stop_grace=value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 0.0, MAX_SECONDS + 1])
def test_worker_timeout_the_poller_cannot_take_is_refused_naming_the_worker(value):
    with Boss(scheduler=LaxistScheduler(), on_error="continue") as boss:
        with pytest.raises(InstructionsError, match="worker 'late'.*timeout must be a number of seconds"):
            boss.set_instructions(dict(gather_at=0.0), dict(name=["fine", "late"], timeout=[1.0, value]))
        # Nothing of the refused batch was sent; the boss takes good instructions after it.
        assert boss.set_instructions(dict(gather_at=0.0), dict(name=["fine"])) == ["fine"]
        boss.make_them_work()
    report = boss.get_report()
    assert [(w["name"], w["report"]) for w in report.workers] == [("fine", "report of fine")]


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, MAX_SECONDS + 1])
def test_wait_for_entries_timeout_the_poller_cannot_take_is_refused(value):
    with Boss(scheduler=LaxistScheduler()) as boss:
        boss.set_instructions(dict(gather_at=0.0), dict(name=["a"]))
        boss.make_them_work(terminate=True)
        with pytest.raises(ValueError, match="timeout must be a number of seconds, 0 or more"):
            boss.wait_for_entries(value)
        assert [e["name"] for e in boss.entries()] == ["a"]


@pytest.mark.parametrize("value", ["nan", "inf", "1e9"])
def test_command_line_timeout_the_poller_cannot_take_exits_2(value):
    result = run_taylor("run", "--command", "true", "-i", "x=1", "--timeout", value)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "taylor: error: --timeout must be a number of seconds" in result.stderr


def test_the_longest_timeouts_the_poller_takes_are_accepted_and_run():
    report = batch_main(dict(gather_at=0.0), dict(name=["a", "b"], timeout=[MAX_SECONDS, None]),
                        scheduler=LaxistScheduler(), timeout=MAX_SECONDS, stop_grace=MAX_SECONDS,
                        print_report=False)
    assert report.ok and len(report.done) == 2


# --------------------------------------------------------------------- memory
@pytest.mark.parametrize("key, value", [("memory", math.nan), ("memory", -1.0), ("memory", math.inf),
                                        ("expected_time", math.nan), ("expected_time", -5.0)])
def test_memory_and_expected_time_must_be_finite_and_not_negative(key, value):
    with pytest.raises(InstructionsError, match=f"worker 'w3': {key} must be a finite number") as info:
        batch_main(dict(gather_at=0.0), {"name": [f"w{i}" for i in range(6)], key: [1.0, 1, 1, value, 1, 1]},
                   scheduler=MaxMemoryScheduler(max_memory=2), print_report=False)
    assert info.value.instructions["name"] == "w3"


def test_negative_memory_cannot_slip_more_workers_under_the_cap():
    # Before: memory=-1 made six workers fit a cap of 1 MiB at once.
    with pytest.raises(ValueError, match="memory must be a finite number of MiB, 0 or more, got -1"):
        batch_main(dict(gather_at=0.0, memory=-1), dict(name=[f"w{i}" for i in range(6)]),
                   scheduler=MaxMemoryScheduler(max_memory=1), print_report=False)


@pytest.mark.parametrize("options", [dict(max_memory=math.nan), dict(max_memory=-1.0),
                                     dict(max_memory=100, memory_per_task=math.nan)])
def test_memory_scheduler_refuses_nan_and_negative_sizes(options):
    with pytest.raises(InstructionsError, match="must be"):
        MaxMemoryScheduler(**options)


# ------------------------------------------------------- shapes and depth
@pytest.mark.parametrize("common, individual, words", [
    ([("gather_at", 0.0)], dict(name=["a"]), "common instructions must be a mapping"),
    ("gather_at=0", dict(name=["a"]), "common instructions must be a mapping"),
    (dict(gather_at=0.0), [("name", ["a"])], "individual instructions must be a mapping"),
    (dict(gather_at=0.0), dict(name={"a", "b"}), "'name' must be a list of values.*sets and mappings"),
    (dict(gather_at=0.0), dict(name=frozenset("ab")), "'name' must be a list of values"),
    (dict(gather_at=0.0), dict(name={"a": 1}), "'name' must be a list of values.*sets and mappings"),
    (dict(gather_at=0.0), dict(name="ab"), "'name' must be a list of values.*a string is one value"),
    (dict(gather_at=0.0), dict(name=b"ab"), "'name' must be a list of values"),
    (dict(gather_at=0.0), dict(name=iter("ab")), "'name' must be a list of values"),
    (dict(gather_at=0.0), dict(name=["a", "b"], linger=[0, 0, 0]), "'linger' has 3 values where 'name' has 2"),
])
def test_instructions_of_the_wrong_shape_are_refused_naming_the_key(common, individual, words):
    with Boss(scheduler=LaxistScheduler()) as boss:
        with pytest.raises(InstructionsError, match=words):
            boss.set_instructions(common, individual)
        boss.set_instructions(dict(gather_at=0.0), dict(name=("a", "b")))  # tuples, ranges, arrays: fine
        boss.make_them_work()
    assert sorted(w["report"] for w in boss.get_report().workers) == ["report of a", "report of b"]


def test_zero_dimensional_array_is_no_list_of_values():
    numpy = pytest.importorskip("numpy")
    with Boss(scheduler=LaxistScheduler()) as boss:
        with pytest.raises(InstructionsError, match="'linger' must be a list of values"):
            boss.set_instructions(dict(gather_at=0.0), dict(linger=numpy.array(0.1)))
        boss.set_instructions(dict(gather_at=0.0), dict(linger=numpy.array([0.0, 0.0])))
        boss.make_them_work()
    assert len(boss.get_report().done) == 2


def _nested(depth):
    top = current = []
    for _ in range(depth):
        current.append([])
        current = current[0]
    return top


@pytest.mark.parametrize("where", ["common", "individual"])
def test_instructions_nested_thousands_deep_are_an_instructions_error(where):
    deep = _nested(5000)
    common, individual = dict(gather_at=0.0), dict(name=["a"])
    if where == "common":
        common["payload"] = deep
    else:
        individual["payload"] = [deep]
    with Boss(scheduler=LaxistScheduler()) as boss:
        with pytest.raises(InstructionsError, match="'payload' is nested too deeply") as info:
            boss.set_instructions(common, individual)
        assert not isinstance(info.value, RecursionError)
        boss.set_instructions(dict(gather_at=0.0), dict(name=["a"]))
        boss.make_them_work()
    assert boss.get_report().ok


# ------------------------------------------------------------ scheduler hooks
@pytest.mark.parametrize("scheduler", [LaxistScheduler(), MaxThreadsScheduler(max_threads=2),
                                       MaxThreadsScheduler(max_threads=2, binded=True)],
                         ids=["laxist", "threads", "threads-bound"])
def test_scheduler_hooks_given_as_instructions_are_honoured(scheduler):
    report = batch_main(dict(hooked_task=True, scheduler_hooks=[mark_hooked]), dict(name=["h1", "h2"]),
                        scheduler=scheduler, print_report=False)
    assert sorted(w["report"][0] for w in report.workers) == ["hooked h1", "hooked h2"]
    if getattr(scheduler, "binded", False) and len(os.sched_getaffinity(0)) > 1:
        assert all(len(w["report"][1]) == 1 for w in report.workers)  # the scheduler's binding ran too


def test_scheduler_hooks_that_are_not_callables_are_refused():
    with pytest.raises(InstructionsError, match="worker 'h1': scheduler_hooks must be callables"):
        batch_main(dict(hooked_task=True, scheduler_hooks=["not a function"]), dict(name=["h1"]),
                   print_report=False)


# -------------------------------------------------------------------- journal
def test_resume_from_a_journal_line_that_is_not_utf8_exits_2_naming_file_and_line(tmp_path):
    journal = tmp_path / "run.jsonl"
    first = run_taylor("run", "--command", "true {x}", "-i", "x=1,2", "--journal", journal)
    assert first.returncode == 0, first.stderr
    bad = len(Path(journal).read_bytes().splitlines()) + 1  # the journal records the run's start too
    with open(journal, "ab") as f:
        f.write(b'{"status": "done", "instructions": {"x": "\xff\xfe"}}\n')
    result = run_taylor("run", "--command", "true {x}", "-i", "x=1,2,3", "--journal", journal, "--resume")
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("taylor: error:")]
    assert str(journal) in line and f"line {bad} is not UTF-8" in line
    assert "Traceback" not in result.stderr
    assert len(Path(journal).read_bytes().splitlines()) == bad  # the journal is left as it was


def test_resume_ignores_a_last_line_cut_inside_a_character(tmp_path):
    journal = tmp_path / "run.jsonl"
    assert run_taylor("run", "--command", "true {x}", "-i", "x=1,2", "--journal", journal).returncode == 0
    with open(journal, "ab") as f:
        f.write('{"status": "done", "instructions": {"x": "é'.encode()[:-1])  # killed mid-character
    result = run_taylor("run", "--command", "true {x}", "-i", "x=1,2,3", "--journal", journal, "--resume")
    assert result.returncode == 0, result.stderr
    assert "2 of 3 tasks already done" in result.stderr and "1 unreadable line" in result.stderr
