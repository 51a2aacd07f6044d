"""What runs on a Dask worker: the forker's plugin, and the functions the launcher submits.

Two ways to run a task there:

* :func:`run_isolated` (the default): the task runs in a fresh process
  forked by the host's forker (see :mod:`taylor.cluster.forker`), with its own
  process group, its timeout, its process tree killed at its end, its exit
  code or signal reported: what a local run gives.
* :func:`run_in_worker`: the task runs in the Dask worker's own thread.  No
  process to start, so tiny tasks go much faster, but it gives up what a
  process gives: no timeout (a thread cannot be killed: an overrunning task
  runs to its end), no abort of a running task, no SIGTERM for it, no exit
  code; a task that crashes (segfault, ``os._exit``, the out-of-memory killer)
  takes the Dask worker down with every task it runs; tasks share the
  worker's memory, GIL, signal handlers, working directory and environment
  (a task that changes them changes them for the next ones).

Both return a :data:`Result` dict, whose ``report`` holds the bytes a local
worker process writes on its report pipe (:func:`taylor.worker.run_child`),
for the launcher to decode as the boss does.
"""

from __future__ import annotations

import array
import os
import pickle
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from distributed.diagnostics.plugin import WorkerPlugin

from .. import wire
from ..worker import _outcome, _unsendable, prepare_class
from .forker import EXITED, NEWS, REFUSED, REQUEST, STARTED, UNLOADABLE
from .pickling import loads_class

__all__ = ["ForkerPlugin", "Forker", "run_isolated", "run_in_worker", "signal_tasks", "host_cpus", "PLUGIN_NAME",
           "Result"]

PLUGIN_NAME = "taylor-forker"

#: What a task function returns: ``report`` (bytes, maybe empty), ``pid``, ``status`` (wait
#: status, None when no process ran), ``timed_out``, ``refused`` (why no process was started),
#: ``where`` ((Dask worker address, host name)), ``start_time`` and ``end_time``.
Result = Dict[str, Any]

#: Seconds the forker has to start and say it is ready.
FORKER_START_TIMEOUT = 30.0

_forker: Optional[Forker] = None
#: Task key -> pid of its process, for the isolated tasks running on this Dask worker.
_running: Dict[str, int] = {}
#: Keys of the isolated tasks Dask cancelled before their process was known (started or not).
_cancelled: Set[str] = set()
_lock = threading.Lock()


class Forker:
    """This Dask worker's handle on its forker process."""

    def __init__(self) -> None:
        if sys.platform.startswith("linux"):
            # An abstract socket: nothing left in the file system when a killed worker takes its forker
            # along.  The forker accepts only peers of its own user (SO_PEERCRED).
            self.directory = None
            self.path = "\0taylor-forker-" + secrets.token_hex(12)
        else:
            self.directory = tempfile.mkdtemp(prefix="taylor-forker-")  # mode 0700: only this user connects
            self.path = os.path.join(self.directory, "socket")
        argument = "@" + self.path[1:] if self.path.startswith("\0") else self.path
        ready_r, ready_w = os.pipe()
        env = dict(os.environ)
        # It imports what this Dask worker imports (tasks' modules, by their reference).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "taylor.cluster.forker", argument, str(os.getpid()), str(ready_w)],
                pass_fds=[ready_w], stdin=subprocess.DEVNULL, env=env, close_fds=True)
        except BaseException:
            os.close(ready_r)
            os.close(ready_w)
            if self.directory:
                shutil.rmtree(self.directory, ignore_errors=True)
            raise
        os.close(ready_w)
        try:
            ready, _, _ = select.select([ready_r], [], [], FORKER_START_TIMEOUT)
            said = os.read(ready_r, 1) if ready else b""
        finally:
            os.close(ready_r)
        if said != b"Y":
            self.stop()
            raise RuntimeError(f"taylor's forker process did not start on host {socket.gethostname()} "
                               f"within {FORKER_START_TIMEOUT:g} s; check that taylor is installed in the Dask "
                               f"workers' environment ({sys.executable})")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """End the forker (its task processes die with it) and remove its socket."""
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


class ForkerPlugin(WorkerPlugin):
    """Starts one forker per Dask worker (and stops it with the worker); kills the process of a
    task that Dask cancels while it runs (the client cancelled it, or went away)."""

    name = PLUGIN_NAME

    def setup(self, worker: Any) -> None:
        global _forker
        with _lock:
            if _forker is None or _forker.process.poll() is not None:
                _forker = Forker()

    def teardown(self, worker: Any) -> None:
        global _forker
        with _lock:
            forker, _forker = _forker, None
        if forker is not None:
            forker.stop()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if start == "executing" and finish in ("cancelled", "released", "forgotten"):
            with _lock:
                pid = _running.get(key)
                if pid is None:  # killed as soon as it is started (see _wait), or never started (run_isolated):
                    _cancelled.add(key)  # Dask marks a task executing a moment before its function runs
            if pid is not None:
                _kill_tree(pid, signal.SIGKILL)


