"""A running worker as the boss sees it: its instructions, its process, its report channel, its state.

One :class:`RunningWorker` per started worker, from its start to its entry.
Schedulers see these (their instructions are attributes too).  This module
must not depend on the boss's loop, its launcher or the caller's channel.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

from . import wire
from .schedulers.base import expected_time_of, memory_of
from .worker import DirectSpec

__all__ = ["RunningWorker"]


class RunningWorker:
    """A running worker as schedulers see it: its instructions are attributes too."""

    def __init__(self, instructions: Dict[str, Any], pid: Optional[int] = None, fd: Optional[int] = None,
                 direct: Optional[DirectSpec] = None) -> None:
        self.instructions = instructions
        self.name: str = instructions["name"]
        self.pid = pid
        self.fd = fd  # None: a direct run (the program itself), which has no report channel
        self.direct = direct
        self.start_time = time.time()
        self.memory = memory_of(instructions)
        self.expected_time = expected_time_of(instructions)
        self.scheduler_ticket = instructions.get("scheduler_ticket")
        self.decoder = wire.Decoder()
        self.outcome: Optional[tuple] = None
        self.channel_open = fd is not None
        self.finished = False
        self.timed_out = False
        self.stop_requested = False
        self.others: list = []  # descendants outside its process group, seen when stopping
        self.spawned = False  # forked by the spawner (it dies with it)
        self.lost: Optional[str] = None  # why it ended unseen (its spawner died)
        self.end_time: Optional[float] = None  # when its report was complete, if before its exit
        self.killed = False  # the boss sent it SIGKILL
        self.remote: Any = None  # its launcher's handle when it runs elsewhere (a cluster's task)
        self.where: Optional[Dict[str, Any]] = None  # where it ran, when not on this host

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["instructions"][key]
        except KeyError:
            raise AttributeError(key) from None

    def __repr__(self) -> str:
        return f"<worker {self.name!r} pid={self.pid}>"
