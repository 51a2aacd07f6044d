"""The Boss on a real Dask cluster, through the public API: batch, server, memory, timeout, abort, faults.

A ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (w0 1 GiB,
w1 3 GiB, two threads each), shared by the module; the fault tests that kill
a worker or the scheduler get a cluster of their own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

pytest.importorskip("distributed")

import cluster_workers  # noqa: E402, F401 - registers Where
import workers  # noqa: E402, F401 - registers Noop, Faulty
from dask_cluster import TESTS, running_cluster, task_processes  # noqa: E402

import taylor  # noqa: E402
from taylor import Boss, batch_main, run_as_server  # noqa: E402
from taylor.cluster import connection  # noqa: E402
from taylor.cluster.connection import ClusterError  # noqa: E402
from taylor.cluster.launcher import DaskLauncher  # noqa: E402
from taylor.errors import CapacityError, WorkerDiedError, WorkerTimeoutError  # noqa: E402
from taylor.schedulers import MaxMemoryScheduler  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(str(tmp_path_factory.mktemp("dask")), ["1GiB", "3GiB"]) as real:
        yield real


@pytest.fixture
def own_cluster(tmp_path):
    with running_cluster(str(tmp_path), ["1GiB", "1GiB"], nthreads=1) as real:
        yield real


def left_after(cluster, seconds, pids=None):
    """The task processes still running on the cluster's hosts after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        left = task_processes(pids if pids is not None else cluster.forkers)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def running(cluster, count, within=20.0, pids=None):
    """Wait (bounded) until ``count`` task processes run on the cluster's hosts."""
    deadline = time.monotonic() + within
    while True:
        found = task_processes(pids if pids is not None else cluster.forkers)
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{len(found)} of {count} task processes started"
        time.sleep(0.05)


def test_a_batch_gives_the_same_reports_as_locally_plus_where(cluster):
    rows = dict(value=list(range(12)))
    local = batch_main(dict(noop=True), rows, print_report=False)
    remote = batch_main(dict(noop=True), rows, print_report=False, cluster=cluster.address)
    assert sorted(w["report"] for w in remote.workers) == sorted(w["report"] for w in local.workers)
    assert remote["counts"]["done"] == 12
    assert {w["where"]["worker"] for w in remote.workers} == set(cluster.workers)  # both workers took some
    assert all(w["where"]["host"] == socket.gethostname() for w in remote.workers)
    assert all("where" not in w for w in local.workers)
    # a scheduler file works as the address does, and the tasks ran in processes of the cluster's hosts
    report = batch_main(dict(where=True), dict(seconds=[0.0, 0.0]), print_report=False,
                        cluster=cluster.scheduler_file)
    for entry in report.workers:
        assert entry["report"]["ppid"] in cluster.forkers and entry["report"]["pid"] == entry["pid"]


def test_server_mode_takes_instructions_while_running(cluster):
    boss = run_as_server(dict(where=True), dict(seconds=[0.5, 0.5]), cluster=cluster.address)
    try:
        running(cluster, 1)
        assert psutil.Process(boss.pid).children() == []  # no local spawner, no local worker: all on the cluster
        boss.set_instructions(dict(noop=True), dict(value=[7, 8]))
        boss.end()
        report = boss.wait_till_finished()
        assert report["counts"]["done"] == 4
        assert sorted(w["report"] for w in report.workers if w["name"].startswith("noop") or
                      isinstance(w["report"], int)) == [7, 8]
    finally:
        boss.close()


def test_declared_memory_places_tasks_where_it_fits(cluster):
    report = batch_main(dict(where=True), dict(memory=[2000, 2000], seconds=[0.2, 0.2]), print_report=False,
                        cluster=cluster.address)
    placed = {w["where"]["worker"] for w in report.workers}
    with DaskLauncher(cluster.address) as launcher:
        large = max(launcher.capacity.workers.values(), key=lambda w: w.memory_mib).address
    assert placed == {large}  # only the 3 GiB worker has 2000 MiB free
    with pytest.raises(CapacityError, match="more than any Dask worker's memory limit"):
        batch_main(dict(where=True), dict(memory=[5000]), print_report=False, cluster=cluster.address)
    # a memory scheduler's defaults are the cluster's, not this host's: the same error, from the cluster
    with pytest.raises(CapacityError, match="max_memory=.* MiB .the Dask workers' memory limits.*never start"):
        batch_main(dict(where=True), dict(memory=[10.0 ** 9]), print_report=False, cluster=cluster.address,
                   scheduler=MaxMemoryScheduler())


def test_a_timeout_kills_the_task_on_its_host(cluster):
    started = time.monotonic()
    report = batch_main(dict(where=True, child=True), dict(seconds=[30.0]), print_report=False, timeout=1.0,
                        on_error="continue", cluster=cluster.address)
    (entry,) = report.workers
    assert isinstance(entry["report"], WorkerTimeoutError) and "timeout of 1 s" in str(entry["report"])
    assert entry["where"]["worker"] in cluster.workers
    assert time.monotonic() - started < 15
    assert not left_after(cluster, 10)


