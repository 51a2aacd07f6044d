"""taylor.Executor: the concurrent.futures interface, with real processes, deaths, timeouts and signals."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import ctypes
import faulthandler
import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path

import psutil
import pytest
from processes import gone, kill

import taylor
from taylor import calls
from taylor.errors import CapacityError, WorkerDiedError, WorkerTimeoutError
from taylor.schedulers import MaxMemoryScheduler

ROOT = Path(__file__).resolve().parents[1]


def square(x):
    return x * x


def nap_then(seconds, value):
    time.sleep(seconds)
    return value


def fail(message):
    raise ValueError(message)


def die_by(signum):
    faulthandler.disable()
    os.kill(os.getpid(), signum)
    time.sleep(10)


def exit_with(code):
    os._exit(code)


def segfault():
    faulthandler.disable()  # or faulthandler prints, and the process still dies of SIGSEGV
    ctypes.string_at(0)


def apply(fn, x):
    return fn(x)


class Result:
    """A result that can be watched for its release (weakref)."""


def make_result():
    return Result()


def touch(path):
    Path(path).write_text(str(os.getpid()))
    return os.getpid()


def wait_for_file(path, limit=20.0):
    """Wait (bounded) until ``path`` exists; say so, so that a test fails rather than hangs."""
    deadline = time.monotonic() + limit
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.01)


def hold_until(started, release):
    """Say it started (its pid, written whole before the file appears), then wait (bounded) for the test
    to release it."""
    Path(f"{started}.tmp").write_text(str(os.getpid()))
    os.replace(f"{started}.tmp", started)
    wait_for_file(release)
    return "released"


def interval(seconds):
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


OFFSET = 10
add_offset = lambda x: x + OFFSET  # noqa: E731 - a lambda made before the executors: sent by address


def make_closure(k):
    def times_k(x):
        return x * k
    return times_k


times_3 = make_closure(3)  # a closure made before the executors


# ---------------------------------------------------------------- the interface
def test_submit_returns_a_real_future_and_map_keeps_input_order():
    with taylor.Executor(max_workers=2) as ex:
        future = ex.submit(square, 7)
        assert isinstance(future, cf.Future)
        assert future.result(timeout=20) == 49
        # The first calls take longest: they end last, yet map yields them first.
        delays = [0.4, 0.3, 0.0, 0.0, 0.1]
        assert list(ex.map(nap_then, delays, range(5), timeout=30)) == [0, 1, 2, 3, 4]
        assert list(ex.map(square, range(7), chunksize=3)) == [x * x for x in range(7)]


def test_map_timeout_bounds_the_wait_for_results_and_cancels_the_rest():
    ex = taylor.Executor(max_workers=1)
    try:
        results = ex.map(nap_then, [30, 0], ["slow", "never"], timeout=0.5)
        start = time.monotonic()
        with pytest.raises(cf.TimeoutError):  # the builtin TimeoutError only from Python 3.11
            next(results)
        assert time.monotonic() - start < 10
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def test_lambdas_and_closures_made_before_the_executor_run_without_pickling():
    with taylor.Executor(max_workers=2) as ex:
        assert ex.submit(add_offset, 1).result(timeout=20) == 11
        assert ex.submit(times_3, 5).result(timeout=20) == 15
        assert ex.submit(apply, add_offset, 2).result(timeout=20) == 12  # as an argument too


def test_functions_made_after_the_executor_go_by_value_with_cloudpickle_else_a_clear_type_error(monkeypatch):
    pytest.importorskip("cloudpickle")
    with taylor.Executor(max_workers=2) as ex:
        k = 4
        assert ex.submit(lambda x: x + k, 1).result(timeout=20) == 5
        monkeypatch.setattr(calls, "cloudpickle", None)
        with pytest.raises(TypeError, match="made after the Executor was created.*cloudpickle"):
            ex.submit(lambda: 1)
        assert ex.submit(add_offset, 0).result(timeout=20) == 10  # by address still


def test_main_module_functions_defined_before_the_executor_work_later_ones_say_what_to_do(tmp_path):
    script = tmp_path / "main_functions.py"
    script.write_text(textwrap.dedent("""
        import sys
        sys.modules.pop("cloudpickle", None)
        sys.modules["cloudpickle"] = None  # as if it were not installed
        import taylor

        def before(x):
            return x + 1

        with taylor.Executor(max_workers=1) as ex:
            def after(x):
                return x + 2
            print(ex.submit(before, 1).result(timeout=20))
            try:
                ex.submit(after, 1)
            except TypeError as exc:
                print("TypeError:", exc)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "2"
    assert lines[1].startswith("TypeError: function after (defined in __main__) was made after the Executor")


