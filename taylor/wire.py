"""The one message format spoken between caller, boss and workers.

A message is an 8-byte big-endian length followed by a pickle.  Readers decode
incrementally (:class:`Decoder`), so the boss never blocks on a slow or dead
peer: it reads what is there and waits for the rest with everything else.
Writers in the boss queue bytes (:class:`Outbox`) and flush them when the
channel is writable, so a caller that does not read cannot stall the boss.

Large payloads cross without copies in between.  A message made by
:func:`encode_parts` carries the buffers its pickle gave out of band (pickle
protocol 5: what is wrapped in :class:`pickle.PickleBuffer`, such as a call's
payload or a report pickled apart, and NumPy arrays) after the pickle,
written as they are (``writev``); the top bit of its length says so, and a
trailer ends it: the buffers' sizes, then their count.  A reader
gathers a large message in a buffer of its own, and its out-of-band buffers
are views of that buffer: a megabyte is copied from the kernel once, and
passed on to the next process from there.

Depends on nothing of taylor: every process speaks it, so it imports none of their modules.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import socket
import struct
from collections import deque
from typing import Any, Callable, Deque, List, Optional

__all__ = ["encode", "encode_parts", "Decoder", "Outbox", "write_all", "write_parts", "send_parts", "MessageTooLarge",
           "read_chunk", "Undecodable", "pack_report", "load_framed", "load_parted", "pickled_size",
           "HEADER_SIZE", "message_size"]

_HEADER = struct.Struct("!Q")
_SIZE = struct.Struct("!Q")
_COUNT = struct.Struct("!I")
#: Flag in the header's length: the message carries buffers out of band (see above).
_OUT_OF_BAND = 1 << 63
#: What one read takes at most: 64 KiB, a pipe's capacity (a larger buffer is allocated, and
#: trimmed, at each read: slower for the many small messages, and large ones are read in place).
READ_SIZE = 1 << 16
#: Messages of this many bytes or more are gathered in a buffer of their own (see :class:`Decoder`).
LARGE = 1 << 18
#: Parts one ``writev`` takes at most (the system's IOV_MAX is 1024 on Linux).
_MAX_PARTS = 512


class MessageTooLarge(ValueError):
    """A message is larger than the limit set for its channel."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


_NO_HEADER = bytes(_HEADER.size)


def encode(obj: Any, limit: int = 0) -> bytes:
    """Pickle ``obj`` into one framed message, every buffer in band; raise before sending anything.

    Pickled straight after room for its header, which is filled in last: the
    message is built in one buffer (``getvalue`` hands it over without a
    copy), where ``header + pickle.dumps(obj)`` would copy a large one twice.
    """
    return encode_parts(obj, limit, out_of_band=False)[0]


