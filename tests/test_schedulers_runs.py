"""A few real runs: the caps hold for real processes, and binding pins them."""

from __future__ import annotations

import time

import pytest
import workers  # noqa: F401 - registers the test workers (Sleeper among them)

from taylor import Boss, Worker, batch_main
from taylor.errors import CapacityError
from taylor.schedulers import (
    LongestFirstScheduler,
    MaxMemoryScheduler,
    MaxThreadsScheduler,
    SingleOpenFileScheduler,
    host,
)


class FileToucher(Worker):
    """Holds ``path`` for ``seconds``; defined before any Boss so that bosses know it."""

    _footprint = dict(attr=dict(path=dict(), seconds=dict(type=float)))

    def _task(self):
        time.sleep(self.seconds)
        return self.path


def peak(entries, weight=lambda entry: 1):
    """Largest total ``weight`` of workers running at once, from their start and end times."""
    events = []
    for entry in entries:
        events.append((entry["start_time"], 1, weight(entry)))
        events.append((entry["end_time"], 0, -weight(entry)))  # ends sort before starts at a tie
    level = best = 0
    for _, _, delta in sorted(events):
        level += delta
        best = max(best, level)
    return best


def run(scheduler, common, individual):
    report = batch_main(common, individual, scheduler=scheduler, print_report=False)
    assert report["status"] == "finished"
    return report.workers


def test_max_threads_peak_concurrency_is_the_cap():
    entries = run(MaxThreadsScheduler(max_threads=2), None, dict(sleeping_time=[0.25] * 6))
    assert peak(entries) == 2


def test_memory_cap_holds_for_real_workers():
    memory = [300, 200, 100, 300, 100, 200]
    entries = run(MaxMemoryScheduler(max_memory=400), dict(sleeping_time=0.2), dict(memory=memory))
    assert peak(entries, lambda e: e["instructions"]["memory"]) <= 400
    assert peak(entries) >= 2


def test_longest_first_starts_long_tasks_first():
    entries = run(LongestFirstScheduler(max_threads=1, max_memory=1000), dict(sleeping_time=0.02, memory=10),
                  dict(expected_time=[1.0, 3.0, 2.0], name=["one", "three", "two"]))
    assert [e["name"] for e in sorted(entries, key=lambda e: e["start_time"])] == ["three", "two", "one"]


def test_single_open_file_never_overlaps_on_a_file():
    paths = ["a", "a", "b", "a", "b"]
    entries = run(SingleOpenFileScheduler(max_threads=3, file_keys=["path"]), dict(seconds=0.15),
                  dict(path=paths))
    for name in "ab":
        assert peak([e for e in entries if e["report"] == name]) == 1
    assert peak(entries) == 2


def test_oversize_instruction_raises_in_the_caller_at_once():
    with Boss(scheduler=MaxMemoryScheduler(max_memory=100)) as boss:
        with pytest.raises(CapacityError, match="max_memory=100"):
            boss.set_instructions(None, dict(sleeping_time=[0.01, 0.01], memory=[10, 101]))
        assert boss.get_report()["counts"]["pending"] == 0


@pytest.mark.skipif(len(host.process_cpus()) < 2, reason="binding needs two usable CPUs")
def test_binded_workers_each_run_on_their_own_cpu():
    cpus = host.process_cpus()
    entries = run(MaxThreadsScheduler(max_threads=2, binded=True), None, dict(sleeping_time=[0.2] * 4))
    bindings = {e["name"]: e["report"]["binding"] for e in entries}
    assert all(len(b) == 1 and b[0] in cpus for b in bindings.values())
    for first in entries:  # workers running at the same time are on distinct CPUs
        for second in entries:
            overlap = first["start_time"] < second["end_time"] and second["start_time"] < first["end_time"]
            if first is not second and overlap:
                assert bindings[first["name"]] != bindings[second["name"]]
    unbound = run(MaxThreadsScheduler(max_threads=1), None, dict(sleeping_time=[0.0]))
    assert unbound[0]["report"]["binding"] == ([None] if set(cpus) == set(host.all_cpus()) else cpus)


def test_measured_and_binded_memory_scheduler_runs_real_workers():
    scheduler = MaxMemoryScheduler(max_memory=300, memory_per_task=100, measured=True, binded=True)
    entries = run(scheduler, None, dict(sleeping_time=[0.15] * 5))
    assert peak(entries) <= 3
    assert all(len(e["report"]["binding"]) == 1 for e in entries)
    assert {e["instructions"]["scheduler_ticket"] for e in entries} <= {0, 1, 2}
