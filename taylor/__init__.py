"""taylor: a boss/worker batch task scheduler.

The caller hands instruction sets to a :class:`Boss`, which runs one
:class:`Worker` process per set in a boss subprocess, as a scheduler allows,
and sends back each worker's report::

    from taylor import batch_main
    from taylor.examples import Sleeper  # noqa: F401 - registers the worker class

    batch_main(dict(wakeup_sentence='done'), dict(sleeping_time=[0.1, 0.2, 0.3]))

Re-exports only (and defines ``__version__``).  It imports the caller's side (:mod:`taylor.boss`,
:mod:`taylor.batch`), the worker, the report and the errors; never the boss loop's internals
(:mod:`taylor.engine`) nor the command line.
"""

from .batch import batch_main, run_as_server
from .boss import Boss
from .errors import (
                     BossClosedError,
                     BossDiedError,
                     CapacityError,
                     InstructionsError,
                     Interrupted,
                     MemoryLimitError,
                     NoWorkerFitError,
                     RemoteTraceback,
                     ReportError,
                     TaylorError,
                     WorkerDiedError,
                     WorkerError,
                     WorkerTimeoutError,
)
from .report import Report, to_jsonable
from .worker import Worker

__version__ = "0.1.0"


def __getattr__(name: str):
    """``taylor.Executor``, imported on first use: its Worker class, once registered, is one more
    class footprints examines for every instruction set of every Boss in the process."""
    if name == "Executor":
        from .executor import Executor

        return Executor
    raise AttributeError(f"module 'taylor' has no attribute {name!r}")


__all__ = [
    "Boss", "Worker", "Executor", "Report", "run_as_server", "batch_main", "to_jsonable",
    "TaylorError", "InstructionsError", "NoWorkerFitError", "CapacityError", "BossDiedError",
    "BossClosedError", "WorkerError", "WorkerDiedError", "WorkerTimeoutError", "ReportError",
    "MemoryLimitError", "Interrupted", "RemoteTraceback", "__version__",
]
