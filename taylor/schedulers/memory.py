"""Memory-limited scheduling: the declared memory of running workers stays under a cap.

Instructions declare ``memory`` (MiB); one that declares none counts as
``memory_per_task``.  Pending instructions are considered in arrival order and
every one that fits starts (a large one waiting for room does not hold back
smaller ones behind it).  With ``measured=True`` the host is asked too: see
:meth:`MaxMemoryScheduler.measured_room`.  With ``enforce=True`` each worker's
processes are kept to that memory: see :mod:`.memory_limit`.

Like every scheduler module, imports nothing of taylor outside :mod:`taylor.schedulers` and
:mod:`taylor.errors`: never the boss loop, the Boss or a worker process's side.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ..errors import CapacityError, InstructionsError
from .base import BaseScheduler, Decision, Pending, Running, give_back, memory_of, owns_queue, range_tickets
from .host import MIB, available_memory, describe
from .memory_limit import LimitMemory, cgroup_parent
from .queues import FitQueue
from .threads import BINDED_ATTR, BindingMixin

__all__ = ["MaxMemoryScheduler", "MAX_TICKETS"]

log = logging.getLogger("taylor.schedulers")

#: Tickets a memory scheduler hands out (binding maps ticket t to CPU t modulo the CPU count).
MAX_TICKETS = 512

_INF = float("inf")


class MaxMemoryScheduler(BindingMixin, BaseScheduler):
    """Starts pending instructions while their declared memory fits in ``max_memory``.

    * ``max_memory`` (MiB): the cap; default ``memory_max_percentage`` of the
      memory this job may use (:func:`taylor.schedulers.host.usable_memory`).
    * ``memory_per_task`` (MiB): what an instruction without ``memory`` counts for.
    * ``measured``: also require the host's measured free memory to cover it.
    * ``enforce``: keep each worker's processes to the memory it counts for
      (:mod:`.memory_limit`); one that exceeds it fails alone with a
      :class:`~taylor.errors.MemoryLimitError`.
    * ``binded``: pin each worker to one CPU.

    An instruction needing more than ``max_memory`` alone is refused by
    :meth:`validate`, in the caller, with a :class:`~taylor.errors.CapacityError`.
    """

    _footprint = dict(
        info="Declared memory of running workers under max_memory",
        attr=dict(
            limit=dict(
                info="Select this scheduler by what it limits.",
                values=["memory", "mem"],
                remap=dict(mem="memory"),
            ),
            max_memory=dict(
                info="Memory (MiB) the running workers may declare in all; default: "
                     "memory_max_percentage of the memory this job may use.",
                optional=True,
                default=None,
                type=float,
                access="rwx",
            ),
            memory_per_task=dict(
                info="Memory (MiB) counted for an instruction that declares none.",
                optional=True,
                default=2048.0,
                type=float,
            ),
            memory_max_percentage=dict(
                info="Fraction of the job's memory used as max_memory when max_memory is not given.",
                optional=True,
                default=0.75,
                type=float,
            ),
            measured=dict(
                info="Start a task only if the host's available memory, minus what running workers "
                     "declared but do not use yet, covers its declared memory.",
                optional=True,
                default=False,
                type=bool,
            ),
            enforce=dict(
                info="Keep each worker's processes to the memory it declares (memory_per_task if none), with "
                     "cgroup v2 memory.max where the job's cgroup is delegated, else RLIMIT_AS: a worker "
                     "exceeding it fails alone with a MemoryLimitError.",
                optional=True,
                default=False,
                type=bool,
            ),
            binded=BINDED_ATTR,
        ),
    )

    _default_limit = "memory"
    _memory_hook: Optional[LimitMemory] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not args:  # a plain-class call: MaxMemoryScheduler(max_memory=4096)
            kwargs.setdefault("limit", self._default_limit)
        super().__init__(*args, **kwargs)
        if not 0 < self.memory_max_percentage <= 1:
            raise InstructionsError(
                f"memory_max_percentage must be in (0, 1], got {self.memory_max_percentage}")
        if not self.memory_per_task >= 0:  # NaN too
            raise InstructionsError(f"memory_per_task must be 0 or more MiB, got {self.memory_per_task}")
        if self.max_memory is None:
            job, source = describe()["memory_mib"]
            self.max_memory = self.memory_max_percentage * job
            self.memory_source = f"{self.memory_max_percentage:g} x {job:.0f} MiB, the {source}"
        else:
            if not self.max_memory > 0:  # NaN too
                raise InstructionsError(f"max_memory must be more than 0 MiB, got {self.max_memory}")
            self.memory_source = "max_memory given"

    # ------------------------------------------------------------ decisions
    def need(self, instructions: Any) -> float:
        """Memory (MiB) counted for pending instructions or a running worker."""
        return memory_of(instructions) or self.memory_per_task

    def _order(self, item: Any, seq: int) -> tuple:
        return (seq,)

    def _new_queue(self) -> FitQueue:
        return FitQueue(self._order, self.need)

    _all_tickets = range_tickets

    def _ticket_count(self) -> int:
        return MAX_TICKETS

    def _thread_room(self, workers: Running) -> float:
        return _INF

    def _workers_hooks(self) -> List[Callable[[Any], None]]:
        hooks = list(super()._workers_hooks())
        if self.enforce:
            if self._memory_hook is None:  # decided once, in the boss (where the hook is made)
                parent, how = cgroup_parent()
                log.info("declared memory is enforced: %s", how if parent else f"RLIMIT_AS ({how})")
                self._memory_hook = LimitMemory(self.memory_per_task, parent)
            hooks.append(self._memory_hook)
        return hooks

    def validate(self, instructions: Sequence[Mapping[str, Any]]) -> None:
        for one in instructions:
            need = self.need(one)
            if need > self.max_memory:
                declared = memory_of(one)
                what = (f"declares memory={declared:g} MiB" if declared else
                        f"declares no memory, so counts memory_per_task={self.memory_per_task:g} MiB,")
                name = one.get("name") if isinstance(one, Mapping) else None
                raise CapacityError(
                    f"worker {name!r} {what} more than this scheduler's max_memory={self.max_memory:g} MiB "
                    f"({self.memory_source}), so it could never start. Lower its memory, or raise max_memory "
                    "(or memory_max_percentage).", instructions=dict(one), max_memory=self.max_memory)

    def measured_room(self, workers: Running) -> float:
        """Memory (MiB) the host can give a new task now, as the ``measured`` option sees it.

        It is the host's available memory (:func:`~taylor.schedulers.host.available_memory`:
        the kernel's MemAvailable, capped by the room under the cgroup limit)
        minus, for each running worker, the part of its declared memory it
        does not use yet (declared minus the resident set size of its process
        and descendants, when positive): that part may still be claimed.
        """
        rss = _trees_rss([getattr(worker, "pid", None) for worker in workers.values()])
        untouched = sum(max(0.0, self.need(worker) - used) for worker, used in zip(workers.values(), rss))
        return available_memory() - untouched

    @owns_queue
    def launchable(self, pending: Pending, workers: Running, report: Sequence[Mapping]) -> Decision:
        queue = pending if isinstance(pending, FitQueue) else FitQueue(self._order, self.need, packed=False)
        if queue is not pending:  # a list, e.g. from a subclass that filtered it
            queue.extend(pending)
        room = self._thread_room(workers)
        free = self.max_memory - sum(self.need(w) for w in workers.values())
        launch = []
        if room > 0 and queue.least_need() <= free:
            measured = self.measured_room(workers) if self.measured and workers else _INF
            while room > 0:
                item = queue.pop_fit(min(free, measured))
                if item is None:
                    break
                launch.append(item)
                need = self.need(item)
                free -= need
                measured -= need
                room -= 1
            if self.measured and workers and not launch and queue.least_need() <= free:
                log.info("measured memory (%.0f MiB) holds back %d pending instructions until a worker ends",
                         measured, len(queue))
        return self._assign_tickets(workers, launch), give_back(queue, pending)


def _trees_rss(pids: List[Optional[int]]) -> List[float]:
    """Resident memory (MiB) of each process with its descendants (0 if gone or unknown).

    One pass over the process table per call, whatever the number of workers.
    """
    import psutil  # imported when used: it adds 3 MiB to each process of a run

    children: Dict[int, List[psutil.Process]] = {}
    rss: Dict[int, int] = {}
    for proc in psutil.process_iter(["ppid", "memory_info"]):
        info = proc.info
        if info.get("memory_info") is None:
            continue
        rss[proc.pid] = info["memory_info"].rss
        children.setdefault(info["ppid"], []).append(proc)
    out = []
    for pid in pids:
        total, stack, seen = 0, [pid] if pid in rss else [], set()
        while stack:
            one = stack.pop()
            if one in seen:
                continue
            seen.add(one)
            total += rss.get(one, 0)
            stack.extend(child.pid for child in children.get(one, ()))
        out.append(total / MIB)
    return out
