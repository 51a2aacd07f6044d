"""The reuse launcher: many tasks per long-lived worker process, for tasks of a millisecond.

:class:`ReuseProcesses` implements the launcher seam (:class:`taylor.launcher.Launcher`)
with one long-lived process per slot: the boss forks one when a task finds
none idle, sends it tasks one after the other on a pipe (the framing of
:mod:`taylor.wire`), and reads each task's outcome back on another pipe, the
very message a fresh worker sends (OK, RAISED or UNSENDABLE).  The boss waits
on these pipes in its one wait, like on any channel: nothing polls.  (Pipes,
not a socket: a message costs some 2 us less CPU at each end; a socketpair
beside them passes the memory file of a large task.)

What stays as in a fresh-process run: a task's process that dies (a signal,
``os._exit``) fails that task alone, with a
:class:`~taylor.errors.WorkerDiedError` naming the signal or exit code, and a
new process takes the slot at the next start; a timeout, an abort,
STOP_RIGHTNOW or SIGTERM stop the process running the task (its process
group), which is replaced too; at the end of the run (or if the boss dies:
parent-death signals) every process is killed and reaped.

What reuse gives up: a task sees what earlier tasks of its process left
(module globals, imported modules, the working directory, the environment,
open files, signal handlers, resource limits); memory freed by a task may not
go back to the system; programs a task started in the background and left
running when it returned are not killed at its end, only when its process
ends (replaced after ``max_tasks_per_process`` tasks, or at the end of the run).
Tasks whose class offers a direct run (``_direct_spec``) run in the processes too.

This module must not depend on the engine: it reaches it only through its
:class:`~taylor.launcher.Host`.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import socket
import struct
import sys
import traceback
from typing import Any, Callable, Dict, Iterable, List, Mapping, NoReturn, Optional

from . import wire
from .forking import _signal, ended_children, kill_groups, set_parent_death_signal, worker_handlers
from .launcher import Host, Launcher
from .local import LocalProcesses
from .worker import _flush_output, _outcome, exit_on_error, outcome_message, prepare_class

__all__ = ["ReuseProcesses", "INLINE_BYTES"]

#: A task message larger than this goes to the process in a memory file (its descriptor passed on the
#: socket): a write to an idle process's empty task pipe (64 KiB) never blocks the boss.
INLINE_BYTES = 32 * 1024

#: Bytes read at once from a pipe: its capacity, so a larger read could get no more; a buffer this size
#: comes from the heap (a buffer of 1 MiB would be mapped and unmapped at each read, some 10 us each).
_SMALL = 64 * 1024

#: Task message kinds, boss to process: a task's pickle inline, or in a memory file whose descriptor comes along.
_INLINE, _FILE = b"I", b"F"

#: A task's header: its kind, then its pickle's size (the framing of :func:`taylor.wire.encode`);
#: the pickle is made by ``pickle.dumps``: some 1.5 us less per task than a pickler on a stream.
_inline_header = struct.Struct("!cQ").pack


class _Process:
    """One long-lived worker process, as the boss sees it."""

    __slots__ = ("pid", "sock", "fd", "task_fd", "decoder", "worker", "tasks", "retired")

    def __init__(self, pid: int, sock: socket.socket, fd: int, task_fd: int) -> None:
        self.pid = pid
        self.sock: Optional[socket.socket] = sock  # None once closed; passes memory files
        self.fd = fd  # outcomes come on this pipe
        self.task_fd = task_fd  # tasks go on this pipe
        self.decoder = wire.Decoder()
        self.worker: Any = None  # the task it runs now
        self.tasks = 0  # tasks it was given
        self.retired = False  # given no more tasks: it was told to stop, or ran its share

    def __repr__(self) -> str:
        return f"<reused process {self.pid} tasks={self.tasks}>"


class ReuseProcesses(Launcher):
    """Runs each task in a long-lived process of the boss's, one process per slot.

    ``private_fds`` returns the boss's own descriptors, which each process
    closes at once; ``shared`` holds the instructions every task gets without
    pickling (they are in the process when it is forked);
    ``max_tasks_per_process`` (None: no limit) retires a process after that many
    tasks: its memory and leftovers go with it.
    """

    def __init__(self, private_fds: Callable[[], Iterable[int]], max_report_bytes: int,
                 shared: Optional[Mapping[str, Any]] = None, max_tasks_per_process: Optional[int] = None) -> None:
        self._private_fds = private_fds
        self._max_report_bytes = max_report_bytes
        self._shared = dict(shared or {})
        self._max_tasks = max_tasks_per_process
        self._handlers = worker_handlers(_signal.getsignal(signal.SIGPIPE))
        self.by_pid: Dict[int, _Process] = {}  # every process not reaped yet
        self.idle: List[_Process] = []  # alive, no task, pipes open
        self.busy = 0  # processes running a task

    def open(self, host: Host) -> None:
        self.host = host

    # ------------------------------------------------------------- starting
    def start(self, worker: Any) -> Optional[int]:
        """Send ``worker``'s task to an idle process, forked now if none is idle; no report channel:
        the outcome comes on the process's outcome pipe, which this launcher watches."""
        instructions = worker.instructions
        cls = instructions.worker_class
        data = pickle.dumps((cls, instructions.attributes({})), protocol=pickle.HIGHEST_PROTOCOL)
        proc = self.idle.pop() if self.idle else self._fork(cls)
        try:
            self._send(proc, data)
        except OSError:  # it died while idle: its end is reaped as usual; a fresh one takes the task
            self._drop(proc)
            proc = self._fork(cls)
            self._send(proc, data)
        proc.worker = worker
        proc.tasks += 1
        self.busy += 1
        worker.reuse_process = proc
        self.host.started(worker, proc.pid)
        return None

    @staticmethod
    def _send(proc: _Process, data: bytes) -> None:
        """Send a task's pickle: in one write, to a task pipe that is empty (the process is idle) and
        takes a task this small whole; or in a memory file."""
        header = _inline_header(_INLINE, len(data))
        if len(data) <= INLINE_BYTES:
            if os.writev(proc.task_fd, (header, data)) < len(header) + len(data):  # taken as a process gone wrong
                raise BlockingIOError(f"the task pipe of {proc!r} was not empty")
            return
        fd = os.memfd_create("taylor-task", os.MFD_CLOEXEC)
        try:
            wire.write_all(fd, header[1:])
            wire.write_all(fd, data)
            socket.send_fds(proc.sock, [_FILE], [fd])  # there before the process reads the mark below
        finally:
            os.close(fd)
        os.write(proc.task_fd, _FILE)

    def _fork(self, cls: type) -> _Process:
        prepare_class(cls)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        task_r, task_w = os.pipe()
        out_r, out_w = os.pipe()
        ours = [mine.fileno(), task_w, out_r]
        parent = os.getpid()
        gc.freeze()  # the process's collections then leave the heap it inherits (copy-on-write) alone
        blocked = _signal.pthread_sigmask(_signal.SIG_BLOCK, {int(signal.SIGTERM), int(signal.SIGINT)})
        try:
            pid = os.fork()
            if pid == 0:
                _child(task_r, out_w, theirs.fileno(), [*ours, *self._private_fds(), *self._own_fds()], parent,
                       self._handlers, self._shared, self._max_report_bytes)
        except BaseException:
            mine.close()
            os.close(task_w)
            os.close(out_r)
            raise
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, blocked)
            gc.unfreeze()
            theirs.close()
            os.close(task_r)
            os.close(out_w)
        mine.setblocking(False)
        os.set_blocking(task_w, False)
        os.set_blocking(out_r, False)
        proc = _Process(pid, mine, out_r, task_w)
        self.by_pid[pid] = proc
        self.host.watch(proc.fd, lambda _fd, _mask: self._on_readable(proc))
        return proc

    def _own_fds(self) -> List[int]:
        return [fd for proc in self.by_pid.values() if proc.sock is not None
                for fd in (proc.fd, proc.task_fd, proc.sock.fileno())]

    # ------------------------------------------------------------- hearing back
    def _on_readable(self, proc: _Process) -> None:
        """Read what the process sent: each message is the outcome of the task it runs.

        A small outcome takes one read; a large one is read by its decoder straight into a
        buffer of its size (see :class:`taylor.wire.Decoder`)."""
        if proc.sock is None:
            return
        try:
            data = os.read(proc.fd, _SMALL)
        except BlockingIOError:
            return
        if not data:  # it is ending: its end is told when it is reaped
            self._drop(proc)
            return
        for message in proc.decoder.feed(data):
            self._task_over(proc, message)
        if len(data) < _SMALL and not proc.decoder.partial:
            return  # all there was (the wait is level-triggered): no second read to learn so
        while proc.sock is not None:
            try:
                messages = proc.decoder.read(proc.fd)
            except EOFError:
                self._drop(proc)
                return
            if messages is None:
                return
            for message in messages:
                self._task_over(proc, message)

    def _task_over(self, proc: _Process, outcome: Any) -> None:
        worker, proc.worker = proc.worker, None
        if worker is None:  # nothing was asked of it: not a taylor process's message
            return
        self.busy -= 1
        if proc.retired or (self._max_tasks is not None and proc.tasks >= self._max_tasks):
            self._drop(proc)  # it exits at its task pipe's end (or of the signal it was sent); reaped as usual
        elif proc.sock is not None:
            self.idle.append(proc)
        worker.outcome = outcome
        self.host.ended(worker, 0)

    def _close(self, proc: _Process) -> None:
        if proc.sock is not None:
            self.host.unwatch(proc.fd)
            proc.sock.close()
            proc.sock = None
            os.close(proc.fd)
            os.close(proc.task_fd)

    def _drop(self, proc: _Process) -> None:
        """No more tasks for ``proc``: close its pipes (it exits at its task pipe's end)."""
        if proc in self.idle:
            self.idle.remove(proc)
        self._close(proc)

    # ------------------------------------------------------------- ending
    def reap(self) -> None:
        """Reap the boss's ended children; a process that ended running a task fails that task alone."""
        for pid, exitcode in ended_children():
            proc = self.by_pid.get(pid)
            if proc is not None:
                self._ended(proc, exitcode)

    def _ended(self, proc: _Process, exitcode: int) -> None:
        del self.by_pid[proc.pid]
        self._on_readable(proc)  # all it wrote is in the pipe by now
        self._drop(proc)
        kill_groups([proc.pid])  # strays left in its process group (its pid may be another's by now: no kill(pid))
        worker, proc.worker = proc.worker, None
        if worker is not None:
            self.busy -= 1
            if proc.decoder.partial:
                worker.decoder = proc.decoder  # its entry says it died while sending its report
            self.host.ended(worker, exitcode)

    def alive(self) -> int:
        return self.busy

    def close_channel(self, fd: int) -> None:
        raise AssertionError("the reuse launcher gives the engine no report channel")

    def close(self) -> None:
        """Kill and reap every process (the run is over: the idle ones; after a failure, all)."""
        for proc in list(self.by_pid.values()):
            self._on_readable(proc)  # reports already sent are kept
            self._close(proc)
            LocalProcesses._signal(proc.pid, signal.SIGKILL)
        self.idle.clear()
        while self.by_pid:
            proc = next(iter(self.by_pid.values()))
            try:
                _, status = os.waitpid(proc.pid, 0)
            except ChildProcessError:
                status = -signal.SIGKILL
                self._ended(proc, status)
                continue
            self._ended(proc, os.waitstatus_to_exitcode(status))

    def drain(self) -> None:
        self.close()

    # ------------------------------------------------------------- signals
    def _process_of(self, worker: Any) -> Optional[_Process]:
        proc = worker.__dict__.get("reuse_process")
        return proc if proc is not None and proc.worker is worker and proc.pid in self.by_pid else None

    def signal(self, worker: Any, signum: int) -> None:
        proc = self._process_of(worker)
        if proc is not None:
            proc.retired = proc.retired or signum in (signal.SIGTERM, signal.SIGKILL)
            LocalProcesses._signal(proc.pid, signum, worker.others)

    def terminate(self, workers: list) -> None:
        """SIGTERM the processes running ``workers`` (their process groups, and their other descendants),
        then SIGCONT: a stopped one gets its SIGTERM when continued.  Each is replaced at the next start.

        A report already in a process's pipe is taken in first: that task ended before the boss came
        to stop it, and keeps its report (as a fresh worker that had exited does)."""
        procs = []
        for worker in workers:
            proc = self._process_of(worker)
            if proc is not None:
                self._on_readable(proc)
                if proc.worker is worker:
                    proc.retired = True
                    procs.append((worker, proc))
        if not procs:
            return
        trees = LocalProcesses.descendants(p.pid for _, p in procs)
        for worker, proc in procs:
            worker.others = trees.get(proc.pid, [])
            LocalProcesses._signal(proc.pid, signal.SIGTERM, worker.others)
            LocalProcesses._signal(proc.pid, signal.SIGCONT, worker.others)

    def kill(self, worker: Any, ending: bool = False) -> None:
        proc = self._process_of(worker)
        if proc is not None:
            worker.killed = True
            proc.retired = True
            LocalProcesses._signal(proc.pid, signal.SIGKILL, worker.others)


