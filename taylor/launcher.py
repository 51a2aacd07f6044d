"""Where a worker runs: here, a forked child of the boss process.

This is the one seam between the boss's event loop and the processes it
drives.  The loop asks :class:`LocalProcesses` to start a worker (it gets back
a pid and the read end of the worker's report channel, or, for a task that
is one program run, the program's own pid and no channel), to signal a worker
and everything the worker started, and it reaps ended children itself on
SIGCHLD.  A launcher for another engine (a cluster) would offer the same few
calls.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import psutil

from .worker import DirectSpec, direct_capable, direct_outcome, instantiate, prepare_class, run_child

__all__ = ["LocalProcesses", "set_parent_death_signal", "spawn"]

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # libc is in the program's namespace; no ldconfig run
        return libc.prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent dies.

    Linux only; returns False where unavailable.  This is what ends workers
    whose boss was killed outright.
    """
    if _prctl is None:
        return False
    return _prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


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


def _spare_fds() -> int:
    """How many more descriptors this process may open (a guess where it cannot tell).

    A direct task holds two in the boss (its stdout and stderr) where a
    worker process holds one (its report channel): direct tasks may use half
    of what is spare, so that many running tasks fall back to worker
    processes rather than exhaust the boss's descriptors.
    """
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        used = len(os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"))
    except (ImportError, OSError, ValueError):
        return 256
    if limit == resource.RLIM_INFINITY:
        limit = 1 << 20
    return max(0, limit - used)


class LocalProcesses:
    """Starts workers as forked children of the (single-threaded) boss, or
    a direct task's program as a spawned child.

    ``private_fds`` returns the boss's own descriptors (control channel,
    poller, other workers' channels...), which every child closes at once so
    that it holds nothing of the boss but its own report channel.
    """

    def __init__(self, private_fds: Callable[[], Iterable[int]], max_report_bytes: int) -> None:
        self._private_fds = private_fds
        self._max_report_bytes = max_report_bytes
        self._boss_pid = os.getpid()
        self._sigpipe = signal.getsignal(signal.SIGPIPE)  # the caller's; the boss ignores SIGPIPE
        self._direct_fds = 0
        self._fd_budget = _spare_fds() // 2

    def start(self, cls: type, attributes: Mapping[str, Any]) -> Tuple[int, Optional[int], Optional[DirectSpec]]:
        """Start a worker running ``cls(attributes)._task()``; return (pid, report fd, None).

        When the worker's class offers the task as a program run
        (:meth:`~taylor.worker.Worker._direct_spec`), the boss spawns that
        program itself and returns (its pid, None, the spec): no Python
        process, no report channel; the report is made at its end by
        :meth:`direct_outcome`.
        """
        if direct_capable(cls) and self._direct_fds + 2 <= self._fd_budget:
            spec = self._start_direct(cls, attributes)
            if spec is not None:
                return spec.pid, None, spec
        prepare_class(cls)
        read_fd, write_fd = os.pipe()
        private = list(self._private_fds())
        pid = os.fork()
        if pid == 0:  # the worker process
            try:
                os.close(read_fd)
                for fd in private:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                self._become_worker()
            except BaseException:  # noqa: BLE001 - never fall back into the boss's loop
                os._exit(71)
            run_child(cls, attributes, write_fd, self._max_report_bytes)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        return pid, read_fd, None

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

    def _become_worker(self) -> None:
        """Child-side set-up: own process group, die with the boss, default signals.

        Only SIGTERM is reset: each call costs page faults in a fresh fork.
        SIGINT keeps Python's default handler, which the boss never changes;
        the boss's no-op SIGCHLD handler is harmless in a worker and gone at
        ``exec``.
        """
        os.setpgid(0, 0)
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != self._boss_pid:  # the boss died before the line above
            os._exit(72)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if self._sigpipe not in (None, signal.SIG_IGN):  # the caller's own, which the boss ignores
            signal.signal(signal.SIGPIPE, self._sigpipe)

    @staticmethod
    def descendants(pids: Iterable[int]) -> Dict[int, List[psutil.Process]]:
        """Processes started by each worker of ``pids`` (any depth), as far as can be seen now.

        One look at the process table serves all of them: stopping a thousand
        workers must not scan the table a thousand times.
        """
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
            except psutil.Error:
                pass
