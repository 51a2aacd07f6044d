"""Stopped processes (SIGSTOP) never stall a run: a worker, the spawner, or the boss itself.

Every process stopped here is one the test started; each test continues (SIGCONT) and
kills what it stopped in a ``finally``, and bounds every wait.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import threading
import time

import faultworkers  # noqa: F401 - registers Crasher before any Boss exists
import psutil
import pytest
from processes import alive, gone, spawner_of, workers_of
from processes import until as _until

import taylor
from taylor import Boss, Worker, local, run_as_server
from taylor import boss as boss_module
from taylor.forking import worker_handlers
from taylor.schedulers import LaxistScheduler, MaxThreadsScheduler
from taylor.spawner import Spawner

if not sys.platform.startswith("linux"):
    pytest.skip("reads /proc, needs parent-death signals", allow_module_level=True)

pytestmark = pytest.mark.timeout(60)


class Halting(Worker):
    """Sends its report, then stops itself (SIGSTOP) instead of exiting: a worker stopped at the
    worst moment, its report in and its channel closed, only its exit left to do."""

    _footprint = dict(attr=dict(halting=dict(type=bool, values=[True]), piddir=dict()))

    def _task(self):
        real_exit = os._exit

        def stop_then_exit(code):  # what run_child calls once the report is written
            os.kill(os.getpid(), signal.SIGSTOP)
            real_exit(code)

        with open(os.path.join(self.piddir, str(os.getpid())), "w") as f:
            f.write(repr(psutil.Process().create_time()))  # what tells this process from a later one
        os._exit = stop_then_exit  # in this worker process only
        return f"report of {self.name}"


class Tally(Worker):
    """Appends its name and parent to a file: how many times each task ran, and who forked it."""

    _footprint = dict(attr=dict(tally=dict()))

    def _task(self):
        with open(self.tally, "a") as f:
            f.write(f"{self.name} {os.getppid()}\n")
        return os.getppid()


def _stopped(pid) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.Error:
        return False


def _release(procs) -> None:
    """Continue and kill processes this test started (and maybe stopped), ignoring those gone:
    psutil processes (which check that their pid was not reused), or pids of unreaped children."""
    for proc in procs:
        if isinstance(proc, int):
            for signum in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(proc, signum)
                except OSError:
                    pass
            continue
        try:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        except psutil.Error:
            pass


def _suspend_when_waiting(spawner) -> None:
    """SIGSTOP the spawner once back in its loop, so once it has said it forked its children."""
    _until(lambda: spawner.status() == psutil.STATUS_SLEEPING, what="the spawner waiting")
    spawner.suspend()


def _pids_in(directory) -> list:
    return [int(name) for name in os.listdir(directory)]


def _procs_in(directory) -> list:
    """The processes whose pids the test's workers wrote in ``directory`` (those still there)."""
    found = []
    for pid in _pids_in(directory):
        with open(os.path.join(directory, str(pid))) as f:
            created = f.read()
        try:
            proc = psutil.Process(pid)
            if created and repr(proc.create_time()) == created:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def _pids(procs) -> list:
    return [p if isinstance(p, int) else p.pid for p in procs]


# ------------------------------------------------------------------ workers
@pytest.mark.parametrize("forker", ["spawner", "boss"])
def test_a_worker_stopped_after_its_report_is_killed_and_its_entry_keeps_the_report(tmp_path, monkeypatch,
                                                                                     forker):
    if forker == "boss":
        monkeypatch.setenv("TAYLOR_SPAWNER", "0")
    boss = Boss(scheduler=LaxistScheduler(), stop_grace=0.5)
    try:
        if forker == "spawner":
            spawner_of(boss)
        boss.set_instructions(dict(halting=True, piddir=str(tmp_path)), dict(name=["a", "b"]))
        boss.make_them_work()
        report = boss.wait_till_finished()
        assert report.ok and report["status"] == "finished"
        entries = {e["name"]: e for e in report.workers}
        assert {n: (e["status"], e["report"]) for n, e in entries.items()} == {
            "a": ("done", "report of a"), "b": ("done", "report of b")}
        # Killed while stopped: it never got to exit by itself.
        assert [e["exitcode"] for e in entries.values()] == [-signal.SIGKILL] * 2
        assert not gone(_pids_in(tmp_path), 3)
    finally:
        boss.close()
        _release(_procs_in(tmp_path))


