"""The scheduler contract: a pure decision over (pending, running, done).

The boss calls :meth:`BaseScheduler.launchable` only when something changed
(new instructions, a worker ended, a resume).  A scheduler returns the
instructions to start now and those to keep for later; it may reorder them,
and it may return the very ``pending`` list it was given, trimmed in place,
which is how the built-in schedulers stay O(started) per call however long the
queue is.  Schedulers written for the original system (subclasses with a
``launchable`` method) keep working.

A scheduler may also own the boss's queue: if :meth:`BaseScheduler.pending_queue`
returns an object (not None), the boss keeps its pending instructions in it
instead of a list, and passes it to ``launchable``.  The built-in schedulers
use this to keep an index (a FIFO, a tree ordered by expected time with the
least memory of each subtree...) so that choosing what starts costs
O(log pending) per started worker, never a scan of the queue.  A subclass
that overrides ``launchable`` gets a plain list again, as before.

Like every scheduler module, imports nothing of taylor outside :mod:`taylor.schedulers` and
:mod:`taylor.errors`: never the boss loop, the Boss or a worker process's side.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, List, Mapping, MutableSequence, Optional, Sequence, Set, Tuple, TypeVar

from footprints import FootprintBase

__all__ = ["BaseScheduler", "Pending", "Running", "Decision", "owns_queue", "range_tickets", "give_back", "memory_of",
           "expected_time_of"]

#: What a scheduler reads: instruction dicts waiting to start (in order)...
Pending = MutableSequence[Dict[str, Any]]
#: ...the running workers by name (objects with ``name``, ``memory``,
#: ``expected_time``, ``scheduler_ticket`` and the instructions as attributes)...
Running = Mapping[str, Any]
#: ...and what it answers: (start now, keep for later).
Decision = Tuple[List[Dict[str, Any]], Sequence[Dict[str, Any]]]


_F = TypeVar("_F", bound=Callable[..., Any])


def owns_queue(launchable: _F) -> _F:
    """Mark a ``launchable`` that works on the queue its class's ``_new_queue()`` makes."""
    launchable._owns_queue = True  # type: ignore[attr-defined]
    return launchable


def memory_of(instructions: Mapping[str, Any]) -> float:
    """Declared memory (MiB) of pending instructions or a running worker; 0.0 when none."""
    value = getattr(instructions, "memory", None)
    if value is None and isinstance(instructions, Mapping):
        value = instructions.get("memory")
    return float(value or 0.0)


def expected_time_of(instructions: Mapping[str, Any]) -> float:
    """Expected duration (s) of pending instructions; 0.0 when none."""
    value = getattr(instructions, "expected_time", None)
    if value is None and isinstance(instructions, Mapping):
        value = instructions.get("expected_time")
    return float(value or 0.0)


def give_back(queue: Any, pending: Any) -> Any:
    """``pending`` itself, holding what ``queue`` holds (a new list if it cannot be changed)."""
    if queue is pending:
        return pending
    rest = list(queue)
    try:
        pending[:] = rest
    except TypeError:  # a tuple, say
        return rest
    return pending


def range_tickets(self: BaseScheduler) -> Set[Any]:
    """Tickets 0 to ``self._ticket_count() - 1`` (what the built-in schedulers hand out)."""
    return set(range(self._ticket_count()))


class BaseScheduler(FootprintBase):
    """Base class of schedulers (footprints collector ``scheduler``)."""

    _abstract = True
    _collector = ("scheduler",)
    _footprint = dict(
        info="Abstract scheduler",
        attr=dict(
            identity=dict(
                info="Scheduler identity, for logs.",
                optional=True,
                default="anonymous",
            ),
        ),
    )

    def launchable(self, pending: Pending, workers: Running, report: Sequence[Mapping]) -> Decision:
        """Split ``pending`` into (instructions to start now, instructions for later).

        ``workers`` are the running workers by name, ``report`` the entries of
        recently finished workers (the last 1,000, without their instructions; a
        report over 64 KiB pickled is not loaded in the boss, which passes it on to
        the caller untouched: it reads as :class:`taylor.entries.NotLoaded`).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement launchable()")

    def pending_queue(self) -> Optional[Any]:
        """The container the boss should keep pending instructions in (None: a list).

        Only when this class's ``launchable`` was written for it (marked with
        :func:`owns_queue`): a subclass overriding ``launchable`` in the
        taylorism way receives a plain list.
        """
        if getattr(type(self).launchable, "_owns_queue", False):
            return self._new_queue()
        return None

    def _new_queue(self) -> Any:
        return None

    def validate(self, instructions: Sequence[Mapping[str, Any]]) -> None:
        """Refuse, in the caller and before anything runs, instructions this
        scheduler could never start (raise :class:`~taylor.errors.CapacityError`).

        Called by :meth:`taylor.Boss.set_instructions`; the default accepts all.
        """

    def _all_tickets(self) -> Set[Any]:
        """Every ticket this scheduler hands out (``{None}``: no tickets)."""
        return {None}

    def _ticket_count(self) -> int:
        """How many tickets, for schedulers whose ``_all_tickets`` is ``range_tickets``."""
        return 0

    def _workers_hooks(self) -> List[Callable[[Any], None]]:
        """Callables run as ``hook(worker)`` in each worker before its task (before those the
        instructions give as ``scheduler_hooks``, which run too)."""
        return []

    def _assign_tickets(self, workers: Running, launchable: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Give each instruction to launch a ticket no running worker holds."""
        taken = {w.scheduler_ticket for w in workers.values()}
        count = self._ticket_count() if type(self)._all_tickets is range_tickets else None
        if count is not None:  # tickets 0..count-1: the smallest free ones, without building the set
            free = list(itertools.islice((t for t in range(count) if t not in taken), len(launchable)))
        else:
            free = sorted(t for t in self._all_tickets() - taken if t is not None)
        hooks = self._workers_hooks()
        for position, instructions in enumerate(launchable):
            instructions["scheduler_ticket"] = free[position] if position < len(free) else None
            given = instructions.get("scheduler_hooks")
            # Hooks the caller gave run too, after the scheduler's own (a bound worker runs them bound).
            instructions["scheduler_hooks"] = [*hooks, *(h for h in given if h not in hooks)] if given else hooks
        return launchable
