"""The boss process: one event loop over control, reports and ended children.

The loop sleeps in a single ``epoll`` wait over the control channel (instructions
and signals from the caller), every running worker's report channel, the
spawner's socket (workers it forked, and reaped), a self-pipe woken by SIGCHLD
and SIGTERM, and (where the kernel offers it) a pidfd of the caller.  Its only
timeout is the nearest deadline (a worker's timeout, the grace before a
SIGKILL, the spawner's time to answer): an idle boss uses no CPU.

Every worker ends in exactly one entry, built when its process is reaped (by
the spawner, which says so, or by the boss): the report it sent, else the
exception it sent, else what killed it.  Its slot is free earlier, as soon as
its report is in and its channel closed.  Entries
are streamed to the caller as they are made, so the boss keeps nothing that
grows with the number of tasks, and a caller keeps every finished report even
if the boss is killed.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import reprlib
import select
import signal
import time
import traceback
from collections import deque
from typing import Any, Callable, Dict, List, Optional

from . import wire
from .errors import (
    CapacityError,
    InstructionsError,
    Interrupted,
    MemoryLimitError,
    ReportError,
    TaylorError,
    WorkerDiedError,
    WorkerTimeoutError,
    describe_exit,
    worker_failure_message,
)
from .instructions import Instructions, resolve
from .launcher import NOT_NOW, LocalProcesses
from .poller import READ, WRITE, Poller
from .report import DONE, FAILED, STOPPED
from .schedulers.base import expected_time_of, memory_of
from .schedulers.memory_limit import LimitMemory
from .spawner import EXITED, STARTED
from .worker import OK, RAISED, UNSENDABLE, DirectSpec

__all__ = ["Engine", "Options", "SIGNALS", "serve"]

log = logging.getLogger("taylor.boss")
#: What holds a run back (the job's limits): a logger of its own, which the command line keeps audible.
limits_log = logging.getLogger("taylor.limits")

#: Control signals and their meaning (the caller sends their names).
SIGNALS = {
    "HALT": "Suspend starting workers until RESUME.",
    "RESUME": "Start workers again as the scheduler allows.",
    "SEND_REPORT": "Send an interim report, and go on.",
    "END": "Take no more instructions; finish all pending work, then end.",
    "STOP": "Start nothing more; let running workers finish, then end.",
    "STOP_LISTENING": "Report now and end; running workers finish unobserved.",
    "STOP_RIGHTNOW": "Terminate running workers at once, then end.",
}

#: How many recent entries schedulers see as ``report``.
REPORT_WINDOW = 1000
#: Entries for the caller are sent together once this old (seconds) or this large (bytes).
BATCH_DELAY = 0.005
BATCH_BYTES = 1 << 16
#: Seconds the spawner may stay silent while it owes the boss an answer (the pid of a worker it was
#: asked to fork, the end of one the boss killed).  Past it, the boss takes it for stopped or stuck,
#: kills it (its workers die with it) and forks workers itself.  Generous: a fork on a loaded machine
#: may take a while, and a spawner wrongly given up on takes its running workers along.
SPAWNER_DEADLINE = 30.0
#: The same, once the boss has killed every worker to end the run: nothing is left to lose.
SPAWNER_STOP_DEADLINE = 1.0
#: A deadline met this late (seconds) means the boss itself was held up (stopped with its job,
#: starved): the spawner, held up too, gets a new deadline rather than the blame.
LATE = 1.0
#: Least time (seconds) a worker has to exit once its report is in, whatever ``stop_grace``.
EXIT_GRACE = 1.0


class Options:
    """The boss's settings, fixed at creation."""

    def __init__(self, *, name: Optional[str] = None, verbose: bool = False, maxlenreport: int = 1024,
                 on_error: str = "abort", timeout: Optional[float] = None, stop_grace: float = 2.0,
                 max_report_bytes: int = 1 << 30, shared: Optional[Dict[str, Any]] = None) -> None:
        self.name = name
        self.verbose = verbose
        self.maxlenreport = int(maxlenreport)
        self.on_error = on_error
        self.timeout = timeout
        self.stop_grace = float(stop_grace)
        self.max_report_bytes = int(max_report_bytes)
        self.shared = dict(shared or {})


class RunningWorker:
    """A running worker as schedulers see it: its instructions are attributes too."""

    def __init__(self, instructions: Dict[str, Any], pid: Optional[int], fd: Optional[int],
                 direct: Optional[DirectSpec] = None) -> None:
        self.instructions = instructions
        self.name: str = instructions["name"]
        self.pid = pid
        self.fd = fd  # None: a direct run (the program itself), which has no report channel
        self.direct = direct
        self.start_time = time.time()
        self.memory = memory_of(instructions)
        self.expected_time = expected_time_of(instructions)
        self.scheduler_ticket = instructions.get("scheduler_ticket")
        self.decoder = wire.Decoder()
        self.outcome: Optional[tuple] = None
        self.channel_open = fd is not None
        self.finished = False
        self.timed_out = False
        self.stop_requested = False
        self.others: list = []  # descendants outside its process group, seen when stopping
        self.spawned = False  # forked by the spawner (it dies with it)
        self.lost: Optional[str] = None  # why it ended unseen (its spawner died)
        self.end_time: Optional[float] = None  # when its report was complete, if before its exit
        self.killed = False  # the boss sent it SIGKILL

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["instructions"][key]
        except KeyError:
            raise AttributeError(key) from None

    def __repr__(self) -> str:
        return f"<worker {self.name!r} pid={self.pid}>"


