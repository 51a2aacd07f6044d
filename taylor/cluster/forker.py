"""The forker: one small single-threaded process per Dask worker that forks the task processes.

Why not fork from the Dask worker: it runs an event loop, a thread pool and
more threads; a fork of it inherits locks those threads may hold and a large
heap.  The forker is a fresh interpreter (``python -m taylor.cluster.forker``,
started by :class:`~taylor.cluster.remote.ForkerPlugin` once per Dask worker)
that has never had a second thread, so it forks as taylor's spawner does (see
:func:`taylor.forking.fork_worker`): each task process gets its own process
group, dies with the forker (which dies with its Dask worker: parent-death
signals), and runs :func:`taylor.worker.run_child`.

Protocol: the forker listens on a Unix stream socket (nothing listens on the
network): on Linux an abstract one with a random name, whose peers must be of
the forker's user (``SO_PEERCRED``), elsewhere one in a directory only that
user may enter.  A Dask worker thread that
runs a task connects, sends one request and keeps the connection open:

* request: ``REQUEST`` header (class bytes length, attributes bytes length,
  report size limit, CPU to pin the task process to or -1), the pickled class
  (:func:`~taylor.cluster.pickling.dumps_class`) and attributes; the write end
  of the task's report pipe rides along with its first byte (``SCM_RIGHTS``);
* answers, ``_NEWS`` records: ``STARTED pid``, then ``EXITED wait-status`` once
  the forker reaped it; or ``REFUSED n`` followed by n bytes of UTF-8 saying
  why no process was started (the class could not be loaded, fork failed).

A connection that closes before its task process ended means the requester
is gone: the forker kills that process group.
"""

from __future__ import annotations

import array
import os
import pickle
import select
import signal
import socket
import struct
import sys
from typing import Dict, List, NoReturn, Optional

from ..forking import _signal, fork_worker, kill_groups, set_parent_death_signal, set_process_name, worker_handlers
from ..worker import prepare_class
from .pickling import loads_class

__all__ = ["NAME", "TASK", "UNLOADABLE", "STARTED", "EXITED", "REFUSED", "REQUEST", "NEWS", "main"]

#: Process names, as ``ps`` shows them: the forker, and the task processes it forks.
NAME, TASK = b"taylor-forker", b"taylor-task"

#: What to do when a task's Worker class cannot be loaded on a worker host.
UNLOADABLE = ("its Worker class could not be loaded on this host: install the module that defines it in every Dask "
              "worker's environment, or define the class in the script that runs the batch, which sends it by value")

REQUEST = struct.Struct("<QQQq")
NEWS = struct.Struct("<cq")
STARTED, EXITED, REFUSED = b"S", b"E", b"R"

_FDS = socket.CMSG_SPACE(array.array("i", [0]).itemsize)


class _Request:
    """One connection: its request as it arrives, then its task process."""

    __slots__ = ("sock", "data", "report_fd", "pid")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = bytearray()
        self.report_fd: Optional[int] = None
        self.pid: Optional[int] = None

    def read(self) -> bool:
        """Read what is there; False once the peer closed its end."""
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(1 << 20, _FDS, getattr(socket, "MSG_CMSG_CLOEXEC", 0))
            except BlockingIOError:
                return True
            except OSError:
                return False
            for level, kind, fds in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    received = array.array("i")
                    received.frombytes(fds[: len(fds) - len(fds) % received.itemsize])
                    for fd in received:
                        if self.report_fd is None:
                            self.report_fd = fd
                        else:
                            os.close(fd)
            if not data:
                return False
            self.data += data

    def complete(self) -> bool:
        if len(self.data) < REQUEST.size:
            return False
        class_size, attributes_size, _, _ = REQUEST.unpack_from(self.data)
        return len(self.data) >= REQUEST.size + class_size + attributes_size

    def send(self, kind: bytes, value: int, extra: bytes = b"") -> None:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(NEWS.pack(kind, value) + extra)
            self.sock.setblocking(False)
        except OSError:
            pass

    def close(self) -> None:
        if self.report_fd is not None:
            os.close(self.report_fd)
            self.report_fd = None
        self.sock.close()


def _noop(signum: int, frame: object) -> None:
    """SIGCHLD handler: the wake-up pipe carries it."""


