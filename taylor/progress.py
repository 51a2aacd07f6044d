"""The progress line of ``taylor run``: done/failed/running counts, elapsed time and ETA on stderr."""

from __future__ import annotations

import sys
import time
from typing import Optional

__all__ = ["Progress"]


class Progress:
    """A one-line progress display on stderr: done/failed/running counts and an ETA."""

    interval = 0.5  # seconds between refreshes when nothing finishes

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
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

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._drawn < 0.1):
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
        line = (f"[{bar}] {self.finished}/{self.total}  done {self.done}  failed {self.failed}  "
                f"running {running}  elapsed {_clock(elapsed)}  ETA {eta}")
        sys.stderr.write("\r" + line + "\x1b[K")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self.draw(force=True)
            sys.stderr.write("\n")
            sys.stderr.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:{'02' if hours else ''}d}:{rest % 60:02d}"