def encode_parts(obj: Any, limit: int = 0, out_of_band: bool = True) -> List[Any]:
    """``obj`` as one framed message in parts, to be written one after the other
    (:func:`write_parts`, :meth:`Outbox.push`): its out-of-band buffers are
    parts of their own, never copied.  Raises before anything is sent."""
    buffers: List[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    stream.write(_NO_HEADER)
    pickle.Pickler(stream, protocol=5, buffer_callback=buffers.append if out_of_band else None).dump(obj)
    size = stream.tell() - _HEADER.size
    parts: List[Any] = [stream]
    if buffers:
        raws = [buffer.raw() for buffer in buffers]
        trailer = b"".join(_SIZE.pack(raw.nbytes) for raw in raws) + _COUNT.pack(len(raws))
        size += sum(raw.nbytes for raw in raws) + len(trailer)
        parts += raws
        parts.append(trailer)
    if limit and size > limit:
        raise MessageTooLarge(size, limit)
    stream.seek(0)
    stream.write(_HEADER.pack(size | _OUT_OF_BAND if buffers else size))
    parts[0] = stream.getvalue()
    return parts


class _Counter:
    """A file for the pickler that only counts what it is given."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self.size += size
        return size

    def buffer(self, buffer: pickle.PickleBuffer) -> None:
        self.size += buffer.raw().nbytes


def pickled_size(obj: Any) -> int:
    """About how many bytes ``obj`` takes in a message (:func:`encode_parts`), counted without
    making the message: the pickler hands large values to the counter as they are, uncopied."""
    counter = _Counter()
    pickle.Pickler(counter, protocol=5, buffer_callback=counter.buffer).dump(obj)
    return counter.size


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
    """Turns a byte stream into messages, whatever the chunking.

    A large message (:data:`LARGE` bytes or more) is gathered in a buffer of
    its own, allocated once at its full size as soon as its header is seen,
    and :meth:`read` reads the rest of it straight in there: a megabyte
    crosses from the kernel in one copy instead of being appended chunk by
    chunk to a growing buffer; its out-of-band buffers are views of it.
    """

    __slots__ = ("_buffer", "_large", "_flags", "_filled")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._large: Optional[bytearray] = None  # the large message being gathered
        self._flags = 0  # its header's flags
        self._filled = 0  # its bytes received so far

    def feed(self, data: Any) -> List[Any]:
        """Add ``data``; return the messages it completes (maybe none).

        A message that cannot be unpickled comes out as an
        :class:`Undecodable` in its place, so one bad message never hides the
        others or corrupts the stream.
        """
        messages: List[Any] = []
        if self._large is not None:
            data = self._fill(data, messages)
            if not data:
                return messages
        buffer = self._buffer
        buffer += data
        start = 0
        size = len(buffer)
        try:
            while size - start >= _HEADER.size:
                (length,) = _HEADER.unpack_from(buffer, start)
                flags, length = length & _OUT_OF_BAND, length & ~_OUT_OF_BAND
                end = start + _HEADER.size + length
                if end > size:
                    if length >= LARGE:  # gather it apart, at its full size
                        self._large = bytearray(length)
                        self._flags = flags
                        self._filled = size - start - _HEADER.size
                        self._large[:self._filled] = memoryview(buffer)[start + _HEADER.size:]
                        start = size
                    break
                with memoryview(buffer)[start + _HEADER.size:end] as payload:
                    start = end
                    messages.append(_load(payload, flags, owned=False))
        finally:
            if start:
                del buffer[:start]
        return messages

    def _fill(self, data: Any, messages: List[Any]) -> Any:
        """Add to the large message what ``data`` has of it; return the rest of ``data``."""
        large = self._large
        take = min(len(data), len(large) - self._filled)
        with memoryview(data) as view:
            large[self._filled:self._filled + take] = view[:take]
            rest = bytes(view[take:]) if take < len(data) else b""
        self._filled += take
        if self._filled == len(large):
            self._large = None
            messages.append(_load(large, self._flags, owned=True))
        return rest

    def read(self, source: Any) -> Optional[List[Any]]:
        """Read once from ``source`` (a non-blocking descriptor, or a socket read without waiting) and
        return the messages completed; None when nothing was there.  Raises :class:`EOFError` at the
        end of the stream (a reset connection is one too)."""
        try:
            large = self._large
            if large is None:
                data = os.read(source, READ_SIZE) if type(source) is int else \
                    source.recv(READ_SIZE, socket.MSG_DONTWAIT)
                if not data:
                    raise EOFError
                return self.feed(data)
            with memoryview(large) as view:
                rest = view[self._filled:]
                got = os.readv(source, [rest]) if type(source) is int else \
                    source.recv_into(rest, 0, socket.MSG_DONTWAIT)
                rest.release()
            if not got:
                raise EOFError
            self._filled += got
            if self._filled < len(large):
                return []
            self._large = None
            return [_load(large, self._flags, owned=True)]
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE):
                raise EOFError from None
            raise

    @property
    def partial(self) -> bool:
        """True when bytes of an incomplete message are waiting."""
        return bool(self._buffer) or self._large is not None


def _load(payload: Any, flags: int, owned: bool) -> Any:
    """Unpickle one message's ``payload``; its out-of-band buffers are views of it when the
    message ``owned`` it (a large message's own buffer), copies otherwise."""
    try:
        if not flags:
            return pickle.loads(payload)
        return load_parted(memoryview(payload), owned)
    except Exception as exc:  # noqa: BLE001 - reported to the reader
        return Undecodable(exc)


HEADER_SIZE = _HEADER.size


def message_size(header: bytes) -> int:
    """The size of the message (header included) whose first :data:`HEADER_SIZE` bytes are ``header``."""
    return _HEADER.size + (_HEADER.unpack(header)[0] & ~_OUT_OF_BAND)


def load_framed(view: memoryview) -> Any:
    """The one message ``view`` holds whole (header included), unpickled; its out-of-band buffers
    are views of ``view``.  Raises what unpickling raises."""
    (length,) = _HEADER.unpack_from(view)
    body = view[_HEADER.size:_HEADER.size + (length & ~_OUT_OF_BAND)]
    return load_parted(body) if length & _OUT_OF_BAND else pickle.loads(body)


def load_parted(view: memoryview, owned: bool = True) -> Any:
    """Unpickle a message body with out-of-band buffers (see :func:`encode_parts`): pickle, buffers,
    their sizes, their count.  The buffers are views of ``view`` when ``owned``, copies otherwise."""
    end = len(view) - _COUNT.size
    (count,) = _COUNT.unpack_from(view, end)
    end -= count * _SIZE.size
    sizes = [_SIZE.unpack_from(view, end + i * _SIZE.size)[0] for i in range(count)]
    start = first = end - sum(sizes)
    buffers = []
    for size in sizes:
        part = view[start:start + size]
        buffers.append(part if owned else bytearray(part))  # writable, as an unpickled copy would be
        start += size
    return pickle.loads(view[:first], buffers=buffers)


def read_chunk(fd: int) -> Optional[bytes]:
    """Read what is available on a non-blocking ``fd``; ``b''`` means EOF.

    Returns ``None`` when nothing is available yet.
    """
    try:
        return os.read(fd, READ_SIZE)
    except BlockingIOError:
        return None
    except OSError as exc:  # a reset socket is an end of stream too
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            return b""
        raise


def write_all(fd: int, data: Any) -> None:
    """Write every byte of ``data`` to a blocking ``fd``."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_parts(fd: int, parts: List[Any]) -> None:
    """Write every byte of ``parts`` (see :func:`encode_parts`) to a blocking ``fd``, with as few
    system calls as it takes (``writev``)."""
    _gather(parts, lambda views: os.writev(fd, views))


def send_parts(sock: socket.socket, parts: List[Any], flags: int = 0) -> None:
    """Send every byte of ``parts`` on a blocking socket (its timeout applies to each ``sendmsg``)."""
    _gather(parts, lambda views: sock.sendmsg(views, (), flags))


def _gather(parts: List[Any], write: Callable[[List[memoryview]], int]) -> None:
    """Pass ``parts`` to ``write`` (a gathering write, which returns the bytes it took) until all is written."""
    views = deque(memoryview(part).cast("B") for part in parts)
    while views:
        _advance(views, write(list(views)[:_MAX_PARTS]))


def _advance(views: Deque[memoryview], written: int) -> None:
    """Drop the ``written`` bytes from the front of ``views``."""
    while written:
        head = views[0]
        if written >= len(head):
            written -= len(head)
            views.popleft()
        else:
            views[0] = head[written:]
            written = 0
    while views and not len(views[0]):
        views.popleft()


class Outbox:
    """Bytes waiting to be written to a non-blocking ``fd``."""

    __slots__ = ("fd", "_queue", "_size")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._queue: Deque[memoryview] = deque()
        self._size = 0

    def push(self, data: Any) -> None:
        """Queue one message: bytes, or the parts :func:`encode_parts` made."""
        for part in data if isinstance(data, list) else (data,):
            view = memoryview(part).cast("B")
            self._queue.append(view)
            self._size += len(view)

    def __len__(self) -> int:
        """Bytes waiting."""
        return self._size

    def flush(self) -> bool:
        """Write as much as the channel takes now; True once all is written.

        All that waits goes in one ``writev`` (one wake-up of the reader), its
        large buffers uncopied.  Raises :class:`BrokenPipeError` when the
        reader is gone.
        """
        queue = self._queue
        while queue:
            try:
                written = os.writev(self.fd, list(queue)[:_MAX_PARTS]) if len(queue) > 1 else \
                    os.write(self.fd, queue[0])
            except BlockingIOError:
                return False
            self._size -= written
            _advance(queue, written)
        return True