def test_close_does_not_block_on_a_worker_stopped_after_its_report(tmp_path):
    boss = run_as_server(dict(halting=True, piddir=str(tmp_path)), dict(name=["halted"]),
                         scheduler=LaxistScheduler(), stop_grace=0.5)
    hanging = []
    try:
        (halted,) = _until(lambda: [p for p in _pids_in(tmp_path) if _stopped(p)] or None, what="a stopped worker")
        boss.set_instructions(None, dict(crash=["hang"], name=["hanging"]))
        hanging = list(_until(lambda: [w for w in workers_of(boss.pid) if w.pid != halted] or None,
                                         what="the hanging worker"))
        boss.close()  # returns: the stopped worker is killed within its grace, the other stopped
        assert boss.ended
        assert not gone([halted, *_pids(hanging)], 3)
    finally:
        boss.close()
        _release([*_procs_in(tmp_path), *hanging])


def test_a_stopped_worker_is_still_ended_by_its_timeout_with_the_grace_sigkill():
    """SIGTERM waits while a process is stopped; the boss continues it (SIGCONT) so that it
    may end gracefully, and one that ignores SIGTERM still gets the SIGKILL after the grace."""
    boss = run_as_server(None, dict(crash=["stubborn"], timeout=[1.5], name=["deaf"]), stop_grace=0.5)
    stopped = []
    try:
        stopped = list(_until(lambda: workers_of(boss.pid), what="the worker"))
        stopped[0].send_signal(signal.SIGSTOP)
        with pytest.raises(taylor.WorkerTimeoutError, match="SIGKILL") as info:
            boss.wait_till_finished()
        assert info.value.report.workers[0]["exitcode"] == -signal.SIGKILL
        assert not gone(_pids(stopped), 3)
    finally:
        boss.close()
        _release(stopped)


def test_an_abort_ends_a_stopped_worker_gracefully():
    boss = run_as_server(None, dict(crash=["hang"], name=["sleeper"]), scheduler=LaxistScheduler(),
                         stop_grace=20.0)
    stopped = []
    try:
        stopped = list(_until(lambda: workers_of(boss.pid), what="the worker"))
        stopped[0].send_signal(signal.SIGSTOP)
        _until(lambda: _stopped(stopped[0].pid), what="the worker stopped")
        boss.set_instructions(None, dict(crash=["exit"], name=["failing"]))
        with pytest.raises(taylor.WorkerDiedError, match="exit code 3") as info:
            boss.wait_till_finished()
        entries = {e["name"]: e for e in info.value.report.workers}
        # The graceful SIGTERM, not the SIGKILL that would end the 20 s grace.
        assert (entries["sleeper"]["status"], entries["sleeper"]["exitcode"]) == ("stopped", -signal.SIGTERM)
        assert not gone(_pids(stopped), 3)
    finally:
        boss.close()
        _release(stopped)


