"""The scheduler contract: a pure decision over (pending, running, done).

The boss calls :meth:`BaseScheduler.launchable` only when something changed
(new instructions, a worker ended, a resume).  A scheduler returns the
instructions to start now and those to keep for later; it may reorder them,
and it may return the very ``pending`` list it was given, trimmed in place,
which is how the built-in schedulers stay O(started) per call however long the
queue is.  Schedulers written for the original system (subclasses with a
``launchable`` method) keep working.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, MutableSequence, Sequence, Set, Tuple

from footprints import FootprintBase

__all__ = ["BaseScheduler", "Pending", "Running", "Decision"]

#: What a scheduler reads: instruction dicts waiting to start (in order)...
Pending = MutableSequence[Dict[str, Any]]
#: ...the running workers by name (objects with ``name``, ``memory``,
#: ``expected_time``, ``scheduler_ticket`` and the instructions as attributes)...
Running = Mapping[str, Any]
#: ...and what it answers: (start now, keep for later).
Decision = Tuple[List[Dict[str, Any]], Sequence[Dict[str, Any]]]


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
        recently finished workers.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement launchable()")

    def validate(self, instructions: Sequence[Mapping[str, Any]]) -> None:
        """Refuse, in the caller and before anything runs, instructions this
        scheduler could never start (raise :class:`~taylor.errors.CapacityError`).

        Called by :meth:`taylor.Boss.set_instructions`; the default accepts all.
        """

    def _all_tickets(self) -> Set[Any]:
        """Every ticket this scheduler hands out (``{None}``: no tickets)."""
        return {None}

    def _workers_hooks(self) -> List[Callable[[Any], None]]:
        """Callables run as ``hook(worker)`` in each worker before its task."""
        return []

    def _assign_tickets(self, workers: Running, launchable: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Give each instruction to launch a ticket no running worker holds."""
        taken = {w.scheduler_ticket for w in workers.values()}
        free = sorted(t for t in self._all_tickets() - taken if t is not None)
        hooks = self._workers_hooks()
        for position, instructions in enumerate(launchable):
            instructions["scheduler_ticket"] = free[position] if position < len(free) else None
            instructions["scheduler_hooks"] = hooks
        return launchable
