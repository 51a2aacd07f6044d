"""Bulk files: memory files that carry an executor's large calls and results around its boss.

Why: on the reference VM, memory a process touches for the first time costs
0.6 to 0.8 ms per MiB (page faults and zeroing), while copying into pages a
file already holds costs 0.1 ms.  A 1 MiB result sent through its worker's
pipe and the boss's socket took fresh pages at each hop: in the worker's
pickle, the pipe, the boss, the socket.  Here a worker pickles its result
straight into a file whose pages earlier results warmed, the boss forwards
``(slot, size)``, and the caller unpickles from the file; a large call goes
the other way.  See ``docs/internals.rst`` ("Large payloads").

Who owns a slot: a table (a memory file too) holds an owner word per slot,
the call's sequence number + 1, or 0 when free; each party writes only what
it owns, so the caller and the workers need no lock but for one case.

* Call slots are taken by the caller's manager thread as it sends a call,
  and freed by the worker once it has loaded the call, or by the caller when
  the call's entry comes back with its slot still owned (the call was
  cancelled, or its process died before loading it).
* Result slots are taken by workers, under a record lock since several end
  at once, and freed by the caller once it has read the result, or once the
  entry of a call whose process died after taking one comes back.

The files and the table are made before the executor's boss is forked: the
boss, its spawner and every worker inherit them at the same numbers
(:func:`forking_with` hands a worker its executor's set).  Linux only
(``memfd_create``); elsewhere calls and results go through the boss.

Depends on nothing of taylor's; the executor (the caller's side) and :mod:`taylor.calls` (the
worker's) use it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import threading
import weakref
from typing import Any, Callable, List, Optional, Tuple

__all__ = ["BulkFiles", "Filed", "SMALLEST", "LARGEST_CALL", "forking_with", "inherited", "owner_of"]

#: Calls and results pickled smaller than this go through the boss: two copies of 64 KiB cost less
#: than the system calls of a file.  (The executor pickles larger calls when it sends them.)
SMALLEST = 1 << 16

#: Calls pickled larger than this go through the boss, which forks their worker itself, sharing
#: the call rather than copying it (see :data:`taylor.spawner.MAX_FILE_REQUEST`).
LARGEST_CALL = 16 << 20

#: Slots per direction, and the bytes of warm pages the files of each direction keep once used: a
#: file past this total is emptied once free (its pages go back to the system).
SLOTS = 16
KEEP_BYTES = 32 << 20

_WORD = 8


class Filed:
    """What a worker reports in place of a large result: it is in result slot ``slot``,
    ``size`` bytes of pickle."""

    __slots__ = ("slot", "size")

    def __init__(self, slot: int, size: int) -> None:
        self.slot = slot
        self.size = size

    def __reduce__(self):
        return Filed, (self.slot, self.size)

    def __repr__(self) -> str:
        return f"<result of {self.size} bytes in bulk slot {self.slot}>"


class _NoSlot(Exception):
    """Every result slot is taken: the result goes through the boss."""


class _TooLarge(Exception):
    """The result is over the executor's ``max_report_bytes``: the boss's path says so."""


class _Writer:
    """A pickler's file writing into one memory file from offset 0, with ``pwrite``: the pickler
    hands values of 64 KiB or more to :meth:`write` as they are, so they are copied once, into
    pages the file already has."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0

    def fresh(self) -> _Writer:
        """This writer, from offset 0 again: a pickling that failed half-way is written over."""
        self.size = 0
        return self

    def write(self, chunk: Any) -> int:
        view = memoryview(chunk).cast("B")
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], self.size + done)
        self.size += done
        return done


class _Spill(_Writer):
    """A result's pickle: kept in memory up to :data:`SMALLEST` bytes, then moved to a result slot
    taken at that moment (a small result never touches the table)."""

    __slots__ = ("files", "owner", "limit", "buffer", "slot")

    def __init__(self, files: BulkFiles, owner: int, limit: int) -> None:
        super().__init__(-1)
        self.files = files
        self.owner = owner
        self.limit = limit
        self.buffer: Optional[bytearray] = bytearray()
        self.slot: Optional[int] = None

    def write(self, chunk: Any) -> int:
        size = memoryview(chunk).nbytes
        if self.buffer is not None:
            if len(self.buffer) + size <= SMALLEST:
                self.buffer += chunk
                return size
            self.slot = self.files._take_result_slot(self.owner)
            if self.slot is None:
                raise _NoSlot
            self.fd = self.files.results[self.slot]
            head, self.buffer = self.buffer, None
            super().write(head)
        if self.limit and self.size + size > self.limit:
            raise _TooLarge
        return super().write(chunk)


