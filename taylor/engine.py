"""The boss process: one event loop over control, reports and ended workers.

The loop sleeps in a single ``epoll`` wait over the control channel (instructions
and signals from the caller), every running worker's report channel, what the
launcher watches (for local processes: the spawner's socket), a self-pipe woken
by SIGCHLD and SIGTERM, and (where the kernel offers it) a pidfd of the caller.
Its only timeout is the nearest deadline (a worker's timeout, the grace before
a SIGKILL, the launcher's own): an idle boss uses no CPU.

Every worker ends in exactly one entry, built when its process is reaped
(see :mod:`taylor.entries`): the report it sent, else the exception it sent,
else what killed it.  Its slot is free earlier, as soon as its report is in and
its channel closed.  Entries are streamed to the caller as they are made, so the
boss keeps nothing that grows with the number of tasks, and a caller keeps every
finished report even if the boss is killed.

The :class:`Engine` is set-up, the loop and the glue between its parts, each
in a module of its own: the caller's channel (:mod:`taylor.control`), dispatch
and accounting (:mod:`taylor.dispatch`), entries (:mod:`taylor.entries`),
deadlines (:mod:`taylor.deadlines`), running workers (:mod:`taylor.running`),
and the launcher behind its seam (:mod:`taylor.launcher`; :mod:`taylor.local`
for local processes).  This module must not depend on how a launcher starts
or signals workers, only on :class:`~taylor.launcher.Launcher`'s methods.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

from . import wire
from .control import SIGNALS, ControlChannel
from .deadlines import Deadlines
from .dispatch import Dispatcher
from .entries import failure_text, for_caller, make_entry
from .errors import Interrupted, TaylorError
from .forking import keep_freed_memory
from .launcher import Launcher
from .local import LocalProcesses
from .poller import READ, Poller
from .report import FAILED
from .running import RunningWorker
from .schedulers import fit_to_capacity
from .worker import OK, PACKED

__all__ = ["Engine", "Options", "SIGNALS", "serve"]

log = logging.getLogger("taylor.boss")

#: Least time (seconds) a worker has to exit once its report is in, whatever ``stop_grace``.
EXIT_GRACE = 1.0


class Options:
    """The boss's settings, fixed at creation."""

    def __init__(self, *, name: Optional[str] = None, verbose: bool = False, maxlenreport: int = 1024,
                 on_error: str = "abort", timeout: Optional[float] = None, stop_grace: float = 2.0,
                 max_report_bytes: int = 1 << 30, shared: Optional[Dict[str, Any]] = None,
                 reuse: bool = False, max_tasks_per_process: Optional[int] = None, cluster: Any = None,
                 log_failures: bool = True) -> None:
        self.name = name
        self.verbose = verbose
        self.maxlenreport = int(maxlenreport)
        self.on_error = on_error
        self.timeout = timeout
        self.stop_grace = float(stop_grace)
        self.max_report_bytes = int(max_report_bytes)
        self.shared = dict(shared or {})
        self.reuse = bool(reuse)  # many tasks per long-lived process (see taylor.reuse)
        self.max_tasks_per_process = max_tasks_per_process
        self.cluster = cluster  # a taylor.cluster.seam.ClusterSpec: the run goes on that Dask cluster
        self.log_failures = bool(log_failures)


