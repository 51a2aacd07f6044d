"""Boss: the caller's handle on a boss process.

The caller checks and sends instructions and control signals, and receives
the workers' entries as they end.  Every wait is a blocking wait on two
things at once, the boss's channel and its death, so no call can hang on a
boss that is gone; and every finished entry is already in the caller's hands,
so nothing finished is lost whatever happens to the boss.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import math
import os
import pickle
import pprint
import select
import signal
import socket
import sys
import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

from . import checks, wire
from .engine import SIGNALS, Options, serve
from .errors import (
    BossClosedError,
    BossDiedError,
    InstructionsError,
    Interrupted,
    RemoteTraceback,
    ReportError,
    TaylorError,
    _short,
    describe_exit,
    worker_failure_message,
)
from .instructions import expand, resolve, worker_classes
from .report import FAILED, Report
from .schedulers import default_scheduler

__all__ = ["Boss", "run_as_server", "batch_main"]

_CHUNK_ROWS = 5000
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)  # a dead boss is an EPIPE, even if SIGPIPE kills by default
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
    """

    control_signals = dict(SIGNALS)

    def __init__(self, scheduler: Any = None, name: Optional[str] = None, verbose: bool = False,
                 maxlenreport: int = 1024, sharedmemory_common_instructions: Optional[Mapping[str, Any]] = None,
                 on_error: str = "abort", timeout: Optional[float] = None, stop_grace: float = 2.0,
                 max_report_bytes: int = 1 << 30, max_instructions_bytes: int = 1 << 30) -> None:
        if on_error not in ("abort", "continue"):
            raise ValueError(f"on_error must be 'abort' or 'continue', got {on_error!r}")
        why = (None if timeout is None else checks.seconds(timeout, "timeout")) or \
            checks.seconds(stop_grace, "stop_grace", zero=True)
        if why:
            raise ValueError(why + (" (timeout=None: no timeout)" if why.startswith("timeout") else ""))
        if scheduler is None:
            scheduler = default_scheduler()
        if not callable(getattr(scheduler, "launchable", None)):
            raise TypeError(f"scheduler must have a launchable(pending, workers, report) method, got {scheduler!r}")
        if not hasattr(os, "fork"):
            raise TaylorError("taylor needs os.fork (Linux, macOS and other Unix systems); this platform has none")
        self.scheduler = scheduler
        self.name = name
        self.verbose = verbose
        self._shared = dict(sharedmemory_common_instructions or {})
        self._options = Options(name=name, verbose=verbose, maxlenreport=maxlenreport, on_error=on_error,
                                timeout=timeout, stop_grace=stop_grace, max_report_bytes=max_report_bytes,
                                shared=self._shared)
        self._max_instructions_bytes = int(max_instructions_bytes)
        self._visible = frozenset(worker_classes())
        self._names: set = set()
        self._entries: List[Dict[str, Any]] = []
        self._given = 0  # entries already handed out by wait_for_entries()
        self._submitted: Dict[str, Dict[str, Any]] = {}  # instructions sent, by name, until they end
        self._index: Dict[str, int] = {}  # position of each instruction set in the run, until it ends
        self._running: Dict[str, int] = {}  # process group of each running worker, by name
        self._decoder = wire.Decoder()
        self._demoted = 0  # entries the boss counted done whose report could not be unpickled here
        self._local_failure: Optional[Dict[str, Any]] = None  # the first of them, under on_error='abort'
        self._status: Optional[Dict[str, Any]] = None
        self._final: Optional[Report] = None
        self._failure: Optional[BaseException] = None  # never raised itself: see _raise_failure
        self._aborting: Optional[Dict[str, Any]] = None  # the boss said it is stopping on its own
        self._listening = True  # False once STOP_LISTENING is sent: later instructions would go unseen
        self._ended = False
        self._broken = False
        self._reaped = False
        self._exitcode: Optional[int] = None
        self._owner = os.getpid()
        self._start()

    # ------------------------------------------------------------- the process
    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        sentinel_r, sentinel_w = os.pipe()
        others = [boss for boss in list(_live_bosses) if not boss._reaped]
        caller_pid = os.getpid()
        for stream in (sys.stdout, sys.stderr):  # or the children would print it again
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:  # the boss process
            code = 70
            try:
                ours.close()
                os.close(sentinel_r)
                for boss in others:
                    boss._disown()
                code = serve(theirs.detach(), caller_pid, self.scheduler, self._options, [sentinel_w])
            except BaseException:  # noqa: BLE001 - never return into the caller's code
                with contextlib.suppress(BaseException):
                    import traceback
                    traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        os.close(sentinel_w)
        self.pid: int = pid
        self._sock = ours
        self._fd = ours.fileno()
        self._sentinel = sentinel_r
        _live_bosses.add(self)

    def _disown(self) -> None:
        """In a forked child (a new boss process): close this other boss's descriptors here,
        through the objects that own them, and mark it as nothing to stop or reap from here.

        Closing them by number would leave the socket object owning a number it
        no longer has: when the child's garbage collector later frees this Boss,
        the socket would close that number again, by then one of the child's own
        descriptors (its epoll, its spawner's socket).
        """
        self._reaped = True
        with contextlib.suppress(OSError, AttributeError):
            os.close(self._sock.detach())
        with contextlib.suppress(OSError, AttributeError):
            os.close(self._sentinel)

    def _reap(self, block: bool = True) -> None:
        if self._reaped:
            return
        pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return
        self._exitcode = os.waitstatus_to_exitcode(status)
        self._reaped = True
        self._sock.close()
        os.close(self._sentinel)
        _live_bosses.discard(self)

    # ------------------------------------------------------------- the channel
    def _send(self, kind: str, payload: Any, data: Optional[bytes] = None, timeout: Optional[float] = None) -> None:
        """Send a message; with ``timeout``, a boss that does not read it in time (stopped) has the
        channel closed on it instead, which tells it to stop its workers too."""
        if self._final is not None or self._reaped:
            raise BossClosedError(f"the boss{self._label()} has ended its run; it takes no more {kind}")
        if self._broken:
            raise BossClosedError(f"the channel to the boss{self._label()} was closed by an interruption")
        data = data if data is not None else wire.encode((kind, payload))
        try:
            if timeout is not None:
                self._sock.settimeout(timeout)
            self._sock.sendall(data, _NOSIGNAL)
        except TimeoutError:
            self._broken = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._pump(lambda: False)  # the boss is gone: say how (raises)
        except BaseException:
            # Interrupted mid-message (Ctrl-C): what was sent cannot be trusted.  Closing our
            # side makes the boss stop every worker; entries can still be read.
            self._broken = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)
            raise
        finally:
            if timeout is not None:
                self._sock.settimeout(None)

    def _handle(self, message: Any) -> None:
        kind, payload = message
        if kind == "started":
            name, pid = payload
            self._running[name] = pid
        elif kind == "entry":
            self._running.pop(payload["name"], None)
            instructions = dict(self._submitted.pop(payload["name"], None) or {"name": payload["name"]})
            payload["index"] = self._index.pop(payload["name"], None)
            ticket = payload.pop("scheduler_ticket", None)
            if ticket is not None:
                instructions["scheduler_ticket"] = ticket
            payload["instructions"] = instructions
            self._unpack_report(payload)
            self._entries.append(payload)
        elif kind == "status":
            self._status = payload
        elif kind == "aborting":
            self._aborting = payload
        elif kind == "final":
            self._on_final(payload)

    def _unpack_report(self, entry: Dict[str, Any]) -> None:
        """Load the entry's report, pickled apart in the boss (see :func:`wire.pack_report`).

        A report this process cannot unpickle fails that worker alone, with a
        :class:`ReportError` saying why; under ``on_error='abort'`` it stops
        the run like any first failure (the boss, which could read it, is told).
        """
        try:
            entry["report"] = report = pickle.loads(entry["report"])
            if isinstance(report, BaseException):
                _drop_tracebacks(report)
            return
        except Exception as exc:  # noqa: BLE001 - any failure of a class's own unpickling
            why = f"{type(exc).__name__}: {exc}"
        name, was = entry["name"], entry["status"]
        plain = {k: v for k, v in entry["instructions"].items() if k != "scheduler_hooks"}
        what = "raised an exception" if was == FAILED else "sent a report"
        entry.update(status=FAILED, report=ReportError(worker_failure_message(
            f"{what} that the boss could read but this process (the caller) cannot unpickle ({why}). "
            "Make its class importable here (its module on this program's sys.path, imported before the "
            "Boss was created), and its pickling independent of the process (a __reduce__, or for an "
            "exception an __init__, that rebuilds it from plain values)", name, plain, entry.get("pid")),
            worker=name, pid=entry.get("pid"), instructions=plain, exitcode=entry.get("exitcode")))
        if was == FAILED:
            return
        self._demoted += 1  # the boss counted it done
        if self._options.on_error == "abort" and self._local_failure is None \
                and not any(e["status"] == FAILED for e in self._entries):
            # The first failure of the run, which the boss does not know of: stop it as it would have.
            self._local_failure = entry
            if self._aborting is None:  # later calls raise it, as for a failure the boss saw
                self._aborting = {"failure": name}
            with contextlib.suppress(OSError):  # a boss already gone has stopped anyway
                self._sock.sendall(wire.encode(("signal", "STOP_RIGHTNOW")), _NOSIGNAL)

    def _pump(self, until, block: bool = True, timeout: Optional[float] = None) -> None:
        """Receive messages until ``until()`` holds; raise if the boss died first.

        Returns early when nothing is waiting (``block=False``) or after
        ``timeout`` seconds without ``until()`` holding.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not until():
            if not block:
                wait_for = 0.0
            elif deadline is None:
                wait_for = None
            else:
                wait_for = max(0.0, deadline - time.monotonic())
            ready = _wait([self._fd, self._sentinel], wait_for)
            if not ready:
                return
            if self._fd in ready:
                received = self._receive()
                if received or (received is None and self._sentinel not in ready):
                    continue
            # End of stream, or the boss process has ended: read what it sent before.
            while self._receive():
                pass
            if not until():
                self._on_boss_death()
            return

    def _receive(self) -> Optional[bool]:
        """Read what is waiting: True if something came, False at end of stream, None if nothing yet.

        SIGINT/SIGTERM are held meanwhile (the read never blocks): a handler
        that raises between the read and the decoding would lose what was read.
        """
        with _signals_deferred():
            return self._receive_now()

    def _receive_now(self) -> Optional[bool]:
        try:
            data = self._sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError:
            return False
        if not data:
            return False
        unreadable = None
        for message in self._decoder.feed(data):  # every message, even after one that cannot be read
            if isinstance(message, wire.Undecodable):
                unreadable = unreadable or message
            else:
                self._handle(message)
        if unreadable is not None:
            raise TaylorError(f"a message from the boss{self._label()} could not be read: {unreadable.error}")
        return True

    def _on_boss_death(self) -> None:
        if self._final is not None:
            return
        self._reap()
        if self._broken:  # we closed the channel ourselves: the boss stopped, as asked
            self._final = self._report("stopped")
            return
        self._end_orphans()
        report = self._report("failed")
        error = BossDiedError(
            f"the boss process{self._label()} (pid {self.pid}) died ({describe_exit(self._exitcode)}) before "
            f"the end of the run; its workers were killed with it. The {len(self._entries)} entries received "
            "before are in this error's .report", exitcode=self._exitcode)
        error.report = report
        self._final = report
        self._failure = error
        self._raise_failure()

    def _end_orphans(self) -> None:
        """The boss was killed outright: its workers die with it (parent-death signal), but
        the programs they started, or a command the boss spawned itself, do not.  End the
        process group of every worker that had not ended."""
        for pid in self._running.values():
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        self._running.clear()

    def _label(self) -> str:
        return f" {self.name!r}" if self.name else ""

    # ----------------------------------------------------------------- reports
    def _report(self, status: str, **extra: Any) -> Report:
        counts = extra.get("counts")
        if counts and self._demoted:  # reports the boss counted done, which could not be read here
            extra["counts"] = dict(counts, done=counts.get("done", 0) - self._demoted,
                                   failed=counts.get("failed", 0) + self._demoted)
        report = Report(workers_report=list(self._entries), status=status)
        report.update(extra)
        return report

    def _on_final(self, final: Dict[str, Any]) -> None:
        extra = {k: final[k] for k in ("pending", "running") if k in final}
        if "pending" in extra:
            extra["pending"] = [self._submitted.get(name, {"name": name}) for name in extra["pending"]]
        # Instructions that reached the boss only after it had sent this (it was ending on its
        # own meanwhile) never started: listed as pending too, never lost.
        listed = set(final.get("pending", ())) | set(final.get("running", ()))
        late = [instructions for name, instructions in self._submitted.items() if name not in listed]
        counts = final["counts"]
        if late:
            extra["pending"] = extra.get("pending", []) + late
            counts = dict(counts, pending=counts.get("pending", 0) + len(late))
        local = self._local_failure if final.get("error") is None else None  # it came first, if any
        report = self._report("failed" if local else final["status"], counts=counts, **extra)
        if self.name is not None:
            report["boss"] = self.name
        self._final = report
        if local is not None:
            self._set_failure(None, local["report"], report)
        else:
            self._set_failure(final.get("failure"), final.get("error"), report)

    def _set_failure(self, failure: Optional[str], error: Optional[BaseException], report: Report) -> None:
        """Keep the run's failure (worker ``failure``'s exception, else ``error``) with ``report``."""
        if error is None and failure is not None:
            entry = next(e for e in reversed(self._entries) if e["name"] == failure)
            error = entry["report"]
            if not isinstance(error, BaseException):
                error = TaylorError(f"worker {entry['name']!r} failed: {error!r}")
            tb = entry.get("traceback")
            if tb and error.__cause__ is None:
                error.__cause__ = RemoteTraceback(tb)
            note = (f"raised in taylor worker {entry['name']!r} (pid {entry['pid']}) "
                    f"with instructions {_short(entry['instructions'])}")
            if hasattr(error, "add_note") and tb and note not in getattr(error, "__notes__", ()):
                error.add_note(note)
        if error is not None:
            with contextlib.suppress(AttributeError, TypeError):
                error.report = report
            if error.__cause__ is None and getattr(error, "traceback", None):
                error.__cause__ = RemoteTraceback(error.traceback)
            self._failure = error
            report["error"] = error

    def _raise_failure(self) -> None:
        """Raise a copy of the run's failure, if it failed.

        A copy, never the kept exception itself: a raised exception's traceback
        holds this Boss's frames, so keeping a raised one would keep the Boss
        (and its boss process) alive through that cycle after the caller drops it.
        """
        if self._failure is not None:
            raise _fresh(self._failure)

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
        if self._failure is None and self._final is None and self._aborting is None and not self._reaped:
            self._pump(lambda: self._aborting is not None or self._final is not None, block=False)
        if self._aborting is not None and self._final is None and self._failure is None:
            self._pump(lambda: self._final is not None, timeout=self._options.stop_grace + _FINAL_MARGIN)
            if self._final is None:
                self._set_failure(self._aborting.get("failure"), self._aborting.get("error"),
                                  self._report("failed", running=sorted(self._running)))
        self._raise_failure()

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
        self._check()
        if self._ended or self._final is not None:
            raise BossClosedError(f"the boss{self._label()} was told the instructions had ended; "
                                  "create a new Boss for more work")
        if not self._listening:
            raise BossClosedError(f"the boss{self._label()} was told to stop listening (STOP_LISTENING); "
                                  "instructions sent now would never be reported: create a new Boss")
        rows = expand(common_instructions, individual_instructions)
        names = set(self._names)
        instructions = resolve(rows, shared=self._shared, taken=names, visible=self._visible)
        validate = getattr(self.scheduler, "validate", None)
        if callable(validate):
            validate(instructions)
        messages = [self._encode_chunk(instructions[i:i + _CHUNK_ROWS])
                    for i in range(0, len(instructions), _CHUNK_ROWS)]
        for position, item in enumerate(instructions, len(self._names)):
            self._submitted[item["name"]] = dict(item)
            self._index[item["name"]] = position
        for data in messages:
            self._send("instructions", None, data)
        self._names = names
        return [i["name"] for i in instructions]

    def _encode_chunk(self, chunk: List[Any]) -> bytes:
        try:
            return wire.encode(("instructions", chunk), limit=self._max_instructions_bytes)
        except Exception as exc:  # noqa: BLE001 - find and name the culprit
            for row in chunk:
                try:
                    wire.encode(row, limit=self._max_instructions_bytes)
                except Exception as row_exc:  # noqa: BLE001
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
        self._send("signal", "RESUME")
        if stop_listening:
            self._send("signal", "STOP_LISTENING")
            self._listening = False
        if terminate:
            self.end()

    def stop_them_working(self) -> None:
        """Terminate running workers now (SIGTERM, then SIGKILL after ``stop_grace``) and end the run.

        Also ends workers left running after STOP_LISTENING.  Harmless when
        the run has already ended.
        """
        if self._reaped:
            return
        if self._final is None:
            with contextlib.suppress(TaylorError):
                self._send("signal", "STOP_RIGHTNOW", timeout=self._stop_limit())
        elif self._final.get("running"):  # the boss stopped listening but still runs workers
            with contextlib.suppress(OSError):  # gone already, or not reading (stopped): close() kills it
                self._sock.settimeout(self._stop_limit())
                try:
                    self._sock.sendall(wire.encode(("signal", "STOP_RIGHTNOW")), _NOSIGNAL)
                finally:
                    self._sock.settimeout(None)

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
            self._send("signal", name)
            if name == "STOP_LISTENING":
                self._listening = False

    def get_report(self, interim: bool = True) -> Optional[Report]:
        """The final report once the run has ended; before that, an interim
        report if ``interim`` (``None`` otherwise).  Raises the run's failure
        if it failed, as soon as the boss has said so (see :meth:`set_instructions`).
        """
        self._check()
        if self._final is None:
            self._pump(lambda: False, block=False)
        if self._final is None and interim:
            self._status = None
            self._send("signal", "SEND_REPORT")
            self._pump(lambda: self._status is not None or self._final is not None)
            self._check()  # the news of an abort may have come with the answer
            if self._final is None:
                return self._report("interim", counts=self._status["counts"], running=self._status["running"])
        self._raise_failure()
        return self._final

    @property
    def ended(self) -> bool:
        """True once the run is over (its final report has arrived, or the boss is gone)."""
        return self._final is not None or self._reaped

    def waitable(self) -> List[int]:
        """Descriptors that turn readable when the boss sends something or dies, while the run goes
        on (see :attr:`ended`): for a caller that waits on the boss and on other things at once
        (``select``, ``poll``), then reads with ``wait_for_entries(timeout=0)``."""
        return [self._fd, self._sentinel]

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
                with _signals_raise():
                    self._pump(lambda: len(self._entries) > self._given or self._final is not None,
                               timeout=timeout)
            except (KeyboardInterrupt, Interrupted) as exc:
                exc.report = self._abort()
                raise
            except BossDiedError:
                pass  # the entries received before are returned; wait_till_finished raises it
        new = self._entries[self._given:]
        self._given = len(self._entries)
        return new

    def entries(self) -> Iterator[Dict[str, Any]]:
        """Yield each worker's entry as it ends, until the run is over (see :meth:`wait_for_entries`)."""
        while True:
            ended = self.ended
            yield from self.wait_for_entries()
            if ended and self._given == len(self._entries):
                return

    def end(self) -> None:
        """Tell the boss no more instructions will come; it ends once all pending work is done."""
        if not self._ended and self._final is None and not self._reaped:
            self._send("signal", "END")
        self._ended = True

    def wait_till_finished(self) -> Report:
        """End the instructions, wait for every worker, and return the final report.

        Raises the first worker's error (with ``.report``) when the run was
        aborted.  On SIGINT or SIGTERM while waiting, stops the workers and
        raises ``KeyboardInterrupt`` or :class:`~taylor.errors.Interrupted`
        carrying ``.report``.
        """
        self._raise_failure()
        try:
            with _signals_raise():
                self.end()
                self._pump(lambda: self._final is not None)
                self._reap()
        except (KeyboardInterrupt, Interrupted) as exc:
            exc.report = self._abort()
            raise
        self._raise_failure()
        return self._final

    def _abort(self) -> Report:
        """Stop everything after an interruption; return what had finished.

        Bounded: a boss that has not ended its run ``stop_grace`` plus
        :data:`ABORT_MARGIN` seconds later (stopped with SIGSTOP, stuck) is
        killed, and the report says so.
        """
        limit = self._stop_limit()
        self.stop_them_working()
        try:
            self._pump(lambda: self._final is not None, timeout=limit)
        except TaylorError:
            pass
        if self._final is None and not self._reaped:
            self._kill_stuck(limit)
        self._reap_within(limit)
        return self._final if self._final is not None else self._report("stopped")

    def _stop_limit(self) -> float:
        return self._options.stop_grace + ABORT_MARGIN

    def _reap_within(self, seconds: float) -> None:
        """Reap the boss, which is ending; kill it if it has not ended ``seconds`` later."""
        if self._reaped:
            return
        _wait([self._sentinel], seconds)
        self._reap(block=False)
        if not self._reaped:
            self._kill_stuck(seconds)

    def _kill_stuck(self, waited: float) -> None:
        """Kill a boss that did not end within ``waited`` seconds of being told to: its spawner
        and workers die with it (parent-death signals), the programs they started are ended
        here; the entries received are kept, and the report says what happened."""
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(TaylorError):
            while self._receive():  # what it had sent
                pass
        self._reap()
        self._end_orphans()
        if self._final is not None:  # its run was over: only its exit was missing
            return
        error = BossDiedError(
            f"the boss process{self._label()} (pid {self.pid}) did not end its run within {waited:g} s of being "
            "told to stop (stopped with SIGSTOP, or stuck), so it was killed, with its workers and the programs "
            f"they started. The {len(self._entries)} entries received before are in this error's .report",
            exitcode=self._exitcode)
        report = self._report("stopped", error=error)
        error.report = report
        self._final = report
        self._failure = error

    def close(self) -> None:
        """Stop the run if it still goes on, and reap the boss process."""
        if self._reaped or os.getpid() != self._owner:
            return
        if self._final is None:
            self._abort()
        else:
            self.stop_them_working()  # workers the boss still runs after STOP_LISTENING
        self._reap_within(self._stop_limit())

    def __enter__(self) -> Boss:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.wait_till_finished()
        else:
            self.close()

    def __del__(self) -> None:
        if getattr(self, "_reaped", True) or os.getpid() != getattr(self, "_owner", None):
            return  # in a forked child, this object belongs to the parent
        with contextlib.suppress(Exception):
            self._sock.close()  # the boss sees the end of stream and stops its workers
            _wait([self._sentinel], self._options.stop_grace + 2.0)
            self._reap(block=False)
            if not self._reaped:
                os.kill(self.pid, signal.SIGKILL)
                self._reap()
                self._end_orphans()

    def __repr__(self) -> str:
        state = "ended" if self._final is not None else "running"
        return f"<taylor.Boss{self._label()} pid={self.pid} {state}, {len(self._entries)} entries>"


