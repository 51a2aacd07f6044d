"""Forking one worker process: the child's set-up and body.

Shared by the spawner (which forks nearly every worker) and the boss (which
forks a worker itself when the spawner cannot: instructions that do not pickle,
the spawner not ready or gone, or no spawner).  Everything here runs in a fresh fork, where each page written
costs a copy-on-write fault, so the child does as little as it can; and both
fork without Python's at-fork hooks where that is safe (see :data:`bare_fork`).

Depends only on :mod:`taylor.worker` (the child's body); must not import the spawner, the launcher,
the boss loop or the Boss, which are all built on it.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
from typing import Any, Callable, Iterable, Iterator, Mapping, NoReturn, Optional, Sequence, Tuple

from .worker import run_child

try:  # signal.signal's wrapper builds enums: in a fresh fork that costs ~40 page faults per call
    import _signal
except ImportError:  # not CPython
    _signal = signal  # type: ignore[assignment]

__all__ = ["STOPPING", "Handlers", "bare_fork", "bare_fork_allowed", "fork_worker", "kill_groups", "lone_thread_links",
           "process_name", "set_parent_death_signal", "set_process_name", "worker_handlers"]

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_SIGKILL = int(signal.SIGKILL)

#: (signal number, handler) pairs a worker sets at its start.
Handlers = Sequence[Tuple[int, Any]]

#: Signals blocked across a fork until the worker has set its handlers: a stop
#: sent to a worker in its first microseconds must not meet its parent's handler.
STOPPING = frozenset({int(signal.SIGTERM), int(signal.SIGINT)})


def _load_libc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)  # libc is in the program's namespace; no ldconfig run
    except OSError:
        return None


_libc = _load_libc()
_prctl: Optional[Callable[..., int]] = getattr(_libc, "prctl", None)


def _load_bare_fork() -> Optional[Callable[[], int]]:
    if _prctl is None:
        return None
    try:
        fork = ctypes.PyDLL(None, use_errno=True).fork  # PyDLL: called holding the GIL, as os.fork is
    except (OSError, AttributeError):
        return None
    fork.restype = ctypes.c_int  # pid_t
    fork.argtypes = ()
    return fork


#: libc's ``fork()`` called directly (Linux; None elsewhere): it returns -1 on failure
#: (``ctypes.get_errno()`` tells why) and skips what ``os.fork`` does around it, Python's
#: at-fork hooks above all.  threading's and logging's hooks alone cost a fresh child
#: some 150 copy-on-write faults, 0.5 ms of CPU on the reference VM, to reset locks
#: and thread tables that only a process with other threads could have left dirty.
#: Only for a process whose own fork already ran the hooks (the boss, the spawner), and
#: only while it is single-threaded: see :func:`lone_thread_links`.
bare_fork = _load_bare_fork()

_TASKS = "/proc/self/task"


def lone_thread_links() -> int:
    """What :func:`bare_fork_allowed` compares with: the link count of ``/proc/self/task``
    now, when this process has a single thread (the kernel counts 2 + its threads);
    -1 when it has more, when /proc cannot tell, or when ``TAYLOR_FORK_HOOKS=1`` asks
    for ``os.fork`` (whose hooks then run in every worker)."""
    if bare_fork is None or os.environ.get("TAYLOR_FORK_HOOKS", "0") == "1":
        return -1
    try:
        return os.stat(_TASKS).st_nlink if len(os.listdir(_TASKS)) == 1 else -1
    except OSError:
        return -1


def bare_fork_allowed(lone: int) -> bool:
    """Whether this process may fork with :data:`bare_fork` now: it still has the one thread
    it had when :func:`lone_thread_links` returned ``lone``.  Another thread (started by a
    library's at-fork hook, say) may hold a lock that only os.fork's hooks reset, the
    import lock above all; one ``stat`` tells."""
    try:
        return lone > 0 and os.stat(_TASKS).st_nlink == lone
    except OSError:
        return False


#: glibc's mallopt parameters, and what :func:`keep_freed_memory` sets them to.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEPT_FREE = 64 << 20
HEAP_UP_TO = 32 << 20  # glibc's largest mmap threshold on 64-bit systems


#: glibc's own starting values of those parameters.
DEFAULT_THRESHOLD = 128 << 10


def keep_freed_memory() -> bool:
    """Make this process's allocator (glibc's) keep up to :data:`KEPT_FREE` bytes of freed memory
    for reuse, and serve blocks up to :data:`HEAP_UP_TO` from its heap, instead of mapping each
    large block afresh and giving it back once freed.

    For the boss, which receives and passes on megabyte messages one after the other: fresh
    pages cost a fault each (some 3 µs on the reference VM: 0.8 ms per MiB), memory reused
    costs nothing.  Returns False where there is no glibc.
    """
    return _mallopt(HEAP_UP_TO, KEPT_FREE)


def map_large_blocks() -> bool:
    """Undo :func:`keep_freed_memory` (glibc's starting values, held fixed): for the spawner, whose
    workers inherit its allocator.  In a fresh fork, a large block served from the heap reuses
    pages the parent touched, and each page written then costs a copy-on-write copy; a block
    mapped afresh costs a zero page (none at all where it is never written, as for ``calloc``).
    Measured on the reference VM: loading a 1 MiB call cost a fork 0.3 to 0.5 ms more under the
    boss's settings when its parent had 8 MiB freed on its heap; the spawner's heap holds less, and
    its workers given 1 MiB spent about 0.1 ms less with glibc's values."""
    return _mallopt(DEFAULT_THRESHOLD, DEFAULT_THRESHOLD)


def _mallopt(mmap_threshold: int, trim_threshold: int) -> bool:
    mallopt = getattr(_libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def kill_groups(pids: Iterable[int]) -> None:
    """SIGKILL the process group of each of ``pids`` (workers, each the leader of its own group),
    ignoring those gone already: the last resort of a process that forked them."""
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:  # none left, or not ours
            pass


def set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent dies.

    Linux only; returns False where unavailable.  This is what ends workers
    (and the spawner) whose boss was killed outright.
    """
    if _prctl is None:
        return False
    return _prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


def set_process_name(name: bytes) -> None:
    """Name this process (as ``ps`` and ``top`` show it; 15 bytes at most), where Linux allows."""
    if _prctl is not None:
        _prctl(_PR_SET_NAME, name[:15], 0, 0, 0)


def process_name() -> Optional[bytes]:
    """This process's name, as :func:`set_process_name` takes it; None where unknown."""
    try:
        with open("/proc/self/comm", "rb") as comm:
            return comm.read().rstrip(b"\n")
    except OSError:
        return None


def ended_children() -> Iterator[Tuple[int, int]]:
    """Reap this process's ended children, without waiting: (pid, exit code) of each, the exit code
    as :mod:`multiprocessing` gives it (minus the signal number for a killed one)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, os.waitstatus_to_exitcode(status)


def worker_handlers(sigpipe: Any) -> Handlers:
    """The signal handlers a worker sets: SIGTERM at its default (it ends the worker),
    and the caller's SIGPIPE (the boss ignores it).  SIGINT keeps the caller's
    handler, which neither the boss nor the spawner change.  Handlers are raw
    values from ``_signal.getsignal``.
    """
    handlers = [(int(signal.SIGTERM), _signal.SIG_DFL)]
    if sigpipe not in (None, _signal.SIG_IGN):
        handlers.append((int(signal.SIGPIPE), sigpipe))
    return handlers


def fork_worker(cls: type, attributes: Mapping[str, Any], report_fd: int, close_fds: Iterable[int],
                handlers: Handlers, max_report_bytes: int) -> int:
    """Fork a worker running ``cls(attributes)._task()`` that reports on ``report_fd``;
    return its pid.  The child first closes ``close_fds`` (its parent's own
    descriptors).  The caller closes ``report_fd`` on its side.
    """
    parent = os.getpid()
    bare = lone_thread_links() > 0  # this process has one thread now: looked at once, not twice
    gc.freeze()  # see the spawner: a worker's collections then leave the inherited heap alone
    blocked = _signal.pthread_sigmask(_signal.SIG_BLOCK, STOPPING)
    try:
        pid = bare_fork() if bare else os.fork()  # bare: bare_fork is there
        if pid == 0:
            _child(cls, attributes, report_fd, close_fds, parent, handlers, max_report_bytes, None, bare)
        if pid < 0:
            raise OSError(ctypes.get_errno(), "fork failed")
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, blocked)  # never reached in the child
        gc.unfreeze()
    return pid


def _child(cls: type, attributes: Mapping[str, Any], report_fd: int, close_fds: Iterable[int], parent: int,
           handlers: Handlers, max_report_bytes: int, name: Optional[bytes], bare: bool = False) -> NoReturn:
    """A forked worker: its set-up, then its body (:func:`~taylor.worker.run_child`, which never returns).

    Set-up: its parent's descriptors closed; ``random`` reseeded after a
    :data:`bare_fork` (the one skipped at-fork hook that matters: without it
    every worker would draw the same numbers); its own process group; death
    with its parent; its name back (``name``, given by the spawner, whose own
    name it inherited); no signal wake-up descriptor (its parent's is closed);
    its signal ``handlers``; then SIGTERM and SIGINT unblocked (they come
    blocked, see :data:`STOPPING`: one sent until now waits for the handlers).
    The parent's no-op SIGCHLD handler is harmless here and gone at ``exec``.

    All inline, without helpers: in a fresh fork each function or object
    touched costs a copy-on-write fault (helpers cost ~50 faults per worker).
    """
    try:
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        if bare and "random" in sys.modules:
            instance = getattr(sys.modules["random"], "_inst", None)
            if instance is not None:
                instance.seed()
        os.setpgid(0, 0)
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
            if name is not None:
                _prctl(_PR_SET_NAME, name, 0, 0, 0)
        if os.getppid() != parent:  # it died before the parent-death signal was set
            os._exit(72)
        _signal.set_wakeup_fd(-1)
        for signum, handler in handlers:
            _signal.signal(signum, handler)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, STOPPING)
    except BaseException:  # noqa: BLE001 - never fall back into the parent's loop
        os._exit(71)
    run_child(cls, attributes, report_fd, max_report_bytes)
