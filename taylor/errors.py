"""One small hierarchy of errors, each saying what happened to whom.

Every error raised by taylor derives from :class:`TaylorError`, except
:class:`Interrupted` (a signal ended the run), which derives from
``BaseException`` as ``KeyboardInterrupt`` does.  Errors about the
caller's input also derive from :class:`ValueError` so that code written for the
original system (which raised ``ValueError``/``AssertionError``) keeps catching
them.  All of them pickle, since most are built in the boss process and travel
to the caller.

Depends on nothing of taylor: every other module may import it.
"""

from __future__ import annotations

import signal
from typing import Any, Mapping, Optional

__all__ = [
    "TaylorError",
    "InstructionsError",
    "NoWorkerFitError",
    "CapacityError",
    "BossDiedError",
    "BossClosedError",
    "WorkerError",
    "WorkerDiedError",
    "WorkerTimeoutError",
    "MemoryLimitError",
    "ReportError",
    "RemoteTraceback",
    "Interrupted",
    "describe_exit",
]


def _short(instructions: Optional[Mapping[str, Any]], limit: int = 300) -> str:
    """A one-line, bounded rendering of instructions for error messages."""
    if instructions is None:
        return "{}"
    text = "{" + ", ".join(f"{k}={_safe_repr(v)}" for k, v in instructions.items()) + "}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_repr(value: Any) -> str:
    """``repr(value)``, or a placeholder when it fails (nested too deeply, a broken ``__repr__``):
    an error message must never raise in turn."""
    try:
        return repr(value)
    except Exception as exc:  # noqa: BLE001 - any failure of a user's __repr__
        return f"<{type(value).__name__} that cannot be printed: {type(exc).__name__}>"


def describe_exit(status: int) -> str:
    """Say in words how a process ended, from a ``waitpid`` exit code.

    ``status`` follows the :mod:`multiprocessing` convention: ``>= 0`` is an
    exit code, ``< 0`` is minus the number of the signal that killed it.
    """
    if status >= 0:
        return f"exit code {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    hint = ""
    if -status == signal.SIGKILL:
        hint = " (the kernel's out-of-memory killer and batch systems send SIGKILL)"
    elif -status == signal.SIGSEGV:
        hint = " (segmentation fault: usually a crash in compiled code)"
    return f"killed by {name}{hint}"


class TaylorError(Exception):
    """Base class of every error raised by taylor.

    ``report`` holds the run's report (finished work, failures, instructions
    never started) when the error ends a run, ``None`` otherwise.
    """

    def __init__(self, message: str = "", **attributes: Any) -> None:
        super().__init__(message)
        self.report: Optional[dict] = None
        for key, value in attributes.items():
            setattr(self, key, value)

    def __reduce__(self):
        return (type(self), self.args, self.__dict__)


class InstructionsError(TaylorError, ValueError):
    """The caller's instructions cannot be run; nothing was started for them."""


class NoWorkerFitError(InstructionsError):
    """No Worker class accepts these instructions.

    ``instructions`` are the offending instructions and ``whynot`` maps each
    candidate class to footprints' reasons for rejecting it.
    """


class CapacityError(InstructionsError):
    """An instruction asks for more than the scheduler could ever grant."""


class BossDiedError(TaylorError):
    """The boss process ended without sending its final report."""


class BossClosedError(TaylorError):
    """The boss no longer takes instructions or signals (the run has ended)."""


class WorkerError(TaylorError):
    """A worker failed in a way that left no exception of its own.

    Carries ``worker`` (its name), ``instructions`` and, when known, ``pid``.
    Also stands in for a worker's exception that could not be sent back.
    """


class WorkerDiedError(WorkerError):
    """A worker process ended without sending its report (crash, kill, exit)."""


class WorkerTimeoutError(WorkerError, TimeoutError):
    """A worker ran longer than its ``timeout`` and was terminated."""


class MemoryLimitError(WorkerError, MemoryError):
    """A worker exceeded the memory it declared, under a memory scheduler with ``enforce=True``
    (see :mod:`taylor.schedulers.memory_limit`); the message says how much it declared."""


class ReportError(WorkerError):
    """A worker's report could not be sent back (unpicklable or too large)."""


class Interrupted(BaseException):
    """SIGTERM (what batch systems send before a kill) stopped the run.

    Raised in the caller when it receives SIGTERM while waiting on a run,
    and when the boss process itself received it (a batch system signals
    every process of the job).  ``signum`` is the signal; the workers were
    stopped and ``report`` holds what had finished and what never started.

    Like ``KeyboardInterrupt`` and ``SystemExit`` it derives from
    ``BaseException``, not ``Exception`` (nor :class:`TaylorError`): a
    program's ``except Exception:`` around a batch, meant for the work's own
    errors, does not swallow it, and the program ends as the batch system
    asked.  Catch it by name to clean up, then re-raise.
    """

    def __init__(self, message: str = "", signum: Optional[int] = None, **attributes: Any) -> None:
        super().__init__(message)
        self.signum = signum
        self.report: Optional[dict] = None
        for key, value in attributes.items():
            setattr(self, key, value)

    def __reduce__(self):
        return (type(self), self.args, self.__dict__)


class RemoteTraceback(Exception):
    """Holds the formatted traceback of an exception raised in a worker.

    Attached as ``__cause__`` of the re-raised exception, so the caller sees
    both where the run failed and where, in the worker, the error came from.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n" + self.tb.rstrip("\n")


def worker_failure_message(what: str, worker: str, instructions: Optional[Mapping[str, Any]],
                           pid: Optional[int] = None) -> str:
    """The standard sentence for a failed worker: who, with what, what happened."""
    where = f"worker {worker!r}" + (f" (pid {pid})" if pid else "")
    return f"{where} {what}; its instructions were {_short(instructions)}"
