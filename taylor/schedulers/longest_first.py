"""Longest first, within a thread cap and a memory cap.

Starting the longest tasks first keeps a long one from starting last and
stretching the makespan alone.  Pending instructions are kept in a tree
ordered by decreasing ``expected_time`` (ties: arrival order), so the longest
one that fits the free memory is found in O(log pending).

Like every scheduler module, imports nothing of taylor outside :mod:`taylor.schedulers` and
:mod:`taylor.errors`: never the boss loop, the Boss or a worker process's side.
"""

from __future__ import annotations

from typing import Any

from .base import Running, expected_time_of, range_tickets
from .memory import MaxMemoryScheduler
from .threads import MAX_THREADS_ATTR, thread_cap

__all__ = ["LongestFirstScheduler"]


class LongestFirstScheduler(MaxMemoryScheduler):
    """Starts the pending instructions with the largest ``expected_time`` first,
    never more than ``max_threads`` workers nor ``max_memory`` MiB declared at once.

    Takes every parameter of :class:`~taylor.schedulers.memory.MaxMemoryScheduler`
    plus ``max_threads`` (0: the CPUs this job may use).
    """

    _footprint = dict(
        info="Longest expected time first, within max_threads and max_memory",
        attr=dict(
            limit=dict(
                info="Select this scheduler by what it limits.",
                values=["threads+memory"],
                remap=dict(),
            ),
            max_threads=MAX_THREADS_ATTR,
        ),
    )

    _default_limit = "threads+memory"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limit = thread_cap(self.max_threads)

    @property
    def threads(self) -> int:
        """The thread cap in force (``max_threads``, or the usable CPUs for 0)."""
        return self._limit

    def _order(self, item: Any, seq: int) -> tuple:
        return (-expected_time_of(item), seq)

    _all_tickets = range_tickets

    def _ticket_count(self) -> int:
        return self._limit

    def _thread_room(self, workers: Running) -> float:
        return self._limit - len(workers)