# ------------------------------------------------------------------ the spawner
def test_a_stopped_spawner_is_given_up_on_and_each_task_runs_once_forked_by_the_boss(tmp_path, monkeypatch, caplog):
    """Past the spawner's deadline the boss kills it, with the worker it had forked (reported so),
    and forks the requests it never answered itself: each runs exactly once."""
    # The boss, forked from here, inherits it (raising=False: the test also runs against older code).
    monkeypatch.setattr(local, "SPAWNER_DEADLINE", 1.0, raising=False)
    tally = tmp_path / "tally"
    boss = Boss(scheduler=LaxistScheduler(), on_error="continue", stop_grace=0.5)
    started = []
    try:
        spawner = spawner_of(boss)
        started.append(spawner)
        boss.set_instructions(None, dict(crash=["hang"], name=["long"]))
        boss.make_them_work()
        started += list(_until(lambda: spawner.children(), what="the spawner's worker"))
        _suspend_when_waiting(spawner)
        names = boss.set_instructions(None, dict(tally=[str(tally)] * 4))
        report = boss.wait_till_finished()
        entries = {e["name"]: e for e in report.workers}
        assert entries["long"]["status"] == "failed"
        assert "killed with the spawner process" in str(entries["long"]["report"])
        assert [entries[n]["status"] for n in names] == ["done"] * 4
        lines = tally.read_text().split()
        assert sorted(lines[0::2]) == sorted(names)  # each ran once
        assert set(lines[1::2]) == {str(boss.pid)}  # forked by the boss
        assert not gone(_pids(started), 3)
    finally:
        boss.close()
        _release(started)


def test_a_spawner_stopped_during_an_abort_does_not_hold_the_run(monkeypatch):
    """The run ends: the spawner cannot say its workers ended, and what it was asked to fork is
    listed as never started; the boss does not wait for the long deadline to end the run."""
    monkeypatch.setattr(local, "SPAWNER_DEADLINE", 600.0, raising=False)
    boss = Boss(scheduler=LaxistScheduler(), stop_grace=0.5)
    started = []
    try:
        spawner = spawner_of(boss)
        started.append(spawner)
        boss.set_instructions(None, dict(crash=["hang", "hang"], name=["h1", "h2"]))
        boss.make_them_work()
        started += list(_until(lambda: len(spawner.children()) == 2 and spawner.children(),
                                          what="the spawner's workers"))
        _suspend_when_waiting(spawner)
        boss.set_instructions(None, dict(crash=["ok"], name=["never"]))
        boss.get_report()  # the request is with the stopped spawner
        boss.stop_them_working()
        report = boss.wait_till_finished()
        assert report["status"] == "stopped"
        assert [p["name"] for p in report["pending"]] == ["never"]
        assert sorted((e["name"], e["status"]) for e in report.workers) == [("h1", "stopped"), ("h2", "stopped")]
        assert not gone(_pids(started), 3)
    finally:
        boss.close()
        _release(started)


def test_requests_a_killed_spawner_never_answered_run_once_or_fail_never_twice(tmp_path):
    """The spawner dies (SIGKILL) with requests it never answered: it answers them in order, so all
    but the oldest surely were never forked and run, forked by the boss; the oldest may have been
    forked when it died, so it fails, saying so, rather than risk running twice."""
    tally = tmp_path / "tally"
    boss = Boss(scheduler=LaxistScheduler(), on_error="continue")
    started = []
    try:
        spawner = spawner_of(boss)
        started.append(spawner)
        spawner.suspend()
        names = boss.set_instructions(None, dict(tally=[str(tally)] * 3))
        boss.make_them_work()
        boss.get_report()  # the requests are with the spawner
        spawner.kill()
        report = boss.wait_till_finished()
        entries = {e["name"]: e for e in report.workers}
        first = entries[names[0]]
        assert first["status"] == "failed" and first["pid"] is None
        assert "died while it may have been forking it; it is not started again" in str(first["report"])
        assert [entries[n]["status"] for n in names[1:]] == ["done", "done"]
        lines = tally.read_text().split()
        assert sorted(lines[0::2]) == sorted(names[1:]) and set(lines[1::2]) == {str(boss.pid)}
    finally:
        boss.close()
        _release(started)


