"""The message format: framing, buffers out of band, large messages read in place, writers that never block."""

from __future__ import annotations

import os
import pickle
import socket
import threading

import pytest

from taylor import wire

MIB = 1 << 20


def _joined(parts):
    return b"".join(bytes(memoryview(part).cast("B")) for part in parts)


MESSAGES = [
    ("small", {"n": 1}),
    ("payload", pickle.PickleBuffer(os.urandom(MIB + 3))),  # out of band, large
    ("bytearray", bytearray(b"b" * 300_000)),  # in band, as pickle writes bytearrays
    ("tiny out of band", pickle.PickleBuffer(b"abc")),
    ("in band", b"c" * (wire.LARGE + 5)),  # a large message without buffers apart
]


def _check(got):
    assert [m[0] for m in got] == [m[0] for m in MESSAGES]
    for (_, sent), (_, received) in zip(MESSAGES, got):
        expected = bytes(sent.raw()) if isinstance(sent, pickle.PickleBuffer) else sent
        assert bytes(received) == bytes(expected) if not isinstance(expected, dict) else received == expected


@pytest.mark.parametrize("step", [1, 7, 4096, wire.READ_SIZE, MIB, None])
def test_messages_decode_whatever_the_chunking(step):
    stream = b"".join(_joined(wire.encode_parts(m)) for m in MESSAGES)
    decoder, got = wire.Decoder(), []
    step = step or len(stream)
    for i in range(0, len(stream), step):
        got += decoder.feed(stream[i:i + step])
    _check(got)
    assert not decoder.partial


def test_encode_is_the_in_band_message_and_limits_are_checked_before_sending():
    obj = ("x", pickle.PickleBuffer(b"y" * 1000))
    (kind, got), = wire.Decoder().feed(wire.encode(obj))
    assert kind == "x" and bytes(got) == b"y" * 1000
    assert len(wire.encode(obj)) > 1000 and len(wire.encode_parts(obj)) == 3  # pickle, buffer apart, trailer
    with pytest.raises(wire.MessageTooLarge):
        wire.encode_parts(("x", pickle.PickleBuffer(b"z" * 5000)), limit=4000)


def test_read_gathers_a_large_message_in_its_own_buffer_and_reports_the_end():
    r, w = os.pipe()
    os.set_blocking(r, False)
    writer = threading.Thread(target=lambda: [wire.write_parts(w, wire.encode_parts(m)) for m in MESSAGES])
    writer.start()
    decoder, got = wire.Decoder(), []
    try:
        while len(got) < len(MESSAGES):
            import select

            select.select([r], [], [], 10)
            got += decoder.read(r) or []
    finally:
        writer.join(10)
        os.close(w)
    _check(got)
    assert isinstance(got[1][1], memoryview)  # a view of the message's own buffer: no copy
    with pytest.raises(EOFError):
        while decoder.read(r) is None:
            pass
    os.close(r)


def test_an_unloadable_message_stands_alone_and_the_stream_goes_on():
    class Unloadable:
        def __reduce__(self):
            return (_refuse, ())

    stream = _joined(wire.encode_parts(("a", 1))) + wire.encode(Unloadable()) + _joined(wire.encode_parts(("b", 2)))
    got = wire.Decoder().feed(stream)
    assert got[0] == ("a", 1) and isinstance(got[1], wire.Undecodable) and got[2] == ("b", 2)


def _refuse():
    raise RuntimeError("cannot be loaded here")


def test_outbox_writes_parts_in_order_across_partial_writes():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    outbox = wire.Outbox(ours.fileno())
    for message in MESSAGES:
        outbox.push(wire.encode_parts(message))
    assert len(outbox) == sum(len(_joined(wire.encode_parts(m))) for m in MESSAGES)
    decoder, got = wire.Decoder(), []
    theirs.setblocking(False)
    while len(got) < len(MESSAGES):
        outbox.flush()  # as much as the socket takes: never blocks
        got += decoder.read(theirs) or []
    _check(got)
    assert len(outbox) == 0 and outbox.flush()
    ours.close()
    theirs.close()


def test_pickled_size_counts_without_copying_large_values():
    value = {"blob": b"x" * MIB, "view": pickle.PickleBuffer(b"y" * MIB), "n": 3}
    assert wire.pickled_size(value) == sum(len(part) if isinstance(part, bytes) else memoryview(part).nbytes
                                           for part in wire.encode_parts(value)) - wire.HEADER_SIZE - 4 - 8
