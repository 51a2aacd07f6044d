"""Schedulers that only count workers: start everything, or at most N at once.

Like every scheduler module, imports nothing of taylor outside :mod:`taylor.schedulers` and
:mod:`taylor.errors`: never the boss loop, the Boss or a worker process's side.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, List, Mapping, Optional, Sequence

from ..errors import InstructionsError
from .base import BaseScheduler, Decision, Pending, Running, owns_queue, range_tickets
from .binding import BindToTicket, socket_packed_cpus
from .host import usable_cpus
from .queues import PackedFifo

__all__ = ["LaxistScheduler", "MaxThreadsScheduler", "BINDED_ATTR", "BindingMixin", "take_front"]

#: Footprint attribute shared by the schedulers that can bind workers to CPUs.
BINDED_ATTR = dict(
    info="Pin each worker to one CPU (its ticket), distinct among running workers.",
    type=bool,
    optional=True,
    default=False,
)
MAX_THREADS_ATTR = dict(
    info="Most workers running at once; 0 means the CPUs this job may use.",
    alias=("maxpc", "maxthreads"),
    type=int,
    optional=True,
    default=0,
)


def thread_cap(max_threads: int) -> int:
    """The cap ``max_threads`` stands for: itself, or the CPUs this job may use for 0."""
    if max_threads < 0:
        raise InstructionsError(f"max_threads must be 0 (all usable CPUs) or more, got {max_threads}")
    return max_threads or usable_cpus()


class BindingMixin:
    """Adds the binding hook to ``_workers_hooks`` when the scheduler's ``binded`` is true."""

    _binding_hook: Optional[BindToTicket] = None

    def binding_cpus(self) -> List[int]:
        """The CPUs tickets map to: this process's CPUs, socket-packed (see :mod:`.binding`)."""
        if self._binding_hook is None:
            self._binding_hook = BindToTicket(socket_packed_cpus())
        return self._binding_hook.cpus

    def _workers_hooks(self) -> List[Callable[[Any], None]]:
        hooks = list(super()._workers_hooks())  # type: ignore[misc]
        if getattr(self, "binded", False):
            self.binding_cpus()
            hooks.append(self._binding_hook)
        return hooks


def take_front(pending: Pending, count: int) -> List[Any]:
    """Remove and return the first ``count`` pending instructions (O(count) on a deque or a PackedFifo)."""
    if isinstance(pending, (deque, PackedFifo)):
        return [pending.popleft() for _ in range(min(count, len(pending)))]
    launch = list(pending[:count])
    del pending[:count]
    return launch


class LaxistScheduler(BaseScheduler):
    """Starts every pending instruction at once, in order."""

    _footprint = dict(
        info="Start everything at once",
        attr=dict(
            nosort=dict(
                info="Select this scheduler: start everything at once.",
                alias=("laxist", "unsorted"),
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
        return self._assign_tickets(workers, launch), pending


class MaxThreadsScheduler(BindingMixin, BaseScheduler):
    """Starts pending instructions in order, never more than ``max_threads`` at once.

    ``max_threads=0`` means the CPUs this job may use (see
    :func:`taylor.schedulers.host.usable_cpus`).  With ``binded=True`` each
    worker is pinned to the CPU of its ticket.
    """

    _footprint = dict(
        info="At most max_threads workers at once",
        attr=dict(
            limit=dict(
                info="Select this scheduler by what it limits.",
                values=["threads", "processes"],
                remap=dict(processes="threads"),
            ),
            max_threads=MAX_THREADS_ATTR,
            binded=BINDED_ATTR,
        ),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not args:  # a plain-class call: MaxThreadsScheduler(max_threads=4)
            kwargs.setdefault("limit", "threads")
        super().__init__(*args, **kwargs)
        self._limit = thread_cap(self.max_threads)

    @property
    def threads(self) -> int:
        """The cap actually in force (``max_threads``, or the usable CPUs for 0)."""
        return self._limit

    _all_tickets = range_tickets

    def _ticket_count(self) -> int:
        return self._limit

    def _new_queue(self) -> PackedFifo:
        return PackedFifo()

    @owns_queue
    def launchable(self, pending: Pending, workers: Running, report: Sequence[Mapping]) -> Decision:
        room = self._limit - len(workers)
        if room <= 0:
            return [], pending
        return self._assign_tickets(workers, take_front(pending, room)), pending