class BulkFiles:
    """An executor's call and result files, and their owner table (see the module's docstring).

    Made in the caller; its methods are called by the caller's manager thread
    (:meth:`file_call`, :meth:`read_result`, :meth:`release`) or in a worker
    (:meth:`load_call`, :meth:`file_result`).
    """

    def __init__(self, max_report_bytes: int = 0) -> None:
        self.max_report_bytes = max_report_bytes
        self.fds: List[int] = []
        try:
            self.table = self._new("taylor-bulk-table")
            os.ftruncate(self.table, 2 * SLOTS * _WORD)
            self.calls = [self._new("taylor-bulk-call") for _ in range(SLOTS)]
            self.results = [self._new("taylor-bulk-result") for _ in range(SLOTS)]
        except BaseException:
            self.close()
            raise
        self._call_sizes = [0] * SLOTS  # what each file holds at most (its warm pages), as the caller knows
        self._result_sizes = [0] * SLOTS
        _live.add(self)

    def _new(self, name: str) -> int:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.fds.append(fd)
        return fd

    @classmethod
    def make(cls, max_report_bytes: int = 0) -> Optional[BulkFiles]:
        """A set of bulk files, or None where the system has no memory files (or no descriptors left)."""
        if not hasattr(os, "memfd_create"):
            return None
        try:
            return cls(max_report_bytes)
        except OSError:
            return None

    # ----------------------------------------------------------------- the table
    # Built-in types and the os module only on a worker's way: in a fresh fork, each module or
    # type touched for the first time costs a copy-on-write fault or more.
    def _owners(self, first: int) -> memoryview:
        return memoryview(os.pread(self.table, SLOTS * _WORD, first * _WORD)).cast("Q")

    def _set(self, index: int, owner: int) -> None:
        os.pwrite(self.table, owner.to_bytes(_WORD, "little"), index * _WORD)

    # ----------------------------------------------------------------- caller side
    def file_call(self, owner: int, dump: Callable[[Callable[[], Any]], None], size: int) -> Optional[Tuple[int, int]]:
        """Pickle a call of about ``size`` bytes into a free call slot, owned by ``owner`` from now
        on: ``dump(sink)`` pickles it into ``sink()`` (a new file at each attempt).  Returns the slot
        and the pickle's size, or None if no slot is free or the file could not take it (the call
        then goes through the boss)."""
        free = [slot for slot, who in enumerate(self._owners(0)) if who == 0]
        if not free:
            return None
        sizes = self._call_sizes
        warm = [slot for slot in free if sizes[slot] >= size]
        slot = min(warm, key=sizes.__getitem__) if warm else max(free, key=sizes.__getitem__)
        writer = _Writer(self.calls[slot])
        try:
            dump(writer.fresh)
        except OSError:  # no memory for the file (a cgroup's limit): the boss's path
            return None
        sizes[slot] = max(sizes[slot], writer.size)
        self._set(slot, owner)
        self._trim(sizes, self.calls, [other for other in free if other != slot])
        return slot, writer.size

    def read_result(self, filed: Filed) -> Any:
        """The result a worker left in ``filed``'s slot, which is free again once read."""
        slot = filed.slot
        try:
            return _load(self.results[slot], filed.size)
        finally:
            self._result_sizes[slot] = max(self._result_sizes[slot], filed.size)
            self._trim(self._result_sizes, self.results, [slot])  # before it is free: a worker may take it then
            self._set(SLOTS + slot, 0)

    def release(self, owner: int) -> None:
        """The entry of call ``owner`` came back: free the slots it still owns (its process died
        holding them, or never loaded its call)."""
        for first in (0, SLOTS):
            for slot, who in enumerate(self._owners(first)):
                if who == owner:
                    self._set(first + slot, 0)

    def _trim(self, sizes: List[int], fds: List[int], free: List[int]) -> None:
        """Empty files, largest first, while the files of one direction keep more than
        :data:`KEEP_BYTES` of pages.  ``free`` are files nobody else may write meanwhile: free call
        files (only the caller takes them), or a result file the caller has read and not yet freed."""
        for slot in sorted(free, key=sizes.__getitem__, reverse=True):
            if sum(sizes) <= KEEP_BYTES:
                break
            with contextlib.suppress(OSError):
                os.ftruncate(fds[slot], 0)
                sizes[slot] = 0

    # ----------------------------------------------------------------- worker side
    def load_call(self, slot: int, size: int, owner: int) -> Any:
        """In the worker: the call in ``slot``, unpickled, the slot freed (it is the caller's again)."""
        try:
            return _load(self.calls[slot], size)
        finally:
            if self._owners(0)[slot] == owner:
                self._set(slot, 0)

    def file_result(self, result: Any, owner: int) -> Any:
        """In the worker: what to report for ``result``: a :class:`Filed` if its pickle is large and
        a result slot was free, else ``result`` itself (it goes through the boss, which also says
        when it is over ``max_report_bytes``)."""
        if result is None or isinstance(result, (int, float, bool)):
            return result
        spill = _Spill(self, owner, self.max_report_bytes)
        try:
            pickle.Pickler(spill, protocol=pickle.HIGHEST_PROTOCOL).dump(result)
        except Exception:  # noqa: BLE001 - no slot, over the limit, no memory, or it does not pickle:
            if spill.slot is not None:  # the boss's path, which says why where it is an error
                self._set(SLOTS + spill.slot, 0)
            return result
        if spill.slot is None:
            return result  # small: through the boss (its pickle here is dropped)
        return Filed(spill.slot, spill.size)

    def _take_result_slot(self, owner: int) -> Optional[int]:
        """In a worker: a free result slot, owned by ``owner`` from now on (None if all are taken).
        Workers take slots under a record lock on the table (``lockf`` from offset 0, where the
        table's descriptor stays: it is only read and written with ``pread``, ``pwrite``)."""
        os.lockf(self.table, os.F_LOCK, 0)
        try:
            for slot, who in enumerate(self._owners(SLOTS)):
                if who == 0:
                    self._set(SLOTS + slot, owner)
                    return slot
            return None
        finally:
            os.lockf(self.table, os.F_ULOCK, 0)

    # ----------------------------------------------------------------- the end
    def close(self) -> None:
        """Close the files here (processes that inherited them keep theirs)."""
        fds, self.fds = self.fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        _live.discard(self)


