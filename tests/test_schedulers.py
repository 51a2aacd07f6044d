"""Schedulers as pure decisions: no process is started here."""

from __future__ import annotations

import random
from types import SimpleNamespace

import footprints
import pytest

from taylor.errors import CapacityError, InstructionsError
from taylor.schedulers import (
    BaseScheduler,
    LaxistScheduler,
    LongestFirstScheduler,
    MaxMemoryScheduler,
    MaxThreadsScheduler,
    SingleOpenFileScheduler,
    host,
    memory,
)
from taylor.schedulers.binding import BindToTicket, socket_packed_cpus
from taylor.schedulers.queues import FitQueue, PackedFifo, PackedStore

fpx = footprints.proxy


def rows(n, **columns):
    """n instruction dicts named t0..t(n-1), with per-row values from ``columns`` (lists) or constants."""
    out = []
    for i in range(n):
        row = {"name": f"t{i}"}
        for key, values in columns.items():
            row[key] = values[i] if isinstance(values, list) else values
        out.append(row)
    return out


def running(*instructions, pid=None):
    """Running workers as the boss shows them to schedulers."""
    return {i["name"]: SimpleNamespace(name=i["name"], memory=float(i.get("memory", 0.0)),
                                       expected_time=float(i.get("expected_time", 0.0)),
                                       scheduler_ticket=i.get("scheduler_ticket"), instructions=i, pid=pid)
            for i in instructions}


def queue_of(scheduler, items):
    queue = scheduler.pending_queue()
    queue = [] if queue is None else queue
    queue.extend(items)
    return queue


def simulate(scheduler, items, finish_order=None, seed=1):
    """Drive ``scheduler`` as the boss does (until nothing is pending), ending a random running
    worker between calls; return the list of running sets seen after each call."""
    rng = random.Random(seed)
    pending = queue_of(scheduler, items)
    workers, snapshots = {}, []
    while pending or workers:
        launch, later = scheduler.launchable(pending, workers, [])
        pending = later
        for one in launch:
            workers.update(running(one))
        snapshots.append([w.instructions for w in workers.values()])
        assert launch or workers, "stalled"
        if workers:
            del workers[rng.choice(sorted(workers))]
    return snapshots


# ---------------------------------------------------------------- selection
@pytest.mark.parametrize("description, cls", [
    (dict(nosort=True), LaxistScheduler),
    (dict(limit="threads", max_threads=3), MaxThreadsScheduler),
    (dict(limit="processes", max_threads=3), MaxThreadsScheduler),
    (dict(limit="memory", max_memory=1000.0), MaxMemoryScheduler),
    (dict(limit="mem", max_memory=1000.0, measured=True, binded=True), MaxMemoryScheduler),
    (dict(limit="threads+memory", max_threads=2, max_memory=1000.0), LongestFirstScheduler),
    (dict(limit="threads", max_threads=2, singlefile=True), SingleOpenFileScheduler),
])
def test_each_scheduler_is_reachable_through_footprints(description, cls):
    assert type(fpx.scheduler(**description)) is cls


def test_plain_classes_take_the_same_parameters():
    assert LaxistScheduler().nosort is True
    assert MaxThreadsScheduler(max_threads=3).threads == 3
    assert MaxMemoryScheduler(max_memory=512).max_memory == 512.0
    both = LongestFirstScheduler(max_threads=2, max_memory=100)
    assert (both.threads, both.max_memory) == (2, 100.0)
    single = SingleOpenFileScheduler(max_threads=2, file_keys="src")
    assert single.threads == 2 and list(single.file_keys) == ["src"]


def test_zero_threads_means_the_cpus_this_job_may_use():
    assert MaxThreadsScheduler(max_threads=0).threads == host.usable_cpus()
    assert LongestFirstScheduler(max_threads=0, max_memory=10).threads == host.usable_cpus()


def test_bad_parameters_are_refused():
    with pytest.raises(InstructionsError, match="max_threads"):
        MaxThreadsScheduler(max_threads=-1)
    with pytest.raises(InstructionsError, match="memory_max_percentage"):
        MaxMemoryScheduler(memory_max_percentage=1.5)
    with pytest.raises(InstructionsError, match="max_memory"):
        MaxMemoryScheduler(max_memory=-3)


