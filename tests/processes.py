"""Process checks shared by the tests: is it still running, wait for it to end, kill ours."""

from __future__ import annotations

import os
import signal
import time
from typing import Iterable, List

import psutil

#: The name the spawner process gives itself (see taylor.spawner).
SPAWNER = "taylor-spawner"


def workers_of(pid: int) -> List[psutil.Process]:
    """The running processes a boss (``pid``) started for its tasks: the children of
    its spawner process, and its own other children (programs of command tasks)."""
    found = []
    for child in psutil.Process(pid).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            found += child.children() if child.name() == SPAWNER else [child]
        except psutil.Error:
            pass
    return [p for p in found if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def spawner_of(boss) -> psutil.Process:
    """The spawner of ``boss`` once it is ready: it has sent the boss its word and waits in its
    loop, and the boss has read that word (a report request makes it read what the spawner
    said).  From then on the spawner forks every worker with small instructions."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for child in psutil.Process(boss.pid).children():
            try:
                if child.name() == SPAWNER and child.status() == psutil.STATUS_SLEEPING:
                    boss.get_report()
                    return child
            except psutil.Error:
                pass
        time.sleep(0.005)
    raise AssertionError(f"boss {boss.pid} has no ready spawner")


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