def test_a_boss_and_spawner_suspended_together_keep_the_spawner(tmp_path, monkeypatch):
    """A whole job suspended (every process stopped, then continued) is no stuck spawner: the boss
    meets its deadline late, sees that it was held up itself, and gives the spawner a new one."""
    monkeypatch.setattr(local, "SPAWNER_DEADLINE", 1.0, raising=False)
    tally = tmp_path / "tally"
    boss = Boss(scheduler=LaxistScheduler())
    started = [psutil.Process(boss.pid)]
    try:
        spawner = spawner_of(boss)
        started.append(spawner)
        spawner.suspend()
        boss.set_instructions(None, dict(tally=[str(tally)] * 2))
        boss.make_them_work()
        boss.get_report()  # the requests are with the spawner, which owes their pids
        os.kill(boss.pid, signal.SIGSTOP)
        time.sleep(2.5)  # past the spawner's deadline
        os.kill(boss.pid, signal.SIGCONT)  # the boss first: it must not blame the spawner
        time.sleep(0.2)
        spawner.resume()
        report = boss.wait_till_finished()
        assert report.ok
        assert {e["report"] for e in report.workers} == {spawner.pid}  # forked by the spawner
    finally:
        boss.close()
        _release(started)


def test_asking_a_stopped_spawner_never_blocks_the_boss():
    """Its socket fills while it is stopped: asking then says no (the boss forks the worker
    itself) rather than wait.  Requests it never read are never forked."""
    spawner = Spawner.start([], {}, 1 << 20, worker_handlers(signal.SIG_DFL))
    assert spawner is not None
    pid = spawner.pid
    try:
        poller = select.poll()
        poller.register(spawner.fileno(), select.POLLIN)
        deadline = time.monotonic() + 10
        while not spawner.ready:
            assert time.monotonic() < deadline and poller.poll(1000) is not None
            spawner.news()
        os.kill(pid, signal.SIGSTOP)
        asked = 0
        for _ in range(100_000):
            read_fd, write_fd = os.pipe()
            try:
                token = spawner.ask(faultworkers.Crasher, dict(crash="ok"), write_fd)
            finally:
                os.close(read_fd)
                os.close(write_fd)
            if token is None:
                break
            asked += 1
        else:
            pytest.fail("asking a stopped spawner never said no")
        assert asked > 0
        news, children = spawner.close()
        assert news == [] and children == set()
        assert spawner.pid is None
    finally:
        if spawner.pid is not None:  # not reaped by close()
            _release([pid])
            os.waitpid(pid, 0)


# ------------------------------------------------------------------ the boss
def test_close_kills_a_stopped_boss_after_its_grace_keeping_the_entries(monkeypatch):
    monkeypatch.setattr(boss_module, "ABORT_MARGIN", 1.0, raising=False)
    boss = run_as_server(None, dict(crash=["ok", "hang"], name=["quick", "long"]), scheduler=LaxistScheduler(),
                         stop_grace=0.5)
    started = [psutil.Process(boss.pid)]
    try:
        _until(lambda: boss.wait_for_entries(0.1), what="the first entry")
        started += list(_until(lambda: workers_of(boss.pid), what="the hanging worker"))
        started += psutil.Process(boss.pid).children()  # its spawner, if any
        os.kill(boss.pid, signal.SIGSTOP)
        boss.close()  # bounded: stop_grace + ABORT_MARGIN, then the boss is killed
        assert boss.ended
        with pytest.raises(taylor.BossDiedError, match="did not end its run within 1.5 s") as info:
            boss.get_report()
        report = info.value.report
        assert [(e["name"], e["status"]) for e in report.workers] == [("quick", "done")]
        assert report["status"] == "stopped" and isinstance(report["error"], taylor.BossDiedError)
        assert not gone(_pids(started), 3), "the boss, its spawner or a worker survived"
    finally:
        _release(started)
        boss.close()