def test_abort_on_first_error_stops_every_task_on_every_worker(cluster):
    boss = Boss(cluster=cluster.address, stop_grace=1.0)
    try:
        # four run (two threads on each worker), four wait queued on the Dask workers; the first times out
        boss.set_instructions(dict(where=True, child=True), dict(seconds=[60.0] * 8, timeout=[2.0] + [600.0] * 7))
        boss.make_them_work()
        running(cluster, 4)
        with pytest.raises(WorkerTimeoutError) as raised:
            boss.wait_till_finished()
        report = raised.value.report
        assert report["counts"]["failed"] == 1 and report["counts"]["done"] == 0
        assert report["counts"]["stopped"] + report["counts"].get("pending", 0) == 7, report["counts"]
        assert not left_after(cluster, 10)  # the tasks and their children, on both workers
    finally:
        boss.close()


def test_a_dask_worker_killed_mid_task_gives_an_entry_naming_worker_and_host(own_cluster):
    boss = Boss(cluster=own_cluster.address, on_error="continue")
    try:
        boss.set_instructions(dict(where=True), dict(seconds=[60.0, 1.0]))
        boss.make_them_work()
        running(own_cluster, 2)
        deadline = time.monotonic() + 20
        while len(task_processes(own_cluster.forkers)) != 1:  # the short one ends; the long one runs on
            assert time.monotonic() < deadline, "the 1 s task did not end"
            time.sleep(0.05)
        (task,) = task_processes(own_cluster.forkers)
        dask_worker = psutil.Process(task.ppid()).ppid()  # its forker's parent
        victim = next(a for a, p in own_cluster.workers.items() if p.pid == dask_worker)
        own_cluster.kill_worker(victim)
        report = boss.wait_till_finished()
        lost = [w for w in report.workers if w["status"] == "failed"]
        assert len(lost) == 1 and isinstance(lost[0]["report"], WorkerDiedError)
        assert victim in str(lost[0]["report"]) and "host" in str(lost[0]["report"])
        assert lost[0]["where"]["worker"] == victim and lost[0]["where"]["host"]
        assert report["counts"]["done"] == 1  # the other ran to its end, and nothing ran twice
    finally:
        boss.close()


def test_the_scheduler_killed_mid_run_is_a_clear_error_not_a_hang(own_cluster):
    boss = Boss(cluster=own_cluster.address, stop_grace=1.0)
    try:
        boss.set_instructions(dict(where=True), dict(seconds=[60.0, 60.0]))
        boss.make_them_work()
        running(own_cluster, 2)
        started = time.monotonic()
        os.kill(own_cluster.scheduler.pid, signal.SIGKILL)
        own_cluster.scheduler.wait(timeout=10)
        with pytest.raises(ClusterError, match="connection to the Dask scheduler"):
            boss.wait_till_finished()
        assert time.monotonic() - started < 45
    finally:
        boss.close()


def test_an_unreachable_scheduler_is_a_clear_error(monkeypatch):
    from dask_cluster import free_port

    monkeypatch.setattr(connection, "CONNECT_TIMEOUT", 2.0)

    with pytest.raises(ClusterError, match="could not reach the Dask scheduler at .* within 2 s"):
        boss = Boss(cluster=f"tcp://127.0.0.1:{free_port()}")
        try:
            boss.set_instructions(dict(noop=True), dict(value=[1]))
            boss.make_them_work()
            boss.wait_till_finished()
        finally:
            boss.close()


