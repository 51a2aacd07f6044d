"""The boss's one wait: file descriptors and their callbacks over epoll or poll.

A thin layer rather than :mod:`selectors`: the boss registers and drops one
descriptor per worker, so the per-call cost of the generic layer shows in the
task rate.

Depends on nothing of taylor and knows nothing of workers: descriptors and callbacks only.
"""

from __future__ import annotations

import select
from typing import Callable, Dict, List, Optional

__all__ = ["Poller", "READ", "WRITE"]

READ = select.POLLIN
WRITE = select.POLLOUT
_GONE = select.POLLHUP | select.POLLERR  # reported as readable: the read says what happened

Callback = Callable[[int, int], None]


class Poller:
    """Waits on descriptors and runs each ready one's callback with (fd, events)."""

    def __init__(self) -> None:
        if hasattr(select, "epoll"):
            self._poll = select.epoll()
            self._unit = 1.0  # epoll takes seconds...
        else:
            self._poll = select.poll()
            self._unit = 1000.0  # ...poll takes milliseconds
        self._callbacks: Dict[int, Callback] = {}

    def fileno(self) -> Optional[int]:
        """The descriptor behind the poller (epoll), to close in forked children."""
        fileno = getattr(self._poll, "fileno", None)
        return fileno() if fileno else None

    def register(self, fd: int, callback: Callback, events: int = READ) -> None:
        self._callbacks[fd] = callback
        self._poll.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        if fd in self._callbacks:
            self._poll.modify(fd, events)

    def unregister(self, fd: int) -> None:
        if self._callbacks.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def wait(self, timeout: Optional[float]) -> None:
        """Block until a descriptor is ready or ``timeout`` seconds pass; run callbacks."""
        ready: List = self._poll.poll(-1 if timeout is None else timeout * self._unit)
        for fd, events in ready:
            callback = self._callbacks.get(fd)
            if callback is not None:
                callback(fd, (events | READ) if events & _GONE else events)
