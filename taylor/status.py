"""``taylor status JOURNAL``: the state of a batch from its journal, from another shell, while it runs or after.

The journal (see :mod:`taylor.journal`) holds a line when a run starts
(its total and process), when a task is seen running and when it ends; this
module only reads it, so that it works on a journal being written.

Depends only on :mod:`taylor.journal`: no Boss, no process.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

__all__ = ["BatchStatus", "read_status"]


class BatchStatus:
    """What a journal says of a batch: counts, running tasks, rate, ETA, slowest and failed tasks."""

    def __init__(self, records: List[Dict[str, Any]], bad: int, now: Optional[float] = None) -> None:
        self.now = time.time() if now is None else now
        self.bad = bad
        self.total: Optional[int] = None
        self.pid: Optional[int] = None
        self.command: Optional[str] = None
        self.run_start: Optional[float] = None
        self.ends: Dict[str, Dict[str, Any]] = {}  # the last end record of each task
        self.running: Dict[str, float] = {}  # task -> when it was seen starting, in the last run
        self.ended_this_run = 0
        self.last_end: Optional[float] = None
        for record in records:
            event = record.get("event")
            if event == "run":
                self.total, self.pid = record.get("total"), record.get("pid")
                self.command, self.run_start = record.get("command"), record.get("time")
                self.running.clear()
                self.ended_this_run = 0
            elif event == "start":
                self.running[str(record.get("name"))] = float(record.get("time") or self.now)
            elif record.get("status"):
                name = str(record.get("name"))
                self.ends[name] = record
                self.running.pop(name, None)
                self.ended_this_run += 1
                self.last_end = record.get("end_time") or self.last_end

    def count(self, status: str) -> int:
        return sum(1 for r in self.ends.values() if r.get("status") == status and not r.get("retried"))

    @property
    def retrying(self) -> int:
        return sum(1 for r in self.ends.values() if r.get("retried"))

    @property
    def alive(self) -> Optional[bool]:
        """Whether the run goes on: its process runs and not every task has ended (None: unknown, a journal
        of old).  The process is looked for on this host: a journal on a shared disk written elsewhere
        reads as ended once that process's number is free here."""
        if not self.pid:
            return None
        if self.total is not None and self.finished >= self.total and not self.running:
            return False
        try:
            os.kill(int(self.pid), 0)
        except ProcessLookupError:
            return False
        except OSError:  # another user's process: it exists
            return True
        try:
            with open(f"/proc/{int(self.pid)}/stat", "rb") as stat:
                if stat.read().rsplit(b")", 1)[1].split()[0] == b"Z":  # ended, not yet reaped
                    return False
        except (OSError, IndexError):
            pass
        return True

    @property
    def finished(self) -> int:
        return self.count("done") + self.count("failed") + self.count("stopped")

    def rate(self) -> Optional[float]:
        if not self.run_start or not self.ended_this_run:
            return None
        end = self.now if self.alive else (self.last_end or self.now)
        elapsed = end - self.run_start
        return self.ended_this_run / elapsed if elapsed > 0 else None

    def lines(self, failed_lines: int = 3, top: int = 5) -> List[str]:
        """The status as text, for a person."""
        done, failed, stopped = self.count("done"), self.count("failed"), self.count("stopped")
        alive = self.alive
        state = "running" if alive else "ended" if alive is False else "unknown (no run record)"
        total = f"/{self.total}" if self.total is not None else ""
        out = [f"batch {state}: {done + failed + stopped}{total} finished: {done} done, {failed} failed, "
               f"{stopped} stopped, {len(self.running) if alive is not False else 0} running"
               + (f", {self.retrying} waiting for a retry" if self.retrying and alive else "")]
        if self.command:
            out.append(f"command: {self.command}")
        rate = self.rate()
        if rate:
            eta = ""
            if alive and self.total is not None:
                left = max(0, self.total - done - failed - stopped)
                eta = f", ETA {_clock(left / rate)}" if left else ""
            out.append(f"rate: {rate:.2f} tasks/s{eta}")
        if self.bad:
            out.append(f"({self.bad} unreadable journal line(s) ignored)")
        if self.running:
            if alive is False:
                out.append(f"left unfinished when the run ended ({len(self.running)}): "
                           + ", ".join(sorted(self.running)[:top]) + (" ..." if len(self.running) > top else ""))
            else:
                out.append(f"running ({len(self.running)}):")
                for name, since in sorted(self.running.items(), key=lambda item: item[1])[:top]:
                    out.append(f"  {name}  for {_clock(self.now - since)}")
                if len(self.running) > top:
                    out.append(f"  ... and {len(self.running) - top} more")
        finished = [r for r in self.ends.values() if r.get("status") == "done" and r.get("duration") is not None]
        if finished:
            out.append("slowest:")
            for record in sorted(finished, key=lambda r: r["duration"], reverse=True)[:top]:
                out.append(f"  {record['name']}  {record['duration']:.2f} s")
        failures = [r for r in self.ends.values() if r.get("status") == "failed" and not r.get("retried")]
        if failures:
            out.append(f"failed ({len(failures)}):")
            for record in failures[:top]:
                attempts = f" after {record['attempt']} attempts" if (record.get("attempt") or 1) > 1 else ""
                out.append(f"  {record['name']}: {record.get('error') or 'failed'}{attempts}"[:300])
                report = record.get("report") or {}
                said = ((report.get("stderr_tail") or "") + "\n" + (report.get("stdout_tail") or "")) \
                    if isinstance(report, dict) else ""
                for line in [s for s in said.splitlines() if s.strip()][-failed_lines:]:
                    out.append(f"    | {line[:200]}")
            if len(failures) > top:
                out.append(f"  ... and {len(failures) - top} more")
        return out


def read_status(path: str) -> BatchStatus:
    """The status of the batch whose journal is ``path`` (raises OSError if it cannot be read)."""
    from .journal import read_records

    records, bad = read_records(path)
    return BatchStatus(records, bad)


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:{'02' if hours else ''}d}:{rest % 60:02d}"
