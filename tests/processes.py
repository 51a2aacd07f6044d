"""Process checks shared by the tests: is it still running, wait for it to end, kill ours, run one on a terminal."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time
from typing import Callable, Iterable, List, Optional, Tuple

import psutil

from taylor.spawner import NAME

#: The name the spawner process gives itself.
SPAWNER = NAME.decode()


def _own_group(proc: psutil.Process) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid and proc.status() != psutil.STATUS_ZOMBIE
    except (OSError, psutil.Error):
        return False


def workers_of(pid: int) -> List[psutil.Process]:
    """The running processes a boss (``pid``) started for its tasks, once each is in its own
    process group: the children of its spawner, and its own other children (workers it
    forked itself, programs of command tasks).

    The spawner is told by its process group (the boss's), not by its name, which it takes
    a moment after it is forked; a worker not yet in its own group is not counted yet.
    """
    found = []
    try:
        children = psutil.Process(pid).children()
    except psutil.Error:
        return []
    for child in children:
        if _own_group(child):
            found.append(child)
            continue
        try:
            found += [grandchild for grandchild in child.children() if _own_group(grandchild)]
        except psutil.Error:
            pass
    return found


def spawner_pid(boss_pid: int) -> int:
    """The pid of the spawner of the boss ``boss_pid``: its child in its own process group."""
    group = os.getpgid(boss_pid)
    (pid,) = [c.pid for c in psutil.Process(boss_pid).children() if os.getpgid(c.pid) == group]
    return pid


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


def until(condition, within: float = 10.0, what: str = "condition"):
    """The first true value of ``condition()``, asked every 10 ms; fails the test after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def on_terminal(argv: List[str], cwd: str, env: dict, seen: Optional[Callable[[bytes, subprocess.Popen], None]] = None,
                within: float = 30.0) -> Tuple[int, str]:
    """Run ``argv`` with stdout and stderr on one pseudo-terminal, as a person at a terminal sees it; call
    ``seen(all read so far, the process)`` after each read.  Return (exit code, all it wrote); the
    process is killed if it has not ended within ``within`` seconds."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    data = b""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal closed: the program ended
                    break
                if not chunk:
                    break
                data += chunk
                if seen is not None:
                    seen(data, proc)
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        os.close(master)
    return proc.returncode, data.decode()
