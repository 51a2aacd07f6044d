"""The spawner: a small process that forks the workers on the boss's behalf.

Why not fork from the boss: a fork write-protects every page of the forking
process, and the boss's event loop touches a few hundred pages per task (each
Python function it calls is written to, if only its reference count), each
then a copy-on-write fault: about 250 faults, 0.6 ms of CPU per task on the
reference VM.  The spawner's loop is one short function, so its faults are
few; and it is forked from the boss at start, before any instruction arrives,
so its forks do not grow dearer as a long queue fills the boss's memory.

Protocol, over a ``SOCK_SEQPACKET`` socket pair (one message per datagram);
nobody waits for an answer:

* boss to spawner: a token, then the pickled (class reference, attributes),
  with the write end of the worker's report pipe attached (``SCM_RIGHTS``).
  A request over :data:`MAX_REQUEST` bytes (a 1 MiB instruction, say) comes
  as a token alone, its pickle in a memory file (``memfd``) attached after
  the pipe: the spawner never reads it, the worker it forks does.  So the
  boss does not fork with its queue's megabytes in its heap (every fork of a
  fat process costs the boss and the worker milliseconds of page-table and
  copy-on-write work), and the spawner's heap stays small.  A request over
  :data:`MAX_FILE_REQUEST` (a 200 MiB array) is the exception: the boss forks
  its worker itself, sharing it rather than copying it;
* spawner to boss: ``READY`` once set up (until then the boss forks workers
  itself, so that the first task does not wait for the spawner's start);
  ``STARTED token pid``; ``REFUSED token errno`` when the fork failed or
  (errno 0) the request could not be read; ``EXITED pid status`` when it
  reaps a worker.

If the boss dies the kernel kills the spawner (parent-death signal), which
kills the workers the same way.

Workers are forked with :data:`~taylor.forking.bare_fork`, which runs none of
Python's at-fork hooks (they ran once, in this process's own fork, and cost
a worker half of its CPU), while this process is single-threaded;
``TAYLOR_FORK_HOOKS=1`` asks for ``os.fork``.

Depends on forking, instructions (class references) and the worker; must not import the launcher or
the boss loop that drive it, nor the Boss.
"""

from __future__ import annotations

import array
import ctypes
import errno
import gc
import mmap
import os
import pickle
import select
import signal
import socket
import struct
import sys
from typing import Any, Dict, Iterable, List, Mapping, NoReturn, Optional, Set, Tuple

from .forking import (
    STOPPING,
    Handlers,
    _child,
    _signal,
    bare_fork,
    bare_fork_allowed,
    kill_groups,
    lone_thread_links,
    map_large_blocks,
    process_name,
    set_parent_death_signal,
    set_process_name,
)
from .instructions import class_from_ref, class_ref, remember_classes
from .wire import HEADER_SIZE, encode_parts, load_framed, message_size, pickled_size, write_parts
from .worker import exit_on_error, prepare_class

__all__ = ["MAX_FILE_REQUEST", "MAX_REQUEST", "NAME", "Spawner"]

#: The spawner's process name, as ``ps`` shows it.
NAME = b"taylor-spawner"

#: Largest request (pickled attributes) sent in the spawner's datagram; larger ones go in a memory
#: file (see the protocol above).
MAX_REQUEST = 1 << 16

#: Largest request sent in a memory file; the boss forks a worker with a larger one itself: its
#: fork shares the request for free, where copying it costs some 0.6 ms per MiB (a 200 MiB array
#: given to 8 workers would be written eight times), more than a fork of a large boss.
MAX_FILE_REQUEST = 16 << 20

_TOKEN = struct.Struct("<Q")
_NEWS = struct.Struct("<cqq")
STARTED, REFUSED, EXITED, READY = b"S", b"R", b"E", b"Y"

#: (kind, first, second): (STARTED, token, pid), (REFUSED, token, errno), (EXITED, pid, wait status).
News = Tuple[bytes, int, int]