# -------------------------------------------------------------- threads
def test_laxist_starts_everything_in_order():
    pending = rows(5)
    launch, later = LaxistScheduler().launchable(pending, {}, [])
    assert [i["name"] for i in launch] == ["t0", "t1", "t2", "t3", "t4"] and not later


@pytest.mark.parametrize("container", [list, "own"])
def test_max_threads_caps_running_workers_and_keeps_order(container):
    scheduler = MaxThreadsScheduler(max_threads=3)
    pending = rows(10) if container is list else queue_of(scheduler, rows(10))
    launch, later = scheduler.launchable(pending, running({"name": "x", "scheduler_ticket": 1}), [])
    assert [i["name"] for i in launch] == ["t0", "t1"]
    assert later is pending and len(later) == 8 and later[0]["name"] == "t2"
    assert sorted(i["scheduler_ticket"] for i in launch) == [0, 2]  # ticket 1 is taken
    assert scheduler.launchable(pending, running(*launch, {"name": "x"}), [])[0] == []


def test_threads_scheduler_keeps_the_boss_queue_packed_in_order():
    queue = MaxThreadsScheduler(max_threads=2).pending_queue()
    assert isinstance(queue, PackedFifo)
    queue.extend(rows(3))
    queue.insert(0, {"name": "back"})
    assert [i["name"] for i in queue] == ["back", "t0", "t1", "t2"] and queue[1] == {"name": "t0"}
    assert [queue.popleft()["name"] for _ in range(4)] == ["back", "t0", "t1", "t2"] and not queue
    assert LaxistScheduler().pending_queue() is None


def test_peak_concurrency_never_exceeds_max_threads_in_a_long_simulation():
    snapshots = simulate(MaxThreadsScheduler(max_threads=4), rows(200))
    assert max(len(s) for s in snapshots) == 4
    for running_now in snapshots:
        tickets = [i["scheduler_ticket"] for i in running_now]
        assert len(set(tickets)) == len(tickets) and set(tickets) <= {0, 1, 2, 3}


# --------------------------------------------------------------- memory
def test_memory_scheduler_fits_declared_memory_and_skips_what_does_not_fit():
    scheduler = MaxMemoryScheduler(max_memory=1000, memory_per_task=100)
    pending = queue_of(scheduler, rows(5, memory=[600, 500, 300, 0, 200]))
    launch, later = scheduler.launchable(pending, {}, [])
    # t0 (600) fits; t1 (500) does not; t2 (300) fits; t3 counts memory_per_task (100) and fits.
    assert [i["name"] for i in launch] == ["t0", "t2", "t3"]
    assert [i["name"] for i in later] == ["t1", "t4"]
    launch, _ = scheduler.launchable(later, running(*launch), [])
    assert launch == []
    launch, _ = scheduler.launchable(later, running(rows(1, memory=300)[0]), [])
    assert [i["name"] for i in launch] == ["t1", "t4"]


def test_memory_scheduler_works_on_plain_lists_the_same_way():
    scheduler = MaxMemoryScheduler(max_memory=1000, memory_per_task=100)
    pending = rows(5, memory=[600, 500, 300, 0, 200])
    launch, later = scheduler.launchable(pending, {}, [])
    assert [i["name"] for i in launch] == ["t0", "t2", "t3"] and later is pending
    assert [i["name"] for i in later] == ["t1", "t4"]


def test_declared_memory_of_running_workers_stays_under_the_cap():
    rng = random.Random(7)
    scheduler = MaxMemoryScheduler(max_memory=1000)
    items = rows(300, memory=[rng.choice([50, 100, 250, 400, 1000]) for _ in range(300)])
    snapshots = simulate(scheduler, items)
    assert max(sum(i["memory"] for i in s) for s in snapshots) <= 1000
    assert sum(len(s) for s in snapshots) >= 300


