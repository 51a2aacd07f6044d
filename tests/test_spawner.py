"""The spawner process: who forks the workers, and what happens when it is gone."""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import signal
import sys
import time

import faultworkers  # noqa: F401 - registers Crasher before any Boss exists
import psutil
import pytest
from processes import SPAWNER, gone, kill, spawner_of

import taylor
from taylor import Worker, run_as_server
from taylor.calls import Payload
from taylor.schedulers import LaxistScheduler, MaxThreadsScheduler
from taylor.spawner import MAX_REQUEST, _RequestFiles

if not sys.platform.startswith("linux"):
    pytest.skip("reads /proc", allow_module_level=True)


class Family(Worker):
    """Reports who forked it, and whether what it inherited is frozen for the garbage collector."""

    _footprint = dict(attr=dict(family=dict(type=bool, values=[True]),
                                ballast=dict(optional=True, default=""),
                                thing=dict(type=object, optional=True, default=None),
                                echo=dict(type=bool, optional=True, default=False)))

    def _task(self):
        with open(f"/proc/{os.getppid()}/comm") as comm:
            parent = comm.read().strip()
        with open("/proc/self/comm") as comm:
            name = comm.read().strip()
        found = dict(parent=parent, parent_pid=os.getppid(), name=name, frozen=gc.get_freeze_count())
        if self.echo:
            thing = bytes(self.thing.data) if isinstance(self.thing, Payload) else self.thing
            found.update(ballast=self.ballast, thing=thing)
        return found


def _run_when_ready(common, individual, **options):
    """Run once the spawner is ready (before, the boss forks the first workers itself)."""
    boss = taylor.Boss(**options)
    try:
        spawner_of(boss)
        boss.set_instructions(common, individual)
        boss.make_them_work()
        return boss.wait_till_finished()
    finally:
        boss.close()


def test_workers_are_forked_by_the_spawner_and_inherit_a_frozen_heap():
    report = _run_when_ready(dict(family=True), dict(value=[1, 2, 3]))
    assert report.ok
    parents = {entry["report"]["parent_pid"] for entry in report.workers}
    assert len(parents) == 1  # one spawner for the run
    with open("/proc/self/comm") as comm:
        ours = comm.read().strip()
    for entry in report.workers:
        assert entry["report"]["parent"] == SPAWNER
        assert entry["report"]["name"] == ours  # as ps shows it: the script's name, not the spawner's
        assert entry["report"]["frozen"] > 1000  # a full collection in the worker skips the inherited heap


def test_large_instructions_reach_workers_forked_by_the_spawner_through_a_memory_file():
    """A request over the spawner's datagram travels as a memory file the worker reads: the boss,
    whose heap holds the queue, never forks itself; what arrives is what was given; the spawner
    keeps no memory file open, the boss a few, to write the next large requests in."""
    big = "".join(chr(65 + i % 26) for i in range(3 * MAX_REQUEST))
    blob = bytearray(os.urandom(2 * MAX_REQUEST))
    call = os.urandom(2 * MAX_REQUEST)  # an Executor's call: its payload goes out of band
    boss = taylor.Boss()
    try:
        spawner = spawner_of(boss)
        boss.set_instructions(dict(family=True, echo=True),
                              dict(ballast=["", big, "", ""], thing=[None, None, blob, Payload(call)]))
        boss.make_them_work()
        entries = []
        while len(entries) < 4:
            entries += boss.wait_for_entries(timeout=30)
        assert not _memory_files_of(spawner.pid)
        assert len(_memory_files_of(boss.pid)) <= _RequestFiles.KEEP  # kept for the next large requests
        report = boss.wait_till_finished()
    finally:
        boss.close()
    assert report.ok
    entries = sorted(report.workers, key=lambda e: e["index"])
    assert {e["report"]["parent"] for e in entries} == {SPAWNER}
    assert {e["report"]["parent_pid"] for e in entries} == {spawner.pid}
    assert [e["report"]["ballast"] for e in entries] == ["", big, "", ""]
    assert entries[2]["report"]["thing"] == blob
    assert entries[3]["report"]["thing"] == call