def test_the_callers_sigterm_leaves_nothing_running_on_the_cluster(cluster, tmp_path):
    script = tmp_path / "caller.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        import cluster_workers
        from taylor import batch_main
        batch_main(dict(where=True, child=True), dict(seconds=[60.0] * 6), cluster={cluster.address!r},
                   print_report=False)
    """))
    caller = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        running(cluster, 4)
        caller.send_signal(signal.SIGTERM)
        caller.wait(timeout=30)
        assert caller.returncode != 0
        assert not left_after(cluster, 10)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait(timeout=10)
        caller.stderr.close()


def test_cluster_mode_in_worker_runs_in_the_dask_worker(cluster):
    report = batch_main(dict(where=True), dict(seconds=[0.0, 0.0]), print_report=False, cluster=cluster.address,
                        cluster_mode="in-worker")
    pids = {p.pid for p in cluster.workers.values()}
    assert all(w["report"]["pid"] in pids for w in report.workers)
    with pytest.raises(ValueError, match="cluster_mode"):
        Boss(cluster=cluster.address, cluster_mode="threads")
    with pytest.raises(ValueError, match="cluster_mode='in-worker'"):
        Boss(cluster=cluster.address, reuse=True)
    with pytest.raises(ValueError, match="enforce=True, which acts on this host's CPUs"):
        Boss(cluster=cluster.address, scheduler=MaxMemoryScheduler(enforce=True))


# ------------------------------------------------------------------ the command line


def taylor_cli(*args, cwd, timeout=40):
    """The real ``taylor`` command (python -m taylor), with the test workers importable."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(TESTS), TESTS]))
    return subprocess.run([sys.executable, "-m", "taylor", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_command_run_on_the_cluster_with_journal_resume_and_exit_codes(cluster, tmp_path):
    journal = tmp_path / "run.jsonl"
    done = taylor_cli("run", "--cluster", cluster.scheduler_file, "--command", "echo out {x}", "-i", "x=1,2,3",
                      "--journal", journal, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split("\n")[:-1]) == ["out 1", "out 2", "out 3"]
    records = [json.loads(line) for line in journal.read_text().splitlines() if '"event"' not in line]
    assert len(records) == 3 and all(r["where"]["worker"] in cluster.workers for r in records)
    journal = tmp_path / "fail.jsonl"
    failed = taylor_cli("run", "--cluster", cluster.address, "--command", "exit {x}", "-i", "x=0,3",
                        "--keep-going", "--journal", journal, cwd=tmp_path)
    assert failed.returncode == 1 and "exit code 3" in failed.stderr
    again = taylor_cli("run", "--cluster", cluster.address, "--command", "exit {x}", "-i", "x=0,3",
                       "--keep-going", "--journal", journal, "--resume", cwd=tmp_path)
    assert again.returncode == 1 and "1 of 2 tasks already done, 1 to run" in again.stderr


def test_cli_worker_run_on_the_cluster(cluster, tmp_path):
    result = taylor_cli("run", "--cluster", cluster.address, "--worker", "workers:Noop", "-c", "noop=true",
                        "-i", "value=4,5", "--report", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert sorted(e["report"] for e in report["workers_report"]) == [4, 5]
    assert all(e["where"]["worker"] in cluster.workers for e in report["workers_report"])
    raised = taylor_cli("run", "--cluster", cluster.address, "--worker", "workers", "-i", "fault=raise", cwd=tmp_path)
    assert raised.returncode == 1 and "KeyError" in raised.stderr


def test_cli_schedulers_describes_the_cluster(cluster, tmp_path):
    described = taylor_cli("schedulers", "--cluster", cluster.scheduler_file, cwd=tmp_path)
    assert described.returncode == 0, described.stderr
    assert "workers            2" in described.stdout and "cpus               4" in described.stdout
    assert "dask worker --memory-limit" in described.stdout and cluster.address in described.stdout
    missing = taylor_cli("schedulers", "--cluster", tmp_path / "nothing.json", cwd=tmp_path)
    assert missing.returncode == 2 and "scheduler file" in missing.stderr


def test_cli_sigterm_leaves_nothing_running_on_the_cluster(cluster, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(TESTS), TESTS]))
    caller = subprocess.Popen([sys.executable, "-m", "taylor", "run", "--cluster", cluster.address, "--command",
                               "sleep 60", "-i", "x=1,2,3,4,5,6"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        running(cluster, 4)
        caller.send_signal(signal.SIGTERM)
        _, err = caller.communicate(timeout=30)
        assert caller.returncode == 128 + signal.SIGTERM, err
        assert not left_after(cluster, 10)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.communicate(timeout=10)


def test_a_tls_cluster_takes_the_security_object_or_a_tls_client():
    pytest.importorskip("cryptography")  # Security.temporary() makes its certificates with it
    from distributed import Client, LocalCluster
    from distributed.security import Security

    security = Security.temporary()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls://", host="127.0.0.1",
                      security=security, dashboard_address="127.0.0.1:0",
                      worker_dashboard_address="127.0.0.1:0") as tls:  # its HTTP servers on loopback, free ports
        address = tls.scheduler_address
        with pytest.raises(ClusterError, match="security"):
            batch_main(dict(noop=True), dict(value=[1]), print_report=False, cluster=address,
                       cluster_mode="in-worker")
        report = batch_main(dict(noop=True), dict(value=[1, 2]), print_report=False, cluster=address,
                            security=security, cluster_mode="in-worker")
        assert sorted(w["report"] for w in report.workers) == [1, 2]
        assert all(w["where"]["worker"].startswith("tls://") for w in report.workers)
        with Client(address, security=security, set_as_default=False) as client:  # its TLS settings travel
            report = batch_main(dict(noop=True), dict(value=[3]), print_report=False, cluster=client,
                                cluster_mode="in-worker")
        assert report.workers[0]["report"] == 3


def test_a_boss_killed_outright_leaves_nothing_running_on_the_cluster(cluster):
    boss = Boss(cluster=cluster.address)
    try:
        boss.set_instructions(dict(where=True, child=True), dict(seconds=[60.0] * 6))
        boss.make_them_work()
        running(cluster, 4)
        os.kill(boss.pid, signal.SIGKILL)  # its Dask client goes with it: the scheduler cancels its tasks
        assert not left_after(cluster, 15)
        with pytest.raises(taylor.BossDiedError):
            boss.wait_till_finished()
    finally:
        boss.close()
