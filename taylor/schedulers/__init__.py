"""Schedulers: which pending instructions may start now.

Reach them through footprints (``footprints.proxy.scheduler(limit='threads',
max_threads=4)``) or as plain classes (``MaxThreadsScheduler(max_threads=4)``):

=====================================  ==========================================
``fpx.scheduler(...)``                 class
=====================================  ==========================================
``nosort=True``                        :class:`LaxistScheduler`
``limit='threads', max_threads=N``     :class:`MaxThreadsScheduler`
``limit='memory', max_memory=MiB``     :class:`MaxMemoryScheduler`
``limit='threads+memory', ...``        :class:`LongestFirstScheduler`
``limit='threads', singlefile=True``   :class:`SingleOpenFileScheduler`
=====================================  ==========================================

Schedulers know nothing of processes: this package imports nothing of taylor but
:mod:`taylor.errors`; the boss loop calls it, never the reverse.
"""

from .base import BaseScheduler
from .longest_first import LongestFirstScheduler
from .memory import MaxMemoryScheduler
from .single_file import SingleOpenFileScheduler
from .threads import LaxistScheduler, MaxThreadsScheduler

__all__ = ["BaseScheduler", "LaxistScheduler", "MaxThreadsScheduler", "MaxMemoryScheduler",
           "LongestFirstScheduler", "SingleOpenFileScheduler", "default_scheduler"]


def default_scheduler() -> BaseScheduler:
    """The scheduler a Boss uses when given none: as many workers as usable CPUs."""
    return MaxThreadsScheduler(limit="threads", max_threads=0)
