"""Schedulers that only count workers: start everything, or at most N at once."""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Set

from ..errors import InstructionsError
from .base import BaseScheduler, Decision, Pending, Running
from .host import usable_cpus

__all__ = ["LaxistScheduler", "MaxThreadsScheduler"]


class LaxistScheduler(BaseScheduler):
    """Starts every pending instruction at once, in order."""

    _footprint = dict(
        info="Start everything at once",
        attr=dict(
            nosort=dict(
                info="Select this scheduler: start everything at once.",
                values=[True],
                type=bool,
            ),
        ),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not args:  # a plain-class call: LaxistScheduler()
            kwargs.setdefault("nosort", True)
        super().__init__(*args, **kwargs)

    def launchable(self, pending: Pending, workers: Running, report: Sequence[Mapping]) -> Decision:
        launch = list(pending)
        del pending[:]
        return launch, pending


class MaxThreadsScheduler(BaseScheduler):
    """Starts pending instructions in order, never more than ``max_threads`` at once.

    ``max_threads=0`` means the CPUs this job may use (see
    :func:`taylor.schedulers.host.usable_cpus`).
    """

    _footprint = dict(
        info="At most max_threads workers at once",
        attr=dict(
            limit=dict(
                info="Select this scheduler by what it limits.",
                values=["threads", "processes"],
                remap=dict(processes="threads"),
            ),
            max_threads=dict(
                info="Most workers running at once; 0 means the CPUs this job may use.",
                alias=("maxpc", "maxthreads"),
                type=int,
                optional=True,
                default=0,
            ),
        ),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not args:  # a plain-class call: MaxThreadsScheduler(max_threads=4)
            kwargs.setdefault("limit", "threads")
        super().__init__(*args, **kwargs)
        if self.max_threads < 0:
            raise InstructionsError(f"max_threads must be 0 (all usable CPUs) or more, got {self.max_threads}")
        self._limit = self.max_threads or usable_cpus()

    @property
    def threads(self) -> int:
        """The cap actually in force (``max_threads``, or the usable CPUs for 0)."""
        return self._limit

    def _all_tickets(self) -> Set[Any]:
        return set(range(self._limit))

    def launchable(self, pending: Pending, workers: Running, report: Sequence[Mapping]) -> Decision:
        room = self._limit - len(workers)
        if room <= 0:
            return [], pending
        launch = list(pending[:room])
        del pending[:room]
        return self._assign_tickets(workers, launch), pending
