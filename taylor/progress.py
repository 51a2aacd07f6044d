"""The progress line of ``taylor run`` and ``batch_main``: done/failed/running counts, elapsed time and ETA
on stderr.

On a terminal it is one line redrawn in place, taken away before any task
output is printed (:meth:`Progress.clear`) so that the two never mix; on a
file or pipe it is a plain status line now and then (every
``plain_interval`` seconds, and at the end), without carriage returns.

Depends on nothing of taylor: the command line and :func:`taylor.batch_main` feed it counts.
"""

from __future__ import annotations

import sys
import time
from typing import Optional

__all__ = ["Progress"]


class Progress:
    """A one-line progress display on stderr: done/failed/running counts and an ETA."""

    interval = 0.5  # seconds between refreshes when nothing finishes
    plain_interval = 10.0  # seconds between status lines when stderr is no terminal

    def __init__(self, total: int, enabled: bool, terminal: Optional[bool] = None) -> None:
        self.total = total
        self.enabled = enabled
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self._shown = False  # the terminal line is on screen
        self.start = time.monotonic()
        self.done = self.failed = self.stopped = 0
        self.running: Optional[int] = None
        self.asked = 0.0  # when the boss was last asked how many tasks run
        self._drawn = 0.0

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.stopped

    def count(self, status: str) -> None:
        if status == "done":
            self.done += 1
        elif status == "failed":
            self.failed += 1
        else:
            self.stopped += 1
        if self.running:
            self.running -= 1

    def clear(self) -> None:
        """Take the terminal line away (before task output is printed; the next draw puts it back)."""
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._shown = False

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        pause = 0.1 if self.terminal else self.plain_interval
        if not self.enabled or (not force and now - self._drawn < pause):
            return
        self._drawn = now
        elapsed = now - self.start
        width = 24
        filled = int(width * self.finished / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        eta = "--:--"
        if self.finished and self.finished < self.total:
            eta = _clock(elapsed / self.finished * (self.total - self.finished))
        elif self.finished >= self.total:
            eta = "0:00"
        running = "?" if self.running is None else self.running
        line = (f"{self.finished}/{self.total}  done {self.done}  failed {self.failed}  "
                f"running {running}  elapsed {_clock(elapsed)}  ETA {eta}")
        if self.terminal:
            sys.stderr.write(f"\r[{bar}] {line}\x1b[K")
            self._shown = True
        else:
            sys.stderr.write(f"taylor: progress {line}\n")
        sys.stderr.flush()

    def close(self, keep: bool = True) -> None:
        """The last state: on a terminal, left on its line (``keep``) or taken away (a report follows that
        says it all); elsewhere, a last status line."""
        if self.enabled:
            if self.terminal and not keep:
                self.clear()
                return
            self.draw(force=True)
            if self.terminal:
                sys.stderr.write("\n")
                self._shown = False
            sys.stderr.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:{'02' if hours else ''}d}:{rest % 60:02d}"