def _descendants(pid: int) -> List[int]:
    try:
        import psutil

        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001 - gone, or no psutil: the process group is signalled anyway
        return []


def _kill_tree(pid: int, signum: int, others: Iterable[int] = (), look: bool = True) -> List[int]:
    """Signal ``pid``'s process group and its descendants (found now if ``look``, plus ``others``);
    return them."""
    others = list(others) + (_descendants(pid) if look else [])
    try:
        os.killpg(pid, signum)
    except OSError:
        pass
    for other in others:
        try:
            os.kill(other, signum)
        except OSError:
            pass
    return others


def _where(dask_worker: Any = None) -> Tuple[str, str]:
    if dask_worker is None:
        try:
            from distributed import get_worker

            dask_worker = get_worker()
        except ValueError:  # not in a Dask worker (a test calling the function directly)
            return "", socket.gethostname()
    return dask_worker.address, socket.gethostname()


def _result(where: Tuple[str, str], start: float, **fields: Any) -> Result:
    result = dict(report=b"", pid=None, status=None, timed_out=False, refused=None, where=where,
                  start_time=start, end_time=time.time())
    result.update(fields)
    return result


def run_isolated(key: str, class_bytes: bytes, attribute_bytes: bytes, timeout: Optional[float], grace: float,
                 max_report_bytes: int, cpu: int = -1) -> Result:
    """Run one task in a fresh process forked by this host's forker; wait for its end.

    ``cpu`` (not -1): the CPU of this host the task process is pinned to from
    its birth (the launcher's choice, see :func:`host_cpus`).

    ``timeout`` (seconds from the process's start) ends it with SIGTERM to its
    process group and descendants, then SIGKILL ``grace`` seconds later.  Its
    process group is killed at its end, whatever stays in it.
    """
    start = time.time()
    where = _where()
    with _lock:
        cancelled = key in _cancelled
    try:
        if cancelled:  # between Dask's "executing" and this call: nothing to start
            return _result(where, start, refused="cancelled before its process was started")
        return _run_isolated(key, class_bytes, attribute_bytes, timeout, grace, max_report_bytes, start, where, cpu)
    finally:
        with _lock:
            _running.pop(key, None)
            _cancelled.discard(key)


def _run_isolated(key: str, class_bytes: bytes, attribute_bytes: bytes, timeout: Optional[float], grace: float,
                  max_report_bytes: int, start: float, where: Tuple[str, str], cpu: int = -1) -> Result:
    forker = _forker
    if forker is None:
        return _result(where, start, refused=(
            f"the Dask worker {where[0]} on host {where[1]} has no taylor forker (its plugin "
            f"{PLUGIN_NAME!r} was not set up there: see the Dask worker's log)"))
    read_fd, write_fd = os.pipe()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(forker.path)
            request = REQUEST.pack(len(class_bytes), len(attribute_bytes), max_report_bytes, cpu) + class_bytes + \
                attribute_bytes
            sent = sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                             array.array("i", [write_fd]).tobytes())])
            if sent < len(request):
                sock.sendall(memoryview(request)[sent:])
        except OSError as exc:
            return _result(where, start, refused=(
                f"the taylor forker of Dask worker {where[0]} on host {where[1]} could not be reached "
                f"({exc}); it may have died: see the Dask worker's log"))
        finally:
            os.close(write_fd)
        return _wait(key, sock, read_fd, timeout, grace, where, start)
    finally:
        sock.close()
        os.close(read_fd)