def test_a_request_larger_than_a_memory_file_takes_is_forked_by_the_boss_sharing_it(monkeypatch):
    """Over MAX_FILE_REQUEST, a copy would cost more than the boss's own fork, which shares it."""
    monkeypatch.setattr(taylor.spawner, "MAX_FILE_REQUEST", 4 * MAX_REQUEST)  # read in the boss, a fork of this
    blob = os.urandom(5 * MAX_REQUEST)
    report = _run_when_ready(dict(family=True, echo=True), dict(thing=[b"small", blob, bytes(2 * MAX_REQUEST)]))
    assert report.ok
    parents = [e["report"]["parent"] for e in sorted(report.workers, key=lambda e: e["index"])]
    assert parents[0] == parents[2] == SPAWNER and parents[1] != SPAWNER
    assert next(e for e in report.workers if e["index"] == 1)["report"]["thing"] == blob


def _memory_files_of(pid):
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # a descriptor closed meanwhile
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return [link for link in links if "taylor-request" in link]


def test_without_a_spawner_the_boss_forks_every_worker(monkeypatch):
    monkeypatch.setenv("TAYLOR_SPAWNER", "0")
    boss = run_as_server(dict(family=True), dict(value=[1, 2]))
    try:
        report = boss.wait_till_finished()
        assert report.ok
        assert {e["report"]["parent_pid"] for e in report.workers} == {boss.pid}
    finally:
        boss.close()