def _fresh(error: BaseException) -> BaseException:
    """A copy of ``error`` to raise: same type, arguments and attributes (``report``...),
    same ``__cause__`` (the worker's traceback) and notes; no traceback yet.

    Exceptions that arrive from the boss were rebuilt from a pickle, so they can
    be rebuilt again; should one not copy, the original is raised.
    """
    try:
        fresh = copy.copy(error)
    except Exception:  # noqa: BLE001 - an exception that cannot be rebuilt is raised as it is
        return error
    if type(fresh) is not type(error) or fresh is error:
        return error
    fresh.__cause__ = error.__cause__
    fresh.__suppress_context__ = error.__suppress_context__
    notes = getattr(error, "__notes__", None)
    if notes is not None:
        with contextlib.suppress(AttributeError, TypeError):
            fresh.__notes__ = list(notes)
    return fresh


def _drop_tracebacks(error: BaseException) -> None:
    """Drop the tracebacks an unpickled exception (and its causes) may carry.

    Plain pickle sends none, but picklers that rebuild them (tblib's, which
    distributed installs) make them by raising in this process: their frames
    then chain back to the Boss method that was unpickling, and so keep the
    Boss alive as long as its entries are.  The worker's own traceback travels
    as text in the entry (``traceback``), which loses nothing.
    """
    stack, seen = [error], set()
    while stack:
        error = stack.pop()
        if error is not None and id(error) not in seen:
            seen.add(id(error))
            error.__traceback__ = None
            stack += (error.__cause__, error.__context__)


