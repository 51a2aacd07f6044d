"""How an ended worker becomes its one entry: pure functions, no process, no descriptor, no loop.

From what a worker sent (its outcome), how its process ended (exit code) and
what the boss did to it (timed out, stopped, lost), :func:`make_entry` builds
its entry: done with its report, failed with its exception or with a
:class:`~taylor.errors.TaylorError` that says what happened, or stopped.
Also here: what the caller is sent of it, and the failure's text in the log.
This module must not depend on the boss's loop, its launcher or its channels.
"""

from __future__ import annotations

import pickle
import reprlib
import time
from typing import Any, Dict, Optional, Tuple

from . import wire
from .errors import (
    MemoryLimitError,
    ReportError,
    TaylorError,
    WorkerDiedError,
    WorkerTimeoutError,
    describe_exit,
    worker_failure_message,
)
from .report import DONE, FAILED, STOPPED
from .schedulers.memory_limit import LimitMemory
from .worker import OK, PACKED, RAISED, UNSENDABLE

__all__ = ["alone_not_now", "boss_view", "failure_text", "for_caller", "make_entry", "memory_over", "pack_own",
           "NotLoaded"]


def make_entry(worker: Any, exitcode: Optional[int], default_timeout: Optional[float]) -> Tuple[Dict[str, Any],
                                                                                                Optional[bytes]]:
    """The entry of ``worker`` (a :class:`~taylor.running.RunningWorker`, or alike), whose process ended
    with ``exitcode``; and its report pickled for the caller when it is the worker's own (else None).

    ``default_timeout`` is the boss's, which a timed-out worker without one of its own ran under.
    """
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
    if getattr(worker, "where", None) is not None:  # it ran elsewhere: {"worker": address, "host": name}
        entry["where"] = worker.where
    outcome = worker.outcome
    kind = outcome[0] if isinstance(outcome, tuple) and outcome else None
    failed = None
    packed = None
    if kind == OK:
        entry["report"] = outcome[1]
    elif kind == PACKED:
        packed = outcome[1]
        entry["report"] = boss_view(packed)
    elif kind == RAISED:
        entry.update(status=FAILED, report=outcome[1], traceback=outcome[2])
    elif kind == UNSENDABLE:
        failed = ReportError, str(outcome[1])
    elif isinstance(outcome, wire.Undecodable):
        failed = ReportError, (f"sent a report the boss could not unpickle "
                               f"({type(outcome.error).__name__}: {outcome.error})")
    elif worker.timed_out:
        timeout = getattr(worker.instructions, "timeout", None)
        timeout = default_timeout if timeout is None else timeout
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
        over = memory_over(hooks, worker, outcome[1] if kind == RAISED else None)
        if over is not None and kind not in (OK, PACKED) and not worker.stop_requested:
            failed = MemoryLimitError, over
    if failed is None and kind in (OK, RAISED):
        try:
            packed = wire.pack_report(entry["report"])
        except Exception as exc:  # noqa: BLE001 - its __reduce__ (or a part's) fails here
            failed = ReportError, (f"sent a report the boss could read but not pickle again for the caller "
                                   f"({type(exc).__name__}: {exc})")
    if failed is not None:
        cls, what = failed
        where = entry.get("where")
        if where and where.get("worker") and where["worker"] not in what:  # a cluster's task: say where it was
            what = f"{what}, on Dask worker {where['worker']} (host {where.get('host')})"
        plain = {k: v for k, v in worker.instructions.items() if k != "scheduler_hooks"}
        entry.update(status=FAILED, report=cls(
            worker_failure_message(what, worker.name, plain, worker.pid),
            worker=worker.name, pid=worker.pid, instructions=plain, exitcode=exitcode))
        packed = None
    return entry, packed


#: Largest report (pickled) the boss loads for itself: for the schedulers' window of recent
#: entries and its log.  A larger one passes through untouched (see :class:`NotLoaded`).
LOADED_REPORT = 1 << 16


class NotLoaded:
    """Stands, in the boss, for a report too large to load there (over :data:`LOADED_REPORT`
    bytes pickled): the boss forwards it to the caller as the worker pickled it."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def __repr__(self) -> str:
        return f"<report of {self.size} bytes, not loaded in the boss>"


def boss_view(packed: Any) -> Any:
    """What the boss keeps of a report the worker pickled: the report when it is small and loads
    here, a :class:`NotLoaded` otherwise (the caller, who gets the pickle, says why it does not load)."""
    size = len(packed)
    if size > LOADED_REPORT:
        return NotLoaded(size)
    try:
        return pickle.loads(packed)
    except Exception:  # noqa: BLE001 - a class only the caller has, say: its business, not the boss's
        return NotLoaded(size)


def for_caller(entry: Dict[str, Any], packed: Optional[Any]) -> Dict[str, Any]:
    """What the caller is sent of ``entry``: without its instructions (the caller has them), with its
    report pickled apart, so that a report the caller cannot unpickle is that worker's failure there,
    not a message lost with the others that came with it.  A report pickled by its worker goes as
    that pickle, out of band (see :mod:`taylor.wire`): never loaded or copied in the boss."""
    sent = dict(entry)
    del sent["instructions"]
    sent["report"] = pickle.PickleBuffer(packed) if packed is not None else pack_own(entry["report"])
    ticket = entry["instructions"].get("scheduler_ticket")
    if ticket is not None:
        sent["scheduler_ticket"] = ticket
    return sent


def memory_over(hooks: Any, worker: Any, raised: Optional[BaseException]) -> Optional[str]:
    """How ``worker`` exceeded its memory limit, if one of its ``hooks`` limited it and that ended it."""
    for hook in hooks:
        if isinstance(hook, LimitMemory):
            return hook.ended(worker, worker.pid, raised)
    return None


def alone_not_now(why: str) -> str:
    """Why a worker that could not start (``why``) while no other ran fails rather than waits."""
    return (f"could not be started ({why}) although no other worker of this run was running; raise the "
            "limits of the job (ulimit -n for descriptors, ulimit -u for processes)")


_brief = reprlib.Repr()
_brief.maxstring = _brief.maxother = 300
_brief.maxlist = _brief.maxtuple = _brief.maxset = _brief.maxdict = 30


def failure_text(entry: Dict[str, Any]) -> str:
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


def pack_own(report: Any) -> bytes:
    """What the boss made a worker's report (None, or a failure), pickled for the caller; plainly
    should the failure's instructions not pickle."""
    try:
        return wire.pack_report(report)
    except Exception as exc:  # noqa: BLE001 - an instruction value that pickles only in the caller
        return wire.pack_report(TaylorError(f"{report} (its details could not be pickled: {type(exc).__name__})"))
