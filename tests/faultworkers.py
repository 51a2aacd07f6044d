"""Worker classes for the fault-injection tests (imported before any Boss is created).

Kept apart from tests/workers.py so that the fault suite owns its crashes; the
scripts run by the caller-side tests import this module too.
"""

from __future__ import annotations

import ctypes
import faulthandler
import json
import os
import resource
import signal
import subprocess
import time

import psutil

from taylor import Worker
from taylor.forking import set_parent_death_signal


class Unloadable:
    """Pickles fine in the worker, but raises when the boss unpickles it."""

    def __reduce__(self):
        return (_refuse_to_load, ("made to fail in the boss",))


def _die_with_parent():
    set_parent_death_signal(signal.SIGKILL)


def _refuse_to_load(why):
    raise RuntimeError(why)


class NeedsTwoArgs(Exception):
    """An exception pickle cannot rebuild (its __init__ wants two arguments)."""

    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


class Crasher(Worker):
    """Ends the way its ``crash`` instruction says; may start programs of its own first."""

    _footprint = dict(attr=dict(
        crash=dict(values=["ok", "exit", "sigkill", "segfault", "memory", "hang", "stubborn", "children",
                           "unpicklable", "unloadable", "badexc", "huge"]),
        seconds=dict(type=float, optional=True, default=30.0),
        size=dict(type=int, optional=True, default=4 << 20),
        pidfile=dict(optional=True, default=None),
        ignore_term=dict(type=bool, optional=True, default=False),
        pdeath=dict(type=bool, optional=True, default=False),
    ))

    def _task(self):
        faulthandler.disable()  # its crashes and signals are deliberate: no dump from pytest's handler
        crash = self.crash
        if self.ignore_term or crash == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if crash == "exit":
            os._exit(3)
        if crash == "sigkill":  # what the out-of-memory killer does
            os.kill(os.getpid(), signal.SIGKILL)
        if crash == "segfault":
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the working tree
            ctypes.string_at(0)
        if crash == "memory":
            # A real allocation failure, made safe: cap this process's address space
            # 256 MiB above what it uses now, then ask for 1 GiB.
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (used + (256 << 20), hard))
            return len(bytearray(1 << 30))
        if crash == "children":
            self._start_children()
        if crash in ("hang", "stubborn", "children"):
            end = time.monotonic() + self.seconds
            while time.monotonic() < end:  # a SIGTERM-ignoring sleep must survive EINTR
                time.sleep(max(0.0, end - time.monotonic()))
            return "woke up"
        if crash == "unpicklable":
            return lambda: None
        if crash == "unloadable":
            return Unloadable()
        if crash == "badexc":
            raise NeedsTwoArgs("a", "b")
        if crash == "huge":
            return b"x" * self.size
        return "fine"

    def _start_children(self):
        """A program in the worker's group, one in a new session, and one there that ignores SIGTERM."""
        if self.pdeath:  # what the documentation advises for programs that must not outlive a killed boss
            plain = subprocess.Popen(["sleep", "60"], preexec_fn=_die_with_parent)
            pids = [plain.pid]
        else:
            plain = subprocess.Popen(["sleep", "60"])
            session = subprocess.Popen(["sleep", "61"], start_new_session=True)
            stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 62 & wait"], start_new_session=True)
            pids = [plain.pid, session.pid, stubborn.pid]
            self._wait_for_grandchild(stubborn, pids)
        self._write_pids(pids)

    @staticmethod
    def _wait_for_grandchild(stubborn, pids):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # wait for sh's own child so that it is recorded too
            grandchildren = [p.pid for p in psutil.Process(stubborn.pid).children()]
            if grandchildren:
                pids += grandchildren
                break
            time.sleep(0.01)

    def _write_pids(self, pids):
        if self.pidfile:
            tmp = self.pidfile + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"worker": os.getpid(), "children": pids}, f)
            os.rename(tmp, self.pidfile)
