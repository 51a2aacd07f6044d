"""What a report is: a dict the caller can read, print and save as JSON.

A run's report is a :class:`Report` (a ``dict``) with:

``workers_report``
    one entry per worker that ended, in the order they ended (see below);
``status``
    ``'interim'`` while the run goes on; at the end ``'finished'`` (nothing
    left), ``'pending'`` (stopped with instructions never started),
    ``'failed'`` (aborted on a worker's error) or ``'stopped'`` (workers were
    terminated on request or by a signal);
``pending``
    at the end, the instructions that never started (absent when none);
``running``
    in an interim report, the names of the workers running now;
``counts``
    how many workers are ``done``, ``failed``, ``stopped``, ``running`` and
    how many instructions are ``pending``.

Each worker entry is a dict with ``name``, ``status`` (``'done'``,
``'failed'`` or ``'stopped'``), ``report`` (what ``_task()`` returned, or the
exception on failure), ``traceback`` (on failure), ``instructions``, ``pid``,
``start_time``/``end_time`` (seconds since the epoch), ``exitcode``
(negative: killed by that signal) and ``index``, the position of its
instruction set among all those given to the run (0 for the first row of the
first ``set_instructions``), which :attr:`Report.in_order` sorts by.
:func:`to_jsonable` turns any of it into plain JSON types.

Depends on nothing of taylor: the boss, the caller and the command line all build reports, so it
must import none of them.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List

__all__ = ["Report", "to_jsonable", "dumps", "DONE", "FAILED", "STOPPED"]

DONE = "done"
FAILED = "failed"
STOPPED = "stopped"


class Report(dict):
    """A run's report: a plain ``dict`` with a few reading helpers."""

    @property
    def workers(self) -> List[Dict[str, Any]]:
        """The worker entries, in the order the workers ended."""
        return self.get("workers_report", [])

    @property
    def in_order(self) -> List[Dict[str, Any]]:
        """The worker entries in the order their instructions were given (by ``index``), not the
        order they ended: ``[e["report"] for e in report.in_order]`` are the results in input order.
        Instructions that never ran have no entry (see ``pending``)."""
        return sorted(self.workers, key=lambda w: (w.get("index") is None, w.get("index") or 0))

    @property
    def done(self) -> List[Dict[str, Any]]:
        """Entries of the workers that finished their task."""
        return [w for w in self.workers if w.get("status") == DONE]

    @property
    def failures(self) -> List[Dict[str, Any]]:
        """Entries of the workers that failed (error, crash, timeout)."""
        return [w for w in self.workers if w.get("status") == FAILED]

    @property
    def ok(self) -> bool:
        """True when the run finished and no worker failed or was stopped."""
        return self.get("status") == "finished" and all(
            w.get("status") == DONE for w in self.workers)

    def to_jsonable(self) -> Dict[str, Any]:
        """This report in plain JSON types (exceptions become dicts)."""
        return to_jsonable(dict(self))

    def to_json(self, **kwargs: Any) -> str:
        """This report as a JSON document; ``kwargs`` go to :func:`json.dumps`."""
        return dumps(self, **kwargs)

    def summary(self) -> str:
        """One line: what ended how."""
        counts = self.get("counts", {})
        parts = [f"{counts.get(k, 0)} {k}" for k in ("done", "failed", "stopped", "pending")
                 if counts.get(k)]
        return f"{self.get('status', '?')}: " + (", ".join(parts) or "nothing to do")


def to_jsonable(obj: Any) -> Any:
    """Convert a report (or any part of it) to JSON types.

    Exceptions become ``{"type": ..., "message": ...}``; tuples and sets become
    lists; numbers that JSON cannot hold (NaN, infinities) become strings;
    numpy scalars and arrays become numbers and lists; anything else unknown
    becomes its ``repr``.  Nothing is dropped silently.
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, BaseException):
        return {"type": type(obj).__qualname__, "module": type(obj).__module__,
                "message": str(obj)}
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        try:
            return to_jsonable(tolist())
        except Exception:  # noqa: BLE001 - fall back to repr below
            pass
    return repr(obj)


def dumps(report: Any, **kwargs: Any) -> str:
    """Serialise a report to JSON via :func:`to_jsonable`."""
    return json.dumps(to_jsonable(report), **kwargs)
