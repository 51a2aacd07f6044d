"""The run journal: one JSON line per finished instruction set, written as it finishes.

A batch job may be killed at any moment; each line is written and flushed
when its worker ends, so the journal holds everything that finished.  With
``--resume`` the instruction sets whose line says ``done`` are skipped: an
instruction set is recognised by its instructions as the user gave them
(:func:`row_key`), not by its position, so a resumed run may read a
reordered or extended input.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Optional, Set, TextIO, Tuple

from .report import to_jsonable

__all__ = ["row_key", "Journal", "JournalError", "read_done", "error_details"]


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

    def write(self, entry: Mapping[str, Any], instructions: Mapping[str, Any]) -> None:
        """Record ``entry`` (a worker's report entry) for the user's ``instructions``."""
        record: Dict[str, Any] = {
            "name": entry.get("name"),
            "status": entry.get("status"),
            "instructions": instructions,
            "start_time": entry.get("start_time"),
            "end_time": entry.get("end_time"),
            "exitcode": entry.get("exitcode"),
            "pid": entry.get("pid"),
        }
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
        assert self._stream is not None
        self._stream.write(json.dumps(to_jsonable(record), separators=(",", ":")) + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
