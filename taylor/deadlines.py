"""The boss's deadlines: a heap of (when, action, subject), whose nearest is the loop's only timeout.

Timeouts, stop graces, exit graces and the launcher's own checks all go
here.  A subject whose ``finished`` is true has lapsed: its deadlines are
dropped when the heap grows, and their actions ignore it when met.  This
module must not depend on anything of the boss but that ``finished`` flag.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Any, Callable, List, Optional, Tuple

__all__ = ["Deadlines"]


class Deadlines:
    """Actions due at a time (``time.monotonic``), met in order by :meth:`expire`."""

    def __init__(self) -> None:
        self._heap: List[Tuple[float, int, Callable[[Any], None], Any]] = []
        self._seq = itertools.count()

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, delay: float, action: Callable[[Any], None], subject: Any, running: int = 0) -> None:
        """Call ``action(subject)`` in ``delay`` seconds; ``running``: how many subjects may still be live
        (past 64 + 4 per live one, those of finished subjects are forgotten)."""
        heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), action, subject))
        if len(self._heap) > 64 + 4 * running:
            self._heap = [d for d in self._heap if not d[3].finished]
            heapq.heapify(self._heap)

    def next_at(self) -> Optional[float]:
        """When the nearest deadline falls (None: there is none)."""
        return self._heap[0][0] if self._heap else None

    def expire(self) -> None:
        """Run the actions of every deadline met by now, in their order."""
        heap = self._heap
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, _, action, subject = heapq.heappop(heap)
            action(subject)
            heap = self._heap  # an action may have compacted the heap
