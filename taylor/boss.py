"""Boss: the caller's handle on a run, as the API documents it.

The caller checks and sends instructions and control signals, and receives
the workers' entries as they end; each entry is in the caller's hands as soon
as it arrives, so nothing finished is lost whatever happens to the boss.  Each
method here says what the caller may rely on.  How the boss process is forked,
talked to and waited for lives in :mod:`taylor.bossprocess`; what its messages
mean, in :mod:`taylor.bossrecord`; the one-call helpers (:func:`run_as_server`,
:func:`batch_main`), in :mod:`taylor.batch`, still importable from here.

Must not depend on the boss loop's internals (only its public ``SIGNALS`` and
``Options``), nor on the command line.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import weakref
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

from . import checks, wire
from .bossprocess import BossProcess
from .bossrecord import RunRecord
from .engine import SIGNALS, Options
from .errors import BossClosedError, BossDiedError, InstructionsError, Interrupted, TaylorError
from .instructions import expand, resolve, too_deep_error, worker_classes
from .interrupts import sigterm_raises
from .report import Report
from .schedulers import default_scheduler, fit_to_capacity

__all__ = ["Boss", "run_as_server", "batch_main", "format_report", "ABORT_MARGIN"]  # noqa: F822 - see __getattr__

#: Instruction sets sent to the boss per message: at most this many rows, and about this many bytes
#: (a message is gathered whole before the boss reads any of it, and memory the allocator can
#: reuse costs a twentieth of fresh memory here: megabyte rows go one or a few at a time).
_CHUNK_ROWS = 5000
_CHUNK_BYTES = 1 << 21
_live_bosses: weakref.WeakSet[Boss] = weakref.WeakSet()
#: Seconds, beyond its ``stop_grace``, the caller waits for a boss told to stop before it kills it:
#: a boss that cannot run (stopped with SIGSTOP) must not hold the caller forever.
ABORT_MARGIN = 10.0
#: Seconds a call waits for the final report of an aborting boss beyond its ``stop_grace``.
_FINAL_MARGIN = 5.0


class Boss:
    """Runs workers in a boss subprocess, as told by the caller.

    :param scheduler: decides which instructions start when (default: as many
        workers at once as this job has CPUs).
    :param name: a name for logs.
    :param verbose: log each worker's start and report (``taylor`` logger).
    :param maxlenreport: longest report text logged when verbose.
    :param log_failures: log each failed worker, with its instructions and
        traceback, as it fails (``taylor`` logger); False leaves failures to
        the caller (the :class:`~taylor.executor.Executor` does, its futures
        carry them).
    :param sharedmemory_common_instructions: instructions given to every
        worker without being pickled (shared-memory objects); they reach the
        boss when it is created.
    :param on_error: ``'abort'`` (stop everything at the first failure and
        raise it) or ``'continue'`` (run everything, report every outcome).
        After an abort every call that takes part in the run
        (:meth:`set_instructions`, :meth:`make_them_work`,
        :meth:`send_signal`, :meth:`get_report`, :meth:`wait_till_finished`)
        raises the failure, with the final report as ``.report``.
    :param timeout: default ``timeout`` in seconds of workers that set none.
    :param stop_grace: seconds between SIGTERM and SIGKILL when stopping a worker; also the time
        a worker has to exit once its report is in (at least 1 s), and, plus :data:`ABORT_MARGIN`,
        how long the caller waits for a boss told to stop before killing it.
    :param max_report_bytes: largest pickled report a worker may send.
    :param max_instructions_bytes: largest pickled batch of instructions the
        caller may send at once.
    :param cluster: run the workers on this Dask cluster rather than on this
        host: a scheduler address (``tcp://host:8786``), the path of a Dask
        scheduler file, or a ``distributed.Client`` (``pip install 'taylor[dask]'``;
        see the manual's *cluster* page).  The default scheduler then fits the
        cluster's threads and memory; each entry says ``where`` it ran.
    :param security: a ``distributed.security.Security`` (TLS) for the connection to ``cluster``.
    :param cluster_mode: ``'isolated'`` (a fresh process per worker on its host, as locally) or
        ``'in-worker'`` (in the Dask worker's own thread: faster for tiny tasks, no timeout kill).
    :param reuse: run many tasks per long-lived process (one per slot, forked
        on demand) rather than one fresh process per task: for tasks of a
        millisecond.  A task then sees the state earlier tasks of its process
        left (see :mod:`taylor.reuse` for what reuse gives up).
    :param max_tasks_per_process: with ``reuse``, replace a process after this
        many tasks (None: never, only when it dies or is stopped).
    """

    control_signals = dict(SIGNALS)

    def __init__(self, scheduler: Any = None, name: Optional[str] = None, verbose: bool = False,
                 maxlenreport: int = 1024, sharedmemory_common_instructions: Optional[Mapping[str, Any]] = None,
                 on_error: str = "abort", timeout: Optional[float] = None, stop_grace: float = 2.0,
                 max_report_bytes: int = 1 << 30, max_instructions_bytes: int = 1 << 30, reuse: bool = False,
                 max_tasks_per_process: Optional[int] = None, cluster: Any = None, security: Any = None,
                 cluster_mode: str = "isolated", log_failures: bool = True) -> None:
        if on_error not in ("abort", "continue"):
            raise ValueError(f"on_error must be 'abort' or 'continue', got {on_error!r}")
        why = (None if timeout is None else checks.seconds(timeout, "timeout")) or \
            checks.seconds(stop_grace, "stop_grace", zero=True)
        if why:
            raise ValueError(why + (" (timeout=None: no timeout)" if why.startswith("timeout") else ""))
        if max_tasks_per_process is not None:
            if isinstance(max_tasks_per_process, bool) or not isinstance(max_tasks_per_process, int) \
                    or max_tasks_per_process < 1:
                raise ValueError(f"max_tasks_per_process must be a whole number >= 1 or None, "
                                 f"got {max_tasks_per_process!r}")
            if not reuse:
                raise ValueError("max_tasks_per_process goes with reuse=True (without reuse, each task has a "
                                 "process of its own)")
        if scheduler is None:
            scheduler = default_scheduler()
        if reuse and getattr(scheduler, "enforce", False):
            raise ValueError(f"reuse=True cannot enforce each task's declared memory ({type(scheduler).__name__} "
                             "with enforce=True): the limit is set on the task's process and would stay for the "
                             "next tasks of that process; use enforce=False, or fresh processes (reuse=False)")
        if not callable(getattr(scheduler, "launchable", None)):
            raise TypeError(f"scheduler must have a launchable(pending, workers, report) method, got {scheduler!r}")
        if not hasattr(os, "fork"):
            raise TaylorError("taylor needs os.fork (Linux, macOS and other Unix systems); this platform has none")
        self.scheduler = scheduler
        self.name = name
        self.verbose = verbose
        self._shared = dict(sharedmemory_common_instructions or {})
        spec = None
        if cluster is not None:
            from .cluster.seam import ClusterSpec

            if reuse:
                raise ValueError("reuse=True reuses processes of this host; on a Dask cluster, the tasks of a "
                                 "millisecond go faster with cluster_mode='in-worker' (see its costs)")
            local_only = [what for what in ("measured", "enforce") if getattr(scheduler, what, False)]
            if local_only:
                raise ValueError(
                    f"the scheduler {type(scheduler).__name__} has {', '.join(f'{w}=True' for w in local_only)}, "
                    "which acts on this host's CPUs and processes only, not on a Dask cluster's: run without it "
                    "on a cluster (declared memory is honoured there: each task goes where it fits)")
            # Binding applies per host: the cluster launcher pins each task to a CPU of its host.
            spec = ClusterSpec(cluster, security, cluster_mode, bind=bool(getattr(scheduler, "binded", False)))
            # What this host offers is no cap on the cluster's run: the boss fits the scheduler's defaults
            # to the cluster once connected; until then no task is refused for this host's memory.
            fit_to_capacity(scheduler, {"max_memory": float("inf")})
        self._options = Options(name=name, verbose=verbose, maxlenreport=maxlenreport, on_error=on_error,
                                timeout=timeout, stop_grace=stop_grace, max_report_bytes=max_report_bytes,
                                shared=self._shared, reuse=reuse, max_tasks_per_process=max_tasks_per_process,
                                cluster=spec, log_failures=log_failures)
        self._max_instructions_bytes = int(max_instructions_bytes)
        self._visible = frozenset(worker_classes())
        self._names: set = set()
        self._given = 0  # entries already handed out by wait_for_entries()
        self._listening = True  # False once STOP_LISTENING is sent: later instructions would go unseen
        self._ended = False
        self._record = RunRecord(name, on_error)  # what the boss has told of the run
        self._process = BossProcess(scheduler, self._options, self._record)  # forks the boss
        self.pid: int = self._process.pid
        _live_bosses.add(self)

    # -------------------------------------------------------------- public API
    def set_instructions(self, common_instructions: Optional[Mapping[str, Any]] = None,
                         individual_instructions: Optional[Mapping[str, Sequence[Any]]] = None,
                         fatal: bool = True) -> List[str]:
        """Check instruction sets and queue them in the boss; return the worker names.

        Each row of ``individual_instructions`` (lists of equal length) merged
        with ``common_instructions`` is one worker's instructions.  Everything
        that can be found wrong is found here, before anything is sent:
        unequal lengths, duplicate names, instructions no Worker fits,
        instructions the scheduler could never start, or that cannot be
        pickled.  ``fatal`` is accepted for compatibility; bad input never
        reaches the boss, so it never needs stopping.

        After the run's failure (``on_error='abort'``) this raises it:
        instructions are sent only to a boss that is still running.  A call
        that hears of the abort waits for the final report (the time the boss
        takes to stop the running workers: about ``stop_grace`` seconds at
        most) and raises with it as ``.report``.  Instructions sent in the
        instant between a failure in the boss and the news of it reaching the
        caller are not lost: they are listed in the final report's
        ``pending``, and the next call raises.
        """
        return self._set_instructions(common_instructions, individual_instructions)

    def _set_instructions(self, common_instructions: Optional[Mapping[str, Any]],
                          individual_instructions: Optional[Mapping[str, Sequence[Any]]],
                          fits: Optional[type] = None) -> List[str]:
        """:meth:`set_instructions`; ``fits``: the Worker class the rows were made for (see
        :func:`~taylor.instructions.resolve`), as the Executor's calls are."""
        self._check()
        if self._ended or self._record.final is not None:
            raise BossClosedError(f"the boss{self._record.label} was told the instructions had ended; "
                                  "create a new Boss for more work")
        if not self._listening:
            raise BossClosedError(f"the boss{self._record.label} was told to stop listening (STOP_LISTENING); "
                                  "instructions sent now would never be reported: create a new Boss")
        rows = expand(common_instructions, individual_instructions)
        instructions = resolve(rows, shared=self._shared, taken=self._names, visible=self._visible, fits=fits)
        validate = getattr(self.scheduler, "validate", None)
        if callable(validate):
            validate(instructions)
        rows = _rows_per_message(instructions)
        messages = [self._encode_chunk(instructions[i:i + rows]) for i in range(0, len(instructions), rows)]
        for position, item in enumerate(instructions, len(self._names)):
            self._record.submitted[item["name"]] = dict(item)
            self._record.index[item["name"]] = position
        for data in messages:
            self._process.send("instructions", None, data)
        names = [i["name"] for i in instructions]
        self._names.update(names)
        return names

    def _encode_chunk(self, chunk: List[Any]) -> List[Any]:
        try:
            return wire.encode_parts(("instructions", chunk), limit=self._max_instructions_bytes)
        except Exception as exc:  # noqa: BLE001 - find and name the culprit
            for row in chunk:
                try:
                    wire.encode(row, limit=self._max_instructions_bytes)
                except Exception as row_exc:  # noqa: BLE001
                    deep = too_deep_error(row, row_exc)
                    if deep is not None:
                        raise deep from None
                    hint = "" if "sharedmemory_common_instructions" in str(row_exc) else (
                        ". Give large or unpicklable objects through sharedmemory_common_instructions, "
                        "or a path to a file")
                    why = "they are too large" if isinstance(row_exc, wire.MessageTooLarge) else \
                        "they cannot be pickled"
                    raise InstructionsError(
                        f"the instructions of worker {row['name']!r} cannot be sent to the boss, {why}: "
                        f"{type(row_exc).__name__}: {row_exc}{hint}") from row_exc
            raise InstructionsError(f"a batch of {len(chunk)} instructions cannot be sent to the boss: "
                                    f"{type(exc).__name__}: {exc}; send fewer at once") from exc

    def make_them_work(self, terminate: bool = False, stop_listening: bool = False) -> None:
        """Start the workers; ``terminate`` also calls :meth:`end`, ``stop_listening`` sends STOP_LISTENING.

        Raises the run's failure if it has failed (see :meth:`set_instructions`).
        """
        self._check()
        self._process.send("signal", "RESUME")
        if stop_listening:
            self._process.send("signal", "STOP_LISTENING")
            self._listening = False
        if terminate:
            self.end()

    def stop_them_working(self) -> None:
        """Terminate running workers now (SIGTERM, then SIGKILL after ``stop_grace``) and end the run.

        Also ends workers left running after STOP_LISTENING.  Harmless when
        the run has already ended.
        """
        if self._process.reaped:
            return
        if self._record.final is None:
            with contextlib.suppress(TaylorError):
                self._process.send("signal", "STOP_RIGHTNOW", timeout=self._stop_limit())
        elif self._record.final.get("running"):  # the boss stopped listening but still runs workers
            # Gone already, or not reading (stopped): close() kills it.
            self._process.signal_quietly("STOP_RIGHTNOW", timeout=self._stop_limit())

    def send_signal(self, name: str) -> None:
        """Send one of :attr:`control_signals` by name (``'HALT'``, ``'STOP'``...).

        Raises the run's failure if it has failed (see :meth:`set_instructions`).
        """
        if name not in SIGNALS:
            raise ValueError(f"unknown control signal {name!r}; known: {', '.join(SIGNALS)}")
        self._check()
        if name == "END":
            self.end()
        else:
            self._process.send("signal", name)
            if name == "STOP_LISTENING":
                self._listening = False

    def get_report(self, interim: bool = True) -> Optional[Report]:
        """The final report once the run has ended; before that, an interim
        report if ``interim`` (``None`` otherwise).  Raises the run's failure
        if it failed, as soon as the boss has said so (see :meth:`set_instructions`).
        """
        self._check()
        if self._record.final is None:
            self._process.pump(lambda: False, block=False)
        if self._record.final is None and interim:
            self._record.status = None
            self._process.send("signal", "SEND_REPORT")
            self._process.pump(lambda: self._record.status is not None or self._record.final is not None)
            self._check()  # the news of an abort may have come with the answer
            if self._record.final is None:
                status = self._record.status
                return self._record.report("interim", counts=status["counts"], running=status["running"])
        self._record.raise_failure()
        return self._record.final

    @property
    def ended(self) -> bool:
        """True once the run is over (its final report has arrived, or the boss is gone)."""
        return self._record.final is not None or self._process.reaped

    def waitable(self) -> List[int]:
        """Descriptors that turn readable when the boss sends something or dies, while the run goes
        on (see :attr:`ended`): for a caller that waits on the boss and on other things at once
        (``select``, ``poll``), then reads with ``wait_for_entries(timeout=0)``."""
        return [self._process.fd, self._process.sentinel]

    def wait_for_entries(self, timeout: Optional[float] = None) -> List[Dict[str, Any]]:
        """The worker entries that arrived since the last call, in the order the workers ended.

        Blocks until at least one new entry arrives, the run ends (see
        :attr:`ended`), or ``timeout`` seconds pass (then the list may be
        empty).  The wait is the same event-driven wait as everywhere else:
        ``timeout`` only bounds it, for callers that refresh a display.  The
        run's failure is not raised here (its entry is returned like any
        other); :meth:`wait_till_finished` gives the final report or raises it.
        On SIGINT or SIGTERM while waiting, stops the workers and raises like
        :meth:`wait_till_finished`.
        """
        why = None if timeout is None else checks.seconds(timeout, "timeout", zero=True)
        if why:
            raise ValueError(why + " (None: no limit)")
        if not self.ended:
            try:
                with sigterm_raises():
                    run = self._record
                    self._process.pump(lambda: len(run.entries) > self._given or run.final is not None, timeout=timeout)
            except (KeyboardInterrupt, Interrupted) as exc:
                exc.report = self._abort()
                raise
            except BossDiedError:
                pass  # the entries received before are returned; wait_till_finished raises it
        new = self._record.entries[self._given:]
        self._given = len(self._record.entries)
        return new

    def entries(self) -> Iterator[Dict[str, Any]]:
        """Yield each worker's entry as it ends, until the run is over (see :meth:`wait_for_entries`)."""
        while True:
            ended = self.ended
            yield from self.wait_for_entries()
            if ended and self._given == len(self._record.entries):
                return

    def end(self) -> None:
        """Tell the boss no more instructions will come; it ends once all pending work is done."""
        if not self._ended and self._record.final is None and not self._process.reaped:
            self._process.send("signal", "END")
        self._ended = True

    def wait_till_finished(self) -> Report:
        """End the instructions, wait for every worker, and return the final report.

        Raises the first worker's error (with ``.report``) when the run was
        aborted.  On SIGINT or SIGTERM while waiting, stops the workers and
        raises ``KeyboardInterrupt`` or :class:`~taylor.errors.Interrupted`
        carrying ``.report``.
        """
        self._record.raise_failure()
        try:
            with sigterm_raises():
                self.end()
                self._process.pump(lambda: self._record.final is not None)
                self._process.reap()
        except (KeyboardInterrupt, Interrupted) as exc:
            exc.report = self._abort()
            raise
        self._record.raise_failure()
        return self._record.final

    def close(self) -> None:
        """Stop the run if it still goes on, and reap the boss process."""
        if self._process.reaped or os.getpid() != self._process.owner:
            return
        if self._record.final is None:
            self._abort()
        else:
            self.stop_them_working()  # workers the boss still runs after STOP_LISTENING
        self._process.reap_within(self._stop_limit())

    def __enter__(self) -> Boss:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.wait_till_finished()
        else:
            self.close()

    def __del__(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None:
            process.abandon(self._options.stop_grace + 2.0)

    def __repr__(self) -> str:
        state = "ended" if self._record.final is not None else "running"
        return f"<taylor.Boss{self._record.label} pid={self.pid} {state}, {len(self._record.entries)} entries>"

    # ------------------------------------------------- failures and stopping
    def _check(self) -> None:
        """Raise the run's failure if it is known, or has arrived unread: a call made after a
        failure must not succeed (nor queue instructions that would never run).

        What the boss sent is read first, without waiting.  When the boss has said
        it is aborting (a worker failed under ``on_error='abort'``, or the run
        failed, or the boss received SIGTERM), the call waits for its final report
        before raising, so that ``.report`` is the final report: every entry,
        including those of the workers stopped, and every instruction never
        started listed in ``pending``.  That wait is the time the boss takes to
        stop the running workers: milliseconds for workers that end on SIGTERM,
        about ``stop_grace`` seconds for those that must be killed.  Should the
        final report not come within ``stop_grace`` and a few seconds more, the
        failure is raised with the report received so far.
        """
        run = self._record
        if run.failure is None and run.final is None and run.aborting is None and not self._process.reaped:
            self._process.pump(lambda: run.aborting is not None or run.final is not None, block=False)
        if run.aborting is not None and run.final is None and run.failure is None:
            self._process.pump(lambda: run.final is not None, timeout=self._options.stop_grace + _FINAL_MARGIN)
            if run.final is None:
                run.set_failure(run.aborting.get("failure"), run.aborting.get("error"),
                                run.report("failed", running=sorted(run.running)))
        run.raise_failure()

    def _abort(self) -> Report:
        """Stop everything after an interruption; return what had finished.

        Bounded: a boss that has not ended its run ``stop_grace`` plus
        :data:`ABORT_MARGIN` seconds later (stopped with SIGSTOP, stuck) is
        killed, and the report says so.
        """
        limit = self._stop_limit()
        self.stop_them_working()
        try:
            self._process.pump(lambda: self._record.final is not None, timeout=limit)
        except TaylorError:
            pass
        if self._record.final is None and not self._process.reaped:
            self._process.kill_stuck(limit)
        self._process.reap_within(limit)
        return self._record.final if self._record.final is not None else self._record.report("stopped")

    def _stop_limit(self) -> float:
        return self._options.stop_grace + ABORT_MARGIN


def __getattr__(name: str) -> Any:
    """``from taylor.boss import run_as_server, batch_main, format_report`` still works: they live in
    :mod:`taylor.batch`, which is built on this module (imported here lazily, so no import cycle)."""
    if name in ("run_as_server", "batch_main", "format_report"):
        from . import batch
        return getattr(batch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@atexit.register
def _stop_forgotten_bosses() -> None:
    """At interpreter exit, stop runs nobody waited for, so that nothing outlives the program."""
    for boss in list(_live_bosses):
        with contextlib.suppress(Exception):
            boss.close()


# A forked child (the boss, a worker, a user's own fork) owns none of its parent's bosses.
os.register_at_fork(after_in_child=_live_bosses.clear)


def _rows_per_message(instructions: List[Any]) -> int:
    """How many rows to send per message: as many as fit in about :data:`_CHUNK_BYTES`, between 1
    and :data:`_CHUNK_ROWS`, judging by what the second row adds to the first (rows of one call are
    alike; what they share, their common instructions, is pickled once per message)."""
    if len(instructions) < 2:
        return 1
    try:
        one, two = (wire.pickled_size(instructions[:n]) for n in (1, 2))
    except Exception:  # noqa: BLE001 - encoding the messages will say what is wrong
        return _CHUNK_ROWS
    return max(1, min(_CHUNK_ROWS, _CHUNK_BYTES // max(two - one, 1)))