def serve(path: str, parent: int, ready_fd: int) -> NoReturn:
    """Body of the forker: accept requests on ``path``, fork their task processes, report their ends."""
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:  # the Dask worker died before the parent-death signal was set
        os._exit(0)
    set_process_name(NAME)
    # SIGINT/SIGTERM meant for the Dask worker's process group (a Ctrl-C in its terminal) are its
    # business: the forker ends with it through the parent-death signal.
    _signal.signal(signal.SIGINT, _signal.SIG_IGN)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if path.startswith("@"):  # an abstract socket (Linux), named on the command line with "@"
        path = "\0" + path[1:]
    listener.bind(path)
    own_uid = os.getuid()
    peer_credentials = getattr(socket, "SO_PEERCRED", None)
    listener.listen(256)
    listener.setblocking(False)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    _signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    _signal.signal(signal.SIGCHLD, _noop)
    handlers = worker_handlers(_signal.SIG_DFL)
    requests: Dict[int, _Request] = {}
    by_pid: Dict[int, _Request] = {}
    waiter = select.poll()
    waiter.register(listener, select.POLLIN)
    waiter.register(wake_r, select.POLLIN)
    os.write(ready_fd, b"Y")
    os.close(ready_fd)

    def own_fds(keep: _Request) -> List[int]:
        held = [r.report_fd for r in requests.values() if r.report_fd is not None and r is not keep]
        return [listener.fileno(), wake_r, wake_w, *requests, *held]

    def end(request: _Request) -> None:
        fd = request.sock.fileno()
        requests.pop(fd, None)
        try:
            waiter.unregister(fd)
        except KeyError:
            pass
        request.close()

    def start(request: _Request) -> None:
        class_size, attributes_size, limit, cpu = REQUEST.unpack_from(request.data)
        view = memoryview(request.data)[REQUEST.size:]
        try:
            if request.report_fd is None:
                raise ValueError("the request came without its report pipe")
            cls = loads_class(bytes(view[:class_size]))
            attributes = pickle.loads(view[class_size:class_size + attributes_size])
            prepare_class(cls)
            # Binding: the forker pins itself for the fork only, so that the task process is born on its
            # CPU (before its first instruction) and nothing of the task's side needs to know.
            allowed = os.sched_getaffinity(0) if cpu >= 0 else None
            if allowed is not None:
                if cpu not in allowed:
                    raise ValueError(f"CPU {cpu} is not one this host's forker may use ({sorted(allowed)})")
                os.sched_setaffinity(0, {cpu})
            set_process_name(TASK)  # for the task process to be born with its name
            try:
                pid = fork_worker(cls, attributes, request.report_fd, own_fds(request), handlers, limit)
            finally:
                set_process_name(NAME)
                if allowed is not None:
                    os.sched_setaffinity(0, allowed)
        except BaseException as exc:  # noqa: BLE001 - the task is refused and told why
            view.release()
            why = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, (ImportError, AttributeError)):
                why += f" ({UNLOADABLE})"
            why = why.encode("utf-8", "replace")
            request.send(REFUSED, len(why), why)
            end(request)
            return
        view.release()
        request.data = bytearray()
        os.close(request.report_fd)
        request.report_fd = None
        request.pid = pid
        by_pid[pid] = request
        request.send(STARTED, pid)

    try:
        while True:
            for fd, _ in waiter.poll():
                if fd == listener.fileno():
                    while True:
                        try:
                            sock, _ = listener.accept()
                        except BlockingIOError:
                            break
                        if peer_credentials is not None:
                            _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, peer_credentials,
                                                                            struct.calcsize("3i")))
                            if uid != own_uid:  # another user on this host: not served
                                sock.close()
                                continue
                        sock.setblocking(False)
                        requests[sock.fileno()] = _Request(sock)
                        waiter.register(sock, select.POLLIN)
                elif fd == wake_r:
                    try:
                        while os.read(wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    while True:
                        try:
                            pid, status = os.waitpid(-1, os.WNOHANG)
                        except ChildProcessError:
                            break
                        if pid == 0:
                            break
                        request = by_pid.pop(pid, None)
                        if request is not None:
                            request.pid = None
                            request.send(EXITED, status)
                            end(request)
                else:
                    request = requests.get(fd)
                    if request is None:
                        continue
                    alive = request.read()
                    if request.pid is None and alive and request.complete():
                        start(request)
                    elif not alive:  # the requester is gone: so is its task
                        if request.pid is not None:
                            kill_groups([request.pid])
                        else:
                            end(request)
                        if request.pid is not None:  # its end is reported to nobody, but reaped
                            waiter.unregister(fd)
    except BaseException:  # noqa: BLE001 - this loop broke: take the task processes along
        kill_groups(by_pid)
        os._exit(70)
    os._exit(0)


def main(argv: Optional[List[str]] = None) -> NoReturn:
    """``python -m taylor.cluster.forker SOCKET_PATH PARENT_PID READY_FD``."""
    path, parent, ready_fd = (argv or sys.argv[1:])[:3]
    serve(path, int(parent), int(ready_fd))


if __name__ == "__main__":
    main()
