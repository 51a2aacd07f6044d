"""The Dask launcher on a real cluster: a ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1.

Worker w0 has 1 GiB of memory, w1 3 GiB; two threads each.  The forkers are
installed once, by the fixture, and live as long as their Dask workers.
"""

from __future__ import annotations

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

from cluster_workers import collect, start  # noqa: E402
from dask_cluster import report_of, running_cluster, task_processes  # noqa: E402
from processes import gone  # noqa: E402
from workers import Faulty  # noqa: E402, F401 - registers the class

from taylor.cluster.launcher import IN_WORKER, DaskLauncher, describe_cluster  # noqa: E402
from taylor.errors import CapacityError  # noqa: E402
from taylor.worker import RAISED  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(str(tmp_path_factory.mktemp("dask")), ["1GiB", "3GiB"]) as real:
        yield real


@pytest.fixture
def launcher(cluster):
    with DaskLauncher(cluster.address, stop_grace=1.0) as launcher:
        yield launcher
    assert not gone_within(cluster, 10), "task processes left on the workers"


def gone_within(cluster, seconds):
    """The task processes still running under the cluster's forkers after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        left = task_processes(cluster.forkers)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def running(cluster, count, within=20.0):
    """Wait until ``count`` task processes run under the forkers; return them."""
    deadline = time.monotonic() + within
    while True:
        found = task_processes(cluster.forkers)
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{len(found)} of {count} task processes started"
        time.sleep(0.05)


def test_tasks_run_in_fresh_processes_and_say_where(cluster, launcher):
    tasks = [start(launcher, where=True, name=f"w{i}") for i in range(6)]
    ended = {e.name: e for e in collect(launcher, 6)}
    assert sorted(ended) == sorted(t.name for t in tasks)
    workers = set()
    for entry in ended.values():
        report = report_of(entry)
        assert entry.exitcode == 0 and not entry.lost, entry
        assert entry.where["worker"] in cluster.workers and entry.where["host"] == socket.gethostname()
        assert report["pid"] == entry.pid
        # forked by the host's forker, a fresh interpreter: not by the multi-threaded Dask worker
        assert report["ppid"] in cluster.forkers
        assert report["ppid"] != cluster.workers[entry.where["worker"]].pid
        assert report["name"] == "taylor-task"
        workers.add(entry.where["worker"])
    assert workers == set(cluster.workers)  # placed on both
    assert launcher.pending == 0


def test_scheduler_file_and_capacity(cluster):
    with DaskLauncher(cluster.scheduler_file) as launcher:
        described = launcher.capacity.describe()
        assert described["workers"][0] == 2 and described["cpus"][0] == 4
        assert described["memory_mib"][0] == pytest.approx(4096)
        assert launcher.address == cluster.address
    described = describe_cluster(cluster.scheduler_file)
    assert described["scheduler"] == (cluster.address, f"the scheduler file {cluster.scheduler_file}")
    assert described["cpus"][0] == 4 and all(address in described["cpus"][1] for address in cluster.workers)
    assert "--memory-limit" in described["memory_mib"][1]


def test_memory_places_tasks_where_it_is_free(cluster, launcher):
    with pytest.raises(CapacityError, match="more than any Dask worker's memory limit"):
        start(launcher, where=True, memory=4096)
    with launcher.batch():
        first = start(launcher, where=True, memory=2000, seconds=0.5)
        second = start(launcher, where=True, memory=2000)
    assert launcher.capacity.workers[first.worker].memory_mib == pytest.approx(3072)  # w1, the 3 GiB one
    assert second.state == "waiting"  # 3 GiB: not both at once
    ended = {e.name: e for e in collect(launcher, 2)}
    assert ended[first.name].where["worker"] == ended[second.name].where["worker"] == first.worker
    assert ended[second.name].start_time >= ended[first.name].end_time


def test_timeout_kills_the_task_on_its_host(cluster, launcher):
    task = start(launcher, fault="hang", seconds=30, timeout=0.5)
    (entry,) = collect(launcher, 1)
    assert entry.task is task and entry.timed_out and entry.exitcode == -signal.SIGTERM
    assert entry.outcome is None and 0.4 < entry.end_time - entry.start_time < 10


def test_failures_are_reported_as_locally(cluster, launcher):
    start(launcher, fault="raise", name="raise")
    start(launcher, fault="exit", name="exit")
    start(launcher, fault="sigkill", name="sigkill")
    ended = {e.name: e for e in collect(launcher, 3)}
    assert ended["raise"].outcome[0] == RAISED and isinstance(ended["raise"].outcome[1], KeyError)
    assert "bad key" in ended["raise"].outcome[2]
    assert ended["exit"].exitcode == 3 and ended["exit"].outcome is None
    assert ended["sigkill"].exitcode == -signal.SIGKILL and ended["sigkill"].outcome is None


def test_reports_keep_their_size_limit(cluster):
    with DaskLauncher(cluster.address, max_report_bytes=1 << 20) as launcher:
        start(launcher, fault="huge", name="huge")
        (entry,) = collect(launcher, 1)
    assert entry.outcome[0] == "unsendable" and "more than the limit" in str(entry.outcome[1])


def test_a_task_sigkilled_from_outside(cluster, launcher):
    start(launcher, where=True, seconds=30)
    (process,) = running(cluster, 1)
    os.kill(process.pid, signal.SIGKILL)
    (entry,) = collect(launcher, 1)
    assert entry.exitcode == -signal.SIGKILL and entry.pid == process.pid and entry.outcome is None


def test_signal_reaches_the_task_tree(cluster, launcher):
    task = start(launcher, where=True, seconds=30, child=True)
    (process,) = running(cluster, 1)
    deadline = time.monotonic() + 10
    while not process.children() and time.monotonic() < deadline:
        time.sleep(0.05)
    (child,) = process.children()
    assert launcher.signal(task, signal.SIGTERM)
    (entry,) = collect(launcher, 1)
    assert entry.exitcode == -signal.SIGTERM
    assert not gone([child.pid], within=5)


@pytest.mark.parametrize("how", ["cancel_all", "close"])
def test_cancel_kills_running_and_drops_pending_tasks(cluster, how):
    launcher = DaskLauncher(cluster.address)
    launcher.open()
    try:
        with launcher.batch():
            tasks = [start(launcher, where=True, seconds=60, child=True, name=f"c{i}") for i in range(8)]
        processes = running(cluster, 4)  # two threads on each worker: four run, four wait
        pids = [p.pid for p in processes]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(p.children() for p in processes):
            time.sleep(0.05)
        pids += [c.pid for p in processes for c in p.children()]
        if how == "cancel_all":
            launcher.cancel_all()
            ended = collect(launcher, 8)
            assert all(e.cancelled for e in ended) and {e.task for e in ended} == set(tasks)
    finally:
        launcher.close()
    assert not gone(pids, within=10), "task processes or their children survived"
    assert not gone_within(cluster, 10)
    time.sleep(0.5)  # no waiting task starts later
    assert not task_processes(cluster.forkers)


def test_in_worker_mode_runs_in_the_dask_worker(cluster):
    with DaskLauncher(cluster.address, mode=IN_WORKER) as launcher:
        start(launcher, where=True, name="inside")
        start(launcher, fault="raise", name="raising")
        ended = {e.name: e for e in collect(launcher, 2)}
    report = report_of(ended["inside"])
    assert report["pid"] == cluster.workers[ended["inside"].where["worker"]].pid
    assert ended["inside"].pid is None and ended["inside"].where["host"] == socket.gethostname()
    assert ended["raising"].outcome[0] == RAISED


MAIN = textwrap.dedent("""
    import os, pickle, select, sys
    from taylor import Worker
    from taylor.cluster.launcher import DaskLauncher, IN_WORKER

    class Scripted(Worker):
        _footprint = dict(attr=dict(scripted=dict(type=bool, values=[True])))

        def _task(self):
            return ("scripted", os.getpid(), type(self).__module__)

    mode = sys.argv[2]
    with DaskLauncher(sys.argv[1], mode=mode) as launcher:
        launcher.start("s", Scripted, dict(scripted=True, name="s", scheduler_hooks=[]))
        ended = []
        while not ended:
            select.select([launcher.fileno()], [], [], 30)
            ended = launcher.ended()
    kind, report = ended[0].outcome[:2]
    print(("ok", pickle.loads(report) if kind == "packed" else report), os.getpid())
