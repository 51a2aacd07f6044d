"""Large calls and results that go around the boss in bulk files (taylor.bulk).

What a user relies on: the bytes a call gets and the result it returns are
the bytes sent, whichever way they went (a bulk file, or the boss when every
slot is taken); a call whose process dies holding a slot gives it back; the
result limit and unpicklable results fail their own future as they do through
the boss; an executor's files are its own (closed in processes forked from
it for anything else, and at shutdown).  Speed is benchmarks/executor.py's.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import pytest
from test_executor import hold_until, wait_for_file

import taylor
from taylor import bulk
from taylor.errors import ReportError, WorkerDiedError

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="bulk files need memfd_create (Linux)")

KIB = 1 << 10
MIB = 1 << 20


def made(seed: int, size: int) -> bytes:
    """``size`` bytes that differ from one seed to the next."""
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def digest(data) -> str:
    return hashlib.sha256(data).hexdigest()


def make(seed, size):
    return made(seed, size)


def echo_digest(seed, data):
    return seed, digest(data)


class DiesUnpickled:
    """Kills the process that unpickles it: a call's process dies while loading its arguments."""

    def __reduce__(self):
        return os._exit, (7,)


class DiesPickled:
    """Kills the process that pickles it: a result's process dies half-way through its pickle."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)


def half_then_die(size):
    return [made(1, size), DiesPickled()]


def _refused_in_caller():
    if os.environ.get("TAYLOR_TEST_CALLER") == str(os.getpid()):
        raise RuntimeError("this result cannot be loaded in the caller")
    return "loaded"


class LoadsOnlyInWorkers:
    """A result whose unpickling fails in the caller alone."""

    def __init__(self, payload):
        self.payload = payload

    def __reduce__(self):
        return _refused_in_caller, ()


def unloadable(size):
    return [LoadsOnlyInWorkers(made(2, size))]


def ignore(*args):
    return None


def owners(ex) -> list:
    return list(ex._bulk._owners(0)) + list(ex._bulk._owners(bulk.SLOTS))


def until(condition, limit=20.0):
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "never came true"
        time.sleep(0.01)


def bulk_fds(pid) -> list:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "taylor-bulk" in target:
            found.append(target)
    return found


def test_large_calls_and_results_arrive_intact_in_every_size_and_leave_every_slot_free():
    sizes = [bulk.SMALLEST - 100, bulk.SMALLEST + 1, 300 * KIB, MIB, 3 * MIB + 5, 200 * KIB, 5 * MIB]
    with taylor.Executor(max_workers=2) as ex:
        results = list(ex.map(make, range(len(sizes)), sizes))
        given = list(ex.map(echo_digest, range(len(sizes)), [made(s + 10, size) for s, size in enumerate(sizes)]))
        assert [digest(r) for r in results] == [digest(made(s, size)) for s, size in enumerate(sizes)]
        assert given == [(s, digest(made(s + 10, size))) for s, size in enumerate(sizes)]
        # The large ones went through the files (which keep their pages), the small one did not.
        assert max(ex._bulk._result_sizes) >= 5 * MIB and max(ex._bulk._call_sizes) >= 3 * MIB
        assert owners(ex) == [0] * (2 * bulk.SLOTS)


def test_many_results_at_once_never_mix_up_their_slots():
    with taylor.Executor(max_workers=4) as ex:
        futures = [ex.submit(make, seed, 100 * KIB + seed * 997) for seed in range(60)]
        for seed, future in enumerate(futures):
            assert digest(future.result(timeout=60)) == digest(made(seed, 100 * KIB + seed * 997))
        assert owners(ex) == [0] * (2 * bulk.SLOTS)


def test_with_every_result_slot_taken_results_go_through_the_boss_intact():
    with taylor.Executor(max_workers=2) as ex:
        taken = 999_999  # as if some call held them all
        for slot in range(bulk.SLOTS):
            ex._bulk._set(bulk.SLOTS + slot, taken)
        results = list(ex.map(make, range(6), [400 * KIB] * 6))
        assert [digest(r) for r in results] == [digest(made(s, 400 * KIB)) for s in range(6)]
        assert ex._bulk._result_sizes == [0] * bulk.SLOTS  # none went in a file
        for slot in range(bulk.SLOTS):
            ex._bulk._set(bulk.SLOTS + slot, 0)
        assert digest(ex.submit(make, 9, 400 * KIB).result(timeout=30)) == digest(made(9, 400 * KIB))
        assert max(ex._bulk._result_sizes) > 0  # and through a file once one is free


def test_files_past_the_pages_kept_are_emptied_once_read_and_every_result_stays_intact(monkeypatch):
    monkeypatch.setattr(bulk, "KEEP_BYTES", MIB)  # the caller's rule: its workers never read it
    with taylor.Executor(max_workers=4) as ex:
        futures = [ex.submit(make, seed, 600 * KIB) for seed in range(40)]
        for seed, future in enumerate(futures):
            assert future.result(timeout=60) == made(seed, 600 * KIB)
        kept = sum(os.fstat(fd).st_size for fd in ex._bulk.results)
        assert 0 < kept <= MIB + 600 * KIB
        assert owners(ex) == [0] * (2 * bulk.SLOTS)


def test_a_process_that_dies_holding_a_call_slot_gives_it_back():
    with taylor.Executor(max_workers=2) as ex:
        future = ex.submit(ignore, made(3, MIB), DiesUnpickled())
        with pytest.raises(WorkerDiedError, match="exit code 7"):
            future.result(timeout=30)
        assert owners(ex) == [0] * (2 * bulk.SLOTS)
        assert ex.submit(echo_digest, 1, made(4, MIB)).result(timeout=30) == (1, digest(made(4, MIB)))


def test_a_process_that_dies_holding_a_result_slot_gives_it_back():
    with taylor.Executor(max_workers=2) as ex:
        future = ex.submit(half_then_die, 2 * MIB)
        with pytest.raises(WorkerDiedError, match="SIGKILL"):
            future.result(timeout=30)
        assert max(ex._bulk._call_sizes) == 0
        assert owners(ex) == [0] * (2 * bulk.SLOTS)
        assert digest(ex.submit(make, 5, MIB).result(timeout=30)) == digest(made(5, MIB))


def test_cancelled_large_calls_give_their_slots_back(tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    with taylor.Executor(max_workers=1) as ex:
        running = ex.submit(hold_until, started, release)
        wait_for_file(started)
        queued = [ex.submit(echo_digest, seed, made(seed, MIB)) for seed in range(4)]
        until(lambda: sum(1 for who in owners(ex)[:bulk.SLOTS] if who) == 4)  # sent, each in its file
        assert all(future.cancel() for future in queued)
        release.write_text("go")
        assert running.result(timeout=30) == "released"
        assert ex.submit(ignore).result(timeout=30) is None  # the cancelled calls' entries came before
        assert owners(ex) == [0] * (2 * bulk.SLOTS)


def test_a_result_over_the_limit_fails_its_future_as_through_the_boss():
    with taylor.Executor(max_workers=2, max_report_bytes=300 * KIB) as ex:
        future = ex.submit(make, 1, MIB)
        with pytest.raises(ReportError, match="more than the limit of 307200 bytes"):
            future.result(timeout=30)
        assert len(ex.submit(make, 2, 200 * KIB).result(timeout=30)) == 200 * KIB
        assert owners(ex) == [0] * (2 * bulk.SLOTS)


def unpicklable_after(size):
    return [made(1, size), threading.Lock()]  # the bytes spill into a file before the lock fails


def test_a_large_result_that_cannot_be_pickled_fails_as_through_the_boss_and_frees_its_slot():
    with taylor.Executor(max_workers=2) as ex:
        future = ex.submit(unpicklable_after, MIB)
        with pytest.raises(ReportError, match="could not be pickled"):
            future.result(timeout=30)
        assert owners(ex) == [0] * (2 * bulk.SLOTS)


def test_a_result_the_caller_cannot_load_fails_its_own_future_and_frees_its_slot(monkeypatch):
    monkeypatch.setenv("TAYLOR_TEST_CALLER", str(os.getpid()))
    with taylor.Executor(max_workers=2) as ex:
        future = ex.submit(unloadable, MIB)
        with pytest.raises(ReportError, match="cannot unpickle.*cannot be loaded in the caller"):
            future.result(timeout=30)
        assert owners(ex) == [0] * (2 * bulk.SLOTS)
        assert digest(ex.submit(make, 3, MIB).result(timeout=30)) == digest(made(3, MIB))


def test_reuse_mode_carries_large_calls_and_results_too():
    with taylor.Executor(max_workers=2, reuse=True) as ex:
        results = list(ex.map(make, range(8), [MIB] * 8))
        given = list(ex.map(echo_digest, range(8), [made(s, MIB) for s in range(8)]))
        assert [digest(r) for r in results] == [digest(made(s, MIB)) for s in range(8)]
        assert given == [(s, digest(made(s, MIB))) for s in range(8)]
        assert max(ex._bulk._result_sizes) >= MIB and max(ex._bulk._call_sizes) >= MIB


# Python 3.12+ warns of both forks below: this test forks a threaded process on purpose, and a second
# executor's boss is forked while the first's thread runs (docs/executor.rst says so).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_each_boss_holds_its_own_executors_files_and_shutdown_closes_them():
    first = taylor.Executor(max_workers=1)
    second = taylor.Executor(max_workers=1)
    try:
        for ex in (first, second):  # its boss is running its loop: past the fork's clean-up
            assert ex.submit(ignore).result(timeout=30) is None
        per_set = 2 * bulk.SLOTS + 1
        assert len(bulk_fds(first._boss.pid)) == per_set
        assert len(bulk_fds(second._boss.pid)) == per_set  # not the first executor's as well
        assert len(bulk_fds(os.getpid())) == 2 * per_set
        pid = os.fork()
        if pid == 0:  # a plain fork of the caller holds none
            os._exit(len(bulk_fds(os.getpid())))
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        first.shutdown()
        second.shutdown()
    assert bulk_fds(os.getpid()) == []


def test_a_file_that_cannot_grow_sends_the_call_through_the_boss(monkeypatch):
    """No memory for the file (a cgroup's limit, say): the call still runs, through the boss."""
    with taylor.Executor(max_workers=1) as ex:
        monkeypatch.setattr(bulk._Writer, "write", _no_space)
        assert ex.submit(echo_digest, 1, made(6, MIB)).result(timeout=30) == (1, digest(made(6, MIB)))
        assert ex._bulk._call_sizes == [0] * bulk.SLOTS
        assert owners(ex) == [0] * (2 * bulk.SLOTS)


def _no_space(self, chunk):
    raise OSError(28, "No space left on device")


def test_a_file_left_longer_by_an_earlier_call_is_read_to_the_new_calls_size():
    with taylor.Executor(max_workers=1) as ex:
        assert ex.submit(echo_digest, 1, made(1, 3 * MIB)).result(timeout=30) == (1, digest(made(1, 3 * MIB)))
        assert ex.submit(echo_digest, 2, made(2, MIB)).result(timeout=30) == (2, digest(made(2, MIB)))
        assert ex.submit(make, 3, 3 * MIB).result(timeout=30) == made(3, 3 * MIB)
        assert ex.submit(make, 4, MIB).result(timeout=30) == made(4, MIB)