class Spawner:
    """The boss's handle on its spawner process."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid: Optional[int] = pid
        self.alive = True
        self.ready = False  # until it says so, the boss forks workers itself: the first task waits for nothing
        self._token = 0
        self._files = _RequestFiles()

    @classmethod
    def start(cls, close_fds: Iterable[int], shared: Mapping[str, Any], max_report_bytes: int,
              handlers: Handlers) -> Optional[Spawner]:
        """Fork the spawner; None where it cannot be (the boss then forks workers itself)."""
        if not hasattr(socket, "CMSG_SPACE"):
            return None
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError:
            return None
        close_fds = list(close_fds)
        boss = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return None
        if pid == 0:
            try:
                ours.close()
                _serve(theirs, boss, close_fds, dict(shared), max_report_bytes, handlers)
            finally:
                os._exit(70)
        theirs.close()
        ours.setblocking(False)
        return cls(ours, pid)

    def fileno(self) -> int:
        return self.sock.fileno()

    def ask(self, cls: type, attributes: Mapping[str, Any], report_fd: int) -> Optional[int]:
        """Ask for a worker; the request's token (its pid comes as news), or None if the
        boss must fork it itself: the request is not picklable, over
        :data:`MAX_FILE_REQUEST`, or over :data:`MAX_REQUEST` where there are no
        memory files; the spawner is busy with many requests already, or gone.
        """
        if not (self.alive and self.ready):
            return None
        payload = _Capped(MAX_REQUEST)
        request_fd = None
        try:
            pickle.Pickler(payload, protocol=pickle.HIGHEST_PROTOCOL).dump((class_ref(cls), attributes))
        except _TooLarge:
            request = (class_ref(cls), attributes)
            try:
                if pickled_size(request) > MAX_FILE_REQUEST:
                    return None  # the boss's fork shares it for free
                request_fd = self._files.write(request)
            except Exception:  # noqa: BLE001 - no memory files here: the boss forks it
                return None
            payload.data = bytearray()
        except Exception:  # noqa: BLE001 - not picklable: the boss's own fork needs no pickling
            return None
        self._token += 1
        fds = array.array("i", [report_fd] if request_fd is None else [report_fd, request_fd])
        try:
            self.sock.sendmsg([_TOKEN.pack(self._token), payload.data],
                              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
        except OSError:  # its socket is full (BlockingIOError), or it is gone: the news will say so
            if request_fd is not None:
                self._files.back(request_fd)
            return None
        if request_fd is not None:
            self._files.lend(self._token, request_fd)
        return self._token

    def news(self) -> List[News]:
        """What the spawner said since the last call (never blocks).  Once it is gone,
        ``alive`` is False."""
        found = []
        while self.alive:
            try:
                data = self.sock.recv(_NEWS.size)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self.alive = False
                break
            news = _NEWS.unpack(data)
            if news[0] == READY:
                self.ready = True
            else:
                found.append(news)
                if self._files.lent:
                    self._files.heard(news)
        return found

    def close(self) -> Tuple[List[News], Optional[Set[int]]]:
        """End the spawner (the run is over, it is gone, or it stopped answering) and reap it.

        Returns what it said before it ended, and the pids of its children when it
        was killed (None if it had ended already): a child not announced as
        STARTED was forked for the oldest request left.  SIGSTOP first, so that it
        forks nothing while its children are listed; SIGKILL ends a stopped
        process too.
        """
        children: Optional[Set[int]] = None
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGSTOP)
                _, status = os.waitpid(self.pid, os.WUNTRACED)  # stopped for sure, or dead (then reaped)
                if os.WIFSTOPPED(status):
                    children = _children(self.pid)
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                children = None
            self.pid = None
        news = self.news()  # left in the socket, then its end
        self.sock.close()
        self.alive = False
        self._files.close()
        return news, children


def _children(pid: int) -> Optional[Set[int]]:
    """The pids of the children of ``pid`` (Linux's /proc); None where it cannot tell."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return {int(child) for child in listing.read().split()}
    except (OSError, ValueError):
        return None


class _TooLarge(ValueError):
    """A request over :data:`MAX_REQUEST` bytes: it goes in a memory file."""


class _Capped:
    """A file for the pickler that refuses to grow past ``limit`` bytes: 200 MiB of instructions
    are given up on at the first 64 KiB, not pickled in full only to be found too large."""

    __slots__ = ("data", "limit")

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit

    def write(self, chunk: Any) -> int:
        size = memoryview(chunk).nbytes  # pickle writes large values as they are: a PickleBuffer has no len()
        if len(self.data) + size > self.limit:
            raise _TooLarge("too large for the spawner's datagram")
        self.data += chunk
        return size


class _RequestFiles:
    """The boss's memory files for large requests, written again once the worker that mapped one
    has exited (the spawner's EXITED news): a fresh file takes fresh pages for each request (some
    0.6 ms per MiB on the reference VM), a file used before has them already.

    Bounded: at most :attr:`KEEP` idle files, none over :attr:`LARGEST` bytes kept, and past
    :attr:`MOST` files lent at once, one-off files (closed once sent, as the kernel keeps what is
    in flight) so that the boss's descriptors stay few.
    """

    KEEP = 4
    LARGEST = 16 << 20
    MOST = 64

    def __init__(self) -> None:
        self.idle: List[int] = []
        self.sizes: Dict[int, int] = {}
        self.by_token: Dict[int, int] = {}  # lent, the worker's pid not known yet
        self.by_pid: Dict[int, int] = {}  # lent to a worker that has not exited

    @property
    def lent(self) -> int:
        return len(self.by_token) + len(self.by_pid)

    def write(self, request: Any) -> int:
        """A memory file holding ``request`` as one message (see :mod:`taylor.wire`), its payloads out
        of band so that the worker reads them in place; bytes past the message are stale (its
        header says its length)."""
        fd = self.idle.pop() if self.idle else os.memfd_create("taylor-request", os.MFD_CLOEXEC)
        try:
            parts = encode_parts(request)
            os.lseek(fd, 0, os.SEEK_SET)
            write_parts(fd, parts)
        except BaseException:
            self.back(fd)
            raise
        self.sizes[fd] = max(self.sizes.get(fd, 0), sum(memoryview(part).nbytes for part in parts))
        return fd

    def lend(self, token: int, fd: int) -> None:
        """``fd`` went with request ``token``: idle again once its worker has exited."""
        if self.lent >= self.MOST:
            self._close(fd)  # a one-off: the kernel keeps it for the message
        else:
            self.by_token[token] = fd

    def heard(self, news: News) -> None:
        kind, first, second = news
        if kind == STARTED:
            fd = self.by_token.pop(first, None)
            if fd is not None:
                self.by_pid[second] = fd
        elif kind == REFUSED:
            fd = self.by_token.pop(first, None)
            if fd is not None:
                self.back(fd)
        elif kind == EXITED:
            fd = self.by_pid.pop(first, None)
            if fd is not None:
                self.back(fd)

    def back(self, fd: int) -> None:
        """``fd`` is no one's now: idle, or closed."""
        if len(self.idle) < self.KEEP and self.sizes.get(fd, 0) <= self.LARGEST:
            self.idle.append(fd)
        else:
            self._close(fd)

    def _close(self, fd: int) -> None:
        self.sizes.pop(fd, None)
        os.close(fd)

    def close(self) -> None:
        """The spawner is gone: its workers' mappings outlive these descriptors."""
        for fd in [*self.idle, *self.by_token.values(), *self.by_pid.values()]:
            self._close(fd)
        self.idle.clear()
        self.by_token.clear()
        self.by_pid.clear()


def _load_request(fd: int, shared: Mapping[str, Any]) -> Tuple[type, Dict[str, Any]]:
    """In a worker forked for a large request: its class and attributes, from the memory file ``fd``.
    The file stays mapped: a call's payload, or a NumPy array, is a view of it, never copied.  Mapped
    private and writable, as an unpickled copy would be: what the task writes there is its own."""
    try:
        size = message_size(os.pread(fd, HEADER_SIZE, 0))  # what follows is a longer request's, before
        # Not MAP_POPULATE: on a private writable mapping it copies every page (0.4 ms per MiB
        # here); read as needed, the file's pages are mapped sixteen at a time, uncopied.
        mapped = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    ref, attributes = load_framed(memoryview(mapped))
    cls = class_from_ref(ref)
    prepare_class(cls)
    attributes.update(shared)
    return cls, attributes


# ---------------------------------------------------------------- the spawner process
def _note_signal(signum: int, frame: Any) -> None:
    """SIGCHLD handler: the wake-up pipe carries it."""


def _serve(sock: socket.socket, boss: int, close_fds: List[int], shared: Dict[str, Any],
           max_report_bytes: int, handlers: Handlers) -> NoReturn:
    """Body of the spawner process: fork workers when asked, report their ends.

    One function with its names in locals, calling C functions only on the
    way of a request: after each fork, every page this loop writes costs a
    copy-on-write fault, so the less Python it runs the cheaper a worker.
    """
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    # SIGINT and SIGTERM stay blocked here (the boss ends the spawner by closing its socket, or
    # dying); each worker unblocks them once its own handlers are set.
    _signal.pthread_sigmask(_signal.SIG_BLOCK, STOPPING)
    # Their handlers are set here once, for every worker to inherit: blocked, they never run here.
    for signum, handler in handlers:
        if signum in STOPPING:
            _signal.signal(signum, handler)
    handlers = [(signum, handler) for signum, handler in handlers if signum not in STOPPING]
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != boss:
        os._exit(0)
    name = process_name()  # the workers get it back
    set_process_name(NAME)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    _signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    _signal.signal(signal.SIGCHLD, _note_signal)
    remember_classes()  # each request then finds its class with a dict look-up
    map_large_blocks()  # the boss's allocator settings cost its workers copy-on-write copies
    # What the workers inherit is never garbage to them: frozen, a collection in a worker does not
    # touch (and so copy) it; a full one would otherwise copy most of the heap (1,465 pages here).
    gc.freeze()
    me = os.getpid()
    own = [sock.fileno(), wake_r, wake_w]
    children: Set[int] = set()
    prepared: Set[type] = set()
    waiter = select.poll()
    waiter.register(sock, select.POLLIN)
    waiter.register(wake_r, select.POLLIN)
    # Workers are forked bare (no at-fork hooks, see forking.bare_fork) while this process is
    # single-threaded: it then holds no lock when it forks, and its own fork by the boss ran every
    # hook once already.  Checked at each fork: unpickling instructions could start a thread.
    lone = lone_thread_links()
    recvmsg, send, close, read, waitpid = sock.recvmsg_into, sock.send, os.close, os.read, os.waitpid
    loads, pack, unpack_from = pickle.loads, _NEWS.pack, _TOKEN.unpack_from
    ancillary, token_size = socket.CMSG_SPACE(4), _TOKEN.size
    buffer = bytearray(_TOKEN.size + MAX_REQUEST + 1)  # one buffer for all requests: no allocation each
    view = memoryview(buffer)
    buffers = [buffer]
    byteorder = sys.byteorder
    cloexec = getattr(socket, "MSG_CMSG_CLOEXEC", 0)  # a received descriptor is inheritable otherwise
    try:
        send(pack(READY, 0, 0))
        while True:
            for fd, _ in waiter.poll():
                if fd == wake_r:
                    try:
                        while read(wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    while children:
                        try:
                            pid, status = waitpid(-1, os.WNOHANG)
                        except ChildProcessError:
                            children.clear()
                            break
                        if pid == 0:
                            break
                        children.discard(pid)
                        send(pack(EXITED, pid, status))
                    continue
                length, extra, _, _ = recvmsg(buffers, ancillary, cloexec)
                if not length:
                    raise EOFError("the boss closed its end")
                token = unpack_from(buffer)[0]
                report_fd = request_fd = None
                for level, kind, fds in extra:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(fds) >= 4:
                        report_fd = int.from_bytes(fds[:4], byteorder)
                        if len(fds) >= 8:  # a large request: its pickle is in this memory file
                            request_fd = int.from_bytes(fds[4:8], byteorder)
                        if not cloexec:
                            for fd in (report_fd, request_fd):
                                if fd is not None:
                                    os.set_inheritable(fd, False)
                cls = attributes = None
                if request_fd is None:
                    try:
                        ref, attributes = loads(view[token_size:length])
                        cls = class_from_ref(ref)
                        if cls not in prepared:  # prepare_class keeps its answer too, but calling it
                            prepare_class(cls)  # costs ~4 more page faults per fork here (measured)
                            prepared.add(cls)
                        attributes.update(shared)
                    except Exception:  # noqa: BLE001 - hardly possible: the boss could unpickle it
                        cls = None
                if report_fd is None or (cls is None and request_fd is None):
                    for fd in (report_fd, request_fd):
                        if fd is not None:
                            close(fd)
                    send(pack(REFUSED, token, 0))
                    continue
                bare = bare_fork_allowed(lone)
                try:
                    pid = bare_fork() if bare else os.fork()
                    if pid < 0:  # the bare fork's failure
                        raise OSError(ctypes.get_errno(), "fork failed")
                except OSError as exc:
                    close(report_fd)
                    if request_fd is not None:
                        close(request_fd)
                    send(pack(REFUSED, token, exc.errno or errno.EAGAIN))
                    continue
                if pid == 0:
                    if request_fd is not None:
                        try:
                            cls, attributes = _load_request(request_fd, shared)
                        except BaseException:  # noqa: BLE001 - never fall back into this loop
                            exit_on_error()
                    _child(cls, attributes, report_fd, own, me, handlers, max_report_bytes, name, bare)
                close(report_fd)
                if request_fd is not None:
                    close(request_fd)
                children.add(pid)
                send(pack(STARTED, token, pid))
    except BaseException:  # noqa: BLE001 - the boss is gone or this loop broke: take the workers along
        kill_groups(children)
        os._exit(0)
