"""The boss's launcher on a Dask cluster: :class:`~taylor.cluster.launcher.DaskLauncher` behind the engine's seam.

:class:`ClusterSpec` is what a caller's ``Boss(cluster=...)`` gives the boss
process (a Client cannot cross the boss's fork: see
:func:`taylor.cluster.connection.portable`); :class:`ClusterLauncher` implements
:class:`taylor.launcher.Launcher` over a :class:`DaskLauncher`:

* ``open`` connects (an unreachable scheduler fails the run with a
  :class:`~taylor.cluster.connection.ClusterError`), watches the launcher's one
  descriptor, and fits the run's scheduler to the cluster's capacity
  (:meth:`Host.capacity`), again whenever workers join or leave;
* with a binding scheduler (``binded=True``), the scheduler still decides what
  may start, but its tickets number this host's CPUs: its pinning hook is not
  sent; the launcher gives each task a CPU of the host it places it on
  (per host, over the CPUs its forker may use) and the forker pins the task
  process to it from its birth;
* ``start`` submits (no report channel, no local pid: ``Host.started(worker,
  None)``, so the caller never kills a remote pid); the timeout is enforced on
  the task's host, so the engine sets none of its own (``own_timeouts``);
* each end sets the worker's outcome, ``timed_out``, ``lost`` and ``where``,
  then :meth:`Host.ended`; a lost scheduler fails the run (:meth:`Host.fail`);
* ``terminate`` sends SIGTERM to the tasks running on their hosts and cancels
  those not running yet (queued at Dask or in the launcher: abort must not
  let them start); ``kill`` and ``close`` cancel (their process trees are
  killed on their hosts).
"""

from __future__ import annotations

import signal
from typing import Any, Dict, List, Optional

from ..errors import TaylorError
from ..launcher import Host, Launcher
from ..schedulers.binding import BindToTicket
from . import connection
from .connection import portable

__all__ = ["ClusterSpec", "ClusterLauncher"]

MODES = ("isolated", "in-worker")

#: How many times what the Dask workers take at a time the run's default scheduler starts (see _limits).
BACKLOG = 2


class ClusterSpec:
    """Where and how a run goes on a Dask cluster; plain data the boss process connects with.

    ``cluster``: scheduler address, scheduler file, or ``distributed.Client``
    (kept as its address, and its security when it speaks TLS); ``security``:
    a ``distributed.security.Security`` or None; ``mode``: ``"isolated"`` (a
    fresh process per task on its host) or ``"in-worker"``; ``bind``: pin each
    task process to a CPU of its host (the run's scheduler is a binding one).
    """

    def __init__(self, cluster: Any, security: Any = None, mode: str = "isolated",
                 connect_timeout: Optional[float] = None, bind: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"cluster_mode must be 'isolated' or 'in-worker', got {mode!r}")
        if bind and mode != "isolated":
            from .launcher import IN_WORKER_BINDING

            raise ValueError(IN_WORKER_BINDING)
        self.bind = bind
        cluster = portable(cluster)
        if isinstance(cluster, tuple):  # a TLS Client: its own security, unless one was given
            cluster, own = cluster
            security = own if security is None else security
        self.cluster = cluster
        self.security = security
        self.mode = mode
        # None: taylor.cluster.connection.CONNECT_TIMEOUT as it is now (seconds to reach the scheduler)
        default = connection.CONNECT_TIMEOUT
        self.connect_timeout = float(default if connect_timeout is None else connect_timeout)

    def __repr__(self) -> str:
        return (f"ClusterSpec({self.cluster!r}, mode={self.mode!r}{', TLS' if self.security is not None else ''}"
                f"{', bind' if self.bind else ''})")