def _load(fd: int, size: int) -> Any:
    """Unpickle the first ``size`` bytes of memory file ``fd``, mapped for the time of it: its pages
    are mapped sixteen to a fault, and the objects built copy what they keep, so nothing refers to
    the mapping after."""
    mapped = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    try:
        with memoryview(mapped) as view:
            return pickle.loads(view)
    finally:
        mapped.close()


#: Every set of bulk files of this process, so that a process forked from it closes those it does
#: not own (another executor's): it would keep their pages alive.
_live: weakref.WeakSet = weakref.WeakSet()

#: In an executor's boss and its workers: that executor's bulk files.
_inherited: Optional[BulkFiles] = None
_forking: Optional[BulkFiles] = None
_fork_lock = threading.Lock()


def inherited() -> Optional[BulkFiles]:
    """In a worker: its executor's bulk files (None elsewhere, or where there are none)."""
    return _inherited


@contextlib.contextmanager
def forking_with(files: Optional[BulkFiles]):
    """Around the fork of an executor's boss: the child keeps ``files`` (and closes every other
    set of bulk files it inherited)."""
    global _forking
    with _fork_lock:
        _forking = files
        try:
            yield
        finally:
            _forking = None


def _after_fork_in_child() -> None:
    global _inherited
    keep = _forking or _inherited  # an executor's boss forking its spawner or reuse processes keeps its own
    for files in list(_live):
        if files is not keep:
            files.close()
    if keep is not None:
        _inherited = keep


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def owner_of(seq: int) -> int:
    """The owner word of call number ``seq`` (0 means free)."""
    return seq + 1

