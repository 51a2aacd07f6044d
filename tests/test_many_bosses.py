"""Many bosses in one process: a Boss left to the garbage collector never harms the next one.

Each boss process is forked from the caller, with a copy of every other Boss
object; what it does with the copies must never close one of its own
descriptors.  Failed bosses must be freed when dropped, and the boss loop's
own error path must end with the real cause, not a dead boss.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import weakref

import pytest
import workers as _core_workers  # noqa: F401 - registers Noop and Faulty
from processes import alive

import taylor
from taylor import batch_main, run_as_server
from taylor.schedulers import LaxistScheduler, MaxThreadsScheduler

pytestmark = pytest.mark.timeout(60)


def _batch(size: int = 100, **options) -> None:
    """A batch whose report must be complete: every worker done, with its own value."""
    report = batch_main(dict(noop=True), dict(value=list(range(size))), print_report=False, **options)
    assert report["status"] == "finished"
    assert sorted(w["report"] for w in report.workers) == list(range(size))
    assert all(w["status"] == "done" for w in report.workers)


def _failed_boss():
    """A boss whose worker failed and whose failure the caller caught, as in the issue."""
    boss = run_as_server(None, dict(fault=["raise"]))
    with pytest.raises(KeyError):
        boss.wait_till_finished()
    return boss


class _Holder:
    """What a notebook's objects often are: in a reference cycle, freed only by the collector."""

    def __init__(self, boss) -> None:
        self.boss = boss
        self.me = self


def test_a_dropped_failed_boss_is_freed_at_once_and_its_process_reaped():
    gc.disable()  # freed by reference counting alone: no cycle through the failure's traceback
    try:
        boss = run_as_server(None, dict(fault=["raise"], seconds=[0.0]))
        with pytest.raises(KeyError):
            boss.wait_till_finished()
        with pytest.raises(KeyError):
            boss.get_report()
        with pytest.raises(KeyError):
            boss.set_instructions(None, {})
        pid, ref = boss.pid, weakref.ref(boss)
        del boss
        assert ref() is None
        assert not alive([pid])
    finally:
        gc.enable()


