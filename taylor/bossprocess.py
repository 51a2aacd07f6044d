"""The caller's handle on one boss process: its fork, its channel, its death, its reaping.

Every wait here is one blocking wait on two things at once, the boss's channel and a pipe that
closes when the boss process ends, so no wait can hang on a boss that is gone; every wait that
follows an order to stop is bounded, and a boss that does not obey in time (stopped with SIGSTOP,
stuck) is killed, with the programs its workers started.  What the messages mean is the
:class:`~taylor.bossrecord.RunRecord`'s business; when to wait and what to send is the Boss's.

Depends on the boss loop (``engine.serve``, run in the forked child), the wire format and the run
record; must not import the Boss class (``boss.py``), which is built on it.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import socket
import sys
import time
import weakref
from typing import Any, Callable, List, Optional

from . import wire
from .bossrecord import RunRecord
from .engine import Options, serve
from .errors import BossClosedError, BossDiedError, TaylorError, describe_exit
from .forking import kill_groups
from .interrupts import signals_deferred

__all__ = ["BossProcess", "wait_readable"]

_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)  # a dead boss is an EPIPE, even if SIGPIPE kills by default
_live: weakref.WeakSet[BossProcess] = weakref.WeakSet()  # not reaped yet: a new boss must close their channels


class BossProcess:
    """Fork a boss process running ``scheduler`` with ``options``, and talk to it.

    Messages received go to ``record``; the boss's death is recorded there too (as the run's
    failure, with the entries received before), and raised.
    """

    def __init__(self, scheduler: Any, options: Options, record: RunRecord) -> None:
        self.record = record
        self.decoder = wire.Decoder()
        self.reaped = False
        self.broken = False  # we closed our side (interrupted mid-message, or a boss too slow to read)
        self.exitcode: Optional[int] = None
        self.owner = os.getpid()
        ours, theirs = socket.socketpair()
        sentinel_r, sentinel_w = os.pipe()
        others = [process for process in list(_live) if not process.reaped]
        caller_pid = os.getpid()
        for stream in (sys.stdout, sys.stderr):  # or the children would print it again
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:  # the boss process
            code = 70
            try:
                ours.close()
                os.close(sentinel_r)
                for process in others:
                    process.disown()
                code = serve(theirs.detach(), caller_pid, scheduler, options, [sentinel_w])
            except BaseException:  # noqa: BLE001 - never return into the caller's code
                with contextlib.suppress(BaseException):
                    import traceback
                    traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        os.close(sentinel_w)
        self.pid: int = pid
        self.sock = ours
        self.fd = ours.fileno()
        self.sentinel = sentinel_r  # readable (at its end) once the boss process has ended
        _live.add(self)

    @property
    def label(self) -> str:
        return self.record.label

    def disown(self) -> None:
        """In a forked child (a new boss process): close this other boss's descriptors here,
        through the objects that own them, and mark it as nothing to stop or reap from here.

        Closing them by number would leave the socket object owning a number it
        no longer has: when the child's garbage collector later frees this object,
        the socket would close that number again, by then one of the child's own
        descriptors (its epoll, its spawner's socket).
        """
        self.reaped = True
        with contextlib.suppress(OSError, AttributeError):
            os.close(self.sock.detach())
        with contextlib.suppress(OSError, AttributeError):
            os.close(self.sentinel)

    def reap(self, block: bool = True) -> None:
        """Collect the boss process's exit status (``block=False``: only if it has ended)."""
        if self.reaped:
            return
        pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return
        self.exitcode = os.waitstatus_to_exitcode(status)
        self.reaped = True
        self.sock.close()
        os.close(self.sentinel)
        _live.discard(self)

    # ------------------------------------------------------------- the channel
    def send(self, kind: str, payload: Any, data: Optional[Any] = None, timeout: Optional[float] = None) -> None:
        """Send a message (``data``: already encoded, as bytes or parts); with ``timeout``, a boss
        that does not read it in time (stopped) has the channel closed on it instead, which tells
        it to stop its workers too."""
        if self.record.final is not None or self.reaped:
            raise BossClosedError(f"the boss{self.label} has ended its run; it takes no more {kind}")
        if self.broken:
            raise BossClosedError(f"the channel to the boss{self.label} was closed by an interruption")
        data = data if data is not None else wire.encode((kind, payload))
        try:
            if timeout is not None:
                self.sock.settimeout(timeout)
            if isinstance(data, list):
                wire.send_parts(self.sock, data, _NOSIGNAL)
            else:
                self.sock.sendall(data, _NOSIGNAL)
        except TimeoutError:
            self.broken = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.pump(lambda: False)  # the boss is gone: say how (raises)
        except BaseException:
            # Interrupted mid-message (Ctrl-C): what was sent cannot be trusted.  Closing our
            # side makes the boss stop every worker; entries can still be read.
            self.broken = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
            raise
        finally:
            if timeout is not None:
                self.sock.settimeout(None)

    def signal_quietly(self, name: str, timeout: Optional[float] = None) -> None:
        """Send control signal ``name`` whatever the run's state; a boss gone already, or not
        reading within ``timeout`` seconds (stopped), is let be: the caller's bounded waits end it."""
        with contextlib.suppress(OSError):
            if timeout is not None:
                self.sock.settimeout(timeout)
            try:
                self.sock.sendall(wire.encode(("signal", name)), _NOSIGNAL)
            finally:
                if timeout is not None:
                    self.sock.settimeout(None)

    def pump(self, until: Callable[[], bool], block: bool = True, timeout: Optional[float] = None) -> None:
        """Receive messages until ``until()`` holds; raise if the boss died first.

        Returns early when nothing is waiting (``block=False``) or after
        ``timeout`` seconds without ``until()`` holding.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not until():
            if not block:
                wait_for = 0.0
            elif deadline is None:
                wait_for = None
            else:
                wait_for = max(0.0, deadline - time.monotonic())
            ready = wait_readable([self.fd, self.sentinel], wait_for)
            if not ready:
                return
            if self.fd in ready:
                received = self.receive()
                if received or (received is None and self.sentinel not in ready):
                    continue
            # End of stream, or the boss process has ended: read what it sent before.
            while self.receive():
                pass
            if not until():
                self._on_death()
            return

    def receive(self) -> Optional[bool]:
        """Read what is waiting: True if something came, False at end of stream, None if nothing yet.

        SIGINT/SIGTERM are held meanwhile (the read never blocks): a handler
        that raises between the read and the decoding would lose what was read.
        """
        with signals_deferred():
            return self._receive_now()

    def _receive_now(self) -> Optional[bool]:
        try:
            messages = self.decoder.read(self.sock)
        except (EOFError, OSError):
            return False
        if messages is None:
            return None
        unreadable = None
        for message in messages:  # every message, even after one that cannot be read
            if isinstance(message, wire.Undecodable):
                unreadable = unreadable or message
            elif self.record.handle(message):
                self.signal_quietly("STOP_RIGHTNOW")
        if unreadable is not None:
            raise TaylorError(f"a message from the boss{self.label} could not be read: {unreadable.error}")
        return True

    # ------------------------------------------------------- death and endings
    def _on_death(self) -> None:
        record = self.record
        if record.final is not None:
            return
        self.reap()
        unfinished = record.unfinished()  # before end_orphans forgets who was running
        if self.broken:  # we closed the channel ourselves: the boss stopped, as asked
            record.final = record.report("stopped", **unfinished)
            return
        self.end_orphans()
        report = record.report("failed", **unfinished)
        record.end_with(BossDiedError(
            f"the boss process{self.label} (pid {self.pid}) died ({describe_exit(self.exitcode)}) before "
            f"the end of the run; its workers were killed with it. The {len(record.entries)} entries received "
            "before are in this error's .report", exitcode=self.exitcode), report)
        record.raise_failure()

    def end_orphans(self) -> None:
        """The boss was killed outright: its workers die with it (parent-death signal), but
        the programs they started, or a command the boss spawned itself, do not.  End the
        process group of every worker that had not ended."""
        kill_groups(self.record.running.values())
        self.record.running.clear()

    def wait_ended(self, seconds: Optional[float]) -> None:
        """Wait at most ``seconds`` for the boss process to end (not reaped yet)."""
        wait_readable([self.sentinel], seconds)

    def reap_within(self, seconds: float) -> None:
        """Reap the boss, which is ending; kill it if it has not ended ``seconds`` later."""
        if self.reaped:
            return
        self.wait_ended(seconds)
        self.reap(block=False)
        if not self.reaped:
            self.kill_stuck(seconds)

    def kill_stuck(self, waited: float) -> None:
        """Kill a boss that did not end within ``waited`` seconds of being told to: its spawner
        and workers die with it (parent-death signals), the programs they started are ended
        here; the entries received are kept, and the report says what happened."""
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(TaylorError):
            while self.receive():  # what it had sent
                pass
        self.reap()
        record = self.record
        unfinished = record.unfinished()  # before end_orphans forgets who was running
        self.end_orphans()
        if record.final is not None:  # its run was over: only its exit was missing
            return
        error = BossDiedError(
            f"the boss process{self.label} (pid {self.pid}) did not end its run within {waited:g} s of being "
            "told to stop (stopped with SIGSTOP, or stuck), so it was killed, with its workers and the programs "
            f"they started. The {len(record.entries)} entries received before are in this error's .report",
            exitcode=self.exitcode)
        record.end_with(error, record.report("stopped", error=error, **unfinished))

    def abandon(self, grace: float) -> None:
        """The Boss was dropped unfinished: close the channel (the boss stops its workers), give it
        ``grace`` seconds to end, then kill it.  Never raises; does nothing in a forked child."""
        if self.reaped or os.getpid() != self.owner:
            return  # in a forked child, this boss belongs to the parent
        with contextlib.suppress(Exception):
            self.sock.close()  # the boss sees the end of stream and stops its workers
            self.wait_ended(grace)
            self.reap(block=False)
            if not self.reaped:
                os.kill(self.pid, signal.SIGKILL)
                self.reap()
                self.end_orphans()


def wait_readable(fds: List[int], timeout: Optional[float]) -> List[int]:
    """Those of ``fds`` readable (or at their end) within ``timeout`` seconds (None: no limit)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(None if timeout is None else math.ceil(timeout * 1000))]


# A forked child (the boss, a worker, a user's own fork) owns none of its parent's boss processes.
os.register_at_fork(after_in_child=_live.clear)
