"""Dispatch and accounting: which pending instructions start now, and the run's counts.

:class:`Dispatcher` holds the pending queue, asks the scheduler what to start
(``launchable``), starts it through the launcher, puts back what could not
start (the scheduler's choice beyond the boss's descriptors, a start that
found no descriptor or process to spare), fails the run when nothing could
ever start, and keeps the counts and the window of recent entries schedulers
see.  It is a part of :class:`taylor.engine.Engine`, whose state it shares;
the attributes it owns are listed below.  It must not depend on the caller's
channel (beyond the engine's ``_send``) nor on how ends become entries.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections import deque
from typing import Any, Dict, List

from .entries import alone_not_now
from .errors import CapacityError, TaylorError
from .instructions import Instructions, resolve
from .launcher import NOT_NOW
from .report import DONE, FAILED, STOPPED
from .running import RunningWorker

__all__ = ["Dispatcher", "REPORT_WINDOW"]

#: What holds a run back (the job's limits): a logger of its own, which the command line keeps audible.
limits_log = logging.getLogger("taylor.limits")

#: How many recent entries schedulers see as ``report`` (without their instructions; a large report
#: is not loaded in the boss: see :class:`taylor.entries.NotLoaded`).
REPORT_WINDOW = 1000


class Dispatcher:
    """The engine's dispatch and accounting.

    Owns: ``scheduler``, ``pending`` (the queue, a list or the scheduler's
    own), ``recent``, ``counts``, ``dirty`` (a dispatch is due), ``halted``,
    ``fd_wait`` and ``not_now`` (the descriptor hold-back), ``warned``.
    Uses from the engine: ``workers``, ``stopping``, ``options``,
    ``launcher``, ``poller`` and its ``_fail_run``, ``lost``, ``at``,
    ``_on_timeout``, ``_read_report``, ``_close_channel``.
    """

    def _init_dispatch(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        # A scheduler may own the queue's structure (see BaseScheduler.pending_queue).
        make_queue = getattr(scheduler, "pending_queue", None)
        queue = make_queue() if callable(make_queue) else None
        self.pending: Any = [] if queue is None else queue
        self.recent: deque = deque(maxlen=REPORT_WINDOW)
        self.counts = {DONE: 0, FAILED: 0, STOPPED: 0}
        self.halted = True
        self.dirty = False
        # The boss's descriptors bound how many workers run (see _fds_allow): once they ran short,
        # a dispatch waits for fd_wait of them to be free; after a "not now" (see _not_now), for an end.
        self.fd_wait = 1
        self.not_now = False
        self.warned: set = set()

    def _dispatch(self) -> None:
        self.dirty = False
        if self.halted or self.stopping or not self.pending or not self._fds_allow(self.fd_wait):
            return
        try:
            launch, later = self.scheduler.launchable(self.pending, self.workers, self.recent)
        except Exception as exc:  # noqa: BLE001 - a scheduler bug fails the run, clearly
            self._fail_run(TaylorError(f"the scheduler {type(self.scheduler).__name__} raised "
                                       f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()))
            return
        if later is not self.pending:
            self.pending = later if isinstance(later, list) else list(later)
        self.fd_wait = 1
        if launch:
            with self.launcher.batch():
                self._start_all(launch)
        if not self.workers and self.pending and not launch:
            validate = getattr(self.scheduler, "validate", None)
            try:  # its own words first: its caps may have changed since the caller checked (fitted to a cluster)
                if callable(validate):
                    validate([self.pending[0]])
            except TaylorError as exc:
                self._fail_run(exc)
                return
            except Exception:  # noqa: BLE001 - a scheduler's bug here: the plain words below
                pass
            self._fail_run(CapacityError(
                f"the scheduler {type(self.scheduler).__name__} starts none of the {len(self.pending)} "
                "pending instructions although no worker runs, so they could never start; first one: "
                f"{dict(self.pending[0])}"))

    def _start_all(self, launch: List[Dict[str, Any]]) -> None:
        """Start what the scheduler chose, in its order, as far as the run and its limits allow."""
        for position, instructions in enumerate(launch):
            if self.stopping:  # starting one failed the run: the rest stays pending
                self._put_back(launch[position:])
                break
            if not self._fds_allow(1):  # the boss's descriptors run short: the rest waits for some
                self._fds_short(len(launch) - position)
                self._put_back(launch[position:])
                break
            if not self._start(instructions):  # not now (see _not_now): it and the rest wait
                self._put_back(launch[position:])
                break

    def _start(self, instructions: Dict[str, Any]) -> bool:
        """Start a worker for ``instructions``; False: not now, they go back to the queue (see _not_now)."""
        if not isinstance(instructions, Instructions) or instructions.worker_class is None:
            # A custom scheduler built new dicts: choose their class here.
            try:
                (instructions,) = resolve([instructions], shared=self.options.shared,
                                          taken=set(self.workers))
            except TaylorError as exc:
                self._fail_run(exc)
                return True
        worker = RunningWorker(instructions)
        try:
            fd = self.launcher.start(worker)
        except OSError as exc:
            if exc.errno not in NOT_NOW:
                raise
            return self._not_now(worker, exc.strerror or os.strerror(exc.errno))
        except TaylorError as exc:  # it could never start there (more memory than any host has): the run fails
            self._fail_run(exc)
            return False
        worker.start_time = time.time()
        worker.fd = fd
        worker.channel_open = fd is not None
        self.workers[worker.name] = worker
        if fd is not None:
            self.poller.register(fd, lambda _fd, _mask: self._read_report(worker))
        timeout = instructions.timeout if instructions.timeout is not None else self.options.timeout
        if timeout is not None and not self.launcher.own_timeouts:
            self.at(timeout, self._on_timeout, worker)
        return True

    def _put_back(self, launch: List[Dict[str, Any]]) -> None:
        """Put instructions the scheduler chose back at the front of the queue, in their order."""
        if isinstance(self.pending, list):
            self.pending[:0] = launch
        else:
            for back in reversed(launch):
                self.pending.insert(0, back)  # a scheduler's queue takes insert(0, x)

    def _account(self, entry: Dict[str, Any]) -> None:
        """Count a worker's entry and show it to the scheduler (its next ``launchable`` call)."""
        self.counts[entry["status"]] += 1
        # Without its instructions: a window of 1,000 megabyte calls would keep a gigabyte.
        self.recent.append({key: value for key, value in entry.items() if key != "instructions"})
        self.not_now = False  # what a start lacked, this end may have freed
        self.dirty = True

    def _counts(self) -> Dict[str, int]:
        counts = dict(self.counts)
        counts["running"] = len(self.workers)
        counts["pending"] = len(self.pending)
        return counts

    # ------------------------------------------------------- the job's limits
    def _fds_allow(self, count: int) -> bool:
        """Whether ``count`` more workers may start, as far as the boss's descriptors go.

        Always true when the boss holds none for workers: no end would free one
        to wait for (a start that then fails says why, see :meth:`_not_now`).
        """
        if self.launcher.fds_held == 0:
            return True
        return not self.not_now and self.launcher.fd_room() >= count

    def _fds_short(self, backlog: int) -> None:
        """The scheduler chose more workers than the boss has descriptors for: say so, once.

        A scheduler that chose many more (a laxist one over a long queue) is
        asked again only once a batch of workers ended, not at every end: each
        call hands it the whole queue.
        """
        batch = max(1, self.launcher.fd_budget // 8)
        self.fd_wait = batch if backlog > batch else 1
        if "fds" not in self.warned:
            self.warned.add("fds")
            launcher = self.launcher
            limits_log.warning("the boss's open-file limit (RLIMIT_NOFILE, %d) holds this run to about %d workers "
                               "at once, fewer than its scheduler %s would start: the others wait for a free slot. "
                               "Raise the limit (ulimit -n) to run more at once.", launcher.fd_limit,
                               launcher.fd_budget - 1, type(self.scheduler).__name__)

    def _not_now(self, worker: RunningWorker, why: str) -> bool:
        """A worker could not start for want of a descriptor or a process (``why``).

        If others run, their ends free what was short: its instructions go
        back to the queue (returns False) and no start is tried again before
        one ends.  If none runs, waiting would never end: the worker fails,
        saying why (returns True).
        """
        if self.workers or self.launcher.alive():
            self._wait_for_an_end(why)
            return False
        worker.pid = worker.fd = worker.direct = None
        self.workers[worker.name] = worker
        self.lost(worker, alone_not_now(why))
        return True

    def _wait_for_an_end(self, why: str) -> None:
        """Start nothing before a running worker ends (a start lacked what ``why`` says); say so, once."""
        self.not_now = True
        if "not now" not in self.warned:
            self.warned.add("not now")
            limits_log.warning("a worker could not be started (%s) while %d others run: the next ones wait for "
                               "running workers to end. Raise the limits of the job (ulimit -n for descriptors, "
                               "ulimit -u for processes) to run more at once.", why,
                               len(self.workers) + self.launcher.alive())

    # ------------------------------------------------ the launcher's requests (Host)
    def refused(self, worker: RunningWorker, why: str) -> bool:
        """The launcher could not start ``worker`` for want of a process or descriptor: put its
        instructions back to wait for a free slot (True), if others run (see :meth:`_not_now`)."""
        if self.stopping is None:
            if len(self.workers) <= 1 and not self.launcher.alive():
                worker.lost = alone_not_now(why)
                return False
            self._wait_for_an_end(why)
        del self.workers[worker.name]
        self._close_channel(worker)
        worker.finished = True  # its deadlines are void; it never ran
        self._put_back([worker.instructions])  # stopping: listed as never started
        self.dirty = True
        return True

    def requeue(self, workers: List[RunningWorker]) -> None:
        """Workers the launcher never started: pending again, in their order."""
        for worker in workers:
            self._close_channel(worker)
            worker.finished = True  # its deadlines lapse
            self.workers.pop(worker.name, None)
        if workers:
            self._put_back([worker.instructions for worker in workers])
            self.dirty = True
