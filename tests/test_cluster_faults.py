"""Cluster faults with real processes: a Dask worker SIGKILLed mid-task, the scheduler killed mid-run."""

from __future__ import annotations

import select
import signal
import time

import psutil
import pytest

pytest.importorskip("distributed")

from cluster_workers import Where, collect, start  # noqa: E402, F401
from dask_cluster import forkers, report_of, running_cluster, task_processes  # noqa: E402
from processes import gone  # noqa: E402

from taylor.cluster.launcher import DaskLauncher  # noqa: E402


@pytest.fixture
def cluster(tmp_path):
    with running_cluster(str(tmp_path), ["1GiB", "1GiB"], forkers_first=False, nthreads=1) as real:
        yield real


def _tasks_running(real, count, within=20.0):
    deadline = time.monotonic() + within
    while True:
        found = task_processes(forkers(real))
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{len(found)} of {count} task processes started"
        time.sleep(0.05)


def test_dask_worker_killed_mid_task_names_worker_and_host_and_is_not_run_again(cluster):
    with DaskLauncher(cluster.address) as launcher:
        with launcher.batch():
            victim_task = start(launcher, where=True, seconds=60, name="victim")
            other_task = start(launcher, where=True, seconds=1, name="other")
        assert victim_task.worker != other_task.worker  # one thread each: one task on each
        processes = _tasks_running(cluster, 2)
        victim = cluster.workers[victim_task.worker]
        victim_forker = [c for c in psutil.Process(victim.pid).children() if c.name() == "taylor-forker"]
        doomed = [p.pid for p in processes if p.ppid() in {f.pid for f in victim_forker}]
        assert len(doomed) == 1
        cluster.kill_worker(victim_task.worker)
        ended = {e.name: e for e in collect(launcher, 2)}
        lost = ended["victim"]
        assert lost.outcome is None and lost.lost
        assert victim_task.worker in lost.lost and "host" in lost.lost and "does not run it again" in lost.lost
        assert lost.where["worker"] == victim_task.worker and lost.where["host"]
        report_of(ended["other"])  # it reported
        # its process died with its Dask worker (through the forker), and nothing runs it again
        assert not gone(doomed + [f.pid for f in victim_forker], within=10)
        assert launcher.capacity.describe()["workers"][0] == 1
        assert launcher.capacity_changed()
        time.sleep(0.5)
        assert not task_processes(forkers(cluster))
        # the cluster goes on with the worker left
        start(launcher, where=True, name="after")
        (after,) = collect(launcher, 1)
        report_of(after)
        assert after.where["worker"] == other_task.worker
        # a worker that joins is counted, and given work
        joined = cluster.add_worker("1GiB")
        deadline = time.monotonic() + 20
        while joined not in launcher.capacity.workers:
            assert time.monotonic() < deadline, "the launcher did not see the new worker"
            select.select([launcher.fileno()], [], [], 1)
            launcher.ended()
        assert launcher.capacity_changed() and launcher.capacity.describe()["cpus"][0] == 2
        with launcher.batch():
            for i in range(4):
                start(launcher, where=True, seconds=0.3, name=f"spread{i}")
        spread = collect(launcher, 4)
        assert {e.where["worker"] for e in spread} == {joined, other_task.worker}


def test_scheduler_killed_mid_run_ends_tasks_as_lost(cluster):
    with DaskLauncher(cluster.address, connect_timeout=3) as launcher:
        task = start(launcher, where=True, seconds=60, name="orphan")
        pids = [p.pid for p in _tasks_running(cluster, 1)] + forkers(cluster)
        cluster.scheduler.send_signal(signal.SIGKILL)
        cluster.scheduler.wait(timeout=10)
        (entry,) = collect(launcher, 1, within=45)
        assert entry.task is task and entry.outcome is None and entry.lost
        assert cluster.address in entry.lost and "connection to the Dask scheduler" in entry.lost
        assert launcher.failure is not None and cluster.address in str(launcher.failure)
    # the Dask workers close without their scheduler, and take their forkers and tasks along

    assert not gone(pids, within=30), "task processes left without the scheduler"