def test_results_belong_to_their_futures_alone():
    with taylor.Executor(max_workers=1) as ex:
        future = ex.submit(make_result)
        ref = weakref.ref(future.result(timeout=20))
        del future
        gc.collect()
        assert ref() is None  # not kept by the executor for a final report nobody reads


def test_unpicklable_arguments_raise_at_submit():
    with taylor.Executor(max_workers=1) as ex:
        with pytest.raises(TypeError, match="cannot be sent to its process"):
            ex.submit(square, (i for i in range(3)))


def test_a_function_that_raises_gives_its_own_exception_with_the_remote_traceback():
    with taylor.Executor(max_workers=1) as ex:
        future = ex.submit(fail, "no luck")
        with pytest.raises(ValueError, match="no luck") as info:
            future.result(timeout=20)
        assert isinstance(info.value.__cause__, taylor.RemoteTraceback)
        assert "in fail" in str(info.value.__cause__)


# ---------------------------------------------------------------- deaths and timeouts
@pytest.mark.parametrize("call, says", [
    ((die_by, signal.SIGKILL), "killed by SIGKILL"),
    ((exit_with, 3), "exit code 3"),
    ((segfault,), "killed by SIGSEGV"),
])
def test_a_dead_process_fails_only_its_own_future_and_the_executor_goes_on(call, says):
    with taylor.Executor(max_workers=2) as ex:
        others = [ex.submit(nap_then, 0.2, i) for i in range(3)]
        doomed = ex.submit(*call)
        with pytest.raises(WorkerDiedError, match=says) as info:
            doomed.result(timeout=20)
        assert call[0].__name__ in str(info.value)  # which call died
        assert [f.result(timeout=20) for f in others] == [0, 1, 2]
        assert ex.submit(square, 3).result(timeout=20) == 9


def test_timeouts_the_executors_default_and_a_calls_own():
    with taylor.Executor(max_workers=2, timeout=0.5) as ex:
        slow = ex.submit(nap_then, 30, "late")
        quick = ex.submit(nap_then, 0.05, "in time")
        longer = ex.options(timeout=30).submit(nap_then, 1.0, "allowed longer")
        start = time.monotonic()
        with pytest.raises(WorkerTimeoutError, match="timeout of 0.5 s") as info:
            slow.result(timeout=20)
        assert isinstance(info.value, TimeoutError)
        assert time.monotonic() - start < 20
        assert quick.result(timeout=20) == "in time"
        assert longer.result(timeout=20) == "allowed longer"
        with pytest.raises(WorkerTimeoutError, match="timeout of 0.2 s"):
            ex.options(timeout=0.2).submit(nap_then, 30, "late").result(timeout=20)


# ---------------------------------------------------------------- cancellation
def test_a_call_cancelled_before_it_starts_never_runs_and_a_running_one_cannot_be_cancelled(tmp_path):
    started, release, marker = tmp_path / "started", tmp_path / "release", tmp_path / "ran"
    with taylor.Executor(max_workers=1) as ex:
        running = ex.submit(hold_until, started, release)
        queued = ex.submit(touch, marker)
        wait_for_file(started)
        assert queued.cancel() is True
        assert queued.cancelled()
        assert running.cancel() is False
        assert running.running()
        release.write_text("go")
        assert running.result(timeout=20) == "released"
        assert ex.submit(square, 2).result(timeout=20) == 4  # the cancelled call's slot came and went
        with pytest.raises(cf.CancelledError):
            queued.result(timeout=1)
    assert not marker.exists()


