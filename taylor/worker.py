"""Worker: the footprint a task is chosen by, and the child side of a run.

A :class:`Worker` subclass declares its instructions as footprint attributes
and implements :meth:`Worker._task`.  The boss forks one process per
instruction set; in it, :func:`run_child` builds the worker, runs the
scheduler's hooks and the task, sends exactly one message back (the result, or
the exception with its traceback) and exits without running the parent's
clean-up handlers.

Depends on :mod:`taylor.wire`, :mod:`taylor.errors` and the host's CPUs
(:mod:`taylor.schedulers.host`); must not import the Boss, the boss loop, the spawner or the
launcher: a worker's process knows only its own task.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from typing import Any, Dict, List, Mapping, NoReturn, Optional, Sequence

import footprints
from bronx.patterns import observer
from footprints import FootprintBase
from footprints.stdtypes import FPList

from . import wire
from .errors import ReportError, WorkerError

__all__ = ["Worker", "DirectSpec", "run_child", "prepare_class", "instantiate", "direct_capable", "direct_outcome"]

#: Outcome tags of the one message a worker sends back.  PACKED: its report pickled apart, in the
#: worker (a buffer sent out of band, see :mod:`taylor.wire`), which the boss passes on untouched.
OK, PACKED, RAISED, UNSENDABLE = "ok", "packed", "raised", "unsendable"


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
      process before the task: the scheduler's own (CPU binding), then
      those the instructions give.
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

    def _direct_spec(self) -> Optional[DirectSpec]:
        """The program this task only runs, for the boss to start it itself; None: fork a worker.

        Called in the boss.  A class whose task is just a program run saves a
        fork of the Python boss per task this way; it must return None
        whenever running the program directly would not behave exactly as
        ``_task`` (hooks to run in the worker, a subclass's own ``_task``...).
        """
        return None

    def _direct_report(self, spec: DirectSpec, exitcode: int, duration: float) -> Any:
        """The report of a task run from :meth:`_direct_spec`, in the boss, once its program ended.

        Return what ``_task`` would have returned, or raise what it would have raised.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement _direct_report() with _direct_spec()")

    @staticmethod
    def binding() -> List[Optional[int]]:
        """The CPUs this process may run on, ``[None]`` when it may use all of them."""
        from .schedulers.host import all_cpus, process_cpus

        cpus = process_cpus()
        return [None] if set(cpus) >= set(all_cpus()) else sorted(cpus)


class DirectSpec:
    """A program run that stands for a whole task (see :meth:`Worker._direct_spec`).

    ``argvs`` are tried in order (``os.posix_spawnp``) until one starts; the
    program gets ``env``, stdin from /dev/null, ``stdout`` and ``stderr`` (open
    descriptors the launcher closes when the task is over), its own process
    group and default signal dispositions.  ``context`` is the worker's own,
    for its report.
    """

    __slots__ = ("argvs", "env", "stdout", "stderr", "context", "worker", "pid", "start", "ended_first")

    def __init__(self, argvs: Sequence[Sequence[str]], env: Mapping[Any, Any], stdout: int, stderr: int,
                 context: Any = None) -> None:
        self.argvs = argvs
        self.env = env
        self.stdout = stdout
        self.stderr = stderr
        self.context = context
        self.worker: Optional[Worker] = None  # set by the launcher
        self.pid = 0  # the program's, once started
        self.start = 0.0  # time.monotonic() when the program was started
        self.ended_first = False  # it had ended already when the boss came to stop it

    @property
    def fds(self) -> List[int]:
        return [fd for fd in (self.stdout, self.stderr) if fd >= 0]


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


#: Per class: can its tasks run without a worker process (see Worker._direct_spec)?
_direct_classes: Dict[type, bool] = {}


def direct_capable(cls: type) -> bool:
    """Whether ``cls`` may offer direct runs: it defines ``_direct_spec`` and is built plainly.

    A class with its own ``__init__`` (or observed by more than footprints'
    collectors) must be built in a worker process, where that code runs.
    """
    known = _direct_classes.get(cls)
    if known is None:
        prepare_class(cls)
        known = _direct_classes[cls] = (_fast_boards[cls] is not None
                                        and getattr(cls, "_direct_spec", None) is not Worker._direct_spec)
    return known


def direct_outcome(spec: DirectSpec, exitcode: int, duration: float, max_report_bytes: int) -> tuple:
    """The outcome message a worker process would have sent for a direct run, built in the boss.

    Whatever ``_direct_report`` raises is the worker's failure (never the
    boss's), and its report meets the same checks as one sent over a pipe.
    """
    try:
        outcome = (OK, spec.worker._direct_report(spec, exitcode, duration))
    except BaseException as exc:  # noqa: BLE001 - every way a task ends is reported
        outcome = (RAISED, _sendable_exception(exc), traceback.format_exc())
    try:
        wire.encode(outcome, limit=max_report_bytes)
    except Exception as exc:  # noqa: BLE001 - too large, or pickling failed in one of many ways
        return _unsendable(exc)
    return outcome


def _unsendable(exc: Exception) -> tuple:
    """The outcome that replaces a report which could not be encoded (``exc`` says why)."""
    if isinstance(exc, wire.MessageTooLarge):
        why = (f"its report is {exc.size} bytes, more than the limit of {exc.limit} bytes "
               "(raise max_report_bytes, or write large results to files and report their paths)")
    else:
        why = f"its report could not be pickled: {type(exc).__name__}: {exc}"
    return (UNSENDABLE, ReportError(why))


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
        for hook in attributes.get("scheduler_hooks") or ():  # the dict, not footprints' attribute machinery
            hook(worker)
        return (OK, worker._task())
    except BaseException as exc:  # noqa: BLE001 - every way a task ends is reported
        return (RAISED, _sendable_exception(exc), traceback.format_exc())


_OK_NONE = wire.encode((OK, None))


def outcome_message(outcome: tuple, max_report_bytes: int) -> List[Any]:
    """The message that tells the boss ``outcome``, in parts (see :func:`wire.encode_parts`).

    A report is pickled once, here, and travels as a buffer out of band: the
    boss forwards it to the caller without loading or copying it.  A task
    that returns None (one that writes its results itself) sends a message
    made once in the boss: pickling in a fresh fork costs some 30 page faults.
    """
    try:
        if outcome[0] is OK:
            if outcome[1] is None:
                return [_OK_NONE]
            packed = wire.pack_report(outcome[1])
            if max_report_bytes and len(packed) > max_report_bytes:
                raise wire.MessageTooLarge(len(packed), max_report_bytes)
            return wire.encode_parts((PACKED, pickle.PickleBuffer(packed)))
        return wire.encode_parts(outcome, limit=max_report_bytes)
    except Exception as exc:  # noqa: BLE001 - too large, or pickling failed in one of many ways
        return [wire.encode(_unsendable(exc))]


def run_child(cls: type, attributes: Mapping[str, Any], fd: int, max_report_bytes: int) -> NoReturn:
    """Body of a worker process: build the worker from its resolved footprint
    ``attributes``, run the task, send one message on ``fd``, exit.

    What the task printed is flushed before the report goes: once the report
    is in and ``fd`` closed, the boss counts the task as over and gives its
    slot to the next one, while this process is torn down.  Never returns:
    the process ends with ``os._exit`` so that the boss's (and the caller's)
    ``atexit`` handlers and buffered files are not run twice.
    """
    try:
        _redirect_output(attributes)
        parts = outcome_message(_outcome(cls, attributes), max_report_bytes)
        _flush_output()
        if len(parts) == 1:
            data = parts[0]
            written = os.write(fd, data)  # a small report fits the pipe in one write
            if written < len(data):
                wire.write_all(fd, memoryview(data)[written:])
        else:
            wire.write_parts(fd, parts)
        os.close(fd)
    except BaseException:  # noqa: BLE001 - last resort: say so on stderr, exit non-zero
        exit_on_error()
    os._exit(0)


def exit_on_error() -> NoReturn:
    """Last resort of a worker process whose own machinery failed (the exception being handled):
    say so on stderr and exit 70, never returning into the code it was forked from."""
    try:
        traceback.print_exc()
    except BaseException:  # noqa: BLE001
        pass
    _flush_output()
    os._exit(70)


def _redirect_output(attributes: Mapping[str, Any]) -> None:
    """Under ``taylor run``, the task's stdout and stderr go to ``$TAYLOR_OUTPUT_DIR/<name>.out`` and ``.err``,
    for the command line to print each task's output whole (or keep it in ``--logdir``)."""
    if "TAYLOR_OUTPUT_DIR" not in os.environ:  # the library's case: one dict lookup
        return
    folder = os.environ.pop("TAYLOR_OUTPUT_DIR")  # not for the workers of a batch this task runs itself
    safe = str(attributes.get("name")).replace(os.sep, "_")
    for fd, ext in ((1, ".out"), (2, ".err")):
        try:
            target = os.open(os.path.join(folder, safe + ext), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError:  # the folder is gone: the output goes where it would have gone
            continue
        os.dup2(target, fd)
        os.close(target)


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - a closed or broken stream must not stop the report
            pass
