"""The local launcher: workers as processes of this host, forked by the spawner (or the boss).

:class:`LocalProcesses` implements the launcher seam (:class:`taylor.launcher.Launcher`)
for a local run.  It owns everything specific to local processes: the
spawner (its tokens for workers it was asked to fork, its news, the deadline
by which it must answer and giving up on it), reaping the boss's own
children, a direct task's program and its end, the boss's descriptor
budget, and signals to a worker's process tree.  This module must not
depend on the engine (it reaches it only through the :class:`~taylor.launcher.Host`
it is given), nor on the caller's channel.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from .errors import describe_exit
from .forking import _signal, ended_children, fork_worker, worker_handlers
from .launcher import NOT_NOW, Host, Launcher
from .spawner import EXITED, STARTED, News, Spawner
from .worker import DirectSpec, direct_capable, direct_outcome, instantiate, prepare_class

if TYPE_CHECKING:
    import psutil

__all__ = ["FD_MARGIN", "LocalProcesses", "SPAWNER_DEADLINE", "Started", "spawn"]

log = logging.getLogger("taylor.boss")

#: What starting a worker gives: (pid, spawner token, report fd, direct spec); see LocalProcesses._start.
Started = Tuple[Optional[int], Optional[int], Optional[int], Optional[DirectSpec]]


#: Signals a command gets at their default disposition: Python (and the boss) ignore or handle them.
_DEFAULT_SIGNALS = [getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM", "SIGCHLD")
                    if hasattr(signal, name)]


def spawn(argvs: List[List[str]], out: int, err: int, env: Mapping[Any, Any], **options: Any) -> int:
    """Start the first of ``argvs`` that can start (stdin from /dev/null, stdout ``out``, stderr
    ``err``); return its pid.  The last one's OSError is raised if none can.

    ``os.posix_spawn`` (a vfork under the hood) costs a fraction of a fork of
    this process, which matters for batches of short commands.  Python
    ignores SIGPIPE; the command gets it back at its default, as from a shell.
    ``options`` go to ``os.posix_spawnp`` (``setpgroup``, ``file_actions``...).
    """
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, err, 2)]
    actions += options.pop("file_actions", ())
    for position, argv in enumerate(argvs):
        try:
            return os.posix_spawnp(argv[0], argv, env, file_actions=actions, setsigdef=_DEFAULT_SIGNALS,
                                   **options)
        except OSError:  # not found, not executable...: the next one (the shell) says why
            if position == len(argvs) - 1:
                raise
    raise ValueError("nothing to run")


def _fd_usage() -> Tuple[int, int]:
    """(RLIMIT_NOFILE's soft limit, descriptors open now) of this process; a guess where it cannot tell."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        used = len(os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"))
    except (ImportError, OSError, ValueError):
        return 256 + FD_MARGIN, 0
    if limit == resource.RLIM_INFINITY:
        limit = 1 << 20
    return limit, used


#: Descriptors the boss keeps for itself beyond those open when it starts its first worker: the
#: look-ups of /proc (stopping workers lists the process table), a log file, a library's own.
FD_MARGIN = 16

#: Seconds the spawner may stay silent while it owes the boss an answer (the pid of a worker it was
#: asked to fork, the end of one the boss killed).  Past it, the boss takes it for stopped or stuck,
#: kills it (its workers die with it) and forks workers itself.  Generous: a fork on a loaded machine
#: may take a while, and a spawner wrongly given up on takes its running workers along.
SPAWNER_DEADLINE = 30.0
#: The same, once the boss has killed every worker to end the run: nothing is left to lose.
SPAWNER_STOP_DEADLINE = 1.0
#: A deadline met this late (seconds) means the boss itself was held up (stopped with its job,
#: starved): the spawner, held up too, gets a new deadline rather than the blame.
LATE = 1.0


class _SpawnerCheck:
    """When the boss looks again whether its spawner answers (a deadline of the host's)."""

    __slots__ = ("at", "limit", "finished")

    def __init__(self, at: float, limit: float) -> None:
        self.at = at
        self.limit = limit
        self.finished = False  # superseded: the heap may forget it


class LocalProcesses(Launcher):
    """Starts workers as forked children of the spawner (see :mod:`taylor.spawner`),
    or of the (single-threaded) boss when the spawner cannot, and a direct
    task's program as a spawned child of the boss.

    ``private_fds`` returns the boss's own descriptors (control channel,
    poller, other workers' channels...), which every child closes at once so
    that it holds nothing of the boss but its own report channel.  ``shared``
    holds the instructions every worker inherits rather than receives.
    """

    def __init__(self, private_fds: Callable[[], Iterable[int]], max_report_bytes: int,
                 shared: Optional[Mapping[str, Any]] = None) -> None:
        self._private_fds = private_fds
        self._max_report_bytes = max_report_bytes
        self._shared = dict(shared or {})
        # The caller's SIGPIPE, for the workers: the boss ignores SIGPIPE.
        self._handlers = worker_handlers(_signal.getsignal(signal.SIGPIPE))
        self.fds_held = 0  # descriptors the boss holds for running workers: report channels, direct tasks' files
        self._direct_fds = 0
        self._measure_fds()
        self.spawner: Optional[Spawner] = None
        self.spawner_fd: Optional[int] = None
        self.spawner_heard = time.monotonic()  # when the spawner last said something
        self.spawner_check: Optional[_SpawnerCheck] = None  # armed while it owes the boss an answer
        self.by_pid: Dict[int, Any] = {}  # workers whose process runs (or ran and is not reaped yet)
        self.asked: Dict[int, Any] = {}  # by spawner token: workers whose pid is not known yet

    def _measure_fds(self) -> None:
        """Set the descriptor budget of the workers from what this process has and uses now.

        Each running worker process costs the boss one descriptor (its report
        channel's read end), a direct task two (its stdout and stderr); starting
        one costs a second one a moment (the pipe's write end, sent to the
        spawner or kept across the boss's own fork, then closed).  Requests in
        flight to the spawner carry that write end, each for a worker whose read
        end is counted, so they stay within the budget too.  The caller holds
        nothing per worker.  Direct tasks may take half of the budget, so that
        many running tasks fall back to worker processes (one descriptor each).
        """
        self.fd_limit, used = _fd_usage()
        self.fd_budget = max(0, self.fd_limit - (used - self.fds_held) - FD_MARGIN)
        self._direct_budget = self.fd_budget // 2

    def fd_room(self) -> int:
        """How many more worker processes the boss's descriptors allow now (see :meth:`_measure_fds`)."""
        return self.fd_budget - self.fds_held - 1

    # ------------------------------------------------------------- life
    def open(self, host: Host) -> None:
        """Start the spawner, and watch its news (before any instruction arrives: it stays as small
        as the boss is now)."""
        self.host = host
        try:
            self.spawner = self._open_spawner()
        finally:
            self._measure_fds()  # the boss is set up: what it uses from now on is its own
        if self.spawner is not None:
            self.spawner_fd = self.spawner.fileno()
            host.watch(self.spawner_fd, self._on_spawner)

    def _open_spawner(self) -> Optional[Spawner]:
        if os.environ.get("TAYLOR_SPAWNER", "1") == "0":  # the boss forks every worker itself
            return None
        return Spawner.start(self._private_fds(), self._shared, self._max_report_bytes, self._handlers)

    def close(self) -> None:
        """End the spawner, if any (the run is over)."""
        self._close_spawner()

    def alive(self) -> int:
        return len(self.by_pid)

    # ------------------------------------------------------------- starting
    def start(self, worker: Any) -> Optional[int]:
        """Start ``worker`` (see :meth:`Launcher.start`): forked by the spawner (its pid comes later, as
        its news), by the boss, or, for a task that is one program run, that program spawned by the boss."""
        instructions = worker.instructions
        pid, token, fd, direct = self._start(instructions.worker_class, instructions.attributes({}))
        worker.direct = direct
        if pid is None:
            worker.spawned = True
            self.asked[token] = worker  # the spawner forks it: its pid comes as news
            if self.spawner_check is None:
                self._expect_spawner()
        else:
            self._started(worker, pid)
        return fd

    def _started(self, worker: Any, pid: int) -> None:
        worker.pid = pid
        self.by_pid[pid] = worker
        self.host.started(worker, pid)

    def _start(self, cls: type, attributes: Mapping[str, Any]) -> Started:
        """Start a worker running ``cls(attributes + shared)._task()``.

        Returns (pid, None, report fd, None) when the boss forked it, and
        (None, token, report fd, None) when the spawner was asked to: its pid
        comes later as news.  When the worker's class offers the task as a
        program run (:meth:`~taylor.worker.Worker._direct_spec`), the boss
        spawns that program itself and returns (its pid, None, None, the
        spec): no Python process, no report channel; the report is made at
        its end by :meth:`direct_outcome`.

        An :class:`OSError` whose errno is in :data:`NOT_NOW` means that the
        boss has no descriptor or process to spare now: nothing was started.
        """
        if direct_capable(cls) and self._direct_fds + 2 <= self._direct_budget:
            spec = self._start_direct(cls, {**attributes, **self._shared})
            if spec is not None:
                return spec.pid, None, None, spec
        read_fd, write_fd = os.pipe()
        try:
            token = None if self.spawner is None else self.spawner.ask(cls, attributes, write_fd)
            pid = None
            if token is None:
                prepare_class(cls)
                pid = fork_worker(cls, {**attributes, **self._shared}, write_fd,
                                  [read_fd, *self._private_fds()], self._handlers, self._max_report_bytes)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.fds_held += 1
        return pid, token, read_fd, None

    def close_channel(self, fd: int) -> None:
        """Close a worker's report channel (the read end :meth:`start` returned)."""
        self.fds_held -= 1
        os.close(fd)

    # ------------------------------------------------------------- ending
    def reap(self) -> None:
        """Reap the boss's ended children: its own workers, and the spawner should it die."""
        for pid, exitcode in ended_children():
            if self.spawner is not None and pid == self.spawner.pid:
                self.spawner.pid = None  # nothing left to reap
                log.error("the spawner process (pid %d) died (%s); the boss forks workers itself from now on",
                          pid, describe_exit(exitcode))
                self._spawner_news()
                continue
            worker = self.by_pid.pop(pid, None)
            if worker is not None:
                self.host.ended(worker, exitcode)

    def ended(self, worker: Any, exitcode: Optional[int]) -> Optional[int]:
        """Kill the strays left in ``worker``'s process group; make a direct task's outcome."""
        if worker.direct is not None:
            exitcode = self._direct_end(worker, exitcode)
        if worker.pid is not None:
            self._signal(worker.pid, signal.SIGKILL, worker.others)  # strays left in its group
        return exitcode

    def _direct_end(self, worker: Any, exitcode: int) -> int:
        """Make the outcome of a direct run, as its worker process would have sent it; return the
        exit code that worker process would have had.

        A program the boss stopped (timeout, abort, STOP_RIGHTNOW) has no
        report, like a worker process killed before it could send one; one
        that had ended before the boss came to stop it has its report.
        """
        spec = worker.direct
        try:
            if (worker.stop_requested or worker.timed_out) and not spec.ended_first:
                return exitcode
            worker.outcome = self.direct_outcome(spec, exitcode)
            return 0  # a worker process exits 0 once it has sent its report
        finally:
            self.release(spec)

    def drain(self) -> None:
        """Kill and reap every worker (the engine's loop failed: no grace)."""
        for worker in self.by_pid.values():
            self._signal(worker.pid, signal.SIGKILL, worker.others)
        self._close_spawner()
        while self.by_pid:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            worker = self.by_pid.pop(pid, None)
            if worker is not None:
                self.host.ended(worker, os.waitstatus_to_exitcode(status))

    # ------------------------------------------------------------- signals
    def signal(self, worker: Any, signum: int) -> None:
        if worker.pid is not None:
            self._signal(worker.pid, signum, worker.others)

    def terminate(self, workers: list) -> None:
        """SIGTERM each worker, its process group and its other descendants (one look at the process
        table for all), then SIGCONT: a stopped one (SIGSTOP) gets its SIGTERM when continued."""
        workers = [w for w in workers if w.pid is not None]  # not forked yet: signalled as soon as it is
        if not workers:
            return
        trees = self.descendants(w.pid for w in workers)
        for worker in workers:
            if worker.direct is not None:
                worker.direct.ended_first = self.has_ended(worker.pid)
            worker.others = trees.get(worker.pid, [])
            self._signal(worker.pid, signal.SIGTERM, worker.others)
            self._signal(worker.pid, signal.SIGCONT, worker.others)

    def kill(self, worker: Any, ending: bool = False) -> None:
        """SIGKILL ``worker`` (it ends a stopped process too); the spawner then owes its end, or still
        owes its pid (``ending``: the run ends, the spawner's answer is awaited for less long)."""
        if worker.pid is not None:
            worker.killed = True
            self._signal(worker.pid, signal.SIGKILL, worker.others)
        if worker.spawned:
            self._expect_spawner(short=ending)

    # ------------------------------------------------------------- the spawner
    def update(self) -> None:
        """What the spawner said before now (a SEND_REPORT: it is part of the state)."""
        if self.spawner_fd is not None:
            self._spawner_news()

    def _on_spawner(self, fd: int, mask: int) -> None:
        self._spawner_news()

    def _spawner_news(self) -> None:
        """Act on the spawner's news: workers it forked, could not fork, or reaped."""
        news = [] if self.spawner is None else self.spawner.news()
        if news:
            self.spawner_heard = time.monotonic()
        self._act_on(news)
        if not (self.spawner is not None and self.spawner.alive):
            self._close_spawner()

    def _act_on(self, news: List[News]) -> None:
        host = self.host
        for kind, first, second in news:
            if kind == STARTED:
                worker = self.asked.pop(first, None)
                if worker is None:  # a request the boss gave up on: nobody will watch this one
                    self._signal(second, signal.SIGKILL)
                else:
                    self._started(worker, second)
            elif kind == EXITED:
                worker = self.by_pid.pop(first, None)
                if worker is not None:
                    host.ended(worker, os.waitstatus_to_exitcode(second))
            else:
                why = os.strerror(second) if second else "the spawner could not read its instructions"
                worker = self.asked.pop(first, None)
                if worker is not None and not (second in NOT_NOW and host.refused(worker, why)):
                    host.lost(worker, worker.lost or f"could not be started ({why})")

    def _close_spawner(self) -> None:
        """End the spawner (the run is over, it died, or it stopped answering): the workers it
        forked end with it; the requests it never forked are pending again.

        It answers requests one at a time and in order, so only the oldest request
        left can have been forked unannounced: it is started again only if the
        spawner, killed here, had no child the boss does not know of.  A task never
        runs twice, and never vanishes.
        """
        if self.spawner_fd is not None:
            self.host.unwatch(self.spawner_fd)
            self.spawner_fd = None
        if self.spawner_check is not None:
            self.spawner_check.finished = True
            self.spawner_check = None
        spawner, self.spawner = self.spawner, None
        news, children = ([], set()) if spawner is None else spawner.close()
        self._act_on(news)  # what it said before it ended
        unknown = None if children is None else bool(set(children) - set(self.by_pid))
        lost = [w for w in self.by_pid.values() if w.spawned]
        for worker in lost:
            del self.by_pid[worker.pid]
            self.host.lost(worker, "was killed with the spawner process that forked it")
        asked = sorted(self.asked.items())
        self.asked.clear()
        if asked and unknown is not False:
            _, first = asked.pop(0)
            self.host.lost(first, "was killed with the spawner process that forked it, before the spawner said "
                                  "so; it is not started again, so that it cannot run twice" if unknown else
                                  "may have been killed with the spawner process, which died while it may have "
                                  "been forking it; it is not started again, so that it cannot run twice")
        if asked:  # never forked: pending again, in their order
            self.host.requeue([worker for _, worker in asked])

    def _expect_spawner(self, short: bool = False) -> None:
        """The spawner owes the boss an answer: make sure its silence is looked at in time
        (``short``: the run ends, every worker has been killed)."""
        if self.spawner_fd is None:
            return
        limit = min(SPAWNER_DEADLINE, SPAWNER_STOP_DEADLINE) if short else SPAWNER_DEADLINE
        at = time.monotonic() + limit
        if self.spawner_check is not None:
            if self.spawner_check.at <= at:
                return
            self.spawner_check.finished = True
        self.spawner_check = _SpawnerCheck(at, limit)
        self.host.at(limit, self._check_spawner, self.spawner_check)

    def _spawner_owes(self) -> bool:
        return bool(self.asked) or any(w.spawned and w.killed for w in self.by_pid.values())

    def _check_spawner(self, check: _SpawnerCheck) -> None:
        """Give up on a spawner silent past its deadline while it owes an answer (stopped, stuck)."""
        if check is not self.spawner_check:
            return
        self.spawner_check = None
        if self.spawner_fd is None:
            return
        self._spawner_news()
        if self.spawner_fd is None or not self._spawner_owes():
            return
        now = time.monotonic()
        if now - check.at > LATE:  # the boss was held up itself: no verdict on this wait
            self.spawner_heard = now
        quiet = now - self.spawner_heard
        if quiet < check.limit:
            self.spawner_check = _SpawnerCheck(now + check.limit - quiet, check.limit)
            self.host.at(check.limit - quiet, self._check_spawner, self.spawner_check)
            return
        log.error("the spawner process (pid %s) owes the boss an answer but has said nothing for %.1f s (stopped "
                  "with SIGSTOP, or stuck): the boss killed it, and the workers it had forked, and forks workers "
                  "itself from now on", None if self.spawner is None else self.spawner.pid, quiet)
        self._close_spawner()

    # ------------------------------------------------------------- direct tasks
    def _start_direct(self, cls: type, attributes: Mapping[str, Any]) -> Optional[DirectSpec]:
        """Spawn the program of a direct task, as a worker process would have: None if it cannot be.

        Anything that goes wrong here (a bad template, an unwritable log
        directory, no program to start) falls back to a worker process, which
        meets the same error and reports it as that worker's failure.
        """
        try:
            worker = instantiate(cls, attributes)
            spec = worker._direct_spec()
        except Exception:  # noqa: BLE001 - the worker process will say what is wrong
            return None
        if spec is None:
            return None
        spec.worker = worker
        self._direct_fds += len(spec.fds)
        self.fds_held += len(spec.fds)
        # posix_spawn keeps inheritable descriptors: those of the boss must not reach the program.
        closes = []
        for fd in self._private_fds():
            try:
                if os.get_inheritable(fd):
                    closes.append((os.POSIX_SPAWN_CLOSE, fd))
            except OSError:
                pass
        spec.start = time.monotonic()
        try:
            spec.pid = spawn(spec.argvs, spec.stdout, spec.stderr, spec.env, setpgroup=0, file_actions=closes)
        except OSError:
            self.release(spec)
            return None
        return spec

    def direct_outcome(self, spec: DirectSpec, exitcode: int) -> tuple:
        """The outcome message for a direct task whose program ended with ``exitcode``."""
        return direct_outcome(spec, exitcode, time.monotonic() - spec.start, self._max_report_bytes)

    def release(self, spec: DirectSpec) -> None:
        """Close what a direct task held in the boss."""
        fds = spec.fds
        self._direct_fds -= len(fds)
        self.fds_held -= len(fds)
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        spec.stdout = spec.stderr = -1

    @staticmethod
    def has_ended(pid: int) -> bool:
        """Whether child ``pid`` has ended (and awaits reaping), without reaping it."""
        waitid = getattr(os, "waitid", None)
        if waitid is None:
            return False
        try:
            return waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    @staticmethod
    def descendants(pids: Iterable[int]) -> Dict[int, List[psutil.Process]]:
        """Processes started by each worker of ``pids`` (any depth), as far as can be seen now.

        One look at the process table serves all of them: stopping a thousand
        workers must not scan the table a thousand times.
        """
        import psutil  # here, not at the top: the spawner, and so every fork, is smaller without it

        children: Dict[int, List[psutil.Process]] = {}
        for proc in psutil.process_iter(["ppid"]):
            ppid = proc.info["ppid"]
            if ppid:
                children.setdefault(ppid, []).append(proc)
        result = {}
        for pid in pids:
            found, stack = [], [pid]
            while stack:
                for child in children.get(stack.pop(), ()):
                    found.append(child)
                    stack.append(child.pid)
            result[pid] = found
        return result

    @staticmethod
    def _signal(pid: int, signum: int, others: Iterable[psutil.Process] = ()) -> None:
        """Send ``signum`` to worker ``pid``, its process group and ``others``."""
        try:
            os.killpg(pid, signum)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in others:
            try:
                proc.send_signal(signum)  # psutil checks the pid was not reused
            except Exception:  # noqa: BLE001 - psutil.Error: gone, or not ours
                pass
