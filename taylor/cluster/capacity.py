"""What a Dask cluster offers: its workers, threads and memory, and where a task fits.

The local counterpart is :mod:`taylor.schedulers.host`: every figure comes
with the source it was read from, so that ``describe`` can say why a run
may use what it uses.  Here the figures are the Dask scheduler's (its
``identity``: each worker's ``nthreads``, ``memory_limit``, host), updated
whenever a worker joins or leaves (see :class:`~taylor.cluster.launcher.DaskLauncher`).

Placement: taylor's scheduler decides *what* may start (its caps are the
cluster's totals, see :meth:`ClusterCapacity.scheduler_limits`); this module
decides *where*: a task declaring ``memory`` goes only to a Dask worker whose
memory limit, minus the memory declared by the taylor tasks already placed
there, covers it; among those, to the least loaded (tasks placed per
thread).  A worker takes at most ``ahead`` tasks per thread at a time (one
running, the others queued there so that it never waits for the next; 16 by
default, what no-op tasks need to keep a worker busy, see benchmarks/cluster.py): the
rest wait in the launcher and go to whichever worker frees a place first, so
that a slow worker is not left with a long queue while another idles, and a
worker that joins gets its share.  It is pure bookkeeping, testable without
a cluster.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from ..schedulers.host import MIB

__all__ = ["DaskWorker", "ClusterCapacity"]

_INF = float("inf")


class DaskWorker:
    """One Dask worker as taylor sees it: its capacity and the taylor tasks placed on it."""

    __slots__ = ("address", "host", "name", "nthreads", "memory_mib", "memory_source", "assigned", "assigned_mib",
                 "cpus", "host_key")

    def __init__(self, address: str, host: str, name: str, nthreads: int, memory_mib: float,
                 memory_source: str) -> None:
        self.address = address
        self.host = host
        self.name = name
        self.nthreads = nthreads
        self.memory_mib = memory_mib
        self.memory_source = memory_source
        self.assigned = 0  # taylor tasks placed here and not ended
        self.assigned_mib = 0.0  # the memory they declared
        self.cpus: Optional[List[int]] = None  # binding: the CPUs its forker may use, socket-packed (None: unknown)
        self.host_key: Optional[str] = None  # binding: equal for the Dask workers of one host

    @property
    def free_mib(self) -> float:
        return self.memory_mib - self.assigned_mib

    @classmethod
    def from_identity(cls, address: str, info: Mapping[str, Any]) -> DaskWorker:
        limit = info.get("memory_limit") or 0
        if limit:
            memory, source = limit / MIB, f"memory_limit of Dask worker {address} (dask worker --memory-limit)"
        else:
            memory, source = _INF, f"Dask worker {address} has no memory limit (--memory-limit 0): not capped"
        return cls(address, str(info.get("host") or address), str(info.get("name", address)),
                   int(info.get("nthreads") or 1), memory, source)

    def as_dict(self) -> Dict[str, Any]:
        return {"address": self.address, "host": self.host, "name": self.name, "nthreads": self.nthreads,
                "memory_mib": self.memory_mib, "memory_source": self.memory_source, "tasks": self.assigned,
                "declared_mib": self.assigned_mib}

    def __repr__(self) -> str:
        return f"<DaskWorker {self.address} on {self.host}: {self.nthreads} threads, {self.memory_mib:.0f} MiB>"


class ClusterCapacity:
    """The cluster's workers as last seen, with the taylor tasks placed on each."""

    def __init__(self, scheduler: str = "", ahead: int = 16, bind: bool = False) -> None:
        if ahead < 1:
            raise ValueError(f"ahead must be 1 or more tasks per thread, got {ahead}")
        self.scheduler = scheduler
        self.ahead = ahead
        self.workers: Dict[str, DaskWorker] = {}
        # Binding: each task gets a CPU of its host that no running task of this run has; the CPUs are
        # per host (not per Dask worker: several may share a host), taken at placement, freed at its end.
        self.bind = bind
        self.busy_cpus: Dict[str, Set[int]] = {}  # host key -> CPUs of the tasks placed there and not ended
        self.version = 0  # bumped at each change of the worker set

    # ------------------------------------------------------------ the workers
    def update(self, identity: Mapping[str, Any]) -> Tuple[List[str], List[str]]:
        """Take the scheduler's ``identity`` (``Client.scheduler_info()``); return (joined, left) addresses.

        Workers still there keep their placed tasks; those gone are dropped.
        """
        seen = identity.get("workers") or {}
        left = [address for address in self.workers if address not in seen]
        joined = [address for address in seen if address not in self.workers]
        for address in left:
            del self.workers[address]
        for address, info in seen.items():
            fresh = DaskWorker.from_identity(address, info)
            known = self.workers.get(address)
            if known is not None:
                fresh.assigned, fresh.assigned_mib = known.assigned, known.assigned_mib
                fresh.cpus, fresh.host_key = known.cpus, known.host_key
            self.workers[address] = fresh
        if joined or left:
            self.version += 1
        return joined, left

    def remove(self, address: str) -> Optional[DaskWorker]:
        """Forget a worker that left (the scheduler said so); the worker as it was, None if unknown."""
        worker = self.workers.pop(address, None)
        if worker is not None:
            self.version += 1
        return worker

    # ------------------------------------------------------------ totals
    @property
    def threads(self) -> int:
        return sum(w.nthreads for w in self.workers.values())

    @property
    def memory_mib(self) -> float:
        return sum(w.memory_mib for w in self.workers.values())

    @property
    def largest_memory_mib(self) -> float:
        """The most memory one task may declare and still fit somewhere (0 without workers)."""
        return max((w.memory_mib for w in self.workers.values()), default=0.0)

    def scheduler_limits(self) -> Dict[str, Any]:
        """Caps for taylor's schedulers: ``max_threads`` (MaxThreadsScheduler) and ``max_memory``
        (MaxMemoryScheduler, None when a worker has no memory limit).

        ``max_threads`` is the number of tasks the cluster takes at a time:
        its threads times ``ahead``.  Each Dask worker runs one task per thread
        at once whatever it was given; those queued there start without a
        round trip to the boss, which tiny tasks need (see benchmarks/cluster.py).
        """
        memory = self.memory_mib
        return {"max_threads": self.threads * self.ahead, "max_memory": None if math.isinf(memory) else memory}

    def describe(self) -> Dict[str, Tuple[Any, str]]:
        """Each figure with where it came from, as :func:`taylor.schedulers.host.describe` does locally.

        Keys: ``workers`` (count), ``cpus`` (threads), ``memory_mib``, and
        ``hosts`` (their names); values are ``(figure, source)`` pairs.
        """
        where = f"the Dask scheduler {self.scheduler}" if self.scheduler else "the Dask scheduler"
        workers = sorted(self.workers.values(), key=lambda w: w.address)
        threads = " + ".join(f"{w.nthreads} ({w.address})" for w in workers) or "no worker"
        memory = "; ".join(f"{_mib(w.memory_mib)}: {w.memory_source}" for w in workers) or "no worker"
        return {
            "workers": (len(workers), f"workers connected to {where} now"),
            "cpus": (self.threads, f"sum of the Dask workers' threads (dask worker --nthreads): {threads}"),
            "memory_mib": (self.memory_mib, f"sum of the Dask workers' memory limits: {memory}"),
            "hosts": (sorted({w.host for w in workers}), f"hosts of the Dask workers, from {where}"),
        }

    # ------------------------------------------------------------ placement
    def place(self, memory: float = 0.0) -> Optional[DaskWorker]:
        """The worker a task declaring ``memory`` MiB should go to now; None when none has it free
        (or every worker has its ``ahead`` tasks per thread).

        Among the workers with that memory free, the one with the fewest taylor
        tasks per thread (then the most memory free, then by address: the
        choice is reproducible).
        """
        best, best_key = None, None
        ahead = self.ahead
        for worker in self.workers.values():
            if worker.free_mib < memory or worker.assigned >= ahead * worker.nthreads:
                continue
            if self.bind and self.free_cpu(worker) is None:
                continue
            key = (worker.assigned / worker.nthreads, -worker.free_mib, worker.address)
            if best_key is None or key < best_key:
                best, best_key = worker, key
        return best

    def has_room(self) -> bool:
        """Whether some worker takes another task now (memory aside)."""
        ahead = self.ahead
        return any(w.assigned < ahead * w.nthreads for w in self.workers.values())

    def wants_more(self) -> bool:
        """Whether some worker has half of its ``ahead`` tasks per thread or fewer: time to give it
        more.  Refilling at half rather than at each end sends tasks many at a time: each
        submission costs the Dask scheduler a graph update, whatever its size."""
        ahead = self.ahead
        return any(2 * w.assigned <= ahead * w.nthreads for w in self.workers.values())

    def assign(self, worker: DaskWorker, memory: float) -> None:
        worker.assigned += 1
        worker.assigned_mib += memory

    def set_cpus(self, address: str, host_key: str, cpus: List[int]) -> None:
        """Binding: the CPUs Dask worker ``address``'s forker may use, on the host ``host_key``."""
        worker = self.workers.get(address)
        if worker is not None:
            worker.host_key, worker.cpus = host_key, list(cpus)

    def unknown_cpus(self) -> List[str]:
        """Binding: the workers whose CPUs are not known yet (none takes a task until they are)."""
        return [a for a, w in self.workers.items() if w.cpus is None] if self.bind else []

    def free_cpu(self, worker: DaskWorker) -> Optional[int]:
        """Binding: the first CPU of ``worker`` (socket-packed order) no task placed on its host holds."""
        if worker.cpus is None or worker.host_key is None:
            return None
        busy = self.busy_cpus.get(worker.host_key, ())
        for cpu in worker.cpus:
            if cpu not in busy:
                return cpu
        return None

    def take_cpu(self, worker: DaskWorker) -> Optional[int]:
        """Binding: hold a free CPU of ``worker``'s host for a task placed there; that CPU."""
        cpu = self.free_cpu(worker)
        if cpu is not None:
            self.busy_cpus.setdefault(worker.host_key or "", set()).add(cpu)
        return cpu

    def free(self, host_key: str, cpu: int) -> None:
        """Binding: a task's process on ``host_key`` ended: its ``cpu`` is free again."""
        self.busy_cpus.get(host_key, set()).discard(cpu)

    def release(self, address: str, memory: float) -> None:
        """A task placed on ``address`` ended: its memory is free again (nothing if the worker left)."""
        worker = self.workers.get(address)
        if worker is not None:
            worker.assigned = max(0, worker.assigned - 1)
            worker.assigned_mib = max(0.0, worker.assigned_mib - memory)


def _mib(value: float) -> str:
    return "unlimited" if math.isinf(value) else f"{value:.0f} MiB"
