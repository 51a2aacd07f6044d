"""Where a worker runs: here, a process forked by the spawner (or the boss).

This is the one seam between the boss's event loop and the processes it
drives.  The loop asks :class:`LocalProcesses` to start a worker (it gets back
a pid and the read end of the worker's report channel, or, for a task that
is one program run, the program's own pid and no channel), to signal a worker
and everything the worker started, and to say which workers ended (the boss
reaps its own children on SIGCHLD, the spawner reaps those it forked).  A
launcher for another engine (a cluster) would offer the same few calls.

Depends on the process-starting modules below it (spawner, forking, worker); must not import the
boss loop that drives it (:mod:`taylor.engine`), nor the Boss.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from .forking import _signal, fork_worker, worker_handlers
from .spawner import News, Spawner
from .worker import DirectSpec, direct_capable, direct_outcome, instantiate, prepare_class

if TYPE_CHECKING:
    import psutil

__all__ = ["FD_MARGIN", "LocalProcesses", "NOT_NOW", "Started", "spawn"]

#: What starting a worker gives: (pid, spawner token, report fd, direct spec); see LocalProcesses.start.
Started = Tuple[Optional[int], Optional[int], Optional[int], Optional[DirectSpec]]


#: Signals a command gets at their default disposition: Python (and the boss) ignore or handle them.
_DEFAULT_SIGNALS = [getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM", "SIGCHLD")
                    if hasattr(signal, name)]


def spawn(argvs: List[List[str]], out: int, err: int, env: Mapping[Any, Any], **options: Any) -> int:
    """Start the first of ``argvs`` that can start (stdin from /dev/null, stdout ``out``, stderr
    ``err``); return its pid.  The last one's OSError is raised if none can.

    ``os.posix_spawn`` (a vfork under the hood) costs a fraction of a fork of
    this process, which matters for batches of short commands.  Python
    ignores SIGPIPE; the command gets it back at its default, as from a shell.
    ``options`` go to ``os.posix_spawnp`` (``setpgroup``, ``file_actions``...).
    """
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, err, 2)]
    actions += options.pop("file_actions", ())
    for position, argv in enumerate(argvs):
        try:
            return os.posix_spawnp(argv[0], argv, env, file_actions=actions, setsigdef=_DEFAULT_SIGNALS,
                                   **options)
        except OSError:  # not found, not executable...: the next one (the shell) says why
            if position == len(argvs) - 1:
                raise
    raise ValueError("nothing to run")


def _fd_usage() -> Tuple[int, int]:
    """(RLIMIT_NOFILE's soft limit, descriptors open now) of this process; a guess where it cannot tell."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        used = len(os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"))
    except (ImportError, OSError, ValueError):
        return 256 + FD_MARGIN, 0
    if limit == resource.RLIM_INFINITY:
        limit = 1 << 20
    return limit, used


#: Descriptors the boss keeps for itself beyond those open when it starts its first worker: the
#: look-ups of /proc (stopping workers lists the process table), a log file, a library's own.
FD_MARGIN = 16

#: Errors that say "not now" when starting a worker: no descriptor (for this process, or the system)
#: for its report pipe, or no process to spare for its fork.  Running workers free them as they end.
NOT_NOW = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN})