def _wait(fds: List[int], timeout: Optional[float]) -> List[int]:
    """Those of ``fds`` readable (or at their end) within ``timeout`` seconds (None: no limit)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(None if timeout is None else math.ceil(timeout * 1000))]


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM during a short, non-blocking step; deliver them after."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(f"received {signal.Signals(signum).name}: the workers were stopped", signum=signum)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM (what batch systems send before a kill) into an exception while waiting."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):  # the program has its own handler: keep it
        yield
        return
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_as_server(common_instructions: Optional[Mapping[str, Any]] = None,
                  individual_instructions: Optional[Mapping[str, Sequence[Any]]] = None,
                  scheduler: Any = None, verbose: bool = False, **boss_options: Any) -> Boss:
    """Create a Boss, give it these instructions, start the workers, return the Boss.

    The run goes on until :meth:`Boss.end` or :meth:`Boss.wait_till_finished`;
    more instructions may be given meanwhile.  ``boss_options`` are the other
    :class:`Boss` parameters.
    """
    boss = Boss(scheduler=scheduler, verbose=verbose, **boss_options)
    try:
        boss.set_instructions(common_instructions, individual_instructions)
        boss.make_them_work()
    except BaseException:
        boss.close()
        raise
    return boss


def _report_text(report: Any) -> str:
    """A worker's report as readable text: a string as it is, an exception as its type and
    message, anything else pretty-printed (one item a line when it does not fit in one)."""
    if isinstance(report, str):
        return report
    if isinstance(report, BaseException):
        return f"{type(report).__name__}: {report}"
    return pprint.pformat(report, width=100, sort_dicts=False)


def format_report(report: Report) -> str:
    """The text batch_main prints: for each worker a header with its name and how it
    ended, then its whole report as an indented block; last, the run's summary."""
    blocks = []
    for entry in report.workers:
        header = f"worker {entry['name']}: {entry['status']}"
        text = _report_text(entry["report"])
        blocks.append(header + "\n" + "\n".join("    " + line for line in text.splitlines() or [""]))
    pending = report.get("pending")
    if pending:
        blocks.append("never started: " + ", ".join(str(p.get("name")) for p in pending))
    blocks.append(report.summary())
    return "\n".join(blocks)


