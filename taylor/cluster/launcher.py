"""DaskLauncher: the boss's launcher for a Dask cluster (start, "what ended", signal, cancel, close).

It offers the engine what :class:`taylor.launcher.LocalProcesses` offers for
local processes, for tasks run by Dask workers on many hosts:

* :meth:`DaskLauncher.open` connects and returns one descriptor for the boss's
  event loop (``epoll``): it becomes readable when a task ended, a worker
  joined or left, or the scheduler went away.  All Dask traffic happens on
  the Dask client's own thread; the boss never blocks on the network there.
* :meth:`DaskLauncher.start` places a task (see
  :meth:`~taylor.cluster.capacity.ClusterCapacity.place`) and submits it; a task
  no worker takes now (memory, or ``ahead`` tasks per thread there already)
  waits in the launcher until one does.
* :meth:`DaskLauncher.ended` returns each ended task once, as an
  :class:`Ended` whose ``outcome`` is what a local worker process sends on
  its report pipe, plus its exit code, ``where`` it ran, and why it was lost
  when it never reported (its Dask worker died, it was refused, cancelled).
* :meth:`DaskLauncher.signal` signals a running task's process tree on its
  host; :meth:`DaskLauncher.cancel` drops a task, pending or running (its
  process tree is killed on its host); :meth:`DaskLauncher.close` cancels all.
* :func:`describe_cluster` says what a cluster offers, and where each figure
  comes from (for ``taylor schedulers --cluster``).

Dask never re-runs a task: each is pinned to the worker it was placed on
(``workers=[address]``, ``allow_other_workers=False``, ``retries=0``) and
cancelled if that worker leaves, the task then ending as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal as _signals
import threading
import time
import uuid
from collections import deque
from typing import Any, Deque, Dict, Iterator, List, Mapping, Optional, Tuple

from .. import wire
from ..errors import CapacityError
from .capacity import ClusterCapacity
from .connection import CONNECT_TIMEOUT, ClusterError, connect, describe_target, require_distributed
from .pickling import dumps_attributes, dumps_class

__all__ = ["DaskLauncher", "RemoteTask", "Ended", "ISOLATED", "IN_WORKER", "describe_cluster"]

log = logging.getLogger("taylor.cluster")

#: Modes: a fresh process per task (default), or the Dask worker's own thread.
ISOLATED, IN_WORKER = "isolated", "in-worker"

#: Why in-worker mode does not bind.
IN_WORKER_BINDING = ("CPU binding needs cluster_mode='isolated': in-worker mode runs each task in a thread of the "
                     "Dask worker, and pinning it would pin that thread of the Dask worker for its next tasks too; "
                     "run without binding, or in isolated mode (the default)")

#: Default report size limit, as the local boss's.
MAX_REPORT_BYTES = 64 << 20


class RemoteTask:
    """The launcher's handle on one task: returned by :meth:`DaskLauncher.start`.

    ``state`` is ``waiting`` (no worker has room yet), ``submitted`` (Dask has
    it: queued on its worker, or running) or ``ended``.  ``worker`` and
    ``host`` say where it was placed (None while waiting).
    """

    __slots__ = ("name", "key", "memory", "timeout", "class_bytes", "attribute_bytes", "worker", "host",
                 "future", "state", "cancelled", "submit_time", "released", "cpu", "host_key")

    def __init__(self, name: str, key: str, memory: float, timeout: Optional[float], class_bytes: bytes,
                 attribute_bytes: bytes) -> None:
        self.name = name
        self.key = key
        self.memory = memory
        self.timeout = timeout
        self.class_bytes = class_bytes
        self.attribute_bytes = attribute_bytes
        self.worker: Optional[str] = None
        self.host: Optional[str] = None
        self.future: Any = None
        self.state = "waiting"
        self.cancelled = False
        self.submit_time = 0.0
        self.released = False  # its place on its worker is free again
        self.cpu: Optional[int] = None  # binding: the CPU of its host it is pinned to, held until its end
        self.host_key: Optional[str] = None

    def __repr__(self) -> str:
        return f"<RemoteTask {self.name} {self.state} on {self.worker}>"


class Ended:
    """How a task ended: one per task, from :meth:`DaskLauncher.ended`.

    * ``outcome``: the message a local worker process sends
      (``("ok", report)``, ``("raised", exc, traceback)``, ``("unsendable", exc)``),
      a :class:`taylor.wire.Undecodable`, or None when the task sent nothing.
    * ``exitcode``: its process's, ``multiprocessing``-style (negative: killed by
      that signal); None when no process ran or its end is unknown.
    * ``pid``: its process's id on its host (None in in-worker mode).
    * ``where``: ``{"worker": Dask worker address, "host": host name}``.
    * ``timed_out``: it ran past its timeout and was killed on its host.
    * ``cancelled``: :meth:`DaskLauncher.cancel` dropped it (no report).
    * ``lost``: why it ended without a report when that is no process's
      doing (its Dask worker left, the forker refused it, the scheduler was
      lost), None otherwise.
    """

    __slots__ = ("task", "outcome", "exitcode", "pid", "where", "start_time", "end_time", "timed_out",
                 "cancelled", "lost")

    def __init__(self, task: RemoteTask, outcome: Any = None, exitcode: Optional[int] = None,
                 pid: Optional[int] = None, where: Optional[Dict[str, Optional[str]]] = None,
                 start_time: Optional[float] = None, end_time: Optional[float] = None, timed_out: bool = False,
                 cancelled: bool = False, lost: Optional[str] = None) -> None:
        self.task = task
        self.outcome = outcome
        self.exitcode = exitcode
        self.pid = pid
        self.where = where if where is not None else {"worker": task.worker, "host": task.host}
        self.start_time = start_time
        self.end_time = end_time if end_time is not None else time.time()
        self.timed_out = timed_out
        self.cancelled = cancelled
        self.lost = lost

    @property
    def name(self) -> str:
        return self.task.name

    def __repr__(self) -> str:
        return (f"<Ended {self.task.name} outcome={self.outcome!r:.60} exitcode={self.exitcode} where={self.where} "
                f"timed_out={self.timed_out} cancelled={self.cancelled} lost={self.lost!r}>")


class DaskLauncher:
    """Runs taylor tasks on a Dask cluster; see the module's docstring for the interface.

    * ``cluster``: scheduler address, scheduler file or ``distributed.Client``
      (see :func:`taylor.cluster.connection.connect`); ``security`` and
      ``connect_timeout`` go to the connection.
    * ``mode``: ``"isolated"`` (a fresh process per task, forked on its host
      by a forker the launcher installs on every Dask worker as a plugin) or
      ``"in-worker"`` (in the Dask worker's thread: see
      :mod:`taylor.cluster.remote` for what that gives up).
    * ``stop_grace``: seconds between SIGTERM and SIGKILL of a timed-out task.
    * ``ahead``: tasks per thread a Dask worker is given at a time (see
      :mod:`taylor.cluster.capacity`); the others wait in the launcher.
    * ``bind`` (isolated mode only): pin each task process to one CPU of its
      host, none shared by two running tasks of this run on that host (see
      :meth:`~taylor.cluster.capacity.ClusterCapacity.take_cpu`); a task waits
      in the launcher until its host has a CPU free.
    """

    def __init__(self, cluster: Any, *, security: Any = None, connect_timeout: float = CONNECT_TIMEOUT,
                 mode: str = ISOLATED, max_report_bytes: int = MAX_REPORT_BYTES, stop_grace: float = 2.0,
                 ahead: int = 16, bind: bool = False) -> None:
        if mode not in (ISOLATED, IN_WORKER):
            raise ValueError(f"mode must be {ISOLATED!r} or {IN_WORKER!r}, got {mode!r}")
        if bind and mode != ISOLATED:
            raise ValueError(IN_WORKER_BINDING)
        self.cluster = cluster
        self.security = security
        self.connect_timeout = connect_timeout
        self.mode = mode
        self.max_report_bytes = max_report_bytes
        self.stop_grace = stop_grace
        self.client: Any = None
        self.address = ""
        self.capacity = ClusterCapacity(ahead=ahead, bind=bind)
        self.failure: Optional[ClusterError] = None  # set when the scheduler is lost
        self._owned = False
        self._lock = threading.Lock()
        self._wake_r = self._wake_w = -1
        self._tasks: Dict[str, RemoteTask] = {}  # by key, until ended() returned them
        self._waiting: Deque[RemoteTask] = deque()
        self._ready: Deque[Ended] = deque()
        self._done: List[Any] = []
        self._fetching = False
        self._capacity_changed = False
        self._batch: Optional[List[RemoteTask]] = None
        self._classes: Dict[type, bytes] = {}
        self._prefix = f"taylor-{uuid.uuid4().hex[:8]}-"
        self._count = 0
        self._function: Any = None
        self._hostnames: Dict[str, str] = {}  # Dask worker address -> its host's name, from its results

    # ---------------------------------------------------------------- life
    def open(self) -> int:
        """Connect, install the forkers (isolated mode), learn the workers; the descriptor to wait on."""
        require_distributed()
        from . import remote

        self.client, self._owned, self.address = connect(self.cluster, self.security, self.connect_timeout)
        self.capacity.scheduler = self.address
        try:
            if self.mode == ISOLATED:
                plugin = remote.ForkerPlugin()
                plugin.idempotent = True  # a forker already there (another taylor run) is kept, not restarted
                self.client.register_plugin(plugin, name=remote.PLUGIN_NAME)
            self._function = remote.run_isolated if self.mode == ISOLATED else remote.run_in_worker
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self.client.subscribe_topic("all", self._on_event)
            identity = _identity(self.client)
            with self._lock:
                self.capacity.update(identity)
            if self.capacity.bind:
                self._learn_cpus(self.client.run(remote.host_cpus, on_error="ignore"))
                silent = self.capacity.unknown_cpus()
                if silent and len(silent) == len(self.capacity.workers):  # binding would wait for ever
                    raise ClusterError(
                        f"CPU binding needs each Dask worker to say which CPUs its host gives taylor, and none of "
                        f"the {len(silent)} workers did ({', '.join(sorted(silent)[:3])}...): check their logs, "
                        "or run without binding")
        except BaseException:
            self.close()
            raise
        return self._wake_r

    def _learn_cpus(self, answers: Optional[Mapping[str, Any]]) -> None:
        """Binding: take what :func:`~taylor.cluster.remote.host_cpus` said on each Dask worker."""
        with self._lock:
            for address, info in (answers or {}).items():
                if isinstance(info, dict) and info.get("cpus"):
                    self.capacity.set_cpus(address, info["host"], info["cpus"])

    def fileno(self) -> int:
        return self._wake_r

    def close(self) -> None:
        """Cancel every task not ended (their processes are killed on their hosts); disconnect."""
        client, self.client = self.client, None
        if client is not None:
            futures = [t.future for t in self._tasks.values() if t.future is not None and t.state != "ended"]
            with contextlib.suppress(Exception):
                client.unsubscribe_topic("all")
            if futures and client.status == "running":
                with contextlib.suppress(Exception):
                    client.cancel(futures, force=True)
            if self._owned:
                with contextlib.suppress(Exception):
                    client.close(timeout=self.connect_timeout)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> DaskLauncher:
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- starting
    def start(self, name: str, cls: type, attributes: Mapping[str, Any], *, memory: float = 0.0,
              timeout: Optional[float] = None) -> RemoteTask:
        """Start ``cls(attributes)._task()`` somewhere on the cluster; its handle.

        ``memory`` (MiB) places it only on a worker with that much memory free
        (a :class:`~taylor.errors.CapacityError` if no worker has that much at
        all); ``timeout`` (seconds) counts from its process's start on its host
        (time queued at Dask does not count).  Inside :meth:`batch`, tasks are
        submitted together at its end.
        """
        with self._lock:
            largest = self.capacity.largest_memory_mib
        if memory and self.capacity.workers and memory > largest:
            raise CapacityError(
                f"worker {name!r} declares memory={memory:g} MiB, more than any Dask worker's memory limit "
                f"(the largest is {largest:.0f} MiB), so it could never start. Lower its memory, or start Dask "
                "workers with a larger --memory-limit.", instructions=dict(attributes), max_memory=largest)
        class_bytes = self._classes.get(cls)
        if class_bytes is None:
            class_bytes = self._classes[cls] = dumps_class(cls)
        self._count += 1
        task = RemoteTask(name, f"{self._prefix}{self._count}-{name}"[:200], float(memory or 0.0), timeout,
                          class_bytes, dumps_attributes(attributes))
        with self._lock:
            self._tasks[task.key] = task
            self._waiting.append(task)
        self._place()
        return task

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Submit the tasks started inside this block together (one message per worker, as
        ``Client.map`` does): what the engine's dispatch should wrap its starts in."""
        if self._batch is not None:
            yield
            return
        self._batch = []
        try:
            yield
        finally:
            tasks, self._batch = self._batch, None
            self._submit(tasks)

    def _place(self) -> None:
        """Give waiting tasks, in order, a worker with room; submit them (or batch them)."""
        placed = []
        with self._lock:
            still: Deque[RemoteTask] = deque()
            while self._waiting and self.capacity.has_room():
                task = self._waiting.popleft()
                worker = self.capacity.place(task.memory)
                if worker is None:
                    still.append(task)
                    continue
                self.capacity.assign(worker, task.memory)
                if self.capacity.bind:
                    task.cpu, task.host_key = self.capacity.take_cpu(worker), worker.host_key
                task.worker, task.host, task.state = worker.address, worker.host, "submitted"
                placed.append(task)
            still.extend(self._waiting)
            self._waiting = still
        if self._batch is not None:
            self._batch.extend(placed)
        else:
            self._submit(placed)

    def _submit(self, tasks: List[RemoteTask]) -> None:
        if not tasks:
            return
        by_worker: Dict[str, List[RemoteTask]] = {}
        for task in tasks:
            by_worker.setdefault(task.worker, []).append(task)
        now = time.time()
        for address, group in by_worker.items():
            futures = self.client.map(
                self._function, [t.key for t in group], [t.class_bytes for t in group],
                [t.attribute_bytes for t in group], [t.timeout for t in group], [self.stop_grace] * len(group),
                [self.max_report_bytes] * len(group), [-1 if t.cpu is None else t.cpu for t in group],
                key=[t.key for t in group], workers=[address],
                allow_other_workers=False, pure=False, retries=0)
            for task, future in zip(group, futures):
                task.future = future
                task.submit_time = now
                task.class_bytes = task.attribute_bytes = b""  # Dask has them now
                future.add_done_callback(self._on_done)

    # ---------------------------------------------------------------- ending
    def ended(self) -> List[Ended]:
        """The tasks that ended since the last call, each once (never blocks).  Waiting tasks
        are placed again, since their ends may have freed room."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        found = []
        with self._lock:
            while self._ready:
                entry = self._ready.popleft()
                task = entry.task
                self._release(task)
                task.future = None  # Dask forgets its result
                self._tasks.pop(task.key, None)
                found.append(entry)
        if self._waiting and self.capacity.wants_more():
            self._place()
        return found

    def capacity_changed(self) -> bool:
        """Whether workers joined or left since the last call (the schedulers' caps changed)."""
        with self._lock:
            changed, self._capacity_changed = self._capacity_changed, False
        return changed

    @property
    def pending(self) -> int:
        """Tasks started and not yet returned by :meth:`ended`."""
        return len(self._tasks)

    def _end(self, entry: Ended) -> None:
        """Record an end (any thread); the first end of a task wins."""
        with self._lock:
            if entry.task.state == "ended":
                return
            entry.task.state = "ended"
            self._ready.append(entry)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"!")

    def _release(self, task: RemoteTask) -> None:
        """Free ``task``'s place on its worker (holding the lock)."""
        if not task.released and task.worker is not None:
            task.released = True
            self.capacity.release(task.worker, task.memory)
            if task.cpu is not None:
                self.capacity.free(task.host_key or "", task.cpu)

    def _on_done(self, future: Any) -> None:
        """A future finished (Dask's callback thread): its place on its worker is free now, which
        the boss may fill at once (its result is not needed for that); fetch the result on the
        client's loop."""
        task = self._tasks.get(future.key)
        with self._lock:
            if task is not None:
                self._release(task)
            self._done.append(future)
            refill = bool(self._waiting) and self.capacity.wants_more()
        if refill:
            self._wake()
        with self._lock:
            if self._fetching or self.client is None:
                return
            self._fetching = True
        asyncio.run_coroutine_threadsafe(self._fetch(), self.client.loop.asyncio_loop)

    async def _fetch(self) -> None:
        """Gather the results of finished futures, many at a time, and turn them into ends."""
        try:
            while True:
                with self._lock:
                    batch, self._done = self._done, []
                    if not batch:
                        self._fetching = False
                        return
                finished = [f for f in batch if f.status == "finished"]
                if finished:
                    try:
                        results = await self.client._gather(finished)
                    except Exception:  # noqa: BLE001 - one lost result: fetch them one by one
                        results = []
                        for future in finished:
                            try:
                                results.append((await self.client._gather([future]))[0])
                            except Exception as exc:  # noqa: BLE001
                                results.append(exc)
                    for future, result in zip(finished, results):
                        self._result(future, result)
                for future in batch:
                    if future.status != "finished":
                        error = None
                        if future.status == "error":
                            with contextlib.suppress(Exception):
                                error = await future._exception()
                        self._result(future, error)
        except BaseException:
            with self._lock:
                self._fetching = False
            raise

    def _result(self, future: Any, result: Any) -> None:
        task = self._tasks.get(future.key)
        if task is None or task.state == "ended":
            return
        if isinstance(result, dict) and "report" in result:
            address, hostname = result["where"]
            if address:
                self._hostnames[address] = hostname
            self._end(_from_result(task, result))
        elif task.cancelled:
            self._end(Ended(task, cancelled=True))
        elif future.status == "cancelled" and self.client is not None and self.client.status != "running":
            if self.failure is None:
                self.failure = ClusterError(
                    f"the connection to the Dask scheduler at {self.address} was lost "
                    f"(client {self.client.status}); the tasks placed on the cluster ended without reports. "
                    "Check the scheduler's log and that it is still running.", cluster=self.address)
            self._end(Ended(task, where=self._where(task), lost=(
                f"was placed on Dask worker {task.worker} (host {self._host(task.worker)}) when the connection "
                f"to the Dask scheduler at {self.address} was lost; it did not report")))
        elif future.status == "cancelled":
            self._end(Ended(task, where=self._where(task), lost=(
                f"was cancelled on the Dask cluster, not by taylor, while placed on Dask worker {task.worker} "
                f"(host {self._host(task.worker)}): another client or an operator cancelled its key {task.key}")))
        else:
            self._end(Ended(task, where=self._where(task), lost=(
                f"could not be run by Dask worker {task.worker} (host {self._host(task.worker)}): "
                f"{type(result).__name__}: {result}")))

    def _host(self, address: Optional[str]) -> str:
        """The name of the host of Dask worker ``address``: as its tasks said, else as Dask says."""
        known = self._hostnames.get(address or "")
        if known:
            return known
        with self._lock:
            worker = self.capacity.workers.get(address or "")
        return worker.host if worker is not None else "unknown"

    def _where(self, task: RemoteTask) -> Dict[str, Optional[str]]:
        return {"worker": task.worker, "host": self._host(task.worker) if task.worker else None}

    # ---------------------------------------------------------------- cluster events
    def _on_event(self, event: Tuple[float, Any]) -> Any:
        """An event of the scheduler's ``all`` topic (on the client's loop)."""
        _, message = event
        if not isinstance(message, dict):
            return None
        action = message.get("action")
        if action == "remove-worker":
            self._worker_left(message.get("worker"), bool(message.get("expected")))
        if action in ("add-worker", "remove-worker"):
            return self._refresh()
        return None

    def _worker_left(self, address: Optional[str], expected: bool) -> None:
        with self._lock:
            gone = self.capacity.remove(address) if address else None
            if gone is not None:
                self._capacity_changed = True
            lost = [t for t in self._tasks.values() if t.worker == address and t.state == "submitted"]
        how = "was retired" if expected else "died or lost its connection to the scheduler"
        host = self._hostnames.get(address or "") or (gone.host if gone is not None else
                                                       (lost[0].host if lost else "unknown"))
        for task in lost:
            self._end(Ended(task, where={"worker": address, "host": host}, lost=(
                f"was placed on Dask worker {address} (host {host}), which {how} before the task reported; "
                "its process there was killed with it. Dask does not run it again")))
        futures = [t.future for t in lost if t.future is not None]
        if futures and self.client is not None:
            asyncio.ensure_future(self.client._cancel(futures, force=True))
        self._wake()

    async def _refresh(self) -> None:
        try:
            try:
                identity = await self.client.scheduler.identity(n_workers=-1)
            except TypeError:  # a scheduler from before n_workers
                identity = await self.client.scheduler.identity()
        except Exception:  # noqa: BLE001 - the next event, or the lost futures, will say more
            return
        with self._lock:
            joined, left = self.capacity.update(identity)
            if joined or left:
                self._capacity_changed = True
        unknown = self.capacity.unknown_cpus()
        if unknown:  # binding: a worker that joined takes tasks once its host's CPUs are known
            with contextlib.suppress(Exception):
                from .remote import host_cpus

                self._learn_cpus(await self.client._run(host_cpus, workers=unknown, on_error="ignore"))
            self._wake()
        if joined or left:
            self._wake()

    # ---------------------------------------------------------------- signals
    def signal(self, task: RemoteTask, signum: int = _signals.SIGTERM) -> bool:
        """Send ``signum`` to ``task``'s process tree on its host, if it runs there now (isolated mode).

        Returns False when the task cannot be signalled (waiting, ended, in-worker mode).
        Its end comes back through :meth:`ended` as usual.
        """
        if task.state != "submitted" or self.mode != ISOLATED or self.client is None:
            return False
        from .remote import signal_tasks

        asyncio.run_coroutine_threadsafe(
            self.client._run(signal_tasks, [task.key], int(signum), workers=[task.worker], on_error="ignore"),
            self.client.loop.asyncio_loop)
        return True

    def stop(self, tasks: List[RemoteTask], signum: int = _signals.SIGTERM) -> None:
        """Ask ``tasks`` to stop: ``signum`` to those running on their hosts now (isolated mode),
        and those not running yet (waiting here, or queued on their Dask worker) cancelled, so that
        none starts after being told to stop.  In in-worker mode every one is cancelled."""
        if self.client is None:
            return
        submitted = [t for t in tasks if t.state == "submitted" and t.future is not None]
        for task in tasks:
            if task.state == "waiting":
                self.cancel(task)
        if not submitted:
            return
        if self.mode != ISOLATED:
            for task in submitted:
                task.cancelled = True
            asyncio.run_coroutine_threadsafe(self.client._cancel([t.future for t in submitted], force=True),
                                             self.client.loop.asyncio_loop)
            return
        asyncio.run_coroutine_threadsafe(self._stop(submitted, int(signum)), self.client.loop.asyncio_loop)

    async def _stop(self, tasks: List[RemoteTask], signum: int) -> None:
        from .remote import signal_tasks

        by_worker: Dict[str, List[RemoteTask]] = {}
        for task in tasks:
            by_worker.setdefault(task.worker or "", []).append(task)
        found: set = set()
        for address, group in by_worker.items():
            with contextlib.suppress(Exception):
                answers = await self.client._run(signal_tasks, [t.key for t in group], signum, workers=[address],
                                                 on_error="ignore")
                for keys in (answers or {}).values():
                    if isinstance(keys, list):
                        found.update(keys)
        queued = [t for t in tasks if t.key not in found and t.state == "submitted" and t.future is not None]
        for task in queued:
            task.cancelled = True
        if queued:
            with contextlib.suppress(Exception):
                await self.client._cancel([t.future for t in queued], force=True)

    def cancel(self, task: RemoteTask) -> None:
        """Drop ``task``: not started if it was not, its process tree killed on its host if it ran.
        It ends as ``cancelled`` (unless its end was already in)."""
        if task.state == "ended":
            return
        task.cancelled = True
        if task.state == "waiting":
            with self._lock:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(task)
            self._end(Ended(task, cancelled=True))
            return
        if task.future is not None and self.client is not None:
            asyncio.run_coroutine_threadsafe(self.client._cancel([task.future], force=True),
                                             self.client.loop.asyncio_loop)

    def cancel_all(self) -> None:
        """Cancel every task not ended (abort, the caller's SIGTERM), in one message to the scheduler:
        a task queued behind a killed one must not start before its own cancel arrives."""
        futures = []
        for task in list(self._tasks.values()):
            if task.state == "submitted" and task.future is not None:
                task.cancelled = True
                futures.append(task.future)
            else:
                self.cancel(task)
        if futures and self.client is not None:
            asyncio.run_coroutine_threadsafe(self.client._cancel(futures, force=True), self.client.loop.asyncio_loop)


