"""Where a worker runs: here, a forked child of the boss process.

This is the one seam between the boss's event loop and the processes it
drives.  The loop asks :class:`LocalProcesses` to start a worker (it gets back
a pid and the read end of the worker's report channel), to signal a worker
and everything the worker started, and it reaps ended children itself on
SIGCHLD.  A launcher for another engine (a cluster) would offer the same few
calls.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any, Callable, Dict, Iterable, List, Mapping, Tuple

import psutil

from .worker import prepare_class, run_child

__all__ = ["LocalProcesses", "set_parent_death_signal"]

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


class LocalProcesses:
    """Starts workers as forked children of the (single-threaded) boss.

    ``private_fds`` returns the boss's own descriptors (control channel,
    poller, other workers' channels...), which every child closes at once so
    that it holds nothing of the boss but its own report channel.
    """

    def __init__(self, private_fds: Callable[[], Iterable[int]], max_report_bytes: int) -> None:
        self._private_fds = private_fds
        self._max_report_bytes = max_report_bytes
        self._boss_pid = os.getpid()
        self._sigpipe = signal.getsignal(signal.SIGPIPE)  # the caller's; the boss ignores SIGPIPE

    def start(self, cls: type, attributes: Mapping[str, Any]) -> Tuple[int, int]:
        """Fork a worker running ``cls(attributes)._task()``; return (pid, report fd)."""
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
        return pid, read_fd

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
