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
           "LongestFirstScheduler", "SingleOpenFileScheduler", "default_scheduler", "fit_to_capacity"]


def default_scheduler() -> BaseScheduler:
    """The scheduler a Boss uses when given none: as many workers as usable CPUs."""
    return MaxThreadsScheduler(limit="threads", max_threads=0)


def fit_to_capacity(scheduler: object, limits: dict) -> None:
    """Fit what ``scheduler`` left to its host to another capacity (a Dask cluster's, see
    :meth:`taylor.cluster.capacity.ClusterCapacity.scheduler_limits`): ``max_threads=0`` becomes
    ``limits["max_threads"]``, a ``max_memory`` not given becomes ``limits["max_memory"]``.
    Figures the user gave stay: they cap the whole run."""
    threads = limits.get("max_threads")
    if threads and getattr(scheduler, "max_threads", None) == 0 and hasattr(scheduler, "_limit"):
        scheduler._limit = int(threads)
    memory = limits.get("max_memory")
    if memory and hasattr(scheduler, "memory_source") and scheduler.memory_source != "max_memory given":
        scheduler.max_memory = float(memory) * getattr(scheduler, "memory_max_percentage", 1.0)
        scheduler.memory_source = "the Dask workers' memory limits"