""")


@pytest.mark.parametrize("mode", ["isolated", "in-worker"])
def test_a_class_of_the_callers_script_reaches_the_workers(cluster, tmp_path, mode):
    script = tmp_path / "batch.py"
    script.write_text(MAIN)
    out = subprocess.run([sys.executable, str(script), cluster.address, mode], capture_output=True, text=True,
                         timeout=50, env=dict(os.environ, PYTHONPATH=""))
    assert out.returncode == 0, out.stderr
    outcome, caller = out.stdout.rsplit(" ", 1)
    assert outcome.startswith("('ok', ('scripted', ") and "'__main__')" in outcome
    assert f"'scripted', {caller.strip()}," not in outcome  # it ran elsewhere


@pytest.mark.parametrize("mode", ["isolated", "in-worker"])
def test_a_class_the_workers_cannot_import_is_a_clear_failure(cluster, tmp_path, monkeypatch, mode):
    (tmp_path / "only_here.py").write_text(textwrap.dedent("""
        from taylor import Worker

        class OnlyHere(Worker):
            _footprint = dict(attr=dict(only_here=dict(type=bool, values=[True])))

            def _task(self):
                return "never"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))  # importable here, not on the workers
    import only_here  # noqa: F401

    with DaskLauncher(cluster.address, mode=mode) as launcher:
        start(launcher, only_here=True, name="unloadable")
        (entry,) = collect(launcher, 1)
    assert entry.outcome is None and "No module named 'only_here'" in entry.lost
    assert "install the module that defines it in every Dask worker's environment" in entry.lost
    assert entry.where["worker"] in cluster.workers


@pytest.mark.skipif(not hasattr(os, "setuid") or os.getuid() != 0 or not sys.platform.startswith("linux"),
                    reason="needs root (to become another user) and Linux's abstract sockets")
def test_the_forker_serves_only_its_own_user(cluster):
    """The forker's socket name shows in ``ps``: another user who connects is turned away."""
    (argument,) = [a for a in psutil.Process(cluster.forkers[0]).cmdline() if a.startswith("@taylor-forker-")]
    code = textwrap.dedent(f"""
        import os, socket, struct
        from taylor.cluster.forker import REQUEST
        os.setgid(65534); os.setuid(65534)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect("\\0" + {argument[1:]!r})
        try:
            sock.sendall(REQUEST.pack(0, 0, 0, -1))
            print(repr(sock.recv(100)))
        except OSError as exc:
            print(type(exc).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("b''", "BrokenPipeError", "ConnectionResetError")
    assert not task_processes(cluster.forkers)


def test_no_process_leaks_between_tests(cluster):
    assert not task_processes(cluster.forkers)
    assert all(psutil.pid_exists(pid) for pid in cluster.forkers)