class LocalProcesses:
    """Starts workers as forked children of the spawner (see :mod:`taylor.spawner`),
    or of the (single-threaded) boss when the spawner cannot, and a direct
    task's program as a spawned child of the boss.

    ``private_fds`` returns the boss's own descriptors (control channel,
    poller, other workers' channels...), which every child closes at once so
    that it holds nothing of the boss but its own report channel.  ``shared``
    holds the instructions every worker inherits rather than receives.
    """

    def __init__(self, private_fds: Callable[[], Iterable[int]], max_report_bytes: int,
                 shared: Optional[Mapping[str, Any]] = None) -> None:
        self._private_fds = private_fds
        self._max_report_bytes = max_report_bytes
        self._shared = dict(shared or {})
        # The caller's SIGPIPE, for the workers: the boss ignores SIGPIPE.
        self._handlers = worker_handlers(_signal.getsignal(signal.SIGPIPE))
        self.fds_held = 0  # descriptors the boss holds for running workers: report channels, direct tasks' files
        self._direct_fds = 0
        self._measure_fds()
        self.spawner: Optional[Spawner] = None

    def _measure_fds(self) -> None:
        """Set the descriptor budget of the workers from what this process has and uses now.

        Each running worker process costs the boss one descriptor (its report
        channel's read end), a direct task two (its stdout and stderr); starting
        one costs a second one a moment (the pipe's write end, sent to the
        spawner or kept across the boss's own fork, then closed).  Requests in
        flight to the spawner carry that write end, each for a worker whose read
        end is counted, so they stay within the budget too.  The caller holds
        nothing per worker.  Direct tasks may take half of the budget, so that
        many running tasks fall back to worker processes (one descriptor each).
        """
        self.fd_limit, used = _fd_usage()
        self.fd_budget = max(0, self.fd_limit - (used - self.fds_held) - FD_MARGIN)
        self._direct_budget = self.fd_budget // 2

    def fd_room(self) -> int:
        """How many more worker processes the boss's descriptors allow now (see :meth:`_measure_fds`)."""
        return self.fd_budget - self.fds_held - 1

    def open(self) -> Optional[int]:
        """Start the spawner; the descriptor to watch for its news, None without one."""
        try:
            return self._open()
        finally:
            self._measure_fds()  # the boss is set up: what it uses from now on is its own

    def _open(self) -> Optional[int]:
        if os.environ.get("TAYLOR_SPAWNER", "1") == "0":  # the boss forks every worker itself
            return None
        self.spawner = Spawner.start(self._private_fds(), self._shared, self._max_report_bytes, self._handlers)
        return None if self.spawner is None else self.spawner.fileno()

    def start(self, cls: type, attributes: Mapping[str, Any]) -> Started:
        """Start a worker running ``cls(attributes + shared)._task()``.

        Returns (pid, None, report fd, None) when the boss forked it, and
        (None, token, report fd, None) when the spawner was asked to: its pid
        comes later as news (see :meth:`news`).  When the worker's class offers
        the task as a program run (:meth:`~taylor.worker.Worker._direct_spec`),
        the boss spawns that program itself and returns (its pid, None, None,
        the spec): no Python process, no report channel; the report is made at
        its end by :meth:`direct_outcome`.

        An :class:`OSError` whose errno is in :data:`NOT_NOW` means that the
        boss has no descriptor or process to spare now: nothing was started.
        """
        if direct_capable(cls) and self._direct_fds + 2 <= self._direct_budget:
            spec = self._start_direct(cls, {**attributes, **self._shared})
            if spec is not None:
                return spec.pid, None, None, spec
        read_fd, write_fd = os.pipe()
        try:
            token = None if self.spawner is None else self.spawner.ask(cls, attributes, write_fd)
            pid = None
            if token is None:
                prepare_class(cls)
                pid = fork_worker(cls, {**attributes, **self._shared}, write_fd,
                                  [read_fd, *self._private_fds()], self._handlers, self._max_report_bytes)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.fds_held += 1
        return pid, token, read_fd, None

    def close_channel(self, fd: int) -> None:
        """Close a worker's report channel (the read end :meth:`start` returned)."""
        self.fds_held -= 1
        os.close(fd)

    def news(self) -> List[News]:
        """What the spawner said since the last call (see :mod:`taylor.spawner`)."""
        return [] if self.spawner is None else self.spawner.news()

    @property
    def spawner_alive(self) -> bool:
        return self.spawner is not None and self.spawner.alive

    @property
    def spawner_pid(self) -> Optional[int]:
        return None if self.spawner is None else self.spawner.pid

    def close(self) -> Tuple[List[News], Optional[Set[int]]]:
        """End the spawner (if any); the kernel kills the workers it forked with it.
        Returns what it said before it ended, and its children then (see :meth:`Spawner.close`)."""
        spawner, self.spawner = self.spawner, None
        return ([], set()) if spawner is None else spawner.close()

    def reaped(self, pid: int) -> bool:
        """Whether ``pid``, a child the boss reaped, was the spawner."""
        if self.spawner is None or pid != self.spawner.pid:
            return False
        self.spawner.pid = None  # nothing left to reap
        return True

    def _start_direct(self, cls: type, attributes: Mapping[str, Any]) -> Optional[DirectSpec]:
        """Spawn the program of a direct task, as a worker process would have: None if it cannot be.

        Anything that goes wrong here (a bad template, an unwritable log
        directory, no program to start) falls back to a worker process, which
        meets the same error and reports it as that worker's failure.
        """
        try:
            worker = instantiate(cls, attributes)
            spec = worker._direct_spec()
        except Exception:  # noqa: BLE001 - the worker process will say what is wrong
            return None
        if spec is None:
            return None
        spec.worker = worker
        self._direct_fds += len(spec.fds)
        self.fds_held += len(spec.fds)
        # posix_spawn keeps inheritable descriptors: those of the boss must not reach the program.
        closes = []
        for fd in self._private_fds():
            try:
                if os.get_inheritable(fd):
                    closes.append((os.POSIX_SPAWN_CLOSE, fd))
            except OSError:
                pass
        spec.start = time.monotonic()
        try:
            spec.pid = spawn(spec.argvs, spec.stdout, spec.stderr, spec.env, setpgroup=0, file_actions=closes)
        except OSError:
            self.release(spec)
            return None
        return spec

    def direct_outcome(self, spec: DirectSpec, exitcode: int) -> tuple:
        """The outcome message for a direct task whose program ended with ``exitcode``."""
        return direct_outcome(spec, exitcode, time.monotonic() - spec.start, self._max_report_bytes)

    def release(self, spec: DirectSpec) -> None:
        """Close what a direct task held in the boss."""
        fds = spec.fds
        self._direct_fds -= len(fds)
        self.fds_held -= len(fds)
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        spec.stdout = spec.stderr = -1

    @staticmethod
    def has_ended(pid: int) -> bool:
        """Whether child ``pid`` has ended (and awaits reaping), without reaping it."""
        waitid = getattr(os, "waitid", None)
        if waitid is None:
            return False
        try:
            return waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    @staticmethod
    def descendants(pids: Iterable[int]) -> Dict[int, List[psutil.Process]]:
        """Processes started by each worker of ``pids`` (any depth), as far as can be seen now.

        One look at the process table serves all of them: stopping a thousand
        workers must not scan the table a thousand times.
        """
        import psutil  # here, not at the top: the spawner, and so every fork, is smaller without it

        children: Dict[int, List[psutil.Process]] = {}
        for proc in psutil.process_iter(["ppid"]):
            ppid = proc.info["ppid"]
            if ppid:
                children.setdefault(ppid, []).append(proc)
        result = {}
        for pid in pids:
            found, stack = [], [pid]
            while stack:
                for child in children.get(stack.pop(), ()):
                    found.append(child)
                    stack.append(child.pid)
            result[pid] = found
        return result

    @staticmethod
    def signal(pid: int, signum: int, others: Iterable[psutil.Process] = ()) -> None:
        """Send ``signum`` to worker ``pid``, its process group and ``others``."""
        try:
            os.killpg(pid, signum)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in others:
            try:
                proc.send_signal(signum)  # psutil checks the pid was not reused
            except Exception:  # noqa: BLE001 - psutil.Error: gone, or not ours
                pass
