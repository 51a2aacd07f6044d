"""The run journal: one JSON line per finished instruction set, written as it finishes.

Besides those end records (``status`` done, failed or stopped; ``attempt``
says which try it was, ``retried`` that another try follows), the journal
holds a ``{"event": "run"}`` line when a run starts (its total and process)
and ``{"event": "start"}`` lines as tasks are seen running, so that
``taylor status`` can show a batch from another shell.

A batch job may be killed at any moment; each line is written and flushed
when its worker ends, so the journal holds everything that finished.  With
``--resume`` the instruction sets whose line says ``done`` are skipped: an
instruction set is recognised by its instructions as the user gave them
(:func:`row_key`), not by its position, so a resumed run may read a
reordered or extended input.

Depends only on :mod:`taylor.report`: never on the Boss, the boss loop or the command line (``taylor
status`` reads a journal with none of them).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Mapping, Optional, Set, TextIO, Tuple

from .report import to_jsonable

__all__ = ["row_key", "Journal", "JournalError", "read_done", "read_attempts", "read_records", "error_details"]


def row_key(row: Mapping[str, Any]) -> str:
    """A stable identity of an instruction set: its canonical JSON."""
    return json.dumps(to_jsonable(dict(row)), sort_keys=True, separators=(",", ":"))


class JournalError(ValueError):
    """A journal that cannot be read as one (not UTF-8 text): resuming from it would guess."""


def read_done(path: str) -> Tuple[Set[str], int]:
    """Keys of the instruction sets the journal at ``path`` records as done, and how many lines were unreadable.

    A missing journal records nothing.  A line cut short by a kill (the last
    one) is unreadable and ignored: its instruction set runs again.  A whole
    line that is not UTF-8 was not written by taylor: :class:`JournalError`
    names the file and the line.
    """
    done: Set[str] = set()
    bad = 0
    try:
        stream = open(path, "rb")
    except FileNotFoundError:
        return done, 0
    with stream:
        for number, raw in enumerate(stream, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if not raw.endswith(b"\n") and exc.reason == "unexpected end of data":
                    bad += 1  # the last line, cut by a kill inside a character
                    continue
                raise JournalError(
                    f"the journal {path} is not a taylor journal, or was damaged: line {number} is not UTF-8 text "
                    f"(byte {exc.start + 1}: {raw[exc.start:exc.start + 1]!r}); give --journal the journal of "
                    "the run to resume, or remove that line") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if record.get("status") == "done":
                    done.add(row_key(record["instructions"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                bad += 1
    return done, bad


def read_records(path: str) -> Tuple[list, int]:
    """Every readable record of the journal at ``path`` (in order) and how many lines were unreadable
    (a last line still being written is not counted)."""
    records = []
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as stream:
        for line in stream:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                if line.endswith("\n"):  # not the line being written now
                    bad += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                bad += 1
    return records, bad


def read_attempts(path: str) -> Dict[str, int]:
    """How many times the journal at ``path`` records each instruction set as tried (by :func:`row_key`)."""
    attempts: Dict[str, int] = {}
    try:
        records, _ = read_records(path)
    except FileNotFoundError:
        return attempts
    for record in records:
        if record.get("status") and isinstance(record.get("instructions"), dict):
            key = row_key(record["instructions"])
            attempts[key] = max(attempts.get(key, 0) + 1, int(record.get("attempt") or 0))
    return attempts


def error_details(error: BaseException) -> Dict[str, Any]:
    """What an exception carries besides its message (a failed command's exit code, output tails...)."""
    skip = ("report", "instructions", "traceback", "worker", "pid")
    return {k: v for k, v in getattr(error, "__dict__", {}).items() if k not in skip and not k.startswith("_")}


class Journal:
    """Appends one line per finished entry to a file, flushed at once."""

    def __init__(self, path: str, append: bool) -> None:
        self.path = path
        self._stream: Optional[TextIO] = open(path, "a" if append else "w", encoding="utf-8")
        if append and self._stream.tell() > 0:
            with open(path, "rb") as check:  # a kill may have cut the last line short
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    self._stream.write("\n")

    def _line(self, record: Mapping[str, Any]) -> None:
        assert self._stream is not None
        self._stream.write(json.dumps(to_jsonable(record), separators=(",", ":")) + "\n")
        self._stream.flush()

    def begin(self, total: int, command: Optional[str] = None) -> None:
        """Record that a run of ``total`` tasks starts (its process and time, for ``taylor status``)."""
        self._line({"event": "run", "total": total, "pid": os.getpid(), "time": time.time(), "command": command})

    def started(self, name: str, attempt: int = 1) -> None:
        """Record that task ``name`` was seen running."""
        self._line({"event": "start", "name": name, "attempt": attempt, "time": time.time()})

    def write(self, entry: Mapping[str, Any], instructions: Mapping[str, Any], attempt: Optional[int] = None,
              retried: bool = False) -> None:
        """Record ``entry`` (a worker's report entry) for the user's ``instructions``; ``attempt`` is which try
        it was, ``retried`` that another try follows."""
        record: Dict[str, Any] = {
            "name": entry.get("name"),
            "status": entry.get("status"),
            "instructions": instructions,
            "start_time": entry.get("start_time"),
            "end_time": entry.get("end_time"),
            "exitcode": entry.get("exitcode"),
            "pid": entry.get("pid"),
        }
        if entry.get("where") is not None:  # a cluster run: the Dask worker and host it ran on
            record["where"] = entry["where"]
        start, end = entry.get("start_time"), entry.get("end_time")
        if start is not None and end is not None:
            record["duration"] = round(end - start, 6)
        report = entry.get("report")
        if isinstance(report, BaseException):
            record["error"] = f"{type(report).__name__}: {report}"
            extra = error_details(report)
            if extra:
                record["report"] = extra
        else:
            record["report"] = report
        if attempt is not None:
            record["attempt"] = attempt
        if retried:
            record["retried"] = True
        self._line(record)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
