"""Shared memory cannot leak: SIGKILL every process of a run, then look for what is left.

The array is an anonymous shared mapping and its lock an anonymous file: the
kernel frees them when no process maps or holds them any more.  The test
checks that, while the run goes on, the boss and the workers map the very
memory of the caller (no copy), and that once every process of the run has
been killed no process on the machine maps it or holds the lock's file, and
nothing new appeared in /dev/shm.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest
from processes import spawner_pid

pytest.importorskip("numpy")

if not sys.platform.startswith("linux"):
    pytest.skip("reads /proc", allow_module_level=True)

SCRIPT = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from taylor import Worker, run_as_server
    from taylor.schedulers import LaxistScheduler
    from taylor.util import SharedNumpyArray

    class Writer(Worker):
        _footprint = dict(attr=dict(slot=dict(type=int), pids=dict(type=SharedNumpyArray)))
        def _task(self):
            self.pids[self.slot] = os.getpid()
            time.sleep(120)

    pids = SharedNumpyArray.zeros(1 << 20, dtype="int64")  # 8 MiB
    boss = run_as_server({}, dict(slot=[0, 1]), scheduler=LaxistScheduler(),
                         sharedmemory_common_instructions=dict(pids=pids))
    while not (pids[0] and pids[1]):  # a test script may poll
        time.sleep(0.01)
    print(os.getpid(), boss.pid, pids[0], pids[1], pids.array.ctypes.data, pids._lock_fd, flush=True)
    time.sleep(120)
""")


def mapping_inode(pid: int, address: int) -> int:
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                assert "s" in fields[1], f"not a shared mapping: {line}"
                return int(fields[4])
    raise AssertionError(f"address {address:#x} is not mapped in process {pid}")


def holders(inode: int, lock_inode: int) -> list:
    """Processes on this machine that map ``inode`` or hold a file with ``lock_inode``."""
    found = []
    for proc in psutil.process_iter():
        try:
            with open(f"/proc/{proc.pid}/maps") as maps:
                if any(len(f := line.split()) > 4 and f[4] == str(inode) for line in maps):
                    found.append((proc.pid, "maps the array"))
            for fd in os.listdir(f"/proc/{proc.pid}/fd"):
                if os.stat(f"/proc/{proc.pid}/fd/{fd}").st_ino == lock_inode:
                    found.append((proc.pid, "holds the lock's file"))
        except OSError:
            continue
    return found


def is_zombie_or_gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def shm_names() -> set:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.mark.timeout(40)
def test_no_shared_memory_is_left_after_every_process_is_killed():
    before = shm_names()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    caller = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=root, stdout=subprocess.PIPE, text=True)
    run = []
    try:
        line = caller.stdout.readline()
        assert line, "the script ended before its workers started"
        caller_pid, boss, worker1, worker2, address, lock_fd = (int(x) for x in line.split())
        spawner = spawner_pid(boss)
        run = [caller_pid, boss, spawner, worker1, worker2]
        inode = mapping_inode(caller_pid, address)
        lock_inode = os.stat(f"/proc/{caller_pid}/fd/{lock_fd}").st_ino
        for pid in (boss, spawner, worker1, worker2):  # inherited, not copied: the same memory object everywhere
            assert mapping_inode(pid, address) == inode
        assert {pid for pid, _ in holders(inode, lock_inode)} == set(run)
        procs = [psutil.Process(pid) for pid in run]
        for pid in (worker1, worker2, boss, caller_pid):  # a crash of all at once; the spawner dies with the boss
            os.kill(pid, signal.SIGKILL)
        caller.wait(10)
        gone, alive = psutil.wait_procs(procs, timeout=10)
        alive = [p for p in alive if not is_zombie_or_gone(p)]  # zombies hold no memory
        assert not alive
        assert holders(inode, lock_inode) == []
        assert shm_names() - before == set()
    finally:
        for pid in run:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if caller.poll() is None:
            caller.kill()
            caller.wait()
        caller.stdout.close()