def test_default_max_memory_is_a_fraction_of_the_job_memory():
    scheduler = MaxMemoryScheduler(memory_max_percentage=0.5)
    assert scheduler.max_memory == pytest.approx(0.5 * host.usable_memory(), rel=1e-6)
    assert "0.5 x" in scheduler.memory_source


def test_oversize_instruction_is_refused_by_validate_naming_the_worker():
    scheduler = MaxMemoryScheduler(max_memory=1000, memory_per_task=2000)
    scheduler.validate(rows(2, memory=[1000, 10]))
    with pytest.raises(CapacityError, match="'t1' declares memory=1001 MiB.*max_memory=1000"):
        scheduler.validate(rows(2, memory=[10, 1001]))
    with pytest.raises(CapacityError, match="'t0' declares no memory.*memory_per_task=2000"):
        scheduler.validate(rows(1))


def test_measured_memory_holds_back_what_the_host_cannot_give(monkeypatch):
    scheduler = MaxMemoryScheduler(max_memory=10000, measured=True)
    monkeypatch.setattr(memory, "available_memory", lambda: 1000.0)
    monkeypatch.setattr(memory, "_trees_rss", lambda pids: [100.0 for _ in pids])
    busy = running(rows(1, memory=[500])[0], pid=12345)
    # Available 1000 minus the 400 the running worker declared but does not use yet: 600.
    assert scheduler.measured_room(busy) == pytest.approx(600.0)
    pending = queue_of(scheduler, [{"name": "a", "memory": 700}, {"name": "b", "memory": 500}])
    launch, later = scheduler.launchable(pending, busy, [])
    assert [i["name"] for i in launch] == ["b"] and [i["name"] for i in later] == ["a"]
    # With nothing running there is nothing to wait for: the declared cap alone decides.
    monkeypatch.setattr(memory, "available_memory", lambda: 10.0)
    launch, _ = scheduler.launchable(later, {}, [])
    assert [i["name"] for i in launch] == ["a"]


# ---------------------------------------------------------- longest first
def test_longest_first_starts_the_longest_that_fit():
    scheduler = LongestFirstScheduler(max_threads=2, max_memory=1000)
    items = rows(5, expected_time=[1, 5, 3, 9, 7], memory=[100, 100, 100, 950, 100])
    pending = queue_of(scheduler, items)
    launch, later = scheduler.launchable(pending, {}, [])
    assert [i["name"] for i in launch] == ["t3"]  # 9 s first; then 950 + 100 would exceed 1000
    launch, later = scheduler.launchable(later, {}, [])
    assert [i["name"] for i in launch] == ["t4", "t1"]  # 7 s then 5 s, two threads
    assert [i["name"] for i in later] == ["t2", "t0"]


def test_longest_first_on_a_plain_list_sorts_what_remains():
    scheduler = LongestFirstScheduler(max_threads=1, max_memory=1000)
    pending = rows(3, expected_time=[1, 3, 2], memory=10)
    launch, later = scheduler.launchable(pending, {}, [])
    assert [i["name"] for i in launch] == ["t1"] and [i["name"] for i in later] == ["t2", "t0"]


def test_longest_first_respects_both_caps_in_a_long_simulation():
    rng = random.Random(3)
    scheduler = LongestFirstScheduler(max_threads=3, max_memory=1000)
    items = rows(300, expected_time=[rng.random() for _ in range(300)],
                 memory=[rng.choice([100, 300, 600]) for _ in range(300)])
    snapshots = simulate(scheduler, items)
    assert max(len(s) for s in snapshots) <= 3
    assert max(sum(i["memory"] for i in s) for s in snapshots) <= 1000


