"""Calls: how a plain function call reaches the fresh process that runs it, for :class:`taylor.Executor`.

A call travels as one opaque payload, ``pickle`` of ``(fn, args, kwargs)``,
through the boss to a :class:`CallWorker`, which unpickles and runs it.  The
boss never unpickles it: a value it could not rebuild fails that call alone.

Functions need no pickling when they existed as the executor was created: its
boss process, and every worker forked from it, is a fork of the caller made
then, so each such function is at the same address there.  The caller keeps a
weak table of them (:func:`fork_time_functions`), the boss a strong one, and
the payload names them by address (``id``), checked by identity in the caller
and by qualified name in the worker.  That covers lambdas and closures defined
before the executor, and functions of ``__main__``.  Functions made later go by
name when importable, by value when ``cloudpickle`` is installed, and are
refused at submit otherwise (:class:`TypeError` saying what to do).

Cancellation needs one decision shared by the caller and the worker: "has
this call started?".  A :class:`Claims` file holds one byte per call, read
and written under a POSIX record lock, which the kernel releases if its holder
dies: the worker claims its call before running it, ``Future.cancel()`` claims
it first otherwise, and only one of them wins.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import io
import os
import pickle
import tempfile
import threading
from types import FunctionType
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from . import bulk
from .errors import WorkerError
from .worker import Worker

try:  # optional: lambdas and closures made after the executor, sent by value
    import cloudpickle
except ImportError:  # pragma: no cover - depends on the environment
    cloudpickle = None

__all__ = ["Payload", "FiledPayload", "CallWorker", "Claims", "CANCELLED", "fork_time_functions", "forking_with",
           "dumps_call", "dump_call", "measure_call", "loads_call"]

#: In a boss process (and its workers): the functions that existed when it was forked, by address.
#: Set in the caller only for the instant of that fork (see :func:`forking_with`).
_fork_functions: Optional[Dict[int, FunctionType]] = None
_fork_lock = threading.Lock()

_PENDING, _STARTED, _CANCELLED = b"\0", b"R", b"C"


class _Cancelled:
    """What a worker reports when its call was cancelled before it could start."""

    def __reduce__(self) -> str:
        return "CANCELLED"

    def __repr__(self) -> str:
        return "<call cancelled before it started>"


CANCELLED = _Cancelled()


def _by_value_needed(fn: FunctionType) -> bool:
    """Whether pickle could not find ``fn`` by name in a process forked before ``fn`` was made."""
    return fn.__module__ == "__main__" or "<" in fn.__qualname__


def fork_time_functions() -> Dict[int, FunctionType]:
    """The functions alive now that pickle could not send by name (lambdas, closures, ``__main__``'s),
    by address: those a process forked now can be given by address."""
    return {id(obj): obj for obj in gc.get_objects() if type(obj) is FunctionType and _by_value_needed(obj)}


@contextlib.contextmanager
def forking_with(functions: Dict[int, FunctionType]):
    """Around the fork of a boss: the child keeps ``functions`` (strongly) as its fork-time table."""
    global _fork_functions
    with _fork_lock:
        _fork_functions = functions
        try:
            yield
        finally:
            _fork_functions = None


def _fork_function(address: int, qualname: str) -> FunctionType:
    """Unpickling side of a function sent by address (see :class:`_CallPickler`)."""
    fn = (_fork_functions or {}).get(address)
    if fn is None or fn.__qualname__ != qualname:
        raise WorkerError(f"function {qualname} was sent by address but this process, forked from the "
                          "executor's boss, does not hold it there (was the call sent by another executor?)")
    return fn


_Base = cloudpickle.Pickler if cloudpickle is not None else pickle.Pickler


class _MadeTooLate(TypeError):
    """A function the executor's processes cannot get: raised as it is, it says what to do."""


class _ByValue(Exception):
    """Raised by :class:`_FastPickler` for an object only cloudpickle can send."""


def _too_late(obj: FunctionType) -> _MadeTooLate:
    where = "in __main__" if obj.__module__ == "__main__" else "inside a function or as a lambda"
    return _MadeTooLate(
        f"function {obj.__qualname__} (defined {where}) was made after the Executor was created, so "
        "its processes, forked then, do not hold it, and pickle cannot send it by name. Define it "
        "before creating the Executor, move it to an importable module, or install cloudpickle "
        "(pip install 'taylor[executor]') to send it by value")


def _by_reference(obj: Any) -> bool:
    """Whether cloudpickle would send this function or class by name, as pickle does."""
    if _by_value_needed(obj):
        return False
    try:
        from cloudpickle.cloudpickle import _should_pickle_by_reference
    except ImportError:  # pragma: no cover - an older cloudpickle: let it decide
        return False
    return _should_pickle_by_reference(obj)


class _CallPickler(_Base):
    """Pickles a call, sending the functions its executor's processes already hold by address."""

    def __init__(self, file: Any, known: Mapping[int, FunctionType]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._known = known

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is FunctionType:
            if self._known.get(id(obj)) is obj:
                return _fork_function, (id(obj), obj.__qualname__)
            if cloudpickle is None and _by_value_needed(obj):
                raise _too_late(obj)
        if cloudpickle is not None:
            return super().reducer_override(obj)
        return NotImplemented


class _FastPickler(pickle.Pickler):
    """The C pickler, tried first: cloudpickle's pickler costs some 15 us more per call (it is
    set up for each call, and consulted in Python for every object).  It gives up (:class:`_ByValue`)
    at the first function or class that cloudpickle would send by value, so that its pickles are
    the ones cloudpickle would make."""

    def __init__(self, file: Any, known: Mapping[int, FunctionType]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._known = known

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is FunctionType and obj is not _fork_function:
            if self._known.get(id(obj)) is obj:
                return _fork_function, (id(obj), obj.__qualname__)
            if cloudpickle is None:
                if _by_value_needed(obj):
                    raise _too_late(obj)
            elif not _by_reference(obj):
                raise _ByValue
        elif cloudpickle is not None and isinstance(obj, type) and not _by_reference(obj):
            raise _ByValue
        return NotImplemented


def dumps_call(fn: Any, args: tuple, kwargs: Dict[str, Any], known: Mapping[int, FunctionType]) -> bytes:
    """The payload of one call; raises TypeError (saying what to do) when it cannot be sent."""
    buffers: list = []

    def sink() -> io.BytesIO:
        buffers.append(io.BytesIO())
        return buffers[-1]

    dump_call(fn, args, kwargs, known, sink)
    return buffers[-1].getvalue()


class _Kept:
    """A pickler's file that keeps what it is given up to ``limit`` bytes, and past it only counts."""

    __slots__ = ("data", "size", "limit")

    def __init__(self, limit: int) -> None:
        self.data: Optional[bytearray] = bytearray()
        self.size = 0
        self.limit = limit

    def write(self, chunk: Any) -> int:
        size = memoryview(chunk).nbytes
        self.size += size
        if self.data is not None:
            if self.size <= self.limit:
                self.data += chunk
            else:
                self.data = None
        return size


def measure_call(fn: Any, args: tuple, kwargs: Dict[str, Any], known: Mapping[int, FunctionType],
                 keep: int) -> Tuple[Optional[bytes], int]:
    """The payload of one call if it is at most ``keep`` bytes (else None), and its size: a large
    call is pickled here only to learn that it can be sent, and how large it is, without
    holding its pickle.  Raises TypeError (saying what to do) when it cannot be sent."""
    sinks: list = []

    def sink() -> _Kept:
        sinks.append(_Kept(keep))
        return sinks[-1]

    dump_call(fn, args, kwargs, known, sink)
    kept = sinks[-1]
    return (None if kept.data is None else bytes(kept.data)), kept.size


def dump_call(fn: Any, args: tuple, kwargs: Dict[str, Any], known: Mapping[int, FunctionType],
              sink: Callable[[], Any]) -> None:
    """Pickle one call into ``sink()``, a new file (one per attempt: the C pickler first, then
    cloudpickle's); raises TypeError (saying what to do) when it cannot be sent."""
    try:
        try:
            _FastPickler(sink(), known).dump((fn, args, kwargs))
        except _MadeTooLate:
            raise
        except Exception:  # noqa: BLE001 - by value, or unknown to pickle: cloudpickle's turn (or pickle's error)
            if cloudpickle is None:
                raise
            _CallPickler(sink(), known).dump((fn, args, kwargs))
    except _MadeTooLate as exc:
        raise TypeError(str(exc)) from None
    except OSError:
        raise  # the sink's own failure (a bulk file without memory): not the call's
    except Exception as exc:  # noqa: BLE001 - pickling fails in many ways: say which call, and why
        raise TypeError(f"the call of {getattr(fn, '__qualname__', fn)!r} cannot be sent to its process: "
                        f"{type(exc).__name__}: {exc}. Its arguments must pickle (or existed as the "
                        "Executor was created, for functions)") from exc


def loads_call(data: Any) -> Tuple[Any, tuple, Dict[str, Any]]:
    return _loaded(pickle.loads, data)


def _loaded(load: Callable[..., Any], *args: Any) -> Any:
    try:
        return load(*args)
    except Exception as exc:
        raise WorkerError(
            f"the call could not be unpickled in its process ({type(exc).__name__}: {exc}). Its processes are "
            "forks of the caller made when the Executor was created: classes (and functions) defined later "
            "in __main__ are unknown there. Define them before creating the Executor, in an importable "
            "module, or install cloudpickle (pip install 'taylor[executor]')") from exc


#: Call payloads this large or larger travel out of band in taylor's messages (see :class:`Payload`).
OUT_OF_BAND_BYTES = 16 * 1024


class Payload:
    """An opaque call payload in the instructions: short to print, so footprints' checks of the
    instructions cost the same for a 1 MiB call as for an empty one."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data  # bytes, or a view of the message that brought it

    def __reduce_ex__(self, protocol: int):
        # Protocol 5: out of band where the pickler takes buffers apart (taylor's messages, see
        # taylor.wire), so the megabytes of a call are not copied into each message that carries it.
        # A small one stays in band: copying it costs less than a part of its own in each message.
        data = self.data
        if protocol >= 5 and len(data) >= OUT_OF_BAND_BYTES:
            return Payload, (pickle.PickleBuffer(data),)
        return Payload, (data if type(data) is bytes else bytes(data),)

    def load(self, seq: int) -> Tuple[Any, tuple, Dict[str, Any]]:
        """In the worker: ``(fn, args, kwargs)``."""
        return loads_call(self.data)

    def __repr__(self) -> str:
        return f"<call payload of {len(self.data)} bytes>"


class FiledPayload(Payload):
    """A call pickled into its executor's bulk call slot ``slot`` (see :mod:`taylor.bulk`)."""

    __slots__ = ("slot", "size")

    def __init__(self, slot: int, size: int) -> None:
        self.slot = slot
        self.size = size

    def __reduce_ex__(self, protocol: int):
        return FiledPayload, (self.slot, self.size)

    def load(self, seq: int) -> Tuple[Any, tuple, Dict[str, Any]]:
        files = bulk.inherited()
        if files is None:
            raise WorkerError("this call was sent in a bulk file, which its process does not hold "
                              "(was it sent by another executor?)")
        return _loaded(files.load_call, self.slot, self.size, bulk.owner_of(seq))

    def __repr__(self) -> str:
        return f"<call payload of {self.size} bytes in bulk slot {self.slot}>"


class Claims:
    """One state byte per call (pending, started, cancelled) in a file shared by a caller and its
    executor's processes, changed under a record lock so that the worker and ``cancel()`` never
    both win; the kernel drops the lock of a process that dies holding it."""

    def __init__(self) -> None:
        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create("taylor-executor-claims")
            self._file = None
        else:  # pragma: no cover - macOS
            self._file = tempfile.TemporaryFile()
            self.fd = self._file.fileno()
        self._lock = threading.Lock()  # record locks are per process: threads of the caller take turns

    def cancel(self, seq: int) -> bool:
        """Mark call ``seq`` cancelled unless its worker has started it; True if it is cancelled."""
        with self._lock:
            fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, seq)
            try:
                state = os.pread(self.fd, 1, seq)
                if state == _STARTED:
                    return False
                if state != _CANCELLED:
                    os.pwrite(self.fd, _CANCELLED, seq)
                return True
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, seq)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self._file is not None:
                self._file.close()
            else:
                os.close(self.fd)


def claim_start(fd: int, seq: int) -> bool:
    """In the worker: mark call ``seq`` started, unless it was cancelled (then False)."""
    fcntl.lockf(fd, fcntl.LOCK_EX, 1, seq)
    try:
        if os.pread(fd, 1, seq) == _CANCELLED:
            return False
        os.pwrite(fd, _STARTED, seq)
        return True
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, seq)


class CallWorker(Worker):
    """Runs one call of a :class:`taylor.Executor` in its own process."""

    _footprint = dict(
        info="One function call of a taylor.Executor",
        attr=dict(
            taylor_call=dict(info="The pickled call.", type=Payload),
            taylor_claims=dict(info="The executor's claims descriptor.", type=int),
            taylor_seq=dict(info="The call's number in its executor.", type=int),
        ),
    )

    def _task(self) -> Any:
        if not claim_start(self.taylor_claims, self.taylor_seq):
            return CANCELLED
        seq = self.taylor_seq
        fn, args, kwargs = self.taylor_call.load(seq)
        result = fn(*args, **kwargs)
        if result is None:  # nothing to file: no code of taylor.bulk touched (each page a fork's copy)
            return None
        files = bulk.inherited()
        return result if files is None else files.file_result(result, bulk.owner_of(seq))


def run_chunk(fn: Any, chunk: list) -> list:
    """Several calls of ``fn`` in one process: ``Executor.map(..., chunksize=n)``."""
    return [fn(*args) for args in chunk]

