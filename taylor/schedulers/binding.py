"""Binding: pin each worker to one CPU, chosen from its scheduler ticket.

Tickets are distinct among running workers, so while no more workers run
than there are usable CPUs, each runs alone on its CPU.  Ticket ``t`` maps to
``socket_packed_cpus()[t % n]``: the CPUs this process may use, one socket
after the other, and within a socket one hardware thread of every physical
core before their hyper-thread siblings, so that the first workers share
neither a core nor, while it is not full, a socket's neighbours.

Like every scheduler module, imports nothing of taylor outside :mod:`taylor.schedulers` and
:mod:`taylor.errors`: never the boss loop, the Boss or a worker process's side.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

from .host import process_cpus

__all__ = ["socket_packed_cpus", "BindToTicket"]


def _topology(cpu: int, root: str) -> Optional[tuple]:
    base = os.path.join(root, f"sys/devices/system/cpu/cpu{cpu}/topology")
    try:
        with open(os.path.join(base, "physical_package_id")) as f:
            socket = int(f.read())
        with open(os.path.join(base, "core_id")) as f:
            core = int(f.read())
    except (OSError, ValueError):
        return None
    return socket, core


def socket_packed_cpus(cpus: Optional[Sequence[int]] = None, root: str = "/") -> List[int]:
    """``cpus`` (default: this process's affinity) in socket-packed order.

    Order: by socket, then by sibling rank (the first hardware thread of each
    core, then the second...), then by core.  Without topology information
    (not Linux), the CPUs in numerical order.
    """
    cpus = sorted(process_cpus() if cpus is None else cpus)
    keys: Dict[int, tuple] = {}
    seen: Dict[tuple, int] = {}
    for cpu in cpus:
        topology = _topology(cpu, root)
        if topology is None:
            return cpus
        socket, core = topology
        rank = seen.get((socket, core), 0)
        seen[(socket, core)] = rank + 1
        keys[cpu] = (socket, rank, core, cpu)
    return sorted(cpus, key=keys.__getitem__)


class BindToTicket:
    """Worker hook: pin the worker's process to the CPU of its ticket.

    Built in the boss (which knows the CPUs it may use); called in the
    worker's process before its task.  A worker without a ticket is left
    unbound.  Child processes the task starts inherit the binding.
    """

    def __init__(self, cpus: Sequence[int]) -> None:
        self.cpus = list(cpus)

    def cpu_for(self, ticket: Optional[int]) -> Optional[int]:
        """The CPU of ``ticket`` (None for no ticket)."""
        if ticket is None or not self.cpus:
            return None
        return self.cpus[int(ticket) % len(self.cpus)]

    def __call__(self, worker: Any) -> None:
        cpu = self.cpu_for(getattr(worker, "scheduler_ticket", None))
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {cpu})

    def __repr__(self) -> str:
        return f"BindToTicket(cpus={self.cpus})"
