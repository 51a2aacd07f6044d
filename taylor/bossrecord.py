"""What the caller knows of a run: the entries received, who runs, the abort, the failure, the final report.

Fed one message from the boss at a time (:meth:`RunRecord.handle`); never reads, sends or waits
itself, so it depends on no process and no channel: not on the boss process (``bossprocess``),
nor the boss loop (``engine``), nor the Boss class that owns it.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
from typing import Any, Dict, List, Optional

from .errors import RemoteTraceback, ReportError, TaylorError, _short, worker_failure_message
from .report import FAILED, Report

__all__ = ["RunRecord"]


class RunRecord:
    """The caller's record of one run, as the boss's messages tell it.

    :param name: the Boss's name, for messages and the final report.
    :param on_error: the Boss's ``on_error``: under ``'abort'``, a report the caller cannot
        unpickle is the run's first failure like any other.
    """

    def __init__(self, name: Optional[str], on_error: str) -> None:
        self.name = name
        self.on_error = on_error
        self.entries: List[Dict[str, Any]] = []
        self.submitted: Dict[str, Dict[str, Any]] = {}  # instructions sent, by name, until they end
        self.index: Dict[str, int] = {}  # position of each instruction set in the run, until it ends
        self.running: Dict[str, int] = {}  # process group of each running worker, by name
        self.status: Optional[Dict[str, Any]] = None  # the last interim counts the boss sent
        self.final: Optional[Report] = None
        self.failure: Optional[BaseException] = None  # never raised itself: see raise_failure
        self.aborting: Optional[Dict[str, Any]] = None  # the boss said it is stopping on its own
        self._demoted = 0  # entries the boss counted done whose report could not be unpickled here
        self._local_failure: Optional[Dict[str, Any]] = None  # the first of them, under on_error='abort'

    @property
    def label(self) -> str:
        """The Boss's name as messages quote it (empty if it has none)."""
        return f" {self.name!r}" if self.name else ""

    # ---------------------------------------------------------------- messages
    def handle(self, message: Any) -> bool:
        """Take in one message from the boss; True if the boss must now be told to stop
        (the run's first failure is a report only this process could not read)."""
        kind, payload = message
        if kind == "started":
            name, pid = payload
            self.running[name] = pid
        elif kind == "entry":
            self.running.pop(payload["name"], None)
            instructions = dict(self.submitted.pop(payload["name"], None) or {"name": payload["name"]})
            payload["index"] = self.index.pop(payload["name"], None)
            ticket = payload.pop("scheduler_ticket", None)
            if ticket is not None:
                instructions["scheduler_ticket"] = ticket
            payload["instructions"] = instructions
            stop = self._unpack_report(payload)
            self.entries.append(payload)
            return stop
        elif kind == "status":
            self.status = payload
        elif kind == "aborting":
            self.aborting = payload
        elif kind == "final":
            self._on_final(payload)
        return False

    def _unpack_report(self, entry: Dict[str, Any]) -> bool:
        """Load the entry's report, pickled apart by its worker (or by the boss, for a failure; see
        :func:`wire.pack_report`).

        A report this process cannot unpickle fails that worker alone, with a
        :class:`ReportError` saying why; under ``on_error='abort'`` it stops
        the run like any first failure (returns True: the boss, which passed it on unread, must be told).
        """
        try:
            entry["report"] = report = pickle.loads(entry["report"])
            if isinstance(report, BaseException):
                _drop_tracebacks(report)
            return False
        except Exception as exc:  # noqa: BLE001 - any failure of a class's own unpickling
            why = f"{type(exc).__name__}: {exc}"
        name, was = entry["name"], entry["status"]
        plain = {k: v for k, v in entry["instructions"].items() if k != "scheduler_hooks"}
        what = "raised an exception that the boss could read but" if was == FAILED else "sent a report that"
        entry.update(status=FAILED, report=ReportError(worker_failure_message(
            f"{what} this process (the caller) cannot unpickle ({why}). "
            "Make its class importable here (its module on this program's sys.path, imported before the "
            "Boss was created), and its pickling independent of the process (a __reduce__, or for an "
            "exception an __init__, that rebuilds it from plain values)", name, plain, entry.get("pid")),
            worker=name, pid=entry.get("pid"), instructions=plain, exitcode=entry.get("exitcode")))
        if was == FAILED:
            return False
        self._demoted += 1  # the boss counted it done
        if self.on_error == "abort" and self._local_failure is None \
                and not any(e["status"] == FAILED for e in self.entries):
            # The first failure of the run, which the boss does not know of: stop it as it would have.
            self._local_failure = entry
            if self.aborting is None:  # later calls raise it, as for a failure the boss saw
                self.aborting = {"failure": name}
            return True
        return False

    # ----------------------------------------------------------------- reports
    def report(self, status: str, **extra: Any) -> Report:
        """A report of the entries received so far, with ``status`` and ``extra`` items."""
        counts = extra.get("counts")
        if counts and self._demoted:  # reports the boss counted done, which could not be read here
            extra["counts"] = dict(counts, done=counts.get("done", 0) - self._demoted,
                                   failed=counts.get("failed", 0) + self._demoted)
        report = Report(workers_report=list(self.entries), status=status)
        report.update(extra)
        return report

    def unfinished(self) -> Dict[str, Any]:
        """What a report says of the work the boss took with it when it ended without its final
        report: ``running`` (names of the workers killed with it) and ``pending`` (the
        instructions of those never started), so that nothing sent goes unlisted."""
        running = sorted(name for name in self.running if name in self.submitted)
        pending = [instructions for name, instructions in self.submitted.items() if name not in self.running]
        return {"pending": pending, "running": running}

    def _on_final(self, final: Dict[str, Any]) -> None:
        extra = {k: final[k] for k in ("pending", "running") if k in final}
        if "pending" in extra:
            extra["pending"] = [self.submitted.get(name, {"name": name}) for name in extra["pending"]]
        # Instructions that reached the boss only after it had sent this (it was ending on its
        # own meanwhile) never started: listed as pending too, never lost.
        listed = set(final.get("pending", ())) | set(final.get("running", ()))
        late = [instructions for name, instructions in self.submitted.items() if name not in listed]
        counts = final["counts"]
        if late:
            extra["pending"] = extra.get("pending", []) + late
            counts = dict(counts, pending=counts.get("pending", 0) + len(late))
        local = self._local_failure if final.get("error") is None else None  # it came first, if any
        report = self.report("failed" if local else final["status"], counts=counts, **extra)
        if self.name is not None:
            report["boss"] = self.name
        self.final = report
        if local is not None:
            self.set_failure(None, local["report"], report)
        else:
            self.set_failure(final.get("failure"), final.get("error"), report)

    # ----------------------------------------------------------------- failure
    def set_failure(self, failure: Optional[str], error: Optional[BaseException], report: Report) -> None:
        """Keep the run's failure (worker ``failure``'s exception, else ``error``) with ``report``."""
        if error is None and failure is not None:
            entry = next(e for e in reversed(self.entries) if e["name"] == failure)
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
            self.failure = error
            report["error"] = error

    def end_with(self, error: BaseException, report: Report) -> None:
        """End the run here, failed with ``error`` (the boss is gone): ``report`` is final, and ``.report``."""
        error.report = report
        self.final = report
        self.failure = error

    def raise_failure(self) -> None:
        """Raise a copy of the run's failure, if it failed.

        A copy, never the kept exception itself: a raised exception's traceback
        holds the Boss's frames, so keeping a raised one would keep the Boss
        (and its boss process) alive through that cycle after the caller drops it.
        """
        if self.failure is not None:
            raise _fresh(self.failure)


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
