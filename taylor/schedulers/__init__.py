"""Schedulers: which pending instructions may start now.

Reach them through footprints (``footprints.proxy.scheduler(limit='threads',
max_threads=4)``) or as plain classes (``MaxThreadsScheduler(max_threads=4)``).
"""

from .base import BaseScheduler
from .threads import LaxistScheduler, MaxThreadsScheduler

__all__ = ["BaseScheduler", "LaxistScheduler", "MaxThreadsScheduler", "default_scheduler"]


def default_scheduler() -> BaseScheduler:
    """The scheduler a Boss uses when given none: as many workers as usable CPUs."""
    return MaxThreadsScheduler(limit="threads", max_threads=0)