def _wait(key: str, sock: socket.socket, read_fd: int, timeout: Optional[float], grace: float,
          where: Tuple[str, str], start: float) -> Result:
    """Wait for the task's process to start and end, reading its report as it comes."""
    os.set_blocking(read_fd, False)
    sock.setblocking(False)
    waiter = select.poll()
    waiter.register(sock, select.POLLIN)
    waiter.register(read_fd, select.POLLIN)
    report = bytearray()
    news = bytearray()
    pid: Optional[int] = None
    deadline: Optional[float] = None
    timed_out = False
    stage = 0  # 0: running, 1: SIGTERM sent, 2: SIGKILL sent
    others: List[int] = []
    reported = False
    try:
        while True:
            if reported and pid is not None and not timed_out:
                # Its whole report is in and its pipe closed: all that is left for it is os._exit(0)
                # (see taylor.worker.run_child).  Its end is not waited for, as the local boss frees a
                # task's slot at that point too: closing the connection tells the forker to kill its
                # process group (strays included) and reap it.
                return _result(where, start, report=bytes(report), pid=pid, status=0)
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            events = waiter.poll(None if wait is None else wait * 1000)
            if not events and deadline is not None and time.monotonic() >= deadline:
                timed_out = True
                stage += 1
                others = _kill_tree(pid, signal.SIGTERM if stage == 1 else signal.SIGKILL, others)
                deadline = time.monotonic() + grace if stage == 1 else None
                continue
            for fd, _ in events:
                if fd == read_fd:
                    reported = _drain(read_fd, report, waiter) and _whole(report)
                    continue
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    return _result(where, start, report=bytes(report), pid=pid, refused=(
                        f"the taylor forker of Dask worker {where[0]} on host {where[1]} went away while the "
                        "task ran (it is killed with its Dask worker)"))
                news += data
                while len(news) >= NEWS.size:
                    kind, value = NEWS.unpack_from(news)
                    if kind == REFUSED:
                        if len(news) < NEWS.size + value:
                            break
                        why = bytes(news[NEWS.size:NEWS.size + value]).decode("utf-8", "replace")
                        return _result(where, start, refused=(
                            f"could not be started on Dask worker {where[0]} (host {where[1]}): {why}"))
                    del news[:NEWS.size]
                    if kind == STARTED:
                        pid = value
                        start = time.time()
                        with _lock:
                            _running[key] = pid
                            cancelled = key in _cancelled
                        if cancelled:
                            others = _kill_tree(pid, signal.SIGKILL, others)
                        if timeout is not None:
                            deadline = time.monotonic() + timeout
                    elif kind == EXITED:
                        # Strays left in its group (a scan of the process table for its descendants would
                        # cost more than the task: it has ended, those outside its group were found if it
                        # was stopped).
                        _kill_tree(pid, signal.SIGKILL, others, look=False)
                        _drain(read_fd, report, None)
                        return _result(where, start, report=bytes(report), pid=pid, status=value,
                                       timed_out=timed_out)
    finally:
        with _lock:
            _running.pop(key, None)


def _drain(fd: int, into: bytearray, waiter: Any) -> bool:
    """Read what ``fd`` holds into ``into``; True at its end (then unregistered from ``waiter``)."""
    while True:
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            return False
        if not data:
            if waiter is not None:
                waiter.unregister(fd)
            return True
        into += data


def _whole(report: bytearray) -> bool:
    """Whether ``report`` holds one whole message (see :mod:`taylor.wire`)."""
    return len(report) >= 8 and len(report) == 8 + int.from_bytes(report[:8], "big")


def run_in_worker(key: str, class_bytes: bytes, attribute_bytes: bytes, timeout: Optional[float], grace: float,
                  max_report_bytes: int, cpu: int = -1) -> Result:
    """Run one task in this Dask worker's thread (see the module's docstring for what it gives up).
    ``cpu`` is never set: in-worker mode cannot bind (it would pin the Dask worker's thread)."""
    start = time.time()
    where = _where()
    try:
        cls = loads_class(class_bytes)
        attributes = pickle.loads(attribute_bytes)
        prepare_class(cls)
    except Exception as exc:  # noqa: BLE001 - the task is refused and told why
        hint = f" ({UNLOADABLE})" if isinstance(exc, (ImportError, AttributeError)) else ""
        return _result(where, start, refused=(
            f"could not be started on Dask worker {where[0]} (host {where[1]}): {type(exc).__name__}: {exc}{hint}"))
    outcome = _outcome(cls, attributes)
    try:
        data = wire.encode(outcome, limit=max_report_bytes)
    except Exception as exc:  # noqa: BLE001 - too large, or pickling failed in one of many ways
        data = wire.encode(_unsendable(exc))
    return _result(where, start, report=data, status=0)


def host_cpus(dask_worker: Any = None) -> Dict[str, Any]:
    """What binding needs to know of this Dask worker's host (for ``Client.run``).

    ``host``: a key equal for every Dask worker of one host (the running
    kernel's boot id, which containers of one machine share, else the host
    name); ``name``: the host name; ``cpus``: the CPUs this worker's forker may
    use (its affinity, which its task processes inherit), socket-packed by
    the host's own topology (see :func:`taylor.schedulers.binding.socket_packed_cpus`).
    """
    from ..schedulers.binding import socket_packed_cpus

    name = socket.gethostname()
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            host = "boot:" + f.read().strip()
    except OSError:
        host = name
    forker = _forker
    pid = forker.pid if forker is not None and forker.process.poll() is None else 0
    try:
        allowed = os.sched_getaffinity(pid)
    except (AttributeError, OSError):  # no affinity here (not Linux): every CPU, numbered as os.cpu_count
        allowed = set(range(os.cpu_count() or 1))
    return {"host": host, "name": name, "cpus": socket_packed_cpus(allowed)}


def signal_tasks(keys: List[str], signum: int, dask_worker: Any = None) -> List[str]:
    """Send ``signum`` to the process trees of those ``keys`` running here (for ``Client.run``);
    return the keys found."""
    found = []
    for key in keys:
        pid = _running.get(key)
        if pid is not None:
            _kill_tree(pid, signum)
            found.append(key)
    return found