# ------------------------------------------------------------ single file
def test_single_file_never_opens_a_file_twice_and_keeps_order():
    scheduler = SingleOpenFileScheduler(max_threads=4, file_keys=["src", "dst"])
    items = [{"name": "a", "src": "f1"}, {"name": "b", "src": "f1"}, {"name": "c", "dst": ["f2", "f3"]},
             {"name": "d", "src": "f3"}, {"name": "e"}]
    pending = queue_of(scheduler, items)
    launch, later = scheduler.launchable(pending, {}, [])
    assert [i["name"] for i in launch] == ["a", "c", "e"]
    assert [i["name"] for i in later] == ["b", "d"]
    launch2, later = scheduler.launchable(later, running(items[2]), [])  # a and e ended, c runs
    assert [i["name"] for i in launch2] == ["b"]
    launch3, later = scheduler.launchable(later, running(items[1]), [])  # c ended: f3 is free
    assert [i["name"] for i in launch3] == ["d"] and not later


def test_single_file_with_many_conflicts_runs_each_file_alone():
    rng = random.Random(5)
    scheduler = SingleOpenFileScheduler(max_threads=4, file_keys=["fileA", "fileB"])
    items = rows(200, fileA=[f"f{rng.randrange(6)}" for _ in range(200)],
                 fileB=[f"f{rng.randrange(6)}" for _ in range(200)])
    snapshots = simulate(scheduler, items)
    assert sum(len(s) for s in snapshots) >= 200
    for running_now in snapshots:
        names = [f for i in running_now for f in {i["fileA"], i["fileB"]}]
        assert len(names) == len(set(names))


# ------------------------------------------------------- custom schedulers
class OnlyEven(MaxThreadsScheduler):
    """A taylorism-style custom scheduler: filters, then asks its parent."""

    _footprint = dict(attr=dict(evenonly=dict(values=[True], type=bool)))

    def launchable(self, pending_instructions, workers, report):
        even = [i for i in pending_instructions if i["value"] % 2 == 0]
        odd = [i for i in pending_instructions if i["value"] % 2]
        launch, later = super().launchable(even, workers, report)
        return launch, list(later) + odd


def test_taylorism_style_subclass_gets_a_list_and_its_parent_logic():
    scheduler = fpx.scheduler(limit="threads", max_threads=2, evenonly=True)
    assert isinstance(scheduler, OnlyEven) and scheduler.pending_queue() is None
    launch, later = scheduler.launchable(rows(6, value=list(range(6))), {}, [])
    assert [i["value"] for i in launch] == [0, 2]
    assert sorted(i["value"] for i in later) == [1, 3, 4, 5]
    assert {i["scheduler_ticket"] for i in launch} == {0, 1}


def test_base_scheduler_ticket_semantics_are_kept():
    class Tickets(LaxistScheduler):
        def _all_tickets(self):
            return {"a", "b"}

    scheduler = Tickets()
    launch = scheduler._assign_tickets(running({"name": "x", "scheduler_ticket": "a"}), rows(2))
    assert [i["scheduler_ticket"] for i in launch] == ["b", None]
    assert all(i["scheduler_hooks"] == [] for i in launch)
    assert BaseScheduler._all_tickets(scheduler) == {None}


# ------------------------------------------------------------------ binding
def test_binding_hook_only_when_binded_and_maps_tickets_to_distinct_cpus():
    assert MaxThreadsScheduler(max_threads=2)._workers_hooks() == []
    scheduler = MaxThreadsScheduler(max_threads=2, binded=True)
    (hook,) = scheduler._workers_hooks()
    assert isinstance(hook, BindToTicket) and sorted(hook.cpus) == host.process_cpus()
    (hook,) = MaxMemoryScheduler(max_memory=10, binded=True)._workers_hooks()
    assert BindToTicket([4, 6]).cpu_for(3) == 6 and BindToTicket([4, 6]).cpu_for(None) is None


def _fake_topology(tmp_path, topology):
    for cpu, (socket, core) in topology.items():
        base = tmp_path / f"sys/devices/system/cpu/cpu{cpu}/topology"
        base.mkdir(parents=True)
        (base / "physical_package_id").write_text(f"{socket}\n")
        (base / "core_id").write_text(f"{core}\n")


