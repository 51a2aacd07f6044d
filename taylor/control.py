"""The caller's control channel, on the boss's side: what the caller says, and what the boss tells it.

:class:`ControlChannel` decodes the caller's messages (instructions, control
signals), queues the boss's messages in an outbox (entries wait a few
milliseconds to go together, answers go at once), sends the final report and
delivers it whatever the caller does, and ends the run when the caller is
gone.  It is a part of :class:`taylor.engine.Engine`, whose state it shares;
the attributes it owns are listed below.  It must not depend on how workers
are started or how their ends become entries.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from typing import Any, Dict, Optional

from . import wire
from .errors import InstructionsError, Interrupted, TaylorError
from .poller import READ, WRITE

__all__ = ["BATCH_BYTES", "BATCH_DELAY", "ControlChannel", "SIGNALS"]

log = logging.getLogger("taylor.boss")

#: Control signals and their meaning (the caller sends their names).
SIGNALS = {
    "HALT": "Suspend starting workers until RESUME.",
    "RESUME": "Start workers again as the scheduler allows.",
    "SEND_REPORT": "Send an interim report, and go on.",
    "END": "Take no more instructions; finish all pending work, then end.",
    "STOP": "Start nothing more; let running workers finish, then end.",
    "STOP_LISTENING": "Report now and end; running workers finish unobserved.",
    "STOP_RIGHTNOW": "Terminate running workers at once, then end.",
}

#: Entries for the caller are sent together once this old (seconds) or this large (bytes).
BATCH_DELAY = 0.005
BATCH_BYTES = 1 << 16


class ControlChannel:
    """The engine's side of the control channel.

    Owns: ``control`` (the socket), ``control_decoder``, ``outbox``,
    ``flush_at`` (when queued entries go out), ``caller_fd`` (a pidfd of the
    caller), ``caller_lost``, ``silent`` (nothing more is sent), ``told_aborting``.
    Uses from the engine: ``poller``, ``wakeup_r``, the run's state
    (``pending``, ``workers``, ``counts``, ``halted``, ``ending``, ``stopping``,
    ``failure``, ``error``, ``dirty``), ``launcher.update`` and the engine's
    ``_dispatch``, ``_stop_workers``, ``_fail_run``, ``_counts``.
    """

    def _init_channel(self, control: int) -> None:
        self.control = control
        self.control_decoder = wire.Decoder()
        self.outbox = wire.Outbox(control)
        self._outbox_was_empty = True
        self.flush_at: Optional[float] = None  # when queued entries go to the caller
        self.caller_fd: Optional[int] = None
        self.caller_lost = False
        self.silent = False
        self.told_aborting = False  # the caller was told the run ends on its own (see _tell_aborting)

    def _on_control(self, fd: int, mask: int) -> None:
        if mask & WRITE:
            self._flush_outbox()
        if not mask & READ:
            return
        try:
            messages = self.control_decoder.read(fd)
        except EOFError:
            self._caller_gone()
            return
        for message in messages or ():
            self._handle(message)

    def _handle(self, message: Any) -> None:
        if isinstance(message, wire.Undecodable):
            # Instructions dropped here would silently never run: fail the run instead.
            self._fail_run(InstructionsError(
                "instructions sent to the boss could not be unpickled there "
                f"({type(message.error).__name__}: {message.error}); their values must be of classes "
                "importable in the boss: define them (and import their modules) before creating the Boss"))
            return
        kind, payload = message
        if kind == "instructions":
            if self.stopping == "listening":  # the final report has gone: they could never be reported
                log.warning("%d instructions arrived after STOP_LISTENING; ignored", len(payload))
                return
            # A stopping boss starts nothing more: these are listed as pending in its final report.
            self.pending.extend(payload)
            self.dirty = True
        elif kind == "signal":
            self._on_signal(payload)

    def _on_signal(self, name: str) -> None:
        if name == "SEND_REPORT":
            self.launcher.update()  # what the launcher heard before now is part of the state
            if self.dirty:  # report the state after the decisions already due, not before them
                self._dispatch()
            self._send(("status", self._status_payload()))
        elif name == "HALT":
            self.halted = True
        elif name == "RESUME":
            self.halted = False
            self.dirty = True
        elif name == "END":
            self.ending = True
            self.halted = False  # ending means finishing what is pending
            self.dirty = True
        elif name == "STOP":
            self.stopping = self.stopping or "stop"
        elif name == "STOP_LISTENING":
            self.stopping = self.stopping or "listening"
            self._send_final(deliver=False)  # the loop writes it out as the caller reads
            self.silent = True
        elif name == "STOP_RIGHTNOW":
            self.stopping = "rightnow"
            self._stop_workers("rightnow")

    def _on_caller_gone(self, fd: int, mask: int) -> None:
        self._caller_gone()

    def _caller_gone(self) -> None:
        """The caller died or closed its end: stop everything, nobody is listening."""
        self.caller_lost = True
        if self.caller_fd is not None:
            self.poller.unregister(self.caller_fd)
            os.close(self.caller_fd)
            self.caller_fd = None
        self.poller.unregister(self.control)
        self.silent = True
        self.stopping = "caller gone"
        self._stop_workers("caller gone")

    def _send(self, message: Any, urgent: bool = True) -> None:
        """Queue a message for the caller; entries wait a few milliseconds to go
        out together (one wake-up of the caller for many), answers go at once."""
        if self.silent:
            return
        self.outbox.push(wire.encode_parts(message))
        if urgent or len(self.outbox) >= BATCH_BYTES:
            self.flush_at = 0.0
        elif self.flush_at is None:
            self.flush_at = time.monotonic() + BATCH_DELAY

    def _flush_outbox(self) -> None:
        self.flush_at = None
        try:
            done = self.outbox.flush()
        except OSError:  # the caller is gone
            self._caller_gone()
            return
        if done != self._outbox_was_empty:
            self._outbox_was_empty = done
            self.poller.modify(self.control, READ if done else READ | WRITE)

    def _status_payload(self) -> Dict[str, Any]:
        return {"running": sorted(self.workers), "counts": self._counts()}

    def _tell_aborting(self, news: Dict[str, Any]) -> None:
        """Tell the caller at once that the run is ending on its own (a worker's failure under
        on_error='abort', a failure of the run, SIGTERM), before the final report, which
        waits for the running workers to stop: every call of the caller raises from then on
        rather than queue work that will never run."""
        if self.told_aborting:
            return
        self.told_aborting = True
        try:
            self._send(("aborting", news))
        except Exception:  # noqa: BLE001 - an error that does not pickle: the final report will say
            self._send(("aborting", {}))

    def _send_final(self, deliver: bool = True) -> None:
        """Send the end-of-run message, waiting until the caller has it (or is gone).

        With ``deliver=False`` it is only queued: the loop goes on serving the
        workers and writes it as the caller reads.
        """
        if self.silent:
            return
        if self.error is not None:
            status = "stopped" if isinstance(self.error, Interrupted) else "failed"
        elif self.failure is not None:
            status = "failed"
        elif self.stopping == "rightnow":
            status = "stopped"
        elif self.pending or self.workers:
            status = "pending"
        else:
            status = "finished"
        final = {"status": status, "counts": self._counts(), "error": self.error,
                 "failure": self.failure["name"] if self.failure else None}
        if self.pending:
            final["pending"] = [p["name"] for p in self.pending]  # the caller has the instructions
        if self.workers:
            final["running"] = sorted(self.workers)
        try:
            self.outbox.push(wire.encode(("final", final)))
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable pending instruction
            final = {"status": status, "counts": self._counts(),
                     "error": TaylorError(f"the final report could not be sent: {exc}"), "failure": None}
            self.outbox.push(wire.encode(("final", final)))
        if deliver:
            self._deliver()
        else:
            self.flush_at = 0.0

    def _deliver(self) -> None:
        """Write out everything queued for the caller, whatever it does meanwhile.

        What the caller sends now is read and dropped (the run is over), so a
        caller blocked writing a large batch of instructions cannot deadlock
        with a boss writing its final report.  Returns when all is written or
        the caller is gone.
        """
        waiter = select.poll()
        waiter.register(self.control, select.POLLIN | select.POLLOUT)
        waiter.register(self.wakeup_r, select.POLLIN)
        if self.caller_fd is not None:  # the caller's socket may outlive it in a child of its own
            waiter.register(self.caller_fd, select.POLLIN)
        while self.outbox:
            for fd, events in waiter.poll():
                if fd == self.caller_fd or events & select.POLLNVAL:  # gone, or no longer a descriptor
                    return
                if fd == self.wakeup_r:
                    if signal.SIGTERM in (wire.read_chunk(fd) or b""):
                        return
                    continue
                if events & select.POLLOUT:
                    try:
                        self.outbox.flush()
                    except OSError:  # the caller is gone
                        return
                if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    if wire.read_chunk(self.control) == b"":
                        return
