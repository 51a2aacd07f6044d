"""Executor: taylor's runs behind the :mod:`concurrent.futures` interface.

``Executor.submit(fn, *args)`` returns a real :class:`concurrent.futures.Future`;
each call runs in a fresh process forked by a taylor boss, with taylor's
guarantees: a process that dies fails only its own future, with
:class:`~taylor.errors.WorkerDiedError`; per-call timeouts and declared memory
feed the boss's scheduler; nothing is left behind.  With ``reuse=True``, calls
run one after the other in long-lived processes (see :mod:`taylor.reuse`).

Three parties, as in CPython's ``concurrent/futures/process.py``:

* the caller's threads call :meth:`Executor.submit`, which pickles the call
  (see :mod:`taylor.calls`), queues it and wakes the manager: it never waits
  on the boss;
* one manager thread owns the :class:`~taylor.boss.Boss`: it sends the queued
  calls, reads the workers' entries as they end and completes their futures,
  and ends the run at shutdown.  It sleeps in one ``poll`` on its wake-up pipe
  and the boss's channel: no polling loop;
* the boss process (forked when the executor is created) schedules the calls
  and forks one :class:`~taylor.calls.CallWorker` process per call.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import threading
import time
import weakref
from collections import deque
from concurrent.futures import BrokenExecutor, Future, InvalidStateError, _base
from concurrent.futures import Executor as _BaseExecutor
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from . import bulk, checks
from .boss import Boss
from .calls import (
    CANCELLED,
    CallWorker,
    Claims,
    FiledPayload,
    Payload,
    dump_call,
    dumps_call,
    fork_time_functions,
    forking_with,
    measure_call,
    run_chunk,
)
from .errors import InstructionsError, Interrupted, RemoteTraceback, ReportError, TaylorError, WorkerError
from .report import DONE, FAILED
from .schedulers import MaxThreadsScheduler

__all__ = ["Executor", "CallOptions"]

#: Bytes of call payloads an executor lets wait in its boss at once; later calls wait in the
#: caller's queue (where cancelling them is free) until earlier ones end.
BOSS_BYTES = 16 << 20

#: Calls whose pickle is larger than this are pickled when sent to the boss (into a bulk file
#: where one is free, see :mod:`taylor.bulk`); at submit their pickle is only counted, to raise
#: there if they cannot be sent.  Between the two the caller holds the call's arguments, not
#: megabytes of pickles, each in fresh pages (some 0.8 ms per MiB on the reference VM).  Like
#: ProcessPoolExecutor, such a call then sees changes made to its arguments before it is sent.
PICKLED_AT_SEND = 1 << 16

#: Calls the manager sends the boss at most per turn: the boss starts on them while the manager
#: checks the next ones (some 20-30 us a call in the caller), and entries are read in between.  One
#: batch of all the calls of a large ``map`` left the boss idle, waiting for it.
BATCH = 128

#: Per-call options :meth:`Executor.options` accepts, and how each is checked.
_OPTIONS = ("memory", "timeout", "expected_time", "name")


class _Future(Future):
    """A :class:`concurrent.futures.Future` whose ``cancel()`` asks the call's process first.

    The call is cancellable until its worker process starts it (not merely
    until it is handed to the boss): ``cancel()`` and the worker race for the
    call's claim (see :class:`~taylor.calls.Claims`), and exactly one wins.
    """

    def __init__(self, claims: Claims, seq: int, size: int) -> None:
        super().__init__()
        self._claims = claims
        self._seq = seq
        self._size = size  # of its payload

    def cancel(self) -> bool:
        with self._condition:
            if self._state == _base.PENDING and not self._claims.cancel(self._seq):
                self.set_running_or_notify_cancel()  # it has started in its process
                return False
        return self._cancelled_now()

    def _stop(self) -> None:
        """The call's process was stopped (``shutdown(cancel_futures=True)``): cancelled too."""
        with self._condition:
            if self._state == _base.RUNNING:
                self._state = _base.PENDING
        self._cancelled_now()

    def _cancelled_now(self) -> bool:
        done = super().cancel()
        with self._condition:
            if done and self._state == _base.CANCELLED:
                self.set_running_or_notify_cancel()  # wakes wait() and as_completed() at once
        return done