def test_socket_packed_order_fills_cores_of_a_socket_before_siblings(tmp_path):
    # 2 sockets x 2 cores x 2 hardware threads, numbered as Linux often does.
    _fake_topology(tmp_path, {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1),
                              4: (0, 0), 5: (0, 1), 6: (1, 0), 7: (1, 1)})
    assert socket_packed_cpus(range(8), root=str(tmp_path)) == [0, 1, 4, 5, 2, 3, 6, 7]
    assert socket_packed_cpus([1, 3, 5], root=str(tmp_path)) == [1, 5, 3]
    assert socket_packed_cpus([3, 1], root=str(tmp_path / "none")) == [1, 3]


# -------------------------------------------------------------------- queue
def test_fit_queue_pops_the_first_fitting_like_a_scan_does():
    rng = random.Random(11)
    queue = FitQueue(lambda item, seq: (-item[1], seq), lambda item: item[2])
    naive = []
    for step in range(3000):
        if rng.random() < 0.55:
            batch = [(step, rng.randrange(5), rng.randrange(100)) for _ in range(rng.choice([1, 1, 40]))]
            queue.extend(batch)
            naive.extend(batch)
            naive.sort(key=lambda item: -item[1])  # stable: arrival order among ties
        else:
            free = rng.randrange(120)
            expected = next((item for item in naive if item[2] <= free), None)
            if expected is not None:
                naive.remove(expected)
            assert queue.pop_fit(free) == expected
        assert len(queue) == len(naive)
    assert list(queue) == naive
    assert queue.least_need() == min((item[2] for item in naive), default=float("inf"))


def test_packed_store_gives_back_what_it_was_given_and_frees_segments():
    store = PackedStore()
    store.SEGMENT = 4096
    store.PACK_AFTER = 0  # pack from the first item
    items = [{"name": f"t{i}", "blob": "x" * (i * 37 % 500)} for i in range(200)]
    handles = [store.put(item) for item in items]
    assert len(store._segments) > 5
    assert [store.take(h) for h in handles[:150]] == items[:150]
    # Emptied segments are unmapped: only those holding the other 50 remain.
    assert set(store._segments) == {h >> 32 for h in handles[150:]} and len(store._segments) < 10
    hook = store.put(lambda worker: None)  # unpicklable: kept as an object
    assert callable(store.take(hook))
    assert [store.get(h) for h in handles[150:]] == items[150:]


def test_packed_store_packs_only_long_queues():
    store = PackedStore()
    store.PACK_AFTER = 3
    handles = [store.put({"i": i}) for i in range(5)]
    assert [h < 0 for h in handles] == [True, True, True, False, False]  # kept, kept, kept, packed...
    assert [store.take(h) for h in handles] == [{"i": i} for i in range(5)]
    assert store.put({"i": 5}) < 0  # short again: kept as an object


def test_resident_memory_of_a_process_tree_is_measured():
    import os

    (mine,) = memory._trees_rss([os.getpid()])
    assert 1.0 < mine < 100000.0
    assert memory._trees_rss([None, 2 ** 22 + 12345]) == [0.0, 0.0]


def test_tickets_are_the_smallest_free_ones():
    scheduler = MaxMemoryScheduler(max_memory=1000, memory_per_task=1)
    busy = running({"name": "x", "scheduler_ticket": 0}, {"name": "y", "scheduler_ticket": 2})
    launch, _ = scheduler.launchable(queue_of(scheduler, rows(3)), busy, [])
    assert [i["scheduler_ticket"] for i in launch] == [1, 3, 4]
    launch = MaxThreadsScheduler(max_threads=3)._assign_tickets(busy, rows(3))
    assert [i["scheduler_ticket"] for i in launch] == [1, None, None]


def test_list_paths_give_back_a_tuple_as_a_new_list():
    scheduler = SingleOpenFileScheduler(max_threads=1)
    launch, later = scheduler.launchable(tuple(rows(2, file="f")), {}, [])
    assert [i["name"] for i in launch] == ["t0"] and [i["name"] for i in later] == ["t1"]
    scheduler = MaxMemoryScheduler(max_memory=10, memory_per_task=6)
    launch, later = scheduler.launchable(tuple(rows(2)), {}, [])
    assert [i["name"] for i in launch] == ["t0"] and [i["name"] for i in later] == ["t1"]
