"""Worker classes for the tests (imported before any Boss is created)."""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import time

from taylor import Worker
from taylor.examples import Sleeper  # noqa: F401 - registered for the tests


class Noop(Worker):
    """Does nothing; reports its instructions' ``value``."""

    _footprint = dict(attr=dict(
        noop=dict(type=bool, values=[True]),
        value=dict(type=int, optional=True, default=None),
        payload=dict(type=object, optional=True, default=None),
    ))

    def _task(self):
        return self.value


class Faulty(Worker):
    """Ends in the way its ``fault`` instruction says."""

    _footprint = dict(attr=dict(
        fault=dict(values=["raise", "exit", "segfault", "sigkill", "hang", "ok", "unpicklable", "huge"]),
        seconds=dict(type=float, optional=True, default=30.0),
    ))

    def _task(self):
        if self.fault == "raise":
            raise KeyError("bad key")
        if self.fault == "exit":
            os._exit(3)
        if self.fault == "segfault":
            faulthandler.disable()  # the crash is deliberate: no C-level dump from pytest's handler
            ctypes.string_at(0)
        if self.fault == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.fault == "hang":
            time.sleep(self.seconds)
        if self.fault == "unpicklable":
            return lambda: None
        if self.fault == "huge":
            return b"x" * (4 << 20)
        return "fine"