def _from_result(task: RemoteTask, result: Mapping[str, Any]) -> Ended:
    """An :class:`Ended` from what the task function returned on its Dask worker."""
    address, host = result["where"]
    where: Dict[str, Any] = {"worker": address or task.worker, "host": host}
    if task.cpu is not None:
        where["cpu"] = task.cpu  # binding: the CPU of that host it was pinned to
    outcome = None
    data = result.get("report") or b""
    if data:
        messages = wire.Decoder().feed(data)
        outcome = messages[0] if messages else None
    status = result.get("status")
    exitcode = None if status is None else os.waitstatus_to_exitcode(status)
    refused = result.get("refused")
    return Ended(task, outcome=outcome, exitcode=exitcode, pid=result.get("pid"), where=where,
                 start_time=result.get("start_time"), end_time=result.get("end_time"),
                 timed_out=bool(result.get("timed_out")), lost=refused)


def _identity(client: Any) -> Dict[str, Any]:
    """The scheduler's description of itself and of every worker."""
    try:
        return client.scheduler_info(n_workers=-1)
    except TypeError:  # distributed before n_workers: every worker, always
        return client.scheduler_info()


def describe_cluster(cluster: Any, *, security: Any = None,
                     connect_timeout: float = CONNECT_TIMEOUT) -> Dict[str, Tuple[Any, str]]:
    """What ``cluster`` offers now, each figure with its source (see
    :meth:`~taylor.cluster.capacity.ClusterCapacity.describe`), plus ``scheduler``."""
    client, owned, address = connect(cluster, security, connect_timeout)
    try:
        capacity = ClusterCapacity(address)
        capacity.update(_identity(client))
    finally:
        if owned:
            with contextlib.suppress(Exception):
                client.close(timeout=connect_timeout)
    described = capacity.describe()
    described["scheduler"] = (address, describe_target(cluster) if isinstance(cluster, str) else "the Client given")
    return described