class _SpawnerCheck:
    """When the boss looks again whether its spawner answers (a deadline of the heap)."""

    __slots__ = ("at", "limit", "finished")

    def __init__(self, at: float, limit: float) -> None:
        self.at = at
        self.limit = limit
        self.finished = False  # superseded: the heap may forget it


class Engine:
    """The boss's state and event loop; runs in the boss process only."""

    def __init__(self, control: int, caller_pid: int, scheduler: Any, options: Options,
                 inherited_fds: List[int]) -> None:
        self.control = control
        self.caller_pid = caller_pid
        self.scheduler = scheduler
        self.options = options
        self.inherited_fds = list(inherited_fds)  # boss-only fds the workers must not keep
        # A scheduler may own the queue's structure (see BaseScheduler.pending_queue).
        make_queue = getattr(scheduler, "pending_queue", None)
        queue = make_queue() if callable(make_queue) else None
        self.pending: Any = [] if queue is None else queue
        self.workers: Dict[str, RunningWorker] = {}
        self.by_pid: Dict[int, RunningWorker] = {}
        self.asked: Dict[int, RunningWorker] = {}  # by spawner token: workers whose pid is not known yet
        self.recent: deque = deque(maxlen=REPORT_WINDOW)
        self.counts = {DONE: 0, FAILED: 0, STOPPED: 0}
        self.halted = True
        self.ending = False
        self.stopping: Optional[str] = None
        self.silent = False
        self.failure: Optional[Dict[str, Any]] = None
        self.error: Optional[BaseException] = None
        self.told_aborting = False  # the caller was told the run ends on its own (see _tell_aborting)
        self.dirty = False
        self.deadlines: list = []
        self._seq = itertools.count()
        self.outbox = wire.Outbox(control)
        self._outbox_was_empty = True
        self.flush_at: Optional[float] = None  # when queued entries go to the caller
        self.control_decoder = wire.Decoder()
        self.poller = Poller()
        self.wakeup_r, self.wakeup_w = os.pipe()
        self.caller_fd: Optional[int] = None
        self.caller_lost = False
        self.launcher = LocalProcesses(self._private_fds, options.max_report_bytes, options.shared)
        self.spawner_fd: Optional[int] = None
        self.spawner_heard = time.monotonic()  # when the spawner last said something
        self.spawner_check: Optional[_SpawnerCheck] = None  # armed while it owes the boss an answer
        self.killing = False  # every worker is being stopped: the run ends
        # The boss's descriptors bound how many workers run (see _fds_allow): once they ran short,
        # a dispatch waits for fd_wait of them to be free; after a "not now" (see _not_now), for an end.
        self.fd_wait = 1
        self.not_now = False
        self.warned: set = set()

    # ------------------------------------------------------------------ set-up
    def _private_fds(self) -> List[int]:
        fds = [self.control, self.wakeup_r, self.wakeup_w]
        if self.poller.fileno() is not None:
            fds.append(self.poller.fileno())
        fds += self.inherited_fds
        if self.caller_fd is not None:
            fds.append(self.caller_fd)
        for worker in self.workers.values():
            if worker.channel_open:
                fds.append(worker.fd)
            if worker.direct is not None:
                fds += worker.direct.fds
        return fds

    def _setup(self) -> None:
        os.set_blocking(self.control, False)
        for fd in (self.wakeup_r, self.wakeup_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wakeup_w, warn_on_full_buffer=False)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, _note_signal)
        # Ctrl-C at a terminal is the caller's to handle: the boss (and so its
        # workers) leave the terminal's foreground process group.
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a vanished caller is an EPIPE to handle, not our death
        self.poller.register(self.control, self._on_control)
        self.poller.register(self.wakeup_r, self._on_wakeup)
        if hasattr(os, "pidfd_open"):
            try:
                self.caller_fd = os.pidfd_open(self.caller_pid)
                self.poller.register(self.caller_fd, self._on_caller_gone)
            except OSError:  # old kernel: the control channel's end of file will tell
                self.caller_fd = None
        if os.getppid() != self.caller_pid:
            self._caller_gone()
            return
        # Forked now, before any instruction arrives: the spawner stays as small as the boss starts.
        self.spawner_fd = self.launcher.open()
        if self.spawner_fd is not None:
            self.poller.register(self.spawner_fd, self._on_spawner)

    # --------------------------------------------------------------- main loop
    def run(self) -> int:
        """Serve until the run ends; return the process exit code."""
        try:
            self._setup()
            while not self._over():
                if self.dirty:
                    self._dispatch()
                    if self._over():
                        break
                self._wait()
        except BaseException as exc:  # noqa: BLE001 - a boss bug must still end the run cleanly
            log.error("boss loop failed:\n%s", traceback.format_exc())
            self.error = TaylorError(f"the boss process failed: {type(exc).__name__}: {exc}",
                                     traceback=traceback.format_exc())
            # The failure may be the poller's (a descriptor closed under it): nothing waits on it
            # any more, so it is set aside (not closed: its number may be another's by now), and
            # each step is tried on its own: the caller gets this error and the entries, not a dead boss.
            self._broken_poller, self.poller = self.poller, _SetAside()
            for step in (lambda: self._stop_workers("error"), self._drain_workers):
                try:
                    step()
                except Exception:  # noqa: BLE001
                    log.error("while ending the run after that:\n%s", traceback.format_exc())
        self._close_spawner()
        self._send_final()
        if self.silent and self.outbox and not self.caller_lost:
            self._deliver()  # what STOP_LISTENING queued and the caller has not read yet
        return 0

    def _over(self) -> bool:
        if self.workers or self.by_pid:  # by_pid: also those that reported, until they exit
            return False
        if self.stopping is not None:
            return True
        return self.ending and not self.pending

    def _wait(self) -> None:
        now = time.monotonic()
        if self.flush_at is not None and self.flush_at <= now:
            self._flush_outbox()
        timeout = None
        if self.deadlines:
            timeout = max(0.0, self.deadlines[0][0] - now)
        if self.flush_at is not None:
            timeout = max(0.0, self.flush_at - now) if timeout is None else min(timeout, self.flush_at - now)
        self.poller.wait(timeout)
        self._expire_deadlines()
        if self.flush_at is not None and self.flush_at <= time.monotonic():
            self._flush_outbox()

    # ------------------------------------------------------------- the caller
    def _on_control(self, fd: int, mask: int) -> None:
        if mask & WRITE:
            self._flush_outbox()
        if not mask & READ:
            return
        data = wire.read_chunk(fd)
        if data is None:
            return
        if not data:
            self._caller_gone()
            return
        for message in self.control_decoder.feed(data):
            self._handle(message)

    def _handle(self, message: Any) -> None:
        if isinstance(message, wire.Undecodable):
            # Instructions dropped here would silently never run: fail the run instead.
            self._fail_run(InstructionsError(
                "instructions sent to the boss could not be unpickled there "
                f"({type(message.error).__name__}: {message.error}); their values must be of classes "
                "importable in the boss: define them (and import their modules) before creating the Boss"))
            return
        kind, payload = message
        if kind == "instructions":
            if self.stopping == "listening":  # the final report has gone: they could never be reported
                log.warning("%d instructions arrived after STOP_LISTENING; ignored", len(payload))
                return
            # A stopping boss starts nothing more: these are listed as pending in its final report.
            self.pending.extend(payload)
            self.dirty = True
        elif kind == "signal":
            self._on_signal(payload)

    def _on_signal(self, name: str) -> None:
        if name == "SEND_REPORT":
            if self.spawner_fd is not None:  # what the spawner said before now is part of the state
                self._spawner_news()
            if self.dirty:  # report the state after the decisions already due, not before them
                self._dispatch()
            self._send(("status", self._status_payload()))
        elif name == "HALT":
            self.halted = True
        elif name == "RESUME":
            self.halted = False
            self.dirty = True
        elif name == "END":
            self.ending = True
            self.halted = False  # ending means finishing what is pending
            self.dirty = True
        elif name == "STOP":
            self.stopping = self.stopping or "stop"
        elif name == "STOP_LISTENING":
            self.stopping = self.stopping or "listening"
            self._send_final(deliver=False)  # the loop writes it out as the caller reads
            self.silent = True
        elif name == "STOP_RIGHTNOW":
            self.stopping = "rightnow"
            self._stop_workers("rightnow")

    def _on_caller_gone(self, fd: int, mask: int) -> None:
        self._caller_gone()

    def _caller_gone(self) -> None:
        """The caller died or closed its end: stop everything, nobody is listening."""
        self.caller_lost = True
        if self.caller_fd is not None:
            self.poller.unregister(self.caller_fd)
            os.close(self.caller_fd)
            self.caller_fd = None
        self.poller.unregister(self.control)
        self.silent = True
        self.stopping = "caller gone"
        self._stop_workers("caller gone")

    def _send(self, message: Any, urgent: bool = True) -> None:
        """Queue a message for the caller; entries wait a few milliseconds to go
        out together (one wake-up of the caller for many), answers go at once."""
        if self.silent:
            return
        self.outbox.push(wire.encode(message))
        if urgent or len(self.outbox) >= BATCH_BYTES:
            self.flush_at = 0.0
        elif self.flush_at is None:
            self.flush_at = time.monotonic() + BATCH_DELAY

    def _flush_outbox(self) -> None:
        self.flush_at = None
        try:
            done = self.outbox.flush()
        except OSError:  # the caller is gone
            self._caller_gone()
            return
        if done != self._outbox_was_empty:
            self._outbox_was_empty = done
            self.poller.modify(self.control, READ if done else READ | WRITE)

    def _status_payload(self) -> Dict[str, Any]:
        return {"running": sorted(self.workers), "counts": self._counts()}

    def _counts(self) -> Dict[str, int]:
        counts = dict(self.counts)
        counts["running"] = len(self.workers)
        counts["pending"] = len(self.pending)
        return counts

    def _send_final(self, deliver: bool = True) -> None:
        """Send the end-of-run message, waiting until the caller has it (or is gone).

        With ``deliver=False`` it is only queued: the loop goes on serving the
        workers and writes it as the caller reads.
        """
        if self.silent:
            return
        if self.error is not None:
            status = "stopped" if isinstance(self.error, Interrupted) else "failed"
        elif self.failure is not None:
            status = "failed"
        elif self.stopping == "rightnow":
            status = "stopped"
        elif self.pending or self.workers:
            status = "pending"
        else:
            status = "finished"
        final = {"status": status, "counts": self._counts(), "error": self.error,
                 "failure": self.failure["name"] if self.failure else None}
        if self.pending:
            final["pending"] = [p["name"] for p in self.pending]  # the caller has the instructions
        if self.workers:
            final["running"] = sorted(self.workers)
        try:
            self.outbox.push(wire.encode(("final", final)))
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable pending instruction
            final = {"status": status, "counts": self._counts(),
                     "error": TaylorError(f"the final report could not be sent: {exc}"), "failure": None}
            self.outbox.push(wire.encode(("final", final)))
        if deliver:
            self._deliver()
        else:
            self.flush_at = 0.0

    def _deliver(self) -> None:
        """Write out everything queued for the caller, whatever it does meanwhile.

        What the caller sends now is read and dropped (the run is over), so a
        caller blocked writing a large batch of instructions cannot deadlock
        with a boss writing its final report.  Returns when all is written or
        the caller is gone.
        """
        waiter = select.poll()
        waiter.register(self.control, select.POLLIN | select.POLLOUT)
        waiter.register(self.wakeup_r, select.POLLIN)
        if self.caller_fd is not None:  # the caller's socket may outlive it in a child of its own
            waiter.register(self.caller_fd, select.POLLIN)
        while self.outbox:
            for fd, events in waiter.poll():
                if fd == self.caller_fd or events & select.POLLNVAL:  # gone, or no longer a descriptor
                    return
                if fd == self.wakeup_r:
                    if signal.SIGTERM in (wire.read_chunk(fd) or b""):
                        return
                    continue
                if events & select.POLLOUT:
                    try:
                        self.outbox.flush()
                    except OSError:  # the caller is gone
                        return
                if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    if wire.read_chunk(self.control) == b"":
                        return

    # -------------------------------------------------------------- dispatching
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
        if not self.workers and self.pending and not launch:
            self._fail_run(CapacityError(
                f"the scheduler {type(self.scheduler).__name__} starts none of the {len(self.pending)} "
                "pending instructions although no worker runs, so they could never start; first one: "
                f"{dict(self.pending[0])}"))

    def _put_back(self, launch: List[Dict[str, Any]]) -> None:
        """Put instructions the scheduler chose back at the front of the queue, in their order."""
        if isinstance(self.pending, list):
            self.pending[:0] = launch
        else:
            for back in reversed(launch):
                self.pending.insert(0, back)  # a scheduler's queue takes insert(0, x)

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

    def _not_now(self, instructions: Dict[str, Any], why: str) -> bool:
        """A worker could not start for want of a descriptor or a process (``why``).

        If others run, their ends free what was short: these instructions go
        back to the queue (returns False) and no start is tried again before
        one ends.  If none runs, waiting would never end: the worker fails,
        saying why (returns True).
        """
        if self.workers or self.by_pid:
            self._wait_for_an_end(why)
            return False
        worker = RunningWorker(instructions, None, None)
        self.workers[worker.name] = worker
        self._lost(worker, _alone_not_now(why))
        return True

    def _wait_for_an_end(self, why: str) -> None:
        """Start nothing before a running worker ends (a start lacked what ``why`` says); say so, once."""
        self.not_now = True
        if "not now" not in self.warned:
            self.warned.add("not now")
            limits_log.warning("a worker could not be started (%s) while %d others run: the next ones wait for "
                               "running workers to end. Raise the limits of the job (ulimit -n for descriptors, "
                               "ulimit -u for processes) to run more at once.", why,
                               len(self.workers) + len(self.by_pid))

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
        try:
            pid, token, fd, direct = self.launcher.start(instructions.worker_class, instructions.attributes({}))
        except OSError as exc:
            if exc.errno not in NOT_NOW:
                raise
            return self._not_now(instructions, exc.strerror or os.strerror(exc.errno))
        worker = RunningWorker(instructions, pid, fd, direct)
        self.workers[worker.name] = worker
        if pid is None:
            worker.spawned = True
            self.asked[token] = worker  # the spawner forks it: its pid comes as news
            if self.spawner_check is None:
                self._expect_spawner()
        else:
            self._started(worker, pid)
        if fd is not None:
            self.poller.register(fd, lambda _fd, _mask: self._read_report(worker))
        timeout = instructions.timeout if instructions.timeout is not None else self.options.timeout
        if timeout is not None:
            self._at(timeout, self._on_timeout, worker)
        return True

    def _started(self, worker: RunningWorker, pid: int) -> None:
        worker.pid = pid
        self.by_pid[pid] = worker
        # The caller learns each worker's process group, to end it should the boss be killed outright.
        self._send(("started", (worker.name, pid)), urgent=False)
        if self.options.verbose:
            log.info("worker %s started (pid %d)", worker.name, pid)
        if worker.stop_requested:  # asked to stop before its pid was known: its grace starts now
            LocalProcesses.signal(pid, signal.SIGTERM)
            self._at(self.options.stop_grace, self._on_grace_over, worker)

    # ---------------------------------------------------------------- workers
    def _read_report(self, worker: RunningWorker) -> None:
        """Read what the worker's channel holds now (never blocks)."""
        while worker.channel_open:
            data = wire.read_chunk(worker.fd)
            if data is None:
                return
            if not data:
                self._close_channel(worker)
                if not worker.finished and isinstance(worker.outcome, tuple) and worker.outcome[0] == OK:
                    # Its task is over and reported; only its exit remains: the slot is free now.
                    worker.end_time = time.time()
                    self.workers.pop(worker.name, None)
                    self.dirty = True
                if not worker.finished and worker.outcome is not None:  # only its os._exit is left to do
                    self._at(max(self.options.stop_grace, EXIT_GRACE), self._on_exit_overdue, worker)
                return
            for message in worker.decoder.feed(data):
                if worker.outcome is None:
                    worker.outcome = message

    def _close_channel(self, worker: RunningWorker) -> None:
        if worker.channel_open:
            worker.channel_open = False
            self.poller.unregister(worker.fd)
            self.launcher.close_channel(worker.fd)

    def _on_wakeup(self, fd: int, mask: int) -> None:
        signals = set()
        while True:
            data = wire.read_chunk(fd)
            if not data:
                break
            signals.update(data)
        if signal.SIGTERM in signals:
            if self.error is None:
                self.error = Interrupted("the boss process received SIGTERM and stopped its workers",
                                         signum=signal.SIGTERM)
            self.stopping = "signal"
            self._stop_workers("signal")
            self._tell_aborting({"error": self.error})
        self._reap()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.launcher.reaped(pid):
                log.error("the spawner process (pid %d) died (%s); the boss forks workers itself from now on",
                          pid, describe_exit(os.waitstatus_to_exitcode(status)))
                self._spawner_news()
                continue
            worker = self.by_pid.pop(pid, None)
            if worker is not None:
                self._finish(worker, os.waitstatus_to_exitcode(status))

    # ---------------------------------------------------------------- spawner
    def _on_spawner(self, fd: int, mask: int) -> None:
        self._spawner_news()

    def _spawner_news(self) -> None:
        """Act on the spawner's news: workers it forked, could not fork, or reaped."""
        news = self.launcher.news()
        if news:
            self.spawner_heard = time.monotonic()
        self._act_on(news)
        if not self.launcher.spawner_alive:
            self._close_spawner()

    def _act_on(self, news: list) -> None:
        for kind, first, second in news:
            if kind == STARTED:
                worker = self.asked.pop(first, None)
                if worker is None:  # a request the boss gave up on: nobody will watch this one
                    LocalProcesses.signal(second, signal.SIGKILL)
                else:
                    self._started(worker, second)
            elif kind == EXITED:
                worker = self.by_pid.pop(first, None)
                if worker is not None:
                    self._finish(worker, os.waitstatus_to_exitcode(second))
            else:
                why = os.strerror(second) if second else "the spawner could not read its instructions"
                worker = self.asked.pop(first, None)
                if worker is not None and not (second in NOT_NOW and self._refused_not_now(worker, why)):
                    self._lost(worker, worker.lost or f"could not be started ({why})")

    def _refused_not_now(self, worker: RunningWorker, why: str) -> bool:
        """The spawner could not fork ``worker`` for want of a process or descriptor: put its
        instructions back to wait for a free slot (True), if others run (see :meth:`_not_now`)."""
        if self.stopping is None:
            if len(self.workers) <= 1 and not self.by_pid:
                worker.lost = _alone_not_now(why)
                return False
            self._wait_for_an_end(why)
        del self.workers[worker.name]
        self._close_channel(worker)
        worker.finished = True  # its deadlines are void; it never ran
        self._put_back([worker.instructions])  # stopping: listed as never started
        self.dirty = True
        return True

    def _close_spawner(self) -> None:
        """End the spawner (the run is over, it died, or it stopped answering): the workers it
        forked end with it; the requests it never forked are pending again.

        It answers requests one at a time and in order, so only the oldest request
        left can have been forked unannounced: it is started again only if the
        spawner, killed here, had no child the boss does not know of.  A task never
        runs twice, and never vanishes.
        """
        if self.spawner_fd is not None:
            self.poller.unregister(self.spawner_fd)
            self.spawner_fd = None
        if self.spawner_check is not None:
            self.spawner_check.finished = True
            self.spawner_check = None
        news, children = self.launcher.close()
        self._act_on(news)  # what it said before it ended
        unknown = None if children is None else bool(set(children) - set(self.by_pid))
        lost = [w for w in self.by_pid.values() if w.spawned]
        for worker in lost:
            del self.by_pid[worker.pid]
            self._lost(worker, "was killed with the spawner process that forked it")
        asked = sorted(self.asked.items())
        self.asked.clear()
        if asked and unknown is not False:
            _, first = asked.pop(0)
            self._lost(first, "was killed with the spawner process that forked it, before the spawner said so; "
                              "it is not started again, so that it cannot run twice" if unknown else
                              "may have been killed with the spawner process, which died while it may have been "
                              "forking it; it is not started again, so that it cannot run twice")
        for _, worker in asked:  # never forked: pending again, in their order
            self._close_channel(worker)
            worker.finished = True  # its deadlines lapse
            self.workers.pop(worker.name, None)
        if asked:
            self._put_back([worker.instructions for _, worker in asked])
            self.dirty = True

    def _expect_spawner(self, short: bool = False) -> None:
        """The spawner owes the boss an answer: make sure its silence is looked at in time
        (``short``: the run ends, every worker has been killed)."""
        if self.spawner_fd is None:
            return
        limit = min(SPAWNER_DEADLINE, SPAWNER_STOP_DEADLINE) if short else SPAWNER_DEADLINE
        at = time.monotonic() + limit
        if self.spawner_check is not None:
            if self.spawner_check.at <= at:
                return
            self.spawner_check.finished = True
        self.spawner_check = _SpawnerCheck(at, limit)
        self._at(limit, self._check_spawner, self.spawner_check)

    def _spawner_owes(self) -> bool:
        return bool(self.asked) or any(w.spawned and w.killed for w in self.by_pid.values())

    def _check_spawner(self, check: _SpawnerCheck) -> None:
        """Give up on a spawner silent past its deadline while it owes an answer (stopped, stuck)."""
        if check is not self.spawner_check:
            return
        self.spawner_check = None
        if self.spawner_fd is None:
            return
        self._spawner_news()
        if self.spawner_fd is None or not self._spawner_owes():
            return
        now = time.monotonic()
        if now - check.at > LATE:  # the boss was held up itself: no verdict on this wait
            self.spawner_heard = now
        quiet = now - self.spawner_heard
        if quiet < check.limit:
            self.spawner_check = _SpawnerCheck(now + check.limit - quiet, check.limit)
            self._at(check.limit - quiet, self._check_spawner, self.spawner_check)
            return
        log.error("the spawner process (pid %s) owes the boss an answer but has said nothing for %.1f s (stopped "
                  "with SIGSTOP, or stuck): the boss killed it, and the workers it had forked, and forks workers "
                  "itself from now on", self.launcher.spawner_pid, quiet)
        self._close_spawner()

    def _lost(self, worker: RunningWorker, why: str) -> None:
        """A worker that ended unseen, or never started: a failure that says why."""
        worker.lost = why
        self._finish(worker, None if worker.pid is None else -signal.SIGKILL)

    def _drain_workers(self) -> None:
        """Kill and reap every worker after the loop itself failed (no grace: the loop is broken)."""
        for worker in self.by_pid.values():
            LocalProcesses.signal(worker.pid, signal.SIGKILL, worker.others)
        self._close_spawner()
        while self.by_pid:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            worker = self.by_pid.pop(pid, None)
            if worker is not None:
                self._finish(worker, os.waitstatus_to_exitcode(status))

    def _finish(self, worker: RunningWorker, exitcode: int) -> None:
        """Turn an ended worker into its one entry, and act on it."""
        self._read_report(worker)  # all it wrote is in the pipe by now
        self._close_channel(worker)
        if worker.direct is not None:
            exitcode = self._direct_end(worker, exitcode)
        worker.finished = True
        self.not_now = False  # what a start lacked, this end may have freed
        self.workers.pop(worker.name, None)
        if worker.pid is not None:
            LocalProcesses.signal(worker.pid, signal.SIGKILL, worker.others)  # strays left in its group
        entry = {
            "name": worker.name,
            "status": DONE,
            "report": None,
            "instructions": worker.instructions,
            "pid": worker.pid,
            "start_time": worker.start_time,
            "end_time": worker.end_time or time.time(),
            "exitcode": exitcode,
        }
        outcome = worker.outcome
        kind = outcome[0] if isinstance(outcome, tuple) and outcome else None
        failed = None
        if kind == OK:
            entry["report"] = outcome[1]
        elif kind == RAISED:
            entry.update(status=FAILED, report=outcome[1], traceback=outcome[2])
        elif kind == UNSENDABLE:
            failed = ReportError, str(outcome[1])
        elif isinstance(outcome, wire.Undecodable):
            failed = ReportError, (f"sent a report the boss could not unpickle "
                                   f"({type(outcome.error).__name__}: {outcome.error})")
        elif worker.timed_out:
            timeout = getattr(worker.instructions, "timeout", None)
            timeout = self.options.timeout if timeout is None else timeout
            failed = WorkerTimeoutError, (f"ran longer than its timeout of {timeout:g} s and was terminated "
                                          f"({describe_exit(exitcode)})")
        elif worker.stop_requested:
            entry["status"] = STOPPED
        elif worker.lost:
            failed = WorkerDiedError, worker.lost if exitcode is None else f"{worker.lost} ({describe_exit(exitcode)})"
        else:
            partly = " (it died while sending its report)" if worker.decoder.partial else ""
            failed = WorkerDiedError, f"ended without reporting: {describe_exit(exitcode)}{partly}"
        hooks = worker.instructions.get("scheduler_hooks")
        if hooks:  # its memory may have been limited (a memory scheduler's enforce=True): was that its end?
            over = _memory_over(hooks, worker, outcome[1] if kind == RAISED else None)
            if over is not None and kind != OK and not worker.stop_requested:
                failed = MemoryLimitError, over
        packed = None
        if failed is None and kind in (OK, RAISED):
            try:
                packed = wire.pack_report(entry["report"])
            except Exception as exc:  # noqa: BLE001 - its __reduce__ (or a part's) fails here
                failed = ReportError, (f"sent a report the boss could read but not pickle again for the caller "
                                       f"({type(exc).__name__}: {exc})")
        if failed is not None:
            cls, what = failed
            plain = {k: v for k, v in worker.instructions.items() if k != "scheduler_hooks"}
            entry.update(status=FAILED, report=cls(
                worker_failure_message(what, worker.name, plain, worker.pid),
                worker=worker.name, pid=worker.pid, instructions=plain, exitcode=exitcode))
            packed = None
        self.counts[entry["status"]] += 1
        self.recent.append(entry)
        self._log(entry)
        # The caller has the instructions already: the entry goes back without them.
        # ...and its report pickled apart, so that a report the caller cannot unpickle is that
        # worker's failure there, not a message lost with the others that came with it.
        sent = dict(entry)
        del sent["instructions"]
        sent["report"] = packed if packed is not None else _pack_own(entry["report"])
        ticket = worker.instructions.get("scheduler_ticket")
        if ticket is not None:
            sent["scheduler_ticket"] = ticket
        self._send(("entry", sent), urgent=False)
        self.dirty = True
        if entry["status"] == FAILED and self.options.on_error == "abort" and self.failure is None \
                and self.stopping is None:
            self.failure = entry
            self.stopping = "abort"
            self._stop_workers("abort")
            self._tell_aborting({"failure": entry["name"]})

    def _direct_end(self, worker: RunningWorker, exitcode: int) -> int:
        """Make the outcome of a direct run, as its worker process would have sent it; return the
        exit code that worker process would have had.

        A program the boss stopped (timeout, abort, STOP_RIGHTNOW) has no
        report, like a worker process killed before it could send one; one
        that had ended before the boss came to stop it has its report.
        """
        spec = worker.direct
        try:
            if (worker.stop_requested or worker.timed_out) and not spec.ended_first:
                return exitcode
            worker.outcome = self.launcher.direct_outcome(spec, exitcode)
            return 0  # a worker process exits 0 once it has sent its report
        finally:
            self.launcher.release(spec)

    def _log(self, entry: Dict[str, Any]) -> None:
        if entry["status"] == FAILED:
            log.error("%s", _failure_text(entry))
        elif self.options.verbose:
            text = repr(entry["report"])
            if len(text) > self.options.maxlenreport:
                text = text[: self.options.maxlenreport] + " ..."
            log.info("worker %s %s: %s", entry["name"], entry["status"], text)

    def _fail_run(self, error: BaseException) -> None:
        """A failure that is no worker's: stop everything and report it."""
        if self.error is None:
            self.error = error
        self.stopping = "error"
        self._stop_workers("error")
        self._tell_aborting({"error": self.error})

    def _tell_aborting(self, news: Dict[str, Any]) -> None:
        """Tell the caller at once that the run is ending on its own (a worker's failure under
        on_error='abort', a failure of the run, SIGTERM), before the final report, which
        waits for the running workers to stop: every call of the caller raises from then on
        rather than queue work that will never run."""
        if self.told_aborting:
            return
        self.told_aborting = True
        try:
            self._send(("aborting", news))
        except Exception:  # noqa: BLE001 - an error that does not pickle: the final report will say
            self._send(("aborting", {}))

    # ------------------------------------------------------- stopping, deadlines
    def _stop_workers(self, why: str) -> None:
        # Not those that have reported (see _read_report): only os._exit is left for them to do,
        # within their exit grace (see _on_exit_overdue).
        self.killing = True
        workers = [w for w in self.workers.values() if not (w.finished or w.stop_requested)]
        trees = LocalProcesses.descendants(w.pid for w in workers if w.pid is not None) if workers else {}
        for worker in workers:
            self._terminate(worker, trees.get(worker.pid, []))

    def _terminate(self, worker: RunningWorker, others: Optional[list] = None) -> None:
        if worker.finished or worker.stop_requested:
            return
        worker.stop_requested = True
        self._at(self.options.stop_grace, self._on_grace_over, worker)
        if worker.pid is None:  # not forked yet: signalled as soon as it is
            return
        if worker.direct is not None:
            worker.direct.ended_first = self.launcher.has_ended(worker.pid)
        worker.others = LocalProcesses.descendants([worker.pid])[worker.pid] if others is None else others
        LocalProcesses.signal(worker.pid, signal.SIGTERM, worker.others)
        # A stopped process (SIGSTOP) gets its SIGTERM when continued: continued now, it ends gracefully.
        LocalProcesses.signal(worker.pid, signal.SIGCONT, worker.others)

    def _on_timeout(self, worker: RunningWorker) -> None:
        if not worker.finished and not worker.stop_requested and worker.outcome is None:
            worker.timed_out = True
            self._terminate(worker)

    def _on_grace_over(self, worker: RunningWorker) -> None:
        if worker.finished:
            return
        if worker.pid is not None:
            self._kill(worker)
        elif worker.spawned:  # the spawner has not even said it forked it
            self._expect_spawner(short=self.killing)

    def _on_exit_overdue(self, worker: RunningWorker) -> None:
        """A worker whose report is in must exit within its exit grace; one that does not
        (stopped with SIGSTOP, stuck in its teardown) is killed, and its entry keeps its report."""
        if worker.finished or worker.pid is None or worker.killed:
            return
        log.warning("worker %s (pid %d) sent its report but had not exited %g s later (stopped with SIGSTOP?); "
                    "killed with SIGKILL, its report is kept", worker.name, worker.pid,
                    max(self.options.stop_grace, EXIT_GRACE))
        self._kill(worker)

    def _kill(self, worker: RunningWorker) -> None:
        """SIGKILL a worker (SIGKILL ends a stopped process too); the spawner then owes its end."""
        worker.killed = True
        LocalProcesses.signal(worker.pid, signal.SIGKILL, worker.others)
        if worker.spawned:
            self._expect_spawner(short=self.killing)

    def _at(self, delay: float, action: Callable[[Any], None], worker: Any) -> None:
        heapq.heappush(self.deadlines, (time.monotonic() + delay, next(self._seq), action, worker))
        if len(self.deadlines) > 64 + 4 * len(self.workers):  # forget deadlines of ended workers
            self.deadlines = [d for d in self.deadlines if not d[3].finished]
            heapq.heapify(self.deadlines)

    def _expire_deadlines(self) -> None:
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, _, action, worker = heapq.heappop(self.deadlines)
            action(worker)


