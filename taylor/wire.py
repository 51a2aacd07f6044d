"""The one message format spoken between caller, boss and workers.

A message is an 8-byte big-endian length followed by a pickle.  Readers decode
incrementally (:class:`Decoder`), so the boss never blocks on a slow or dead
peer: it reads what is there and waits for the rest with everything else.
Writers in the boss queue bytes (:class:`Outbox`) and flush them when the
channel is writable, so a caller that does not read cannot stall the boss.

Depends on nothing of taylor: every process speaks it, so it imports none of their modules.
"""

from __future__ import annotations

import errno
import os
import pickle
import struct
from collections import deque
from typing import Any, Deque, List, Optional

__all__ = ["encode", "Decoder", "Outbox", "write_all", "MessageTooLarge", "read_chunk", "Undecodable", "pack_report"]

_HEADER = struct.Struct("!Q")
_CHUNK = 1 << 20
CHUNK = _CHUNK  # what read_chunk reads at most


class MessageTooLarge(ValueError):
    """A message is larger than the limit set for its channel."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


def encode(obj: Any, limit: int = 0) -> bytes:
    """Pickle ``obj`` into one framed message; raise before sending anything."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    if limit and len(data) > limit:
        raise MessageTooLarge(len(data), limit)
    return _HEADER.pack(len(data)) + data


_NONE = pickle.dumps(None, protocol=pickle.HIGHEST_PROTOCOL)


def pack_report(obj: Any) -> bytes:
    """A worker's report pickled on its own, to travel inside an entry message.

    Its reader unpickles it apart from the message (``pickle.loads``), so a
    report it cannot load fails that worker's entry alone.  ``None`` (tasks
    that write their results themselves) costs nothing.
    """
    return _NONE if obj is None else pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


class Undecodable:
    """Stands for a message whose pickle could not be loaded; ``error`` says why."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Decoder:
    """Turns a byte stream into messages, whatever the chunking."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> List[Any]:
        """Add ``data``; return the messages it completes (maybe none).

        A message that cannot be unpickled comes out as an
        :class:`Undecodable` in its place, so one bad message never hides the
        others or corrupts the stream.
        """
        buffer = self._buffer
        buffer += data
        messages = []
        start = 0
        size = len(buffer)
        try:
            while size - start >= _HEADER.size:
                (length,) = _HEADER.unpack_from(buffer, start)
                end = start + _HEADER.size + length
                if end > size:
                    break
                with memoryview(buffer)[start + _HEADER.size:end] as payload:
                    start = end
                    try:
                        messages.append(pickle.loads(payload))
                    except Exception as exc:  # noqa: BLE001 - reported to the reader
                        messages.append(Undecodable(exc))
        finally:
            if start:
                del buffer[:start]
        return messages

    @property
    def partial(self) -> bool:
        """True when bytes of an incomplete message are waiting."""
        return bool(self._buffer)


def read_chunk(fd: int) -> Optional[bytes]:
    """Read what is available on a non-blocking ``fd``; ``b''`` means EOF.

    Returns ``None`` when nothing is available yet.
    """
    try:
        return os.read(fd, _CHUNK)
    except BlockingIOError:
        return None
    except OSError as exc:  # a reset socket is an end of stream too
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            return b""
        raise


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to a blocking ``fd``."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Outbox:
    """Bytes waiting to be written to a non-blocking ``fd``."""

    __slots__ = ("fd", "_queue", "_size")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._queue: Deque[memoryview] = deque()
        self._size = 0

    def push(self, data: bytes) -> None:
        self._queue.append(memoryview(data))
        self._size += len(data)

    def __len__(self) -> int:
        """Bytes waiting."""
        return self._size

    def flush(self) -> bool:
        """Write as much as the channel takes now; True once all is written.

        Raises :class:`BrokenPipeError` when the reader is gone.
        """
        queue = self._queue
        if len(queue) > 1:  # one write (one wake-up of the reader) for all that waits
            joined = memoryview(b"".join(queue))
            queue.clear()
            queue.append(joined)
        while queue:
            head = queue[0]
            try:
                written = os.write(self.fd, head)
            except BlockingIOError:
                return False
            self._size -= written
            if written == len(head):
                queue.popleft()
            else:
                queue[0] = head[written:]
        return True
