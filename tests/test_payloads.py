"""Megabyte instructions and reports: intact, never held by the boss longer than it needs them.

What makes them cheap (buffers out of band, memory files to the spawner, reports passed through the
boss untouched) is measured by benchmarks/executor.py; here, what a user relies on: the bytes that
arrive are the bytes that were sent, the boss's memory does not grow with what passed through it,
schedulers still see recent entries, and a large call is pickled when it is sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import pytest

import taylor
from taylor import Worker, batch_main, wire
from taylor.entries import LOADED_REPORT, NotLoaded
from taylor.schedulers import MaxThreadsScheduler

MIB = 1 << 20

np = pytest.importorskip("numpy")


class Box:
    """An object holding an array (footprints cannot examine bare arrays as instructions)."""

    def __init__(self, array):
        self.array = array


class Doubler(Worker):
    """Doubles its array in place, as a task may do with what it was given; reports its sum."""

    _footprint = dict(attr=dict(doubled=dict(type=Box)))

    def _task(self):
        self.doubled.array *= 2
        return int(self.doubled.array.sum())


class Echo(Worker):
    """Reports ``size`` bytes made from its seed, and a digest of the ``blob`` it was given."""

    _footprint = dict(attr=dict(
        echo_seed=dict(type=int),
        size=dict(type=int, optional=True, default=0),
        blob=dict(type=object, optional=True, default=None),
    ))

    def _task(self):
        given = None if self.blob is None else hashlib.sha256(bytes(self.blob)).hexdigest()
        return dict(made=_made(self.echo_seed, self.size), given=given,
                    array=np.arange(self.size // 8, dtype=np.int64) + self.echo_seed)


def _made(seed: int, size: int) -> bytes:
    return (seed.to_bytes(4, "big") * (size // 4 + 1))[:size]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_megabyte_instructions_and_reports_arrive_byte_for_byte():
    blobs = [os.urandom(MIB + i) for i in range(4)]
    report = batch_main(None, dict(echo_seed=list(range(4)), size=[MIB, 3 * MIB, 17, 0], blob=blobs),
                        scheduler=MaxThreadsScheduler(max_threads=2), print_report=False)
    assert report.ok
    for seed, entry in enumerate(report.in_order):
        got = entry["report"]
        assert got["made"] == _made(seed, [MIB, 3 * MIB, 17, 0][seed])
        assert got["given"] == hashlib.sha256(blobs[seed]).hexdigest()
        assert np.array_equal(got["array"], np.arange(len(got["made"]) // 8) + seed)
        got["array"][:1] = -1  # an ordinary array of the caller's: writable


def test_memory_files_written_again_for_later_requests_give_each_worker_its_own_bytes():
    """The boss writes large requests in memory files it uses again once their worker has exited:
    requests larger and smaller than the file's last one (whose bytes remain past the new one's
    end) each arrive whole, and the boss holds a bounded number of such files."""
    sizes = [300_000, 2 * MIB, 70_000, MIB, 3 * MIB, 100_000, 80_000, 2 * MIB, 90_000, 400_000, 75_000, MIB]
    blobs = [os.urandom(size) for size in sizes]
    boss = taylor.Boss(scheduler=MaxThreadsScheduler(max_threads=2))
    try:
        boss.set_instructions(None, dict(echo_seed=list(range(len(blobs))), blob=blobs))
        boss.make_them_work()
        report = boss.wait_till_finished()
    finally:
        boss.close()
    assert report.ok
    assert [e["report"]["given"] for e in report.in_order] == [hashlib.sha256(b).hexdigest() for b in blobs]


def test_boss_memory_does_not_keep_the_reports_that_passed_through_it():
    """600 reports of 2 MiB: the boss passes them on, and its window of recent entries keeps none
    (before, it kept the last 1,000 entries whole: 1.2 GB here).  It does keep, for reuse, the
    memory it needed at the busiest moment (reports waiting for the caller to read them: here it
    plateaus at some 140 MiB after the first 200), which a quarter of what passed bounds."""
    boss = taylor.Boss(scheduler=MaxThreadsScheduler(max_threads=2))
    try:
        before = _rss_kib(boss.pid)
        for _ in range(3):
            boss.set_instructions(None, dict(echo_seed=list(range(200)), size=[MIB] * 200))
            boss.make_them_work()
            got = 0
            while got < 200:
                entries = boss.wait_for_entries(timeout=60)
                assert entries, "no entry within a minute"
                got += len(entries)
                assert all(e["status"] == "done" and len(e["report"]["made"]) == MIB for e in entries)
                for entry in entries:
                    entry["report"] = None  # the caller's copies go: only the boss's are measured
        grown = (_rss_kib(boss.pid) - before) >> 10
        assert grown < 300, f"the boss grew {grown} MiB after 1,200 MiB passed through it"
    finally:
        boss.close()


def test_a_large_array_instruction_is_the_workers_own_to_change():
    """An array over the spawner's datagram reaches the worker as a view of a memory file (no copy),
    writable like an unpickled copy; what one worker writes is seen by no other."""
    array = np.arange(100_000, dtype=np.int64)  # 800 KB
    report = batch_main(dict(doubled=Box(array)), dict(name=["a", "b", "c"]), print_report=False,
                        scheduler=MaxThreadsScheduler(max_threads=2))
    assert report.ok
    assert [e["report"] for e in report.workers] == [int(array.sum()) * 2] * 3
    assert array[1] == 1  # the caller's own array is untouched


class Watching(MaxThreadsScheduler):
    """Writes down, in the boss, the recent entries the boss shows it at each call.  (Its required
    attribute keeps it out of footprints' look-ups of other schedulers.)"""

    _footprint = dict(attr=dict(watch_file=dict(type=str)))

    def launchable(self, pending, workers, report):
        with open(self.watch_file, "w") as out:
            json.dump([dict(name=e["name"], keys=sorted(e), report=repr(e["report"])) for e in report], out)
        return super().launchable(pending, workers, report)


def test_schedulers_see_recent_entries_without_instructions_and_large_reports_not_loaded(tmp_path):
    path = str(tmp_path / "seen.json")
    boss = taylor.Boss(scheduler=Watching(watch_file=path, max_threads=1))
    try:
        boss.set_instructions(None, dict(echo_seed=[1, 2], size=[10, LOADED_REPORT + 1], name=["small", "large"]))
        boss.make_them_work()
        got = []
        while len(got) < 2:
            got += boss.wait_for_entries(timeout=30)
        boss.set_instructions(None, dict(echo_seed=[3], name=["last"]))  # one more call of the scheduler
        report = boss.wait_till_finished()
    finally:
        boss.close()
    assert report.ok
    with open(path) as seen:
        entries = {e["name"]: e for e in json.load(seen)}
    assert set(entries) == {"small", "large"}
    assert all("instructions" not in e["keys"] and "status" in e["keys"] for e in entries.values())
    assert "'made': b'\\x00\\x00\\x00\\x01" in entries["small"]["report"]  # a small report is loaded there
    assert "not loaded in the boss" in entries["large"]["report"]


def test_the_window_holds_small_reports_and_stands_in_for_large_ones():
    from taylor.entries import boss_view
    from taylor.worker import outcome_message

    small = outcome_message(("ok", {"answer": 42}), 0)
    large = outcome_message(("ok", b"x" * (LOADED_REPORT + 1)), 0)
    decoder = wire.Decoder()
    (kind, packed_small), = decoder.feed(b"".join(bytes(memoryview(p).cast("B")) for p in small))
    (kind, packed_large), = decoder.feed(b"".join(bytes(memoryview(p).cast("B")) for p in large))
    assert kind == "packed"
    assert boss_view(packed_small) == {"answer": 42}
    view = boss_view(packed_large)
    assert isinstance(view, NotLoaded) and view.size > LOADED_REPORT and "not loaded in the boss" in repr(view)


# ----------------------------------------------------------------- the Executor
def _digest(data):
    return hashlib.sha256(bytes(data)).hexdigest()


def _hold(event_file):
    while not os.path.exists(event_file):
        time.sleep(0.01)
    return "held"


def test_executor_megabyte_calls_and_results_arrive_byte_for_byte():
    blobs = [os.urandom(MIB) for _ in range(6)]
    with taylor.Executor(max_workers=2) as executor:
        digests = list(executor.map(_digest, blobs))
        results = list(executor.map(os.urandom, [MIB] * 3))
    assert digests == [hashlib.sha256(b).hexdigest() for b in blobs]
    assert [len(r) for r in results] == [MIB] * 3 and len(set(results)) == 3


def test_a_large_call_is_pickled_when_sent_and_fails_alone_if_it_no_longer_can(tmp_path):
    """Calls beyond BOSS_BYTES wait in the caller: one whose argument became unpicklable meanwhile
    fails with TypeError; the others run."""
    from taylor.executor import BOSS_BYTES

    release = str(tmp_path / "release")
    count = BOSS_BYTES // MIB + 4
    with taylor.Executor(max_workers=1) as executor:
        first = executor.submit(_hold, release)
        args = [[os.urandom(MIB)] for _ in range(count)]
        futures = [executor.submit(len, arg) for arg in args]
        args[-1].append(threading.Lock())  # still in the caller's queue: the boss holds BOSS_BYTES
        args[-2].append("one more")  # changes made before a large call is sent are seen by it
        open(release, "w").close()
        assert first.result(timeout=60) == "held"
        with pytest.raises(TypeError, match="lock"):
            futures[-1].result(timeout=60)
        assert [f.result(timeout=60) for f in futures[:-1]] == [1] * (count - 2) + [2]
