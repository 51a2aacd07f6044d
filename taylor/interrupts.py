"""SIGINT and SIGTERM in the caller: held off during a read, raised as exceptions during a wait.

A batch system sends SIGTERM before it kills a job; a person at the terminal sends SIGINT.  Either
must stop the run cleanly: held for the instant a message is being read (a handler raising between
the read and its decoding would lose what was read), raised as :class:`~taylor.errors.Interrupted`
while the caller waits (so the caller stops the workers and hands back what finished).

Used by the Boss and the command line.  Depends on nothing of taylor but its errors.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

from .errors import Interrupted

__all__ = ["signals_deferred", "raise_interrupted", "sigterm_raises", "is_signal"]


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM during a short, non-blocking step; deliver them after."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def raise_interrupted(signum: int, frame: Any) -> None:
    """A signal handler: raise :class:`~taylor.errors.Interrupted` for ``signum``."""
    raise Interrupted(f"received {signal.Signals(signum).name}: the workers were stopped", signum=signum)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM (what batch systems send before a kill) into an exception while waiting.

    Only in the main thread (the only one Python lets set handlers), and only where the program
    has set no handler of its own, which is kept.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):  # the program has its own handler: keep it
        yield
        return
    signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def is_signal(exc: BaseException) -> bool:
    """True for SIGINT/SIGTERM received here; False for a worker's failure, even a KeyboardInterrupt or
    SystemExit raised in a task (the boss hands those back with the run's ``report``)."""
    return isinstance(exc, (KeyboardInterrupt, Interrupted)) and getattr(exc, "report", None) is None