def _memory_over(hooks: Any, worker: RunningWorker, raised: Optional[BaseException]) -> Optional[str]:
    """How ``worker`` exceeded its memory limit, if one of its ``hooks`` limited it and that ended it."""
    for hook in hooks:
        if isinstance(hook, LimitMemory):
            return hook.ended(worker, worker.pid, raised)
    return None


def _alone_not_now(why: str) -> str:
    return (f"could not be started ({why}) although no other worker of this run was running; raise the "
            "limits of the job (ulimit -n for descriptors, ulimit -u for processes)")


class _SetAside:
    """Stands for the poller once the loop has failed: descriptors are only dropped from then on."""

    def fileno(self) -> None:
        return None

    def register(self, fd: int, callback: Any, events: int = READ) -> None:
        pass

    def modify(self, fd: int, events: int) -> None:
        pass

    def unregister(self, fd: int) -> None:
        pass


_brief = reprlib.Repr()
_brief.maxstring = _brief.maxother = 300
_brief.maxlist = _brief.maxtuple = _brief.maxset = _brief.maxdict = 30


def _failure_text(entry: Dict[str, Any]) -> str:
    """What the log says of a failed worker, as it fails: who, what, its instructions one per
    line (each value cut short, never fully rendered if huge), and the worker's traceback."""
    error = entry["report"]
    what = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else repr(error)
    pid = f" (pid {entry['pid']})" if entry.get("pid") else ""
    lines = [f"worker {entry['name']!r}{pid} failed: {what}", "its instructions:"]
    for key, value in entry["instructions"].items():
        if key == "scheduler_hooks":
            continue
        text = _brief.repr(value)
        lines.append(f"    {key} = {text if len(text) <= 300 else text[:297] + '...'}")
    if entry.get("traceback"):
        lines.append(entry["traceback"].rstrip("\n"))
    return "\n".join(lines)


def _pack_own(report: Any) -> bytes:
    """What the boss made a worker's report (None, or a failure), pickled for the caller; plainly
    should the failure's instructions not pickle."""
    try:
        return wire.pack_report(report)
    except Exception as exc:  # noqa: BLE001 - an instruction value that pickles only in the caller
        return wire.pack_report(TaylorError(f"{report} (its details could not be pickled: {type(exc).__name__})"))


def _note_signal(signum: int, frame: Any) -> None:
    """Signal handler of the boss: the wake-up pipe carries the signal, nothing else to do."""


def serve(control: int, caller_pid: int, scheduler: Any, options: Options, inherited_fds: List[int]) -> int:
    """Entry point of the boss process."""
    if options.verbose:
        logging.getLogger("taylor").setLevel(logging.INFO)
    return Engine(control, caller_pid, scheduler, options, inherited_fds).run()


