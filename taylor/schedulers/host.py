"""What this host, or this batch job, lets us use: CPUs and memory.

Every figure a scheduler defaults to comes from here, so that "fit the job,
not the node" is decided in one place.  :func:`describe` says where each
figure came from.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

import psutil

__all__ = ["process_cpus", "all_cpus", "usable_cpus", "usable_memory", "describe"]


def all_cpus() -> List[int]:
    """Every logical CPU of the host, whatever this process may use."""
    return list(range(psutil.cpu_count(logical=True) or 1))


def process_cpus() -> List[int]:
    """The CPUs this process may run on (its affinity)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # platforms without affinity calls
        return all_cpus()


def _cpus() -> Tuple[int, str]:
    return max(1, len(process_cpus())), "CPU affinity of this process"


def _memory() -> Tuple[float, str]:
    return psutil.virtual_memory().total / 2**20, "total memory of the host (psutil)"


def usable_cpus() -> int:
    """How many CPUs this job may keep busy at once."""
    return _cpus()[0]


def usable_memory() -> float:
    """How much memory (MiB) this job may use."""
    return _memory()[0]


def describe() -> Dict[str, Tuple[Any, str]]:
    """Each figure the schedulers default to, with where it came from.

    Keys: ``cpus`` (int) and ``memory_mib`` (float); values are
    ``(figure, source)`` pairs, the source a short human-readable phrase.
    """
    return {"cpus": _cpus(), "memory_mib": _memory()}