# ------------------------------------------------------------------ the process's side
def _child(task_fd: int, out_fd: int, sock_fd: int, close_fds: Iterable[int], parent: int, handlers: Any,
           shared: Mapping[str, Any], max_report_bytes: int) -> NoReturn:
    """A long-lived worker process: its set-up (as a fresh worker's, see :func:`taylor.forking._child`),
    then tasks, one after the other, until its task pipe ends.  Never returns."""
    try:
        for other in close_fds:
            try:
                os.close(other)
            except OSError:
                pass
        os.setpgid(0, 0)
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != parent:  # it died before the parent-death signal was set
            os._exit(72)
        _signal.set_wakeup_fd(-1)
        for signum, handler in handlers:
            _signal.signal(signum, handler)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {int(signal.SIGTERM), int(signal.SIGINT)})
        _serve(task_fd, out_fd, sock_fd, shared, max_report_bytes)
    except BaseException:  # noqa: BLE001 - never fall back into the boss's loop
        exit_on_error()
    os._exit(0)


def _serve(task_fd: int, out_fd: int, sock_fd: int, shared: Mapping[str, Any], max_report_bytes: int) -> None:
    """Run the tasks that come on ``task_fd`` and write back each one's outcome on ``out_fd``, until
    ``task_fd`` ends.

    One read per task nearly always (the boss sends a task only to an idle process, so a read finds
    one whole message): the task is unpickled from the bytes read, not copied first."""
    sock = socket.socket(fileno=sock_fd)
    sock.setblocking(True)
    output = os.environ.pop("TAYLOR_OUTPUT_DIR", None)  # for this process's tasks, not for their own batches
    buffer = bytearray()
    header = 8
    while True:
        data = os.read(task_fd, _SMALL)
        if not data:
            return
        if not buffer and data[:1] == _INLINE and len(data) >= 1 + header and \
                len(data) == 1 + header + int.from_bytes(data[1:1 + header], "big"):
            with memoryview(data) as view, view[1 + header:] as message:  # the usual case: one whole task
                _run_one(message, shared, max_report_bytes, output, out_fd)
            continue
        buffer += data
        while buffer:
            kind = buffer[:1]
            if kind == _FILE:
                del buffer[:1]
                _, fds, _, _ = socket.recv_fds(sock, 1, 1)  # the boss sent it before the mark
                file_fd = fds[0]
                os.lseek(file_fd, header, os.SEEK_SET)  # the boss's offset, at the end: the file is shared
                with open(file_fd, "rb") as task_file:
                    message = task_file.read()
            else:
                if len(buffer) < 1 + header:
                    break
                length = int.from_bytes(buffer[1:1 + header], "big")
                end = 1 + header + length
                if len(buffer) < end:
                    break
                message = bytes(buffer[1 + header:end])
                del buffer[:end]
            _run_one(message, shared, max_report_bytes, output, out_fd)


