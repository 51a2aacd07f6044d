"""Worker classes and helpers for the Dask cluster tests."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time
from typing import Any, List

from taylor import Worker
from taylor.instructions import resolve


class Where(Worker):
    """Reports where it ran; may sleep first, and start a child process that sleeps too."""

    _footprint = dict(attr=dict(
        where=dict(type=bool, values=[True]),
        seconds=dict(type=float, optional=True, default=0.0),
        child=dict(type=bool, optional=True, default=False),
    ))

    def _task(self):
        if self.child:
            subprocess.Popen(["sleep", "60"])  # noqa: S603, S607 - a grandchild for the tree-kill tests
        time.sleep(self.seconds)
        with open("/proc/self/comm") if os.path.exists("/proc/self/comm") else open(os.devnull) as comm:
            name = comm.read().strip() or "taylor-task"
        return dict(pid=os.getpid(), ppid=os.getppid(), host=socket.gethostname(), name=name)


def start(launcher: Any, **row: Any) -> Any:
    """Resolve one instruction set as the caller does, and start it with ``launcher``."""
    (instructions,) = resolve([row])
    return launcher.start(instructions.name, instructions.worker_class, instructions.attributes({}),
                          memory=instructions.memory, timeout=instructions.timeout)


def collect(launcher: Any, count: int, within: float = 30.0) -> List[Any]:
    """Wait (bounded, on the launcher's descriptor) for ``count`` ends."""
    ended: List[Any] = []
    deadline = time.monotonic() + within
    while len(ended) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(ended)} of {count} tasks ended within {within} s: {ended}"
        select.select([launcher.fileno()], [], [], left)
        ended += launcher.ended()
    return ended


class Pinned(Worker):
    """Reports the CPUs it may use, its host and when it ran (for the binding tests)."""

    _footprint = dict(attr=dict(
        pinned=dict(type=bool, values=[True]),
        seconds=dict(type=float, optional=True, default=0.0),
    ))

    def _task(self):
        start = time.time()
        time.sleep(self.seconds)
        return dict(cpus=sorted(os.sched_getaffinity(0)), host=socket.gethostname(), pid=os.getpid(),
                    start=start, end=time.time())