def test_as_completed_and_wait_see_results_and_cancellations(tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    with taylor.Executor(max_workers=1) as ex:
        blocker = ex.submit(hold_until, started, release)
        wait_for_file(started)
        cancelled = ex.submit(square, 5)
        assert cancelled.cancel()
        done, not_done = cf.wait([blocker, cancelled], timeout=5, return_when=cf.FIRST_COMPLETED)
        assert done == {cancelled} and not_done == {blocker}
        release.write_text("go")
        quick = [ex.submit(nap_then, d, d) for d in (0.3, 0.0)]
        order = [f for f in cf.as_completed([blocker, cancelled] + quick, timeout=30)]
        assert set(order) == {blocker, cancelled, *quick}
        assert order[0] is cancelled
        done, not_done = cf.wait(quick, timeout=30, return_when=cf.ALL_COMPLETED)
        assert not not_done and sorted(f.result() for f in done) == [0.0, 0.3]


def test_asyncio_run_in_executor():
    async def main(ex):
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(ex, square, i) for i in range(4)))

    with taylor.Executor(max_workers=2) as ex:
        assert asyncio.run(main(ex)) == [0, 1, 4, 9]


# ---------------------------------------------------------------- scheduling options
def test_declared_memory_is_scheduled_and_an_impossible_call_fails_alone():
    with taylor.Executor(scheduler=MaxMemoryScheduler(limit="memory", max_memory=100)) as ex:
        too_big = ex.options(memory=1000).submit(square, 1)
        with pytest.raises(CapacityError):
            too_big.result(timeout=20)
        # Two calls of 60 MiB never run together under 100 MiB; two of 40 MiB may.
        heavy = ex.options(memory=60)
        first, second = heavy.submit(interval, 0.3), heavy.submit(interval, 0.3)
        (a0, a1), (b0, b1) = first.result(timeout=20), second.result(timeout=20)
        assert a1 <= b0 or b1 <= a0
        assert list(ex.options(memory=40, name="light").map(square, [1, 2])) == [1, 4]


def test_options_are_checked_and_names_are_unique():
    with taylor.Executor(max_workers=1) as ex:
        with pytest.raises(TypeError, match="unknown call option"):
            ex.options(memroy=5)
        with pytest.raises(ValueError, match="timeout"):
            ex.options(timeout=-1)
        ex.options(name="only").submit(square, 1).result(timeout=20)
        with pytest.raises(ValueError, match="already submitted"):
            ex.options(name="only").submit(square, 1)
    with pytest.raises(ValueError, match="max_workers"):
        taylor.Executor(max_workers=0)


# ---------------------------------------------------------------- shutdown
def test_shutdown_waits_then_refuses_new_calls():
    ex = taylor.Executor(max_workers=2)
    futures = [ex.submit(nap_then, 0.2, i) for i in range(4)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures) and [f.result() for f in futures] == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)
    assert not psutil.pid_exists(ex._boss.pid) or psutil.Process(ex._boss.pid).status() == psutil.STATUS_ZOMBIE


def test_shutdown_cancel_futures_stops_running_calls_and_cancels_the_rest(tmp_path):
    started, marker = tmp_path / "started", tmp_path / "ran"
    ex = taylor.Executor(max_workers=1)
    running = ex.submit(hold_until, started, tmp_path / "never")
    queued = ex.submit(touch, marker)
    wait_for_file(started)
    worker = int(started.read_text())
    start = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - start < 15  # stopped, not waited for (it would wait 20 s)
    assert running.cancelled() and queued.cancelled()
    assert gone([worker], within=5.0) == []
    assert not marker.exists()


