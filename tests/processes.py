"""Process checks shared by the tests: is it still running, wait for it to end, kill ours."""

from __future__ import annotations

import os
import signal
import time
from typing import Iterable, List

import psutil


def alive(pids: Iterable[int]) -> List[int]:
    """Those of ``pids`` still running (a zombie has ended: only its parent's wait is missing)."""
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.Error:
            pass
    return running


def gone(pids: Iterable[int], within: float = 5.0) -> List[int]:
    """Wait until none of ``pids`` runs; return those still running after ``within`` seconds."""
    pids = list(pids)
    deadline = time.monotonic() + within
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return alive(pids)


def kill(pids: Iterable[int]) -> None:
    """SIGKILL ``pids`` (processes the test started), ignoring those already gone."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
