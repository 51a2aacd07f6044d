"""Shared fixtures: every test must leave no process of its own behind."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest


def _descendants() -> dict:
    procs = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            procs[proc.pid] = proc.create_time()
        except psutil.Error:
            pass
    return procs


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Fail a test that leaves a process it started; kill such processes (by PID, ours only)."""
    before = _descendants()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        left = {pid: ct for pid, ct in _descendants().items() if before.get(pid) != ct}
        alive = []
        for pid in left:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                pass
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for proc in alive:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    assert not alive, f"processes left running by the test: {[(p.pid, p.cmdline()) for p in alive]}"
