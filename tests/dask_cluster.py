"""A real Dask cluster for the tests: ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1.

Random free ports, no dashboards, no nannies (a worker SIGKILLed stays dead),
bounded waits; everything is killed by pid at the end.  The test directory
is on the workers' ``PYTHONPATH``, so the Worker classes of tests/workers.py
travel by reference.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, Iterator, List, Optional

import psutil

from taylor.worker import OK, PACKED

TESTS = os.path.dirname(os.path.abspath(__file__))

#: Seconds the scheduler and workers have to come up.
READY_WITHIN = 45.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dask() -> List[str]:
    found = shutil.which("dask", path=os.path.dirname(sys.executable)) or shutil.which("dask")
    return [found] if found else [sys.executable, "-m", "dask"]


class RealCluster:
    """A scheduler and its workers, each a process of ours."""

    def __init__(self, directory: str, memory_limits: List[str], nthreads: int = 2) -> None:
        self.directory = directory
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler_file = os.path.join(directory, "scheduler.json")
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]).strip(
            os.pathsep), DASK_DISTRIBUTED__WORKER__DAEMON="False")
        self.scheduler: Optional[subprocess.Popen] = None
        self.workers: Dict[str, subprocess.Popen] = {}  # address -> process
        self._logs: List = []
        try:
            self.scheduler = self._spawn("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                                       "--no-dashboard", "--scheduler-file", self.scheduler_file])
            self.nthreads = nthreads
            processes = [self._spawn_worker(limit) for limit in memory_limits]
            self._await_workers(processes)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, args: List[str]) -> subprocess.Popen:
        log = open(os.path.join(self.directory, f"{name}.log"), "wb")
        self._logs.append(log)
        return subprocess.Popen(_dask() + args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=self.env, cwd=self.directory)

    def _spawn_worker(self, limit: str) -> subprocess.Popen:
        name = f"worker{len(self._logs) - 1}"
        return self._spawn(name, ["worker", self.address, "--host", "127.0.0.1", "--nthreads", str(self.nthreads),
                                  "--no-dashboard", "--no-nanny", "--memory-limit", limit, "--name", name])

    def add_worker(self, limit: str) -> str:
        """Start one more worker; its address once the scheduler knows it."""
        known = set(self.workers)
        self._await_workers([self._spawn_worker(limit)], len(self.workers) + 1)
        (address,) = set(self.workers) - known
        return address

    def _await_workers(self, processes: List[subprocess.Popen], count: Optional[int] = None) -> None:
        from distributed import Client

        with Client(self.address, timeout=READY_WITHIN, set_as_default=False) as client:
            client.wait_for_workers(count or len(processes), timeout=READY_WITHIN)
            try:
                info = client.scheduler_info(n_workers=-1)["workers"]
            except TypeError:  # distributed before n_workers: every worker, always
                info = client.scheduler_info()["workers"]
        by_pid = {w["pid"]: address for address, w in info.items()} if all("pid" in w for w in info.values()) \
            else {}
        for process in processes:
            address = by_pid.get(process.pid)
            if address is None:  # older schedulers: match by listening port
                ports = {c.laddr.port for c in psutil.Process(process.pid).net_connections("tcp")
                         if c.status == psutil.CONN_LISTEN}
                address = next(a for a in info if int(a.rsplit(":", 1)[1]) in ports)
            self.workers[address] = process

    def log(self, name: str) -> str:
        with open(os.path.join(self.directory, f"{name}.log"), errors="replace") as f:
            return f.read()

    def kill_worker(self, address: str) -> None:
        process = self.workers.pop(address)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM the workers and the scheduler, SIGKILL what is left after 10 s; reap them."""
        processes = [*self.workers.values(), *([self.scheduler] if self.scheduler else [])]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.workers.clear()
        for log in self._logs:
            log.close()


def task_processes(forker_pids: List[int]) -> List[psutil.Process]:
    """The task processes running now under these forkers (their children)."""
    found = []
    for pid in forker_pids:
        try:
            found += [c for c in psutil.Process(pid).children() if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.Error:
            pass
    return found


def forkers(cluster: RealCluster) -> List[int]:
    """The pids of the forkers of the cluster's workers (children named taylor-forker)."""
    found = []
    for process in cluster.workers.values():
        try:
            found += [c.pid for c in psutil.Process(process.pid).children() if c.name() == "taylor-forker"]
        except psutil.Error:
            pass
    return found


@contextlib.contextmanager
def running_cluster(directory: str, memory_limits: List[str], forkers_first: bool = True,
                    **options) -> Iterator[RealCluster]:
    """A :class:`RealCluster` for the block, stopped at its end.  ``forkers_first``: taylor's forkers are
    installed (and their pids kept in ``.forkers``) before any test counts processes."""
    real = RealCluster(directory, memory_limits, **options)
    try:
        if forkers_first:
            from taylor.cluster.launcher import DaskLauncher

            with DaskLauncher(real.address):
                pass
            real.forkers = forkers(real)
            assert len(real.forkers) == len(real.workers), real.log("worker0")
        yield real
    finally:
        real.stop()


def report_of(ended) -> object:
    """The report an ended cluster task sent: as it came (run in the Dask worker), or unpickled
    (a fresh task process pickles it apart, for the boss to pass on untouched)."""
    kind, value = ended.outcome[:2]
    assert kind in (OK, PACKED), ended.outcome
    return pickle.loads(value) if kind == PACKED else value