class CallOptions:
    """A light view of an :class:`Executor` whose calls carry per-call options
    (see :meth:`Executor.options`); it has the executor's ``submit`` and ``map``."""

    def __init__(self, executor: Executor, options: Dict[str, Any]) -> None:
        self._executor = executor
        self._options = options

    def options(self, **options: Any) -> CallOptions:
        """These options added to (or replacing) this view's."""
        return CallOptions(self._executor, dict(self._options, **_checked(options)))

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return self._executor._submit(fn, args, kwargs, self._options)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: int = 1) -> Iterator[Any]:
        return self._executor._map(fn, iterables, timeout, chunksize, self._options)

    def __repr__(self) -> str:
        return f"<{self._executor!r} with {self._options}>"


def _checked(options: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"unknown call option(s) {', '.join(unknown)}; known: {', '.join(_OPTIONS)}")
    for key, value in options.items():
        if key == "name":
            why = None if isinstance(value, str) and value else f"name must be a non-empty string, got {value!r}"
        elif key == "timeout":
            why = None if value is None else checks.seconds(value, "timeout")
        else:
            why = checks.amount(value, key, "MiB" if key == "memory" else "seconds")
        if why:
            raise ValueError(why)
    return dict(options)


class Executor(_BaseExecutor):
    """A :class:`concurrent.futures.Executor` running each call in a fresh forked process.

    :param max_workers: at most this many calls at once (a
        :class:`~taylor.schedulers.MaxThreadsScheduler`); give it or ``scheduler``.
    :param scheduler: any taylor scheduler (memory-aware, longest first...);
        default: as many calls at once as this job has CPUs.
    :param timeout: default per-call timeout in seconds (``None``: none); a call
        that runs longer is terminated and its future fails with
        :class:`~taylor.errors.WorkerTimeoutError` (a :class:`TimeoutError`).
    :param name: a name for logs and error messages.
    :param stop_grace: seconds between SIGTERM and SIGKILL when a call is stopped.
    :param max_report_bytes: largest pickled result a call may send back.
    :param reuse: run many calls per long-lived process (one per slot, forked
        on demand, replaced when it dies or after ``max_tasks_per_process``
        calls) rather than one fresh process per call: for calls of a
        millisecond.  A call then sees what earlier calls left in its process
        (globals, imported modules, cwd, environment); see :mod:`taylor.reuse`.
    :param max_tasks_per_process: with ``reuse``, calls per process before it is replaced (None: no limit).

    The boss process is forked here: functions that exist now (lambdas and
    closures too) reach the calls' processes without pickling; see
    :mod:`taylor.calls` for the others.
    """

    def __init__(self, max_workers: Optional[int] = None, scheduler: Any = None, timeout: Optional[float] = None,
                 *, name: Optional[str] = None, stop_grace: float = 2.0, max_report_bytes: int = 1 << 30,
                 verbose: bool = False, reuse: bool = False, max_tasks_per_process: Optional[int] = None) -> None:
        if max_workers is not None:
            if scheduler is not None:
                raise ValueError("give max_workers or scheduler, not both (a scheduler sets its own limits)")
            if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
                raise ValueError(f"max_workers must be a whole number >= 1, got {max_workers!r}")
            scheduler = MaxThreadsScheduler(limit="threads", max_threads=max_workers)
        self._claims = Claims()
        self._bulk = bulk.BulkFiles.make(max_report_bytes)  # large calls and results go around the boss
        functions = fork_time_functions()
        try:
            with forking_with(functions), bulk.forking_with(self._bulk):
                # An executor's failures are its futures' exceptions: not logged.
                self._boss = Boss(scheduler=scheduler, name=name, verbose=verbose, on_error="continue",
                                  timeout=timeout, stop_grace=stop_grace, max_report_bytes=max_report_bytes,
                                  reuse=reuse, max_tasks_per_process=max_tasks_per_process,
                                  log_failures=verbose)
        except BaseException:
            self._claims.close()
            if self._bulk is not None:
                self._bulk.close()
            raise
        self._known = weakref.WeakValueDictionary(functions)
        del functions  # the boss holds them; here, only while the caller does
        self.name = name
        self._owner = os.getpid()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._queue: deque = deque()  # (future, row) not yet sent to the boss
        self._futures: Dict[str, _Future] = {}  # sent, by worker name (manager thread only)
        self._in_boss = 0  # bytes of their payloads (manager thread only)
        self._seq = itertools.count()
        self._names: set = set()
        self._shutdown = False
        self._cancel = False
        self._broken: Optional[BaseException] = None
        self._closed = False
        self._woken = False  # a byte is in the wake-up pipe that the manager has not read yet
        self._boss.make_them_work()
        self._thread = threading.Thread(target=self._manage, name=f"taylor-executor-{self._boss.pid}")
        self._thread.start()
        _live.add(self)

    # ------------------------------------------------------------- the caller's side
    def options(self, **options: Any) -> CallOptions:
        """A view of this executor whose calls carry these options, e.g.
        ``executor.options(memory=500, timeout=60).submit(fn, x)``.

        ``memory`` (MiB the call needs, for memory-aware schedulers),
        ``expected_time`` (seconds, for longest-first schedulers), ``timeout``
        (seconds, this call's limit, ``None``: the executor's), ``name`` (the
        worker's name in logs and errors; unique per call, numbered by ``map``).
        """
        return CallOptions(self, _checked(options))

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` in a fresh process; return its Future at once.

        Raises :class:`TypeError` at once when the call cannot be sent (see
        :mod:`taylor.calls`), ``RuntimeError`` after :meth:`shutdown`, and
        :class:`~concurrent.futures.BrokenExecutor` once the boss is gone.
        """
        return self._submit(fn, args, kwargs, {})

    def _submit(self, fn: Callable[..., Any], args: tuple, kwargs: Dict[str, Any], options: Dict[str, Any]) -> Future:
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, got {type(fn).__name__} {fn!r}")
        if os.getpid() != self._owner:
            raise RuntimeError(f"this executor{self._label()} belongs to process {self._owner}, which created it; "
                               "a forked child must create its own Executor")
        data, size = measure_call(fn, args, kwargs, self._known, PICKLED_AT_SEND)  # TypeError now if it cannot be sent
        call = _Later(fn, args, kwargs) if data is None else Payload(data)  # large: pickled when sent
        with self._lock:
            if self._broken is not None:
                raise BrokenExecutor(f"the executor{self._label()} can run nothing more: "
                                     f"{type(self._broken).__name__}: {self._broken}") from self._broken
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            seq = next(self._seq)
            name = options.get("name")
            if name is None:
                name = f"{_label(fn)}#{seq}"
                while name in self._names:
                    name += "'"
            elif name in self._names:
                raise ValueError(f"a call named {name!r} was already submitted to this executor: names are unique")
            self._names.add(name)
            future = _Future(self._claims, seq, size)
            row = {"taylor_call": call, "taylor_claims": self._claims.fd, "taylor_seq": seq, "name": name}
            for key in ("memory", "timeout", "expected_time"):
                if options.get(key) is not None:
                    row[key] = options[key]
            self._queue.append((future, row))
            self._wake()
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: int = 1) -> Iterator[Any]:
        """``fn`` over the items of ``iterables``, results in input order, each call in its own
        process (or ``chunksize`` calls per process).  ``timeout`` bounds the wait for the
        results (as in :mod:`concurrent.futures`); per-call limits go through :meth:`options`.
        """
        return self._map(fn, iterables, timeout, chunksize, {})

    def _map(self, fn: Callable[..., Any], iterables: Tuple[Iterable[Any], ...], timeout: Optional[float],
             chunksize: int, options: Dict[str, Any]) -> Iterator[Any]:
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be a whole number >= 1, got {chunksize!r}")
        end_time = None if timeout is None else timeout + time.monotonic()
        calls: Iterable[Any] = zip(*iterables)
        if chunksize > 1:
            calls = [(fn, chunk) for chunk in _chunks(calls, chunksize)]
            fn = run_chunk
        name = options.get("name")
        futures = [self._submit(fn, args, {}, options if name is None else dict(options, name=f"{name}-{i}"))
                   for i, args in enumerate(calls)]
        return _results(futures, end_time, chunksize > 1)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more calls; let the submitted ones finish, then end the boss.

        ``cancel_futures=True`` cancels every call not started yet and stops
        the running ones (SIGTERM, SIGKILL after ``stop_grace``): their
        futures are cancelled too.  ``wait=True`` returns once every process is
        gone.
        """
        with self._lock:
            self._shutdown = True
            self._cancel = self._cancel or cancel_futures
            self._wake()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def __exit__(self, exc_type, exc, tb) -> bool:
        """Wait for the calls, as concurrent.futures does; but a with-block left by Ctrl-C or
        SIGTERM (:class:`~taylor.errors.Interrupted`) stops them: nobody waits for their results."""
        interrupted = exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, Interrupted))
        self.shutdown(wait=True, cancel_futures=interrupted)
        return False

    def _wake(self) -> None:
        """Wake the manager (called holding ``_lock``, which guards the pipe's closing), unless a
        wake-up is pending already: a burst of submits costs one write, and one turn of the manager."""
        if not self._closed and not self._woken:
            self._woken = True
            with contextlib.suppress(BlockingIOError):  # full: it is awake already
                os.write(self._wake_w, b"x")

    def _label(self) -> str:
        return f" {self.name!r}" if self.name else ""

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "broken" if self._broken else "running"
        return f"<taylor.Executor{self._label()} boss pid={self._boss.pid} {state}>"

    # ------------------------------------------------------------- the manager thread
    def _manage(self) -> None:
        boss = self._boss
        error: Optional[BaseException] = None
        ending = None  # 'end' once told to finish, 'stop' once told to stop
        more = False  # calls are queued that could be sent now: look, but do not wait
        try:
            while not boss.ended:
                ready = _poll([self._wake_r] + boss.waitable(), 0 if more else None)
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 1 << 16)
                with self._lock:  # what was queued before this is seen below: later submits wake it again
                    self._woken = False
                    shutdown, cancel = self._shutdown, self._cancel
                if cancel and ending != "stop":
                    self._cancel_all()
                    boss.stop_them_working()
                    ending = "stop"
                for entry in boss.wait_for_entries(timeout=0):
                    self._complete(entry)
                more = ending is None and self._send_queued()
                if shutdown and ending is None and not self._queue:
                    boss.end()
                    ending = "end"
            boss.wait_till_finished()
        except BaseException as exc:  # noqa: BLE001 - the boss died, or was stopped by a signal: said below
            error = exc
        finally:
            self._finish(error)

    def _send_queued(self) -> bool:
        """Send the boss up to :data:`BATCH` of the calls queued, while their payloads in the boss
        stay under :data:`BOSS_BYTES` (the first always goes): a megabyte call then costs memory the
        allocators of the caller and the boss reuse, not fresh pages.  True if more could go now."""
        groups: Dict[Tuple[str, ...], List[Tuple[_Future, Dict[str, Any]]]] = {}
        for _ in range(BATCH):
            if not self._sendable():
                break
            future, row = self._queue.popleft()
            if future.cancelled():
                continue
            later = row["taylor_call"]
            if isinstance(later, _Later):
                try:
                    row["taylor_call"] = self._pickled(later, future)
                except TypeError as exc:  # it pickled at submit: its arguments changed since
                    _settle(future.set_exception, exc)
                    continue
            groups.setdefault(tuple(row), []).append((future, row))
            self._futures[row["name"]] = future
            self._in_boss += future._size
        for keys, calls in groups.items():
            try:
                rows = {key: [row[key] for _, row in calls] for key in keys}
                self._boss._set_instructions(None, rows, fits=CallWorker)
            except InstructionsError as exc:  # e.g. more memory than the scheduler could ever grant
                self._fail(calls, exc)
            except TaylorError as exc:
                if not self._boss.ended:
                    self._fail(calls, exc)
        return self._sendable()

    def _pickled(self, later: _Later, future: _Future) -> Payload:
        """A large call's payload: in a free bulk call slot (see :mod:`taylor.bulk`) where it can be,
        else for the boss to carry."""
        if self._bulk is not None and future._size <= bulk.LARGEST_CALL:
            def dump(sink: Callable[[], Any]) -> None:
                dump_call(later.fn, later.args, later.kwargs, self._known, sink)

            filed = self._bulk.file_call(bulk.owner_of(future._seq), dump, future._size)
            if filed is not None:
                return FiledPayload(*filed)
        return Payload(dumps_call(later.fn, later.args, later.kwargs, self._known))

    def _sendable(self) -> bool:
        return bool(self._queue) and (self._in_boss < BOSS_BYTES or not self._futures)

    def _fail(self, calls: List[Tuple[_Future, Dict[str, Any]]], error: BaseException) -> None:
        for future, row in calls:
            if self._futures.pop(row["name"], None) is not None:
                self._in_boss -= future._size
            _settle(future.set_exception, error)

    def _complete(self, entry: Dict[str, Any]) -> None:
        future = self._futures.pop(entry["name"], None)
        if future is not None:
            self._in_boss -= future._size
        status, report = entry["status"], entry["report"]
        if self._bulk is not None:
            status, report = self._unfiled(entry, future, status, report)
        # The boss handle keeps every entry for its final report, which nobody reads here: it keeps
        # them without the call's payload and result, which belong to the future alone.
        entry.update(report=None, instructions={"name": entry["name"]})
        tb = entry.pop("traceback", None)
        if future is None:
            return
        if report is CANCELLED or (status not in (DONE, FAILED) and self._cancel):
            future._stop()  # cancelled before it started, or stopped by shutdown(cancel_futures=True)
        elif status not in (DONE, FAILED):  # stopped by no request of ours: the boss was told to stop
            _settle(future.set_exception, WorkerError(
                f"call {entry['name']!r} (pid {entry.get('pid')}) was stopped before it ended: the executor's "
                "boss process was stopped (SIGTERM to it?)", worker=entry["name"], pid=entry.get("pid")))
        elif status == DONE:
            _settle(future.set_result, report)
        else:
            if not isinstance(report, BaseException):
                report = WorkerError(f"call {entry['name']!r} failed: {report!r}", worker=entry["name"])
            if tb and report.__cause__ is None:
                report.__cause__ = RemoteTraceback(tb)
            _settle(future.set_exception, report)

    def _unfiled(self, entry: Dict[str, Any], future: Optional[_Future], status: str, report: Any) -> Tuple[str, Any]:
        """The entry's status and report once a result left in a bulk file is read (and its slot
        freed), and the slots of a call whose process died holding them freed.  A call that ran
        freed its call slot as it loaded the call; one cancelled before it started never loaded it."""
        if type(report) is bulk.Filed:
            try:
                report = self._bulk.read_result(report)
            except Exception as exc:  # noqa: BLE001 - the result's class cannot be loaded here, say
                status = FAILED
                report = ReportError(f"call {entry['name']!r} returned a result that this process (the caller) "
                                     f"cannot unpickle ({type(exc).__name__}: {exc}). Make its class importable "
                                     "here, and its pickling independent of the process", worker=entry["name"],
                                     pid=entry.get("pid"))
        if future is not None and (status != DONE or report is CANCELLED):
            self._bulk.release(bulk.owner_of(future._seq))
        return status, report

    def _cancel_all(self) -> None:
        for future, _ in list(self._queue):
            future.cancel()
        self._queue.clear()
        for future in list(self._futures.values()):
            future.cancel()  # those already started are stopped with the run

    def _finish(self, error: Optional[BaseException]) -> None:
        """The run is over: close the boss, settle every future left, and let nothing new in."""
        with contextlib.suppress(BaseException):
            self._boss.close()
        with self._lock:
            cancel = self._cancel
            if not self._shutdown:
                self._broken = error or TaylorError("the boss ended its run on its own")
            self._closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)
        left = list(self._futures.values()) + [future for future, _ in self._queue]
        self._futures.clear()
        self._queue.clear()
        for future in left:
            if cancel:
                future._stop()
            else:
                broken = BrokenExecutor(f"the executor{self._label()} ended before this call did: "
                                        f"{type(error).__name__}: {error}" if error else
                                        f"the executor{self._label()} ended before this call did")
                broken.__cause__ = error
                _settle(future.set_exception, broken)
        self._claims.close()
        if self._bulk is not None:
            self._bulk.close()
        _live.discard(self)


class _Later:
    """A large call, pickled when it is sent (see :data:`PICKLED_AT_SEND`)."""

    __slots__ = ("fn", "args", "kwargs")

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: Dict[str, Any]) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs


def _settle(setter: Callable[[Any], None], value: Any) -> None:
    """Complete a future, unless it was cancelled meanwhile."""
    with contextlib.suppress(InvalidStateError):
        setter(value)


def _label(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _chunks(items: Iterable[Any], size: int) -> Iterator[list]:
    iterator = iter(items)
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk


def _results(futures: List[Future], end_time: Optional[float], chunked: bool) -> Iterator[Any]:
    """Yield the futures' results in order; cancel those left when the consumer stops early."""
    futures.reverse()  # pop from the end: results already given are not kept
    try:
        while futures:
            future = futures.pop()
            result = future.result() if end_time is None else future.result(end_time - time.monotonic())
            if chunked:
                yield from result
            else:
                yield result
    finally:
        for future in futures:
            future.cancel()


def _poll(fds: List[int], timeout: Optional[float] = None) -> List[int]:
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(timeout)]


_live: weakref.WeakSet = weakref.WeakSet()


def _at_exit() -> None:
    """At interpreter exit, as concurrent.futures does: finish the calls of executors never shut down."""
    for executor in list(_live):
        with contextlib.suppress(Exception):
            executor.shutdown(wait=True)


try:  # before non-daemon threads are joined, as concurrent.futures registers its own
    threading._register_atexit(_at_exit)  # type: ignore[attr-defined]
except AttributeError:  # pragma: no cover - Python < 3.9
    import atexit

    atexit.register(_at_exit)

# A forked child (the boss, a call's process, a user's own fork) owns none of its parent's executors.
os.register_at_fork(after_in_child=_live.clear)
