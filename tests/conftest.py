"""Shared fixtures: every test must leave no process of its own behind."""

from __future__ import annotations

import psutil
import pytest
from processes import gone, kill


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
    left = [pid for pid, created in _descendants().items() if before.get(pid) != created]
    alive = gone(left, within=5.0)
    kill(alive)
    assert not alive, f"processes left running by the test: {alive}"