@pytest.mark.parametrize("on_error", ["continue", "abort"])
def test_a_killed_spawner_takes_its_workers_along_and_the_boss_goes_on(on_error):
    """SIGKILL the spawner while two workers hang: they die with it (parent-death signal) and
    are reported so; with on_error='continue' the tasks still pending run, forked by the boss."""
    boss = taylor.Boss(on_error=on_error, scheduler=MaxThreadsScheduler(max_threads=2), stop_grace=0.5)
    started = []
    try:
        spawner = spawner_of(boss)
        boss.set_instructions(None, dict(crash=["hang", "hang", "ok", "ok"]))
        boss.make_them_work()
        deadline = time.monotonic() + 10
        while len(spawner.children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = [spawner.pid] + [p.pid for p in spawner.children()]
        spawner.kill()
        if on_error == "abort":
            with pytest.raises(taylor.WorkerDiedError, match="killed with the spawner process") as info:
                boss.wait_till_finished()
            report = info.value.report
            assert len(report["pending"]) == 2
        else:
            report = boss.wait_till_finished()
            by_crash = {}
            for entry in report.workers:
                by_crash.setdefault(entry["instructions"]["crash"], []).append(entry)
            assert [e["report"] for e in by_crash["ok"]] == ["fine", "fine"]
            for entry in by_crash["hang"]:
                assert entry["status"] == "failed"
                assert "killed with the spawner process" in str(entry["report"])
        assert not gone(started, 5), "the spawner or a worker survived"
    finally:
        boss.close()
        kill(started)


def test_workers_stopped_before_their_pid_was_known_get_the_graceful_stop():
    """STOP_RIGHTNOW reaches the boss before the spawner has forked the workers (it is
    stopped with SIGSTOP meanwhile): each gets SIGTERM as soon as it exists, and not in
    its first microseconds only to meet the spawner's handlers."""
    boss = taylor.Boss(scheduler=LaxistScheduler(), stop_grace=5.0)
    spawner = None
    try:
        spawner = spawner_of(boss)
        spawner.suspend()
        boss.set_instructions(None, dict(crash=["hang"] * 4))
        boss.make_them_work()
        deadline = time.monotonic() + 10
        while boss.get_report()["counts"]["running"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        boss.stop_them_working()
        time.sleep(0.1)  # the boss has the order, and nobody to send it to yet
        spawner.resume()
        report = boss.wait_till_finished()
        assert report["status"] == "stopped"
        # The graceful SIGTERM, not the SIGKILL that would end the 5 s grace.
        assert [(e["status"], e["exitcode"]) for e in report.workers] == [("stopped", -signal.SIGTERM)] * 4
        assert not gone([e["pid"] for e in report.workers], 3)
    finally:
        if spawner is not None:
            try:
                spawner.resume()
            except psutil.Error:
                pass
        boss.close()


def test_the_spawner_ignores_sigterm_sent_to_the_boss_process_group():
    """A SIGTERM to the boss's group is the boss's to act on (stop its workers, report):
    the spawner stays to reap them."""
    boss = taylor.Boss(scheduler=LaxistScheduler(), stop_grace=0.5)
    started = []
    try:
        spawner = spawner_of(boss)
        boss.set_instructions(None, dict(crash=["hang", "hang"]))
        boss.make_them_work()
        deadline = time.monotonic() + 10
        while len(spawner.children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = [spawner.pid] + [p.pid for p in spawner.children()]
        os.killpg(os.getpgid(boss.pid), signal.SIGTERM)
        with pytest.raises(taylor.Interrupted, match="SIGTERM") as info:
            boss.wait_till_finished()
        entries = info.value.report["workers_report"]
        assert [(e["status"], e["exitcode"]) for e in entries] == [("stopped", -signal.SIGTERM)] * 2
        assert not gone(started, 5)
    finally:
        boss.close()
        kill(started)


def test_a_request_too_large_for_the_spawner_is_given_up_on_without_pickling_it_all():
    from taylor.spawner import _Capped

    capped = _Capped(MAX_REQUEST)
    with pytest.raises(ValueError, match="too large"):
        pickle.Pickler(capped, protocol=pickle.HIGHEST_PROTOCOL).dump(("ref", {"data": b"x" * (50 << 20)}))
    assert len(capped.data) <= MAX_REQUEST
    small = _Capped(MAX_REQUEST)
    pickle.Pickler(small, protocol=pickle.HIGHEST_PROTOCOL).dump(("ref", {"n": 1}))
    assert pickle.loads(small.data) == ("ref", {"n": 1})


class _OnlyOutsideTheSpawner:
    """Unpickles anywhere but in a process named like the spawner (as a value of a module the
    spawner could not import would)."""

    def __reduce__(self):
        return (_only_outside_the_spawner, ())


def _only_outside_the_spawner():
    with open("/proc/self/comm") as comm:
        if comm.read().strip() == SPAWNER:
            raise ImportError("not here")
    return _OnlyOutsideTheSpawner()


def test_instructions_the_spawner_cannot_read_fail_that_worker_clearly_and_nothing_hangs():
    boss = taylor.Boss(on_error="continue")
    try:
        spawner_of(boss)
        boss.set_instructions(dict(family=True), dict(thing=[_OnlyOutsideTheSpawner(), None]))
        boss.make_them_work()
        report = boss.wait_till_finished()
    finally:
        boss.close()
    by_status = {e["status"]: e for e in report.workers}
    assert by_status["done"]["report"]["parent"] == SPAWNER
    failed = by_status["failed"]
    assert isinstance(failed["report"], taylor.WorkerDiedError) and failed["pid"] is None
    assert "could not be started (the spawner could not read its instructions)" in str(failed["report"])


# ------------------------------------------------------------ bare forks (no at-fork hooks)
#: Set in every process forked with os.fork (and so by its at-fork hooks), to that process's pid.
_hooked_in = None


#: When true, the hook below also starts a thread in the new process (as some libraries' hooks do).
_start_a_thread = False


def _note_hooks_ran():
    global _hooked_in
    _hooked_in = os.getpid()
    if _start_a_thread:
        import threading
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()


os.register_at_fork(after_in_child=_note_hooks_ran)  # cheap, and harmless in the suite's other forks


class Forked(Worker):
    """Reports what a freshly forked worker finds: random numbers, threads, logging, a fork of its own."""

    _footprint = dict(attr=dict(forked=dict(type=bool, values=[True]),
                                thing=dict(type=object, optional=True, default=None)))

    def _task(self):
        import logging
        import random
        import threading

        log = logging.getLogger("taylor.tests.forked")
        seen = []
        handler = logging.Handler()
        handler.emit = lambda record: seen.append(record.getMessage())
        log.addHandler(handler)
        log.propagate = False
        alone = threading.active_count()
        thread = threading.Thread(target=log.warning, args=("from a thread",))
        thread.start()
        thread.join(5)
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        _, status = os.waitpid(pid, 0)
        with open(f"/proc/{os.getppid()}/comm") as comm:
            parent = comm.read().strip()
        return dict(parent=parent, draw=random.getrandbits(64), alone=alone, seen=seen,
                    main=threading.current_thread() is threading.main_thread(),
                    child_exit=os.waitstatus_to_exitcode(status), hooked=_hooked_in == os.getpid())


def _forked_bare(report):
    """What Forked workers found, checked: forked without at-fork hooks, yet none noticed."""
    assert report.ok
    found = [entry["report"] for entry in report.workers]
    assert len({f["draw"] for f in found}) == len(found), "workers share one random state"
    for f in found:
        assert f["alone"] == 1 and f["main"] and not f["hooked"]
        assert f["seen"] == ["from a thread"] and f["child_exit"] == 7
    return {f["parent"] for f in found}


def test_workers_forked_bare_draw_their_own_random_numbers_and_run_threads_and_forks():
    """The spawner forks without Python's at-fork hooks; a worker must not notice it."""
    assert _forked_bare(_run_when_ready(dict(forked=True), dict(n=list(range(6))))) == {SPAWNER}


def test_workers_the_boss_forks_itself_are_forked_bare_too(monkeypatch):
    """The same in every worker, whoever forks it: here the boss, with no spawner."""
    monkeypatch.setenv("TAYLOR_SPAWNER", "0")
    boss = run_as_server(dict(forked=True), dict(n=list(range(4))))
    try:
        report = boss.wait_till_finished()
    finally:
        boss.close()
    assert SPAWNER not in _forked_bare(report)


def test_fork_hooks_run_in_every_worker_when_asked(monkeypatch):
    monkeypatch.setenv("TAYLOR_FORK_HOOKS", "1")
    report = _run_when_ready(dict(forked=True), dict(n=[1, 2]))
    assert report.ok
    for entry in report.workers:
        assert entry["report"]["parent"] == SPAWNER and entry["report"]["hooked"]


def test_a_spawner_with_a_thread_forks_with_os_fork(monkeypatch):
    """A thread in the spawner (here started by an at-fork hook) could hold a lock only os.fork's
    hooks reset: its workers are forked by os.fork, hooks and all, and nothing hangs."""
    monkeypatch.setattr(sys.modules[__name__], "_start_a_thread", True)
    boss = taylor.Boss()  # forked now: the boss, then its spawner, start a thread each
    monkeypatch.setattr(sys.modules[__name__], "_start_a_thread", False)
    try:
        spawner_of(boss)
        boss.set_instructions(dict(forked=True), dict(n=[1, 2]))
        boss.make_them_work()
        report = boss.wait_till_finished()
    finally:
        boss.close()
    assert report.ok
    for entry in report.workers:
        assert entry["report"]["parent"] == SPAWNER and entry["report"]["hooked"]


def _start_a_sleeping_thread():
    import threading
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    return _StartsAThreadWhenUnpickled()  # the boss unpickles it too, and sends it on


class _StartsAThreadWhenUnpickled:
    def __reduce__(self):
        return (_start_a_sleeping_thread, ())


def test_a_thread_started_in_the_spawner_later_makes_it_fork_with_os_fork():
    """Unpickling a worker's instructions in the spawner starts a thread there: from then on
    (checked at each fork) its workers are forked by os.fork."""
    report = _run_when_ready(dict(forked=True), dict(thing=[_StartsAThreadWhenUnpickled()]))
    assert report.ok
    (entry,) = report.workers
    assert entry["report"]["parent"] == SPAWNER and entry["report"]["hooked"]