def test_interrupted_wait_with_a_stopped_boss_is_bounded(monkeypatch):
    """SIGTERM to the caller while the boss is stopped: the caller stops waiting within the
    boss's grace plus the margin and raises Interrupted with the entries received."""
    monkeypatch.setattr(boss_module, "ABORT_MARGIN", 1.0, raising=False)
    boss = run_as_server(None, dict(crash=["ok", "hang"], name=["quick", "long"]), scheduler=LaxistScheduler(),
                         stop_grace=0.5)
    started = [psutil.Process(boss.pid)]
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))  # while the caller waits
    try:
        _until(lambda: boss.wait_for_entries(0.1), what="the first entry")
        started += list(_until(lambda: workers_of(boss.pid), what="the hanging worker"))
        started += psutil.Process(boss.pid).children()
        os.kill(boss.pid, signal.SIGSTOP)
        timer.start()
        with pytest.raises(taylor.Interrupted) as info:
            boss.wait_till_finished()
        report = info.value.report
        assert [(e["name"], e["status"]) for e in report.workers] == [("quick", "done")]
        assert "did not end its run" in str(report["error"])
        assert not gone(_pids(started), 3)
    finally:
        timer.cancel()
        _release(started)
        boss.close()


def test_a_stopped_boss_killed_leaves_no_orphan():
    """Workers and spawner have parent-death signals: a boss killed while stopped takes them along."""
    boss = run_as_server(None, dict(crash=["hang", "hang"]), scheduler=MaxThreadsScheduler(max_threads=2))
    started = [psutil.Process(boss.pid)]
    try:
        started += list(_until(lambda: len(workers_of(boss.pid)) == 2 and workers_of(boss.pid),
                                          what="workers"))
        started += psutil.Process(boss.pid).children()
        os.kill(boss.pid, signal.SIGSTOP)
        os.kill(boss.pid, signal.SIGKILL)
        with pytest.raises(taylor.BossDiedError):
            boss.wait_till_finished()
        assert not gone(_pids(started), 3)
    finally:
        _release(started)
        boss.close()


@contextlib.contextmanager
def _forked_caller():
    """A real caller process running a boss with two hanging workers.  Yields its pid, the boss's
    pid and the processes started (the caller's pid, the boss, the workers: remove the caller's
    once reaped); ends them all."""
    read_end, write_end = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the caller
        try:
            read_end.close()
            boss = run_as_server(None, dict(crash=["hang", "hang"]), scheduler=LaxistScheduler(), stop_grace=0.5)
            write_end.sendall(str(boss.pid).encode())
            time.sleep(60)
        finally:
            os._exit(0)
    write_end.close()
    started = [pid]
    try:
        boss_pid = int(read_end.recv(64))
        started.append(psutil.Process(boss_pid))
        started += list(_until(lambda: len(workers_of(boss_pid)) == 2 and workers_of(boss_pid), what="workers"))
        yield pid, boss_pid, started
    finally:
        read_end.close()
        _release(started)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def test_a_stopped_caller_leaves_the_run_going_and_its_death_ends_it():
    """Checked with a real caller process: stopped, its boss and workers run on; killed while
    stopped, the boss ends the workers."""
    with _forked_caller() as (pid, boss_pid, started):
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.3)
        assert alive(_pids(started[1:])) == _pids(started[1:])
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        started.remove(pid)  # reaped: its pid may be reused
        assert not gone(_pids(started[1:]), 5)


def test_a_boss_stopped_when_its_caller_dies_still_stops_its_workers():
    """Its caller dead, a stopped boss does not stay stopped with its workers running for nobody
    (the kernel sends SIGHUP and SIGCONT to its newly orphaned process group, and its spawner
    and workers die with it)."""
    with _forked_caller() as (pid, boss_pid, started):
        started += psutil.Process(boss_pid).children()
        os.kill(boss_pid, signal.SIGSTOP)
        _until(lambda: _stopped(boss_pid), what="the boss stopped")
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        started.remove(pid)  # reaped: its pid may be reused
        assert not gone(_pids(started[1:]), 5), "the stopped boss or its workers outlived the caller"
