"""The launcher seam: what the boss's event loop asks of whatever runs its workers.

The engine (:mod:`taylor.engine`) talks to its launcher only through the
instance methods of :class:`Launcher`, and the launcher talks back only
through the :class:`Host` the engine gives it at :meth:`Launcher.open`:

* the launcher **starts** a worker (:meth:`Launcher.start`), and later says
  it started (:meth:`Host.started`, with its process id), that it ended
  (:meth:`Host.ended`, its outcome set on the worker), that it was lost or
  never started (:meth:`Host.lost`), or that it was never started and must
  wait in the queue again (:meth:`Host.requeue`);
* the engine **signals** workers (:meth:`Launcher.terminate`,
  :meth:`Launcher.kill`, :meth:`Launcher.signal`) and **closes** the
  launcher at the end of the run, whose last ends come back as usual;
* the launcher **watches** its own descriptors in the engine's one wait
  (:meth:`Host.watch`) and sets its own deadlines (:meth:`Host.at`): it never
  blocks and never polls.

:class:`taylor.local.LocalProcesses` (processes forked here, by the spawner
or the boss) is the launcher of a local run; :class:`taylor.reuse.ReuseProcesses`
(many tasks per long-lived process) that of a run with ``reuse=True``.  A cluster launcher plugs in
behind the same methods: :class:`taylor.cluster.seam.ClusterLauncher`, chosen
by the engine when its options name a cluster, maps ``open`` to its ``open`` and :meth:`Host.watch` of the
descriptor it returns, ``start`` to its ``start(worker.name, cls, attributes,
memory=worker.memory, timeout=...)`` (no report channel: None), its wake-ups and
:meth:`Launcher.update` to its ``ended()`` (each :class:`~taylor.cluster.launcher.Ended`'s outcome, lost
and timed_out set on the worker, then :meth:`Host.ended` with its exit code),
``signal``, ``terminate`` and ``kill`` to its ``signal``, ``stop`` and ``cancel``, :meth:`Launcher.batch`
to its ``batch``, ``close`` to its ``cancel_all`` and ``close``.  This module
must not depend on the engine, the spawner or any launcher's own machinery.
"""

from __future__ import annotations

import contextlib
import errno
import signal
from typing import Any, Callable, ContextManager, Optional, Protocol

__all__ = ["Host", "Launcher", "NOT_NOW"]

#: Errors that say "not now" when starting a worker: no descriptor (for this process, or the system)
#: for its report pipe, or no process to spare for its fork.  Running workers free them as they end.
NOT_NOW = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN})