def _run_one(message: Any, shared: Mapping[str, Any], max_report_bytes: int, output: Optional[str],
             out_fd: int) -> None:
    import pickle

    try:
        cls, attributes = pickle.loads(message)
        if shared:
            attributes = {**attributes, **shared}
        if output is not None:
            _redirect(output, attributes)
        outcome = _outcome(cls, attributes)
    except BaseException as exc:  # noqa: BLE001 - a task that could not even be read fails alone
        from .worker import RAISED, _sendable_exception

        outcome = (RAISED, _sendable_exception(exc), traceback.format_exc())
    parts = outcome_message(outcome, max_report_bytes)  # a report travels packed, as a fresh worker's
    _flush_output()
    if len(parts) == 1:
        data = parts[0]
        written = os.write(out_fd, data)
        if written < len(data):  # a report larger than the pipe: the rest as the boss reads it
            wire.write_all(out_fd, memoryview(data)[written:])
    else:
        wire.write_parts(out_fd, parts)


def _redirect(folder: str, attributes: Mapping[str, Any]) -> None:
    """Under ``taylor run``: this task's stdout and stderr to ``<folder>/<name>.out`` and ``.err``
    (see :func:`taylor.worker._redirect_output`), the files of the previous task closed."""
    _flush_output()
    safe = str(attributes.get("name")).replace(os.sep, "_")
    for target_fd, ext in ((1, ".out"), (2, ".err")):
        try:
            target = os.open(os.path.join(folder, safe + ext), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError:
            continue
        os.dup2(target, target_fd)
        os.close(target)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass
