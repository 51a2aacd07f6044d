"""CPU binding on a Dask cluster, with a real scheduler and two Dask workers on 127.0.0.1 (one host).

Binding applies per host: each task process is pinned to one CPU of the host
it runs on, no two running tasks of the run on that host share one (though
the two Dask workers are distinct), and a task's CPU is free at its end.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("distributed")

import cluster_workers  # noqa: E402, F401 - registers Pinned
from dask_cluster import TESTS, running_cluster  # noqa: E402

from taylor import Boss, batch_main  # noqa: E402
from taylor.cluster.connection import ClusterError  # noqa: E402
from taylor.cluster.launcher import DaskLauncher  # noqa: E402
from taylor.schedulers import MaxThreadsScheduler  # noqa: E402

HOST_CPUS = sorted(os.sched_getaffinity(0))  # the Dask workers here inherit the tests' affinity


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(str(tmp_path_factory.mktemp("dask")), ["1GiB", "1GiB"]) as real:  # 2 x 2 threads
        yield real


def _entries(report):
    return [e for e in report["workers_report"]]


def test_each_task_is_pinned_to_one_cpu_of_its_host_and_running_tasks_never_share_one(cluster):
    count = 3 * len(HOST_CPUS)
    report = batch_main(dict(pinned=True), dict(seconds=[0.4] * count), print_report=False,
                        scheduler=MaxThreadsScheduler(binded=True), cluster=cluster.address)
    entries = _entries(report)
    assert len(entries) == count and all(e["status"] == "done" for e in entries), entries
    ran = [e["report"] for e in entries]
    assert all(len(r["cpus"]) == 1 and r["cpus"][0] in HOST_CPUS for r in ran), ran
    assert {e["where"]["worker"] for e in entries} == set(cluster.workers)  # both Dask workers took tasks
    assert all(e["where"]["cpu"] == e["report"]["cpus"][0] for e in entries)
    # The 4 Dask threads of this host could run 4 tasks at once: binding lets as many run as it has CPUs,
    # each on its own CPU.
    for one in ran:
        overlapping = [o for o in ran if o is not one and o["start"] < one["end"] and one["start"] < o["end"]]
        assert all(o["cpus"] != one["cpus"] for o in overlapping), (one, overlapping)
        at_its_start = [o for o in ran if o["start"] <= one["start"] < o["end"]]
        assert len(at_its_start) <= len(HOST_CPUS), (one, at_its_start)
    # The CPUs were given again as tasks ended: every CPU of the host was used, more than once.
    assert {r["cpus"][0] for r in ran} == set(HOST_CPUS)


def test_without_binding_tasks_keep_every_cpu_of_their_host(cluster):
    report = batch_main(dict(pinned=True), dict(seconds=[0.0, 0.0]), print_report=False, cluster=cluster.address)
    assert all(e["report"]["cpus"] == HOST_CPUS for e in _entries(report))
    assert all("cpu" not in e["where"] for e in _entries(report))


def test_the_local_schedulers_binding_hook_is_not_run_remotely(cluster):
    # Whatever CPU the boss's own ticket would map to, the task's CPU is the one the launcher gave it.
    report = batch_main(dict(pinned=True), dict(seconds=[0.0] * 4), print_report=False,
                        scheduler=MaxThreadsScheduler(binded=True, max_threads=1), cluster=cluster.address)
    entries = _entries(report)
    assert [e["report"]["cpus"] for e in entries] == [[e["where"]["cpu"]] for e in entries]


def test_in_worker_mode_refuses_binding(cluster):
    with pytest.raises(ValueError, match="binding needs cluster_mode='isolated'"):
        Boss(scheduler=MaxThreadsScheduler(binded=True), cluster=cluster.address, cluster_mode="in-worker")
    with pytest.raises(ValueError, match="in-worker mode runs each task in a thread of the Dask worker"):
        DaskLauncher(cluster.address, mode="in-worker", bind=True)


def _no_cpus():
    raise OSError("made to fail: no CPU list here")


def test_binding_fails_clearly_when_no_worker_says_its_cpus(cluster, monkeypatch):
    from taylor.cluster import remote

    monkeypatch.setattr(remote, "host_cpus", _no_cpus)  # what the launcher asks each Dask worker to run
    with pytest.raises(ClusterError, match="none of the 2 workers did"):
        with DaskLauncher(cluster.address, bind=True):
            pass


def taylor_cli(*args, cwd, timeout=40):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(TESTS), TESTS]))
    return subprocess.run([sys.executable, "-m", "taylor", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_bind_with_cluster_pins_each_task(cluster, tmp_path):
    done = taylor_cli("run", "--cluster", cluster.address, "--bind", "--command",
                      "python -c 'import os; print(sorted(os.sched_getaffinity(0)))'", "-i", "x=1,2,3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")[:-1]
    assert len(lines) == 3 and all(eval(line) in [[cpu] for cpu in HOST_CPUS] for line in lines), lines  # noqa: S307
    refused = taylor_cli("run", "--cluster", cluster.address, "--cluster-mode", "in-worker", "--bind", "--command",
                         "true", "-i", "x=1", cwd=tmp_path)
    assert refused.returncode == 2 and "needs --cluster-mode isolated" in refused.stderr, refused.stderr