class ClusterLauncher(Launcher):
    """Runs the engine's workers as tasks of a Dask cluster (see the module's docstring)."""

    own_timeouts = True  # DaskLauncher enforces each task's timeout on its host

    def __init__(self, spec: ClusterSpec, options: Any) -> None:
        from .launcher import DaskLauncher

        self.spec = spec
        self.default_timeout = options.timeout
        self.dask = DaskLauncher(spec.cluster, security=spec.security, connect_timeout=spec.connect_timeout,
                                 mode=spec.mode, max_report_bytes=options.max_report_bytes,
                                 stop_grace=options.stop_grace, bind=spec.bind)
        self.running: Dict[Any, Any] = {}  # RemoteTask -> RunningWorker, started and not ended
        self.fd: Optional[int] = None
        self.failed = False

    # ---------------------------------------------------------------- seam
    def open(self, host: Host) -> None:
        self.host = host
        self.fd = self.dask.open()
        host.watch(self.fd, self._on_wake)
        host.capacity(self._limits())

    def start(self, worker: Any) -> Optional[int]:
        instructions = worker.instructions
        timeout = instructions.timeout if instructions.timeout is not None else self.default_timeout
        attributes = instructions.attributes({})
        hooks = attributes.get("scheduler_hooks")
        if hooks:  # the scheduler's binding means this host's CPUs: on the cluster, the launcher binds instead
            attributes["scheduler_hooks"] = [h for h in hooks if not isinstance(h, BindToTicket)]
        task = self.dask.start(worker.name, instructions.worker_class, attributes,
                               memory=worker.memory or 0.0, timeout=timeout)
        worker.remote = task
        self.running[task] = worker
        self.host.started(worker, None)  # no process of this host: the caller is told nothing to kill
        return None

    def batch(self) -> Any:
        return self.dask.batch()

    def close_channel(self, fd: int) -> None:
        raise AssertionError("a cluster task has no report channel")

    def alive(self) -> int:
        return len(self.running)

    def update(self) -> None:
        if self.fd is not None:
            self._take_ends()

    def signal(self, worker: Any, signum: int) -> None:
        task = worker.remote
        if task is not None:
            self.dask.signal(task, signum)

    def terminate(self, workers: List[Any]) -> None:
        tasks = [w.remote for w in workers if w.remote is not None]
        if tasks:
            self.dask.stop(tasks, signal.SIGTERM)

    def kill(self, worker: Any, ending: bool = False) -> None:
        task = worker.remote
        if task is not None:
            self.dask.cancel(task)

    def close(self) -> None:
        """Cancel what still runs (killed on its host), tell its end, disconnect."""
        if self.fd is None:
            return
        if self.running:
            self.dask.cancel_all()
            for task, worker in list(self.running.items()):  # their ends will not be heard once disconnected
                if not worker.stop_requested:
                    worker.lost = (f"was still placed on Dask worker {task.worker} (host {task.host}) when the "
                                   "run ended; it was cancelled there")
                worker.where = {"worker": task.worker, "host": task.host}
                self._end(task, worker, None)
        fd, self.fd = self.fd, None
        self.host.unwatch(fd)
        self.dask.close()

    def _limits(self) -> Dict[str, Any]:
        """The cluster's capacity for the scheduler: twice what the Dask workers take at a time
        (see :meth:`~taylor.cluster.capacity.ClusterCapacity.scheduler_limits`), so that the launcher
        holds a backlog and refills each worker many tasks at a time, not one per end (each
        submission costs the Dask scheduler a graph update)."""
        limits = dict(self.dask.capacity.scheduler_limits())
        limits["max_threads"] *= BACKLOG
        return limits

    # ---------------------------------------------------------------- ends
    def _on_wake(self, fd: int, events: int) -> None:
        self._take_ends()

    def _take_ends(self) -> None:
        for ended in self.dask.ended():
            worker = self.running.get(ended.task)
            if worker is None:
                continue
            worker.outcome = ended.outcome
            worker.timed_out = ended.timed_out
            worker.where = ended.where
            if ended.pid is not None:
                worker.pid = ended.pid  # its host's, for the entry: never sent to the caller to kill
            if ended.start_time:
                worker.start_time = ended.start_time
            if ended.lost and ended.outcome is None:
                worker.lost = ended.lost
            elif ended.cancelled and ended.outcome is None and not worker.stop_requested:
                worker.lost = f"was cancelled on Dask worker {ended.where.get('worker')}"
            self._end(ended.task, worker, ended.exitcode, ended.end_time)
        if self.dask.capacity_changed():
            self.host.capacity(self._limits())
        if self.dask.failure is not None and not self.failed:
            self.failed = True
            self.host.fail(self.dask.failure)

    def _end(self, task: Any, worker: Any, exitcode: Optional[int], end_time: Optional[float] = None) -> None:
        self.running.pop(task, None)
        if end_time:
            worker.end_time = end_time
        self.host.ended(worker, exitcode)


def cluster_error(exc: BaseException) -> TaylorError:
    """``exc``, raised while opening the cluster launcher, as the run's error."""
    if isinstance(exc, TaylorError):
        return exc
    return TaylorError(f"could not use the Dask cluster: {type(exc).__name__}: {exc}")