def batch_main(common_instructions: Optional[Mapping[str, Any]] = None,
               individual_instructions: Optional[Mapping[str, Sequence[Any]]] = None,
               scheduler: Any = None, verbose: bool = False,
               print_report: Union[bool, Callable[[Any], Any]] = True, **boss_options: Any) -> Report:
    """Run one batch to the end, show its report and return it.

    ``print_report``: ``True`` prints, for each worker, its name and its whole
    report (see :func:`format_report`), then a summary; ``False`` prints
    nothing; a callable is called with each worker's report in turn, as
    taylorism did (``print_report=lambda report: None`` silences it; taylor
    then prints nothing itself).  Nothing is shown when the run fails: the
    error raised carries the report.

    Raises the first worker error (with ``.report``) unless
    ``on_error='continue'``; see :func:`run_as_server` for the parameters.
    """
    boss = run_as_server(common_instructions, individual_instructions, scheduler=scheduler,
                         verbose=verbose, **boss_options)
    try:
        report = boss.wait_till_finished()
    finally:
        boss.close()
    if callable(print_report):
        for entry in report.workers:
            print_report(entry["report"])
    elif print_report:
        print(format_report(report))
    return report


@atexit.register
def _stop_forgotten_bosses() -> None:
    """At interpreter exit, stop runs nobody waited for, so that nothing outlives the program."""
    for boss in list(_live_bosses):
        with contextlib.suppress(Exception):
            boss.close()


# A forked child (the boss, a worker, a user's own fork) owns none of its parent's bosses.
os.register_at_fork(after_in_child=_live_bosses.clear)
