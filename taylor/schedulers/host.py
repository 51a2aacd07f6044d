"""What this host, or this batch job, lets us use: CPUs (and memory).

Every figure a scheduler defaults to comes from here, so that "fit the job,
not the node" is decided in one place.
"""

from __future__ import annotations

import os
from typing import List

import psutil

__all__ = ["process_cpus", "all_cpus", "usable_cpus"]


def all_cpus() -> List[int]:
    """Every logical CPU of the host, whatever this process may use."""
    return list(range(psutil.cpu_count(logical=True) or 1))


def process_cpus() -> List[int]:
    """The CPUs this process may run on (its affinity)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # platforms without affinity calls
        return all_cpus()


def usable_cpus() -> int:
    """How many CPUs this job may keep busy at once."""
    return max(1, len(process_cpus()))