class Host(Protocol):
    """What a launcher may ask of the engine that drives it (implemented by :class:`taylor.engine.Engine`)."""

    def watch(self, fd: int, callback: Callable[[int, int], None]) -> None:
        """Call ``callback(fd, events)`` whenever ``fd`` is readable, from the engine's one wait."""

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` (before closing it)."""

    def at(self, delay: float, action: Callable[[Any], None], subject: Any) -> None:
        """Call ``action(subject)`` in ``delay`` seconds, unless ``subject.finished`` is true by then."""

    def started(self, worker: Any, pid: Optional[int]) -> None:
        """``worker`` runs now, as process ``pid`` of this host, the leader of its process group, which
        the caller kills should the boss die outright (None: it has no process here)."""

    def ended(self, worker: Any, exitcode: Optional[int]) -> None:
        """``worker`` ended, its process with ``exitcode``; its ``outcome``, ``lost``, ``timed_out`` are set."""

    def lost(self, worker: Any, why: str) -> None:
        """``worker`` ended unseen or could not start (``why``): a failure."""

    def refused(self, worker: Any, why: str) -> bool:
        """``worker`` could not start for want of a process or descriptor (``why``): True if it was put
        back to wait for a free slot (others run), False if it must fail (see :meth:`lost`)."""

    def requeue(self, workers: list) -> None:
        """``workers`` were never started: their instructions go back to the front of the queue, in order."""

    def fail(self, error: BaseException) -> None:
        """Where workers run is lost (a cluster's scheduler): the run fails with ``error``, its workers stop."""

    def capacity(self, limits: dict) -> None:
        """Where workers run offers ``limits`` now (``max_threads``, ``max_memory`` MiB or None): the
        scheduler's defaults (``max_threads=0``, an unset ``max_memory``) follow them instead of this host's."""


class Launcher:
    """Where workers run; the engine's only way to start, signal and hear of them.

    Subclasses implement every method that raises :class:`NotImplementedError`;
    the others have defaults that suit a launcher with no local resources.
    The descriptor budget (``fds_held``, ``fd_budget``, ``fd_limit``,
    :meth:`fd_room`) holds a run back when the boss itself would run short of
    descriptors; a launcher that holds none per worker leaves it at zero.
    """

    own_timeouts = False  # True: the launcher enforces each worker's timeout itself (the engine sets none)
    fds_held = 0  # descriptors the boss holds for running workers (0: starts are never held back for them)
    fd_budget = 0
    fd_limit = 0

    def fd_room(self) -> int:
        """How many more workers the boss's descriptors allow now."""
        return 1 << 30

    def open(self, host: Host) -> None:
        """Get ready to start workers (before any instruction arrives); watch what must be watched."""
        self.host = host

    def start(self, worker: Any) -> Optional[int]:
        """Start ``worker`` (a :class:`~taylor.running.RunningWorker`): its class is
        ``worker.instructions.worker_class``.  Returns the read end of its report channel, which the
        engine reads and closes with :meth:`close_channel`, or None when it has none (its outcome is
        set when it ends).  Calls :meth:`Host.started` now, or later once it runs.

        An :class:`OSError` whose errno is in :data:`NOT_NOW` means there is nothing to spare to start
        it now: nothing was started, and it waits for a running worker's end.
        """
        raise NotImplementedError

    def batch(self) -> ContextManager[Any]:
        """What a dispatch wraps its starts in: a launcher that sends starts together (one message
        for many, as :meth:`taylor.cluster.launcher.DaskLauncher.batch`) sends them at its end."""
        return _NO_BATCH

    def close_channel(self, fd: int) -> None:
        """Close a worker's report channel (what :meth:`start` returned)."""
        raise NotImplementedError

    def alive(self) -> int:
        """How many workers whose start was announced (:meth:`Host.started`) have not ended yet."""
        raise NotImplementedError

    def update(self) -> None:
        """Take in, now and without blocking, what the launcher has to tell (starts, ends)."""

    def reap(self) -> None:
        """The boss got SIGCHLD: collect the ends of its own children."""

    def ended(self, worker: Any, exitcode: Optional[int]) -> Optional[int]:
        """``worker``'s end is being entered: release what it held, finish its outcome if the launcher
        makes it; returns the exit code its entry shows."""
        return exitcode

    def signal(self, worker: Any, signum: int) -> None:
        """Send ``signum`` to ``worker`` (and what it started), if it runs."""
        raise NotImplementedError

    def terminate(self, workers: list) -> None:
        """Ask each of ``workers`` (whose ``stop_requested`` is set) to stop: SIGTERM, or alike.
        One that has not started yet is asked as soon as it does."""
        for worker in workers:
            self.signal(worker, signal.SIGTERM)

    def kill(self, worker: Any, ending: bool = False) -> None:
        """End ``worker`` now (its grace is over; ``ending``: the whole run ends); its end comes as usual."""
        self.signal(worker, signal.SIGKILL)

    def close(self) -> None:
        """End the run's side of the launcher; ends still owed are told before this returns."""

    def drain(self) -> None:
        """The engine's loop failed: end every worker at once and tell their ends, blocking if need be."""
        self.close()


_NO_BATCH = contextlib.nullcontext()


def __getattr__(name: str) -> Any:
    # The local launcher's names, where they were before it had a module of its own.
    if name in ("LocalProcesses", "spawn", "FD_MARGIN", "Started"):
        from . import local

        return getattr(local, name)
    raise AttributeError(name)