def test_a_dropped_failed_boss_is_freed_when_exceptions_unpickle_with_tracebacks():
    """tblib's pickling (installed by distributed) rebuilds a traceback by raising in the caller:
    its frames chain back to the Boss that unpickled it, unless the Boss drops them."""
    pytest.importorskip("tblib.pickling_support")
    script = textwrap.dedent("""
        import gc, weakref
        from tblib import pickling_support
        import workers
        from taylor import run_as_server
        pickling_support.install()
        gc.disable()
        boss = run_as_server(None, dict(fault=["raise"], seconds=[0.0]))
        try:
            boss.wait_till_finished()
        except KeyError as exc:
            assert exc.__cause__ is not None  # the worker's traceback, as text
        ref = weakref.ref(boss)
        del boss
        print("freed" if ref() is None else "kept alive")
    """)
    here = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run([sys.executable, "-c", script], cwd=here, capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "freed", result.stderr


def test_fifty_failed_bosses_dropped_in_a_row_harm_no_later_batch():
    for round_ in range(50):
        if round_ % 2:
            boss = _failed_boss()
        else:  # caught through get_report, the boss not reaped by the caller: as in the issue
            boss = run_as_server(None, dict(fault=["raise"]))
            with pytest.raises(KeyError):
                while True:
                    boss.get_report()
            holder = _Holder(boss)  # and left in a cycle, to the garbage collector
            del holder
        del boss
        if round_ % 10 == 9:
            gc.collect()
        if round_ % 5 == 4:
            _batch()
    gc.collect()


class _Collecting:
    """A scheduler whose decisions run the garbage collector in the boss process, as any code
    that allocates there may: it frees that process's copies of the caller's garbage.
    (Not a footprints class: it must not become a candidate of footprints' scheduler look-ups.)"""

    def __init__(self) -> None:
        self.laxist = LaxistScheduler()

    def launchable(self, pending, workers, report):
        gc.collect()
        return self.laxist.launchable(pending, workers, report)


def test_a_boss_left_in_garbage_when_the_next_one_starts_harms_it_not():
    """The next boss process starts with a copy of that garbage, which its own collector frees
    during its run: the copy's socket must not close a descriptor of the boss's own."""
    gc.disable()  # the garbage must still be there when the next boss process is forked
    try:
        for _ in range(5):
            boss = run_as_server(None, dict(fault=["raise"]))
            with pytest.raises(KeyError):
                while True:
                    boss.get_report()
            _Holder(boss)
            del boss
            _batch(50, scheduler=_Collecting())
    finally:
        gc.enable()
    gc.collect()


def test_five_bosses_alive_at_once_each_report_complete():
    bosses = [run_as_server(dict(noop=True), dict(value=list(range(100 * i, 100 * i + 50))),
                            scheduler=MaxThreadsScheduler(max_threads=2)) for i in range(5)]
    try:
        _batch(100)  # a sixth, while they run
        for i, boss in enumerate(bosses):  # more work for each, then the end, in turn
            boss.set_instructions(dict(noop=True), dict(value=list(range(100 * i + 50, 100 * i + 100))))
        failing = run_as_server(None, dict(fault=["raise"]))
        for i, boss in enumerate(bosses):
            report = boss.wait_till_finished()
            assert report["status"] == "finished"
            assert sorted(w["report"] for w in report.workers) == list(range(100 * i, 100 * i + 100))
        with pytest.raises(KeyError):
            failing.wait_till_finished()
        del failing
        _batch(100)
    finally:
        for boss in bosses:
            boss.close()


def test_notebook_session_with_failed_and_abandoned_bosses():
    """Cells run one after another: bosses created, some failing, some abandoned unclosed
    (overwritten, or left in cycles), then more batches: each report complete."""
    kept = []
    for cell in range(4):
        boss = run_as_server(None, dict(fault=["raise", "hang"], seconds=[0.0, 30.0]), scheduler=LaxistScheduler(),
                             stop_grace=0.5)
        try:
            boss.wait_till_finished()
        except KeyError as exc:
            last_error = exc  # kept, as a notebook keeps the last exception: it holds the caller's frames
        abandoned = run_as_server(None, dict(fault=["hang"], seconds=[30.0]), stop_grace=0.5)  # never closed
        _Holder(abandoned)
        kept.append(_Holder(run_as_server(dict(noop=True), dict(value=[cell]))))
        del abandoned
        _batch(50)
        if cell == 2:
            gc.collect()
    assert last_error.report["status"] == "failed"
    for holder in kept:  # the earlier cells' bosses, still held, give their reports
        report = holder.boss.wait_till_finished()
        assert report["status"] == "finished" and len(report.workers) == 1
    del kept, holder, boss
    gc.collect()  # the abandoned ones: stopped and reaped by their __del__
    _batch(100)


class _ClosesItsBossPoller(_Collecting):
    """A scheduler that, in the boss process, closes the boss's epoll descriptor: what a
    descriptor closed twice did to the boss loop.  The run must fail with that cause."""

    def launchable(self, pending, workers, report):
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventpoll]":
                    os.close(int(fd))
            except OSError:
                pass
        return self.laxist.launchable(pending, workers, report)


def test_a_broken_boss_loop_reports_its_cause_not_a_dead_boss():
    with pytest.raises(taylor.TaylorError, match=r"the boss process failed: OSError: \[Errno \d+\]") as info:
        batch_main(dict(noop=True), dict(value=[1, 2]), scheduler=_ClosesItsBossPoller(), print_report=False)
    assert not isinstance(info.value, taylor.BossDiedError)
    assert "Traceback" in str(info.value.__cause__)
    _batch(50)
