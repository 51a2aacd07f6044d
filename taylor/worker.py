"""Worker: the footprint a task is chosen by, and the child side of a run.

A :class:`Worker` subclass declares its instructions as footprint attributes
and implements :meth:`Worker._task`.  The boss forks one process per
instruction set; in it, :func:`run_child` builds the worker, runs the
scheduler's hooks and the task, sends exactly one message back (the result, or
the exception with its traceback) and exits without running the parent's
clean-up handlers.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from typing import Any, Dict, List, Mapping, NoReturn, Optional

import footprints
from bronx.patterns import observer
from footprints import FootprintBase
from footprints.stdtypes import FPList

from . import wire
from .errors import ReportError, WorkerError

__all__ = ["Worker", "run_child", "prepare_class", "instantiate"]

#: Outcome tags of the one message a worker sends back.
OK, RAISED, UNSENDABLE = "ok", "raised", "unsendable"


class Worker(FootprintBase):
    """Base class of workers: subclass it, add instructions, implement ``_task``.

    Attributes common to every worker (all optional):

    * ``name``: unique in a run; a UUID when absent.  Footprints' ``[attr]``
      substitution works (``name='job-[file]'``).
    * ``memory``: MiB the task needs, read by memory-aware schedulers.
    * ``expected_time``: seconds the task is expected to take, read by
      schedulers that start the longest tasks first.
    * ``timeout``: seconds after which the worker is terminated and reported
      with a :class:`~taylor.errors.WorkerTimeoutError`.
    * ``scheduler_ticket``: the slot the scheduler gave this worker (a CPU
      index for binding schedulers).
    * ``scheduler_hooks``: callables ``hook(worker)`` run in the worker's
      process before the task.
    """

    _abstract = True
    _collector = ("worker",)
    _footprint = dict(
        info="Abstract worker",
        attr=dict(
            name=dict(
                info="Name of the worker, unique in a run (a UUID when absent).",
                optional=True,
                default=None,
                access="rwx",
            ),
            memory=dict(
                info="Memory the task needs, in MiB.",
                optional=True,
                default=0.0,
                type=float,
            ),
            expected_time=dict(
                info="How long the task is expected to run, in seconds.",
                optional=True,
                default=0.0,
                type=float,
            ),
            timeout=dict(
                info="Seconds after which the worker is terminated (none when absent).",
                optional=True,
                default=None,
                type=float,
            ),
            scheduler_ticket=dict(
                info="Slot given by the scheduler (a CPU index when binding).",
                optional=True,
                default=None,
                type=int,
            ),
            scheduler_hooks=dict(
                info="Callables run as hook(worker) before the task, in its process.",
                optional=True,
                default=FPList(),
                type=FPList,
            ),
        ),
    )

    def _task(self) -> Any:
        """Do the work; the return value is the worker's report.

        Runs in the worker's own process.  Raise to report a failure.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement _task()")

    @staticmethod
    def binding() -> List[Optional[int]]:
        """The CPUs this process may run on, ``[None]`` when it may use all of them."""
        from .schedulers.host import all_cpus, process_cpus

        cpus = process_cpus()
        return [None] if set(cpus) >= set(all_cpus()) else sorted(cpus)


def _sendable_exception(exc: BaseException) -> BaseException:
    """``exc`` itself if it survives pickling, else a WorkerError that describes it."""
    try:
        pickle.loads(pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL))
        return exc
    except Exception:  # noqa: BLE001 - any failure means "cannot be sent as is"
        return WorkerError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} "
                           "(the original exception could not be pickled)")


#: Per class, the footprints observer board when a worker can be built without
#: footprints' per-instance bookkeeping, None when it must go through __init__.
_fast_boards: Dict[type, Any] = {}


def prepare_class(cls: type) -> None:
    """Decide, in the boss and once per class, how its workers are built.

    A class that keeps FootprintBase's own ``__init__`` and that nobody but
    footprints' collectors observes (they only keep a list of instances,
    useless in a worker process) can be built by setting its resolved
    attributes directly: the
    same object as ``cls(attributes, checked=True)`` without the logging and
    observer calls, which in a freshly forked process cost a few hundred
    microseconds of copy-on-write page faults per worker.
    """
    if cls not in _fast_boards:
        board = observer.get(tag=cls.fullname())
        plain = cls.__init__ is FootprintBase.__init__ and all(
            isinstance(o, footprints.collectors.Collector) for o in board.observers())
        _fast_boards[cls] = board if plain else None


def instantiate(cls: type, attributes: Mapping[str, Any]) -> Worker:
    """Build a worker from attributes the caller already resolved and checked."""
    board = _fast_boards.get(cls)
    if board is None:
        return cls(dict(attributes), checked=True)
    worker = cls.__new__(cls)
    worker._attributes = dict(attributes)
    worker._puredict = None
    worker._observer = board
    return worker


def _outcome(cls: type, attributes: Mapping[str, Any]) -> tuple:
    try:
        worker = instantiate(cls, attributes)
        for hook in worker.scheduler_hooks or ():
            hook(worker)
        return (OK, worker._task())
    except BaseException as exc:  # noqa: BLE001 - every way a task ends is reported
        return (RAISED, _sendable_exception(exc), traceback.format_exc())


def run_child(cls: type, attributes: Mapping[str, Any], fd: int, max_report_bytes: int) -> NoReturn:
    """Body of a worker process: build the worker from its resolved footprint
    ``attributes``, run the task, send one message on ``fd``, exit.

    Never returns: the process ends with ``os._exit`` so that the boss's (and
    the caller's) ``atexit`` handlers and buffered files are not run twice.
    """
    code = 0
    try:
        outcome = _outcome(cls, attributes)
        try:
            data = wire.encode(outcome, limit=max_report_bytes)
        except wire.MessageTooLarge as exc:
            data = wire.encode((UNSENDABLE, ReportError(
                f"its report is {exc.size} bytes, more than the limit of {exc.limit} bytes "
                "(raise max_report_bytes, or write large results to files and report their paths)")))
        except Exception as exc:  # noqa: BLE001 - pickling can fail in many ways
            data = wire.encode((UNSENDABLE, ReportError(
                f"its report could not be pickled: {type(exc).__name__}: {exc}")))
        wire.write_all(fd, data)
    except BaseException:  # noqa: BLE001 - last resort: say so on stderr, exit non-zero
        code = 70
        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001
                pass
        os._exit(code)