def test_a_with_block_left_by_ctrl_c_stops_its_calls(tmp_path):
    started = tmp_path / "started"
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with taylor.Executor(max_workers=1) as ex:
            running = ex.submit(hold_until, started, tmp_path / "never")
            queued = ex.submit(square, 2)
            wait_for_file(started)
            raise KeyboardInterrupt
    assert time.monotonic() - start < 15
    assert running.cancelled() and queued.cancelled()


def test_a_boss_stopped_by_sigterm_fails_the_calls_and_says_so(tmp_path):
    started = tmp_path / "started"
    ex = taylor.Executor(max_workers=1)
    try:
        running = ex.submit(hold_until, started, tmp_path / "never")
        queued = ex.submit(square, 2)
        wait_for_file(started)
        os.kill(ex._boss.pid, signal.SIGTERM)
        with pytest.raises(taylor.WorkerError, match="was stopped before it ended"):
            running.result(timeout=20)
        with pytest.raises(cf.BrokenExecutor, match="ended before this call did"):
            queued.result(timeout=20)
        with pytest.raises(cf.BrokenExecutor):
            ex.submit(square, 1)
    finally:
        ex.shutdown(wait=True)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # the point of the test
def test_a_forked_child_cannot_use_its_parents_executor():
    with taylor.Executor(max_workers=1) as ex:
        pid = os.fork()
        if pid == 0:  # the child: its copy of the executor has no manager thread, and must say so
            try:
                ex.submit(square, 1)
            except RuntimeError as exc:
                os._exit(7 if "belongs to process" in str(exc) else 1)
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 7
        assert ex.submit(square, 3).result(timeout=20) == 9


def test_a_killed_boss_breaks_the_executor_clearly():
    ex = taylor.Executor(max_workers=1)
    try:
        long = ex.submit(nap_then, 30, "never")
        time.sleep(0.3)
        os.kill(ex._boss.pid, signal.SIGKILL)
        with pytest.raises(cf.BrokenExecutor, match="ended before this call did"):
            long.result(timeout=20)
        with pytest.raises(cf.BrokenExecutor):
            ex.submit(square, 1)
    finally:
        ex.shutdown(wait=True)


# ---------------------------------------------------------------- nothing left behind
def test_an_executor_never_shut_down_finishes_its_calls_at_exit(tmp_path):
    script = tmp_path / "forgetful.py"
    script.write_text(textwrap.dedent(f"""
        import time, pathlib
        import taylor

        def late_write():
            time.sleep(0.5)
            pathlib.Path({str(tmp_path / "written")!r}).write_text("done")

        ex = taylor.Executor(max_workers=1)
        ex.submit(late_write)
        print(ex._boss.pid, flush=True)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "written").read_text() == "done"
    assert gone([int(out.stdout.split()[0])], within=5.0) == []


CALLER = """
import sys, time
import taylor

def sleeper(seconds):
    time.sleep(seconds)

ex = taylor.Executor(max_workers=2, reuse=sys.argv[1] == "reuse")
futures = [ex.submit(sleeper, 60) for _ in range(3)]
print("submitted", flush=True)
for f in futures:
    f.result()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
@pytest.mark.parametrize("mode, processes", [("fresh", 4), ("reuse", 3)])
def test_a_signalled_caller_leaves_no_process_behind(tmp_path, signum, mode, processes):
    """Fresh: the boss, its spawner and two running calls; reuse: the boss and its two processes."""
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    caller = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert caller.stdout.readline().strip() == "submitted"
        deadline = time.monotonic() + 20
        procs = []
        while time.monotonic() < deadline:
            procs = psutil.Process(caller.pid).children(recursive=True)
            if len(procs) >= processes:
                break
            time.sleep(0.05)
        assert len(procs) >= processes, procs
        pids = [p.pid for p in procs]
        caller.send_signal(signum)
        assert caller.wait(timeout=20) == -signum
        left = gone(pids, within=10.0)
        kill(left)
        assert left == []
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait(timeout=10)
        caller.stdout.close()