class Engine(ControlChannel, Dispatcher):
    """The boss's state and event loop; runs in the boss process only.

    It is the launcher's :class:`~taylor.launcher.Host`: ``watch``, ``unwatch``,
    ``at``, ``started``, ``ended``, ``lost`` here, ``refused`` and ``requeue``
    in :class:`~taylor.dispatch.Dispatcher`.
    """

    def __init__(self, control: int, caller_pid: int, scheduler: Any, options: Options,
                 inherited_fds: List[int], launcher: Optional[Launcher] = None) -> None:
        self.caller_pid = caller_pid
        self.options = options
        self.inherited_fds = list(inherited_fds)  # boss-only fds the workers must not keep
        self._init_channel(control)
        self._init_dispatch(scheduler)
        self.workers: Dict[str, RunningWorker] = {}  # running: started and not yet reported
        self.ending = False
        self.stopping: Optional[str] = None
        self.failure: Optional[Dict[str, Any]] = None
        self.error: Optional[BaseException] = None
        self.deadlines = Deadlines()
        self.poller = Poller()
        self.wakeup_r, self.wakeup_w = os.pipe()
        self.launcher: Launcher = launcher if launcher is not None else self._make_launcher()
        self.killing = False  # every worker is being stopped: the run ends

    # ------------------------------------------------------------------ set-up
    def _make_launcher(self) -> Launcher:
        """The launcher the options ask for: the one place that chooses."""
        options = self.options
        if options.cluster is not None:  # a taylor.cluster.seam.ClusterSpec: tasks run on that Dask cluster
            from .cluster.seam import ClusterLauncher

            return ClusterLauncher(options.cluster, options)
        if options.reuse:
            from .reuse import ReuseProcesses

            return ReuseProcesses(self._private_fds, options.max_report_bytes, options.shared,
                                  options.max_tasks_per_process)
        return LocalProcesses(self._private_fds, options.max_report_bytes, options.shared)

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
        try:
            self.launcher.open(self)
        except TaylorError as exc:  # where workers run cannot be used (a cluster unreachable): the run's error
            self._fail_run(exc)

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
            for step in (lambda: self._stop_workers("error"), self.launcher.drain):
                try:
                    step()
                except Exception:  # noqa: BLE001
                    log.error("while ending the run after that:\n%s", traceback.format_exc())
        self.launcher.close()
        self._send_final()
        if self.silent and self.outbox and not self.caller_lost:
            self._deliver()  # what STOP_LISTENING queued and the caller has not read yet
        return 0

    def _over(self) -> bool:
        if self.workers or self.launcher.alive():  # alive: also those that reported, until they exit
            return False
        if self.stopping is not None:
            return True
        return self.ending and not self.pending

    def _wait(self) -> None:
        now = time.monotonic()
        if self.flush_at is not None and self.flush_at <= now:
            self._flush_outbox()
        timeout = None
        next_at = self.deadlines.next_at()
        if next_at is not None:
            timeout = max(0.0, next_at - now)
        if self.flush_at is not None:
            timeout = max(0.0, self.flush_at - now) if timeout is None else min(timeout, self.flush_at - now)
        self.poller.wait(timeout)
        self.deadlines.expire()
        if self.flush_at is not None and self.flush_at <= time.monotonic():
            self._flush_outbox()

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
        self.launcher.reap()

    # ------------------------------------------------------ the launcher's host
    def watch(self, fd: int, callback: Callable[[int, int], None]) -> None:
        self.poller.register(fd, callback)

    def unwatch(self, fd: int) -> None:
        self.poller.unregister(fd)

    def at(self, delay: float, action: Callable[[Any], None], subject: Any) -> None:
        self.deadlines.at(delay, action, subject, len(self.workers))


    def started(self, worker: RunningWorker, pid: Optional[int]) -> None:
        worker.pid = pid
        if pid is not None:
            # The caller learns each worker's process group, to end it should the boss be killed outright.
            self._send(("started", (worker.name, pid)), urgent=False)
        if self.options.verbose:
            log.info("worker %s started (pid %s)", worker.name, pid)
        if worker.stop_requested:  # asked to stop before its pid was known: its grace starts now
            self.launcher.signal(worker, signal.SIGTERM)
            self.at(self.options.stop_grace, self._on_grace_over, worker)

    def fail(self, error: BaseException) -> None:
        """Where workers run was lost (a cluster's scheduler): the run fails with ``error``."""
        self._fail_run(error)

    def capacity(self, limits: Dict[str, Any]) -> None:
        """Where workers run offers ``limits`` now: the scheduler's defaults follow them."""
        fit_to_capacity(self.scheduler, limits)
        self.dirty = True

    def lost(self, worker: RunningWorker, why: str) -> None:
        """A worker that ended unseen, or never started: a failure that says why."""
        worker.lost = why
        self.ended(worker, None if worker.pid is None else -signal.SIGKILL)


    # ---------------------------------------------------------------- workers
    def _read_report(self, worker: RunningWorker) -> None:
        """Read what the worker's channel holds now (never blocks)."""
        while worker.channel_open:
            try:
                messages = worker.decoder.read(worker.fd)
            except EOFError:
                self._close_channel(worker)
                if not worker.finished and isinstance(worker.outcome, tuple) and worker.outcome[0] in (OK, PACKED):
                    # Its task is over and reported; only its exit remains: the slot is free now.
                    worker.end_time = time.time()
                    self.workers.pop(worker.name, None)
                    self.dirty = True
                if not worker.finished and worker.outcome is not None:  # only its os._exit is left to do
                    self.at(max(self.options.stop_grace, EXIT_GRACE), self._on_exit_overdue, worker)
                return
            if messages is None:
                return
            for message in messages:
                if worker.outcome is None:
                    worker.outcome = message

    def _close_channel(self, worker: RunningWorker) -> None:
        if worker.channel_open:
            worker.channel_open = False
            self.poller.unregister(worker.fd)
            self.launcher.close_channel(worker.fd)

    def ended(self, worker: RunningWorker, exitcode: Optional[int]) -> None:
        """Turn an ended worker into its one entry, and act on it."""
        self._read_report(worker)  # all it wrote is in the pipe by now
        self._close_channel(worker)
        exitcode = self.launcher.ended(worker, exitcode)
        worker.finished = True
        self.workers.pop(worker.name, None)
        entry, packed = make_entry(worker, exitcode, self.options.timeout)
        self._account(entry)
        self._log(entry)
        self._send(("entry", for_caller(entry, packed)), urgent=False)
        if entry["status"] == FAILED and self.options.on_error == "abort" and self.failure is None \
                and self.stopping is None:
            self.failure = entry
            self.stopping = "abort"
            self._stop_workers("abort")
            self._tell_aborting({"failure": entry["name"]})


    def _log(self, entry: Dict[str, Any]) -> None:
        if entry["status"] == FAILED:
            if self.options.log_failures:
                log.error("%s", failure_text(entry))
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

    # ------------------------------------------------------- stopping, deadlines
    def _stop_workers(self, why: str) -> None:
        # Not those that have reported (see _read_report): only os._exit is left for them to do,
        # within their exit grace (see _on_exit_overdue).
        self.killing = True
        workers = [w for w in self.workers.values() if not (w.finished or w.stop_requested)]
        for worker in workers:
            worker.stop_requested = True
            self.at(self.options.stop_grace, self._on_grace_over, worker)
        if workers:
            self.launcher.terminate(workers)

    def _terminate(self, worker: RunningWorker) -> None:
        if worker.finished or worker.stop_requested:
            return
        worker.stop_requested = True
        self.at(self.options.stop_grace, self._on_grace_over, worker)
        self.launcher.terminate([worker])

    def _on_timeout(self, worker: RunningWorker) -> None:
        if not worker.finished and not worker.stop_requested and worker.outcome is None:
            worker.timed_out = True
            self._terminate(worker)

    def _on_grace_over(self, worker: RunningWorker) -> None:
        if not worker.finished:
            self.launcher.kill(worker, self.killing)

    def _on_exit_overdue(self, worker: RunningWorker) -> None:
        """A worker whose report is in must exit within its exit grace; one that does not
        (stopped with SIGSTOP, stuck in its teardown) is killed, and its entry keeps its report."""
        if worker.finished or worker.pid is None or worker.killed:
            return
        log.warning("worker %s (pid %d) sent its report but had not exited %g s later (stopped with SIGSTOP?); "
                    "killed with SIGKILL, its report is kept", worker.name, worker.pid,
                    max(self.options.stop_grace, EXIT_GRACE))
        self.launcher.kill(worker, self.killing)


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


def _note_signal(signum: int, frame: Any) -> None:
    """Signal handler of the boss: the wake-up pipe carries the signal, nothing else to do."""


def serve(control: int, caller_pid: int, scheduler: Any, options: Options, inherited_fds: List[int]) -> int:
    """Entry point of the boss process."""
    keep_freed_memory()  # megabyte messages pass through it: memory reused is free, fresh pages are not
    if options.verbose:
        logging.getLogger("taylor").setLevel(logging.INFO)
    return Engine(control, caller_pid, scheduler, options, inherited_fds).run()
