"""Fault injection, process side: the boss dies, the caller dies or is signalled, long runs.

The caller-side cases run a real caller script in a subprocess (its own
session, so that signalling its process group reaches only what it started),
record every pid of the run through psutil before the fault, and check that
none of them is left running after it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import faultworkers  # noqa: F401 - registers the fault workers before any Boss exists
import psutil
import pytest
import workers as _core_workers  # noqa: F401 - registers Noop
from processes import alive as _alive
from processes import gone as _gone
from processes import kill as _kill
from processes import until as _until
from processes import workers_of

import taylor
from taylor import Boss, run_as_server, wire
from taylor.schedulers import LaxistScheduler, MaxThreadsScheduler

pytestmark = pytest.mark.timeout(40)

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)




def _children(pid) -> list:
    """The running children of ``pid``; for a boss, the processes of its tasks (its spawner's children)."""
    try:
        return workers_of(pid)
    except psutil.Error:
        return []


def _run_of(caller, pidfile, workers: int) -> list:
    """The processes of the run ``caller`` (a script) started: its boss, then the boss's
    workers once there are ``workers`` of them, then the programs in ``pidfile``."""
    boss = _until(lambda: _children(caller.pid), what="the boss")[0].pid
    tree = _pidfile_tree(pidfile)
    running = [p.pid for p in _until(lambda: len(_children(boss)) == workers and _children(boss), what="workers")]
    return list(dict.fromkeys([boss] + running + tree))


def _pidfile_tree(pidfile) -> list:
    def read():
        try:
            with open(pidfile) as f:
                return json.load(f)
        except OSError:
            return None
    tree = _until(read, what=f"{pidfile}")
    return [tree["worker"]] + tree["children"]


# ------------------------------------------------------------------ boss dies
def test_boss_killed_during_wait_raises_boss_died_with_entries_and_workers_die():
    boss = run_as_server(None, dict(crash=["ok", "hang", "hang"], name=["quick", "h1", "h2"]),
                         scheduler=LaxistScheduler())
    workers = []
    try:
        _until(lambda: boss.get_report()["counts"]["done"] == 1, what="the quick worker")
        workers = [p.pid for p in _until(lambda: len(_children(boss.pid)) == 2 and _children(boss.pid))]
        killed = []
        timer = threading.Timer(0.3, lambda: (os.kill(boss.pid, signal.SIGKILL), killed.append(time.monotonic())))
        timer.start()
        with pytest.raises(taylor.BossDiedError) as info:
            boss.wait_till_finished()
        timer.join()
        assert time.monotonic() - killed[0] < 2.0
        error = info.value
        assert error.exitcode == -signal.SIGKILL and str(boss.pid) in str(error) and "SIGKILL" in str(error)
        assert [w["name"] for w in error.report.workers] == ["quick"]
        assert error.report.workers[0]["report"] == "fine" and error.report["status"] == "failed"
        assert not _gone(workers, 2.0), "workers outlived their boss"
        with pytest.raises(taylor.BossDiedError):  # and it keeps saying so instead of hanging
            boss.get_report()
    finally:
        boss.close()
        _kill(_alive(workers))


def test_boss_killed_lists_the_work_it_took_along_running_and_never_started():
    boss = run_as_server(None, dict(crash=["hang"] * 3, name=["h1", "h2", "h3"]),
                         scheduler=MaxThreadsScheduler(max_threads=1))
    pids = []
    try:
        _until(lambda: boss.get_report()["running"] == ["h1"], what="the first worker")
        pids = [p.pid for p in _until(lambda: _children(boss.pid), what="its process")]
        os.kill(boss.pid, signal.SIGKILL)
        with pytest.raises(taylor.BossDiedError) as info:
            boss.wait_till_finished()
        report = info.value.report
        # h1 is listed running once the caller heard of its process (else as never started): once either way
        assert report.workers == [] and report["running"] in ([], ["h1"])
        assert sorted(report["running"] + [p["name"] for p in report["pending"]]) == ["h1", "h2", "h3"]
        assert all(p["crash"] == "hang" for p in report["pending"])  # the instructions themselves
        assert not _gone(pids, 2.0), "workers outlived their boss"
    finally:
        boss.close()
        _kill(_alive(pids))


def test_programs_started_with_a_parent_death_signal_end_with_a_killed_boss(tmp_path):
    """The documented protection for programs a worker starts, when the boss is killed outright."""
    pidfile = str(tmp_path / "tree.json")
    boss = run_as_server(None, dict(crash=["children"], pdeath=[True], pidfile=[pidfile]))
    run = []
    try:
        run = _pidfile_tree(pidfile)
        assert len(run) == 2 and _alive(run) == run
        os.kill(boss.pid, signal.SIGKILL)
        with pytest.raises(taylor.BossDiedError):
            boss.wait_till_finished()
        assert not _gone(run, 2.0)
    finally:
        boss.close()
        _kill(_alive(run))


def test_caller_ends_the_process_groups_of_a_killed_boss_s_workers(tmp_path):
    """Programs a worker started in its own group, and commands the boss spawned itself, have no
    parent-death signal: the caller ends their process groups when it learns the boss died."""
    from taylor.command import CommandWorker  # noqa: F401 - registers the command worker

    pidfile = str(tmp_path / "tree.json")
    boss = Boss(scheduler=LaxistScheduler())
    run = []
    try:
        boss.set_instructions(None, dict(crash=["children"], pidfile=[pidfile]))
        boss.set_instructions(dict(command="sleep 60"), dict(name=["command"]))
        boss.make_them_work()
        worker, plain = _pidfile_tree(pidfile)[:2]  # the worker and the child in its group
        command = _until(lambda: [p.pid for p in _children(boss.pid) if p.pid != worker], what="the command")[0]
        _until(lambda: len(boss.get_report()["running"]) == 2, what="both workers to run")
        run = [worker, plain, command]
        os.kill(boss.pid, signal.SIGKILL)
        with pytest.raises(taylor.BossDiedError):
            boss.wait_till_finished()
        assert not _gone(run, 2.0), "a worker's program outlived the killed boss"
    finally:
        boss.close()
        _kill(_alive(run + _pidfile_tree(pidfile)))


@pytest.mark.parametrize("call", ["get_report", "set_instructions", "make_them_work"])
def test_boss_killed_between_calls_makes_the_next_call_raise(call):
    boss = Boss(scheduler=LaxistScheduler())
    try:
        boss.set_instructions(dict(noop=True), dict(value=[1]))
        os.kill(boss.pid, signal.SIGKILL)
        _until(lambda: psutil.Process(boss.pid).status() == psutil.STATUS_ZOMBIE, what="the boss to die")
        start = time.monotonic()
        with pytest.raises(taylor.BossDiedError, match="died"):
            if call == "get_report":
                boss.get_report()
            elif call == "set_instructions":
                boss.set_instructions(dict(noop=True), dict(value=[2]))
            else:
                boss.make_them_work()
        assert time.monotonic() - start < 2.0
    finally:
        boss.close()


# ---------------------------------------------------------- caller scripts
def _script(body: str) -> str:
    return textwrap.dedent(f"""\
        import json, os, sys
        sys.path[:0] = [{TESTS!r}, {ROOT!r}]
        import faultworkers, workers
        from taylor import batch_main, run_as_server
        from taylor.schedulers import LaxistScheduler
        print("imported", flush=True)
        """) + textwrap.dedent(body)


def _start(code: str) -> subprocess.Popen:
    """Start a caller script; return once its imports are done (they may run short-lived
    programs, such as ctypes' ldconfig, that must not be taken for the boss)."""
    caller = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True, cwd=ROOT)
    line = caller.stdout.readline()
    if line != "imported\n":
        caller.kill()
        raise AssertionError(f"the caller script failed: {line}{caller.communicate()[1]}")
    return caller


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "end-of-stream"])
def test_caller_killed_makes_the_boss_stop_its_workers(tmp_path, pidfd):
    pidfile = str(tmp_path / "tree.json")
    caller = _start(_script(f"""
        if not {pidfd}:
            del os.pidfd_open  # an old kernel: the boss learns from the end of its control channel
        boss = run_as_server(None, dict(crash=["children", "hang", "stubborn"], pidfile=[{pidfile!r}, None, None]),
                             scheduler=LaxistScheduler(), stop_grace=0.5)
        boss.wait_till_finished()
        """))
    run = []
    try:
        run = _run_of(caller, pidfile, workers=3)
        assert len(run) == 8 and _alive(run) == run  # boss, 3 workers, 4 programs of one of them
        caller.kill()
        caller.wait(5)
        left = _gone(run, 5.0)
        assert not left, f"survived their caller: {[psutil.Process(p).cmdline() for p in left]}"
    finally:
        _kill(_alive(run) + _alive([caller.pid]))
        caller.communicate()


SIGNALLED = """
    try:
        batch_main(None, dict(crash=["ok", "ok", "children", "stubborn"], name=["a", "b", "c", "d"],
                              pidfile=[None, None, {pidfile!r}, None]),
                   scheduler=LaxistScheduler(), stop_grace=0.5, print_report=False)
    except BaseException as exc:
        report = exc.report
        print(json.dumps(dict(error=type(exc).__name__, status=report["status"],
                              entries={{w["name"]: w["status"] for w in report.workers}})), flush=True)
        raise
    """


@pytest.mark.parametrize("signum, target", [
    (signal.SIGINT, "caller"), (signal.SIGTERM, "caller"), (signal.SIGINT, "group"), (signal.SIGTERM, "group"),
])
def test_signal_to_caller_stops_workers_keeps_finished_reports_and_exits_nonzero(tmp_path, signum, target):
    pidfile = str(tmp_path / "tree.json")
    caller = _start(_script(SIGNALLED.format(pidfile=pidfile)))
    run = []
    try:
        # Both quick workers have been reaped (their entries sent) once only two remain.
        run = _run_of(caller, pidfile, workers=2)
        if target == "caller":
            os.kill(caller.pid, signum)
        else:  # what a terminal's Ctrl-C or a batch system's SIGTERM to the job does
            os.killpg(caller.pid, signum)
        out, err = caller.communicate(timeout=10)
        assert caller.returncode != 0
        expected = "KeyboardInterrupt" if signum == signal.SIGINT else "Interrupted"
        assert expected in err
        result = json.loads(out)
        assert result["error"] == expected
        assert result["entries"] == dict(a="done", b="done", c="stopped", d="stopped")
        assert result["status"] == "stopped"
        assert not _gone(run, 3.0), "processes of the run survived the interruption"
    finally:
        _kill(_alive(run) + _alive([caller.pid]))
        if caller.returncode is None:
            caller.communicate()


# ------------------------------------------------------- no deadlock, no leak
def test_boss_ending_while_caller_sends_a_large_batch_does_not_deadlock():
    """The boss writes a large final report while the caller writes a large batch: both must finish."""
    payloads = [f"{i:04}" + "p" * 1000 for i in range(3000)]  # distinct: pickle would share equal objects
    names = [f"{i:04}-" + "n" * 300 for i in range(3000)]  # the final report lists the pending names
    boss = Boss(scheduler=MaxThreadsScheduler(max_threads=1))
    # Should the two deadlock, killing the boss after a while turns the hang into a failure.
    watchdog = threading.Timer(10, os.kill, (boss.pid, signal.SIGKILL))
    watchdog.start()
    try:
        boss.set_instructions(None, dict(crash=["exit"]))
        boss.set_instructions(dict(noop=True), dict(payload=payloads, name=names))
        boss.make_them_work()
        # The boss aborts on the first worker and sends its final report (~1 MB: every pending
        # name, more than the socket holds); meanwhile this caller sends ~3 MB of instructions.
        _until(lambda: _children(boss.pid) == [], what="the abort")
        time.sleep(0.3)
        # set_instructions would raise now (the abort is on its way): what it sends when its
        # batch crosses the abort is sent as it would, unread news notwithstanding.
        batch = [dict(noop=True, payload=p, name=f"late-{i}") for i, p in enumerate(payloads[::-1])]
        boss._process.sock.sendall(wire.encode(("instructions", batch)))
        with pytest.raises(taylor.WorkerDiedError) as info:
            boss.wait_till_finished()
        assert len(info.value.report["pending"]) == 3000
    finally:
        watchdog.cancel()
        boss.close()


def _measure(pid: int) -> dict:
    proc = psutil.Process(pid)
    return dict(fds=proc.num_fds(), children=len(proc.children()), workers=len(_children(pid)),
                rss=proc.memory_info().rss)


def test_no_resource_grows_with_the_number_of_tasks():
    batch, batches = 500, 4
    boss = Boss(scheduler=MaxThreadsScheduler(max_threads=2))
    try:
        boss.make_them_work()
        seen = []
        for i in range(batches):
            boss.set_instructions(dict(noop=True), dict(value=list(range(batch))))
            _until(lambda i=i: boss.get_report()["counts"]["done"] == (i + 1) * batch, within=60,
                   what="the batch")
            seen.append(_measure(boss.pid))
        first, last = seen[1], seen[-1]  # after 1,000 tasks (the boss keeps the last 1,000 entries) and 2,000
        assert last["fds"] == first["fds"] == seen[0]["fds"]
        assert last["workers"] == 0 and last["children"] == seen[0]["children"] <= 1, \
            "zombie or stray children in the boss (its one child: the spawner)"
        assert last["rss"] - first["rss"] < 2 << 20, f"boss RSS grew: {seen}"
        report = boss.wait_till_finished()
        assert report.ok and len(report.workers) == batch * batches
    finally:
        boss.close()


def test_caller_with_default_sigpipe_killed_while_the_boss_writes_still_gets_a_clean_stop(tmp_path):
    """A caller that restored SIGPIPE's default (as many command-line tools do) dies while the boss
    has reports queued for it: the boss must not die of SIGPIPE, which would skip stopping the
    workers' own programs."""
    pidfile = str(tmp_path / "tree.json")
    caller = _start(_script(f"""
        import signal, time
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        boss = run_as_server(None, dict(crash=["children"] + ["huge"] * 6, size=[0] + [200000] * 6,
                                        pidfile=[{pidfile!r}] + [None] * 6),
                             scheduler=LaxistScheduler(), stop_grace=0.5, on_error="continue")
        print("started", flush=True)
        time.sleep(60)  # never reads: the boss's reports pile up in the socket
        """))
    run = []
    try:
        boss = _until(lambda: _children(caller.pid), what="the boss")[0].pid
        tree = _pidfile_tree(pidfile)
        _until(lambda: len(_children(boss)) == 1, what="the large reports")  # only the 'children' worker left
        time.sleep(0.2)
        run = list(dict.fromkeys([boss] + tree))
        caller.kill()
        caller.wait(5)
        assert not _gone(run, 5.0), "processes of the run survived their caller"
    finally:
        _kill(_alive(run) + _alive([caller.pid]))
        caller.communicate()


def test_stop_and_close_still_end_workers_after_stop_listening():
    boss = run_as_server(None, dict(crash=["hang", "hang"]), scheduler=LaxistScheduler(), stop_grace=0.5)
    workers = []
    try:
        workers = [p.pid for p in _until(lambda: len(_children(boss.pid)) == 2 and _children(boss.pid))]
        boss.send_signal("STOP_LISTENING")  # the caller will not hear of these workers again...
        assert boss.get_report()["status"] == "pending"
        start = time.monotonic()
        boss.close()  # ...but closing the boss must still end them, not wait 30 s for them
        assert time.monotonic() - start < 5
        assert not _gone(workers, 1.0)
    finally:
        boss.close()
        _kill(_alive(workers))


def test_sigterm_while_waiting_after_stop_listening_stops_the_workers(tmp_path):
    caller = _start(_script("""
        boss = run_as_server(None, dict(crash=["hang", "hang"]), scheduler=LaxistScheduler(), stop_grace=0.5)
        while len(boss.get_report()["running"]) < 2:
            pass
        boss.send_signal("STOP_LISTENING")
        boss.wait_till_finished()  # waits for the boss process, which waits for its workers
        """))
    run = []
    try:
        boss = _until(lambda: _children(caller.pid), what="the boss")[0].pid
        run = [boss] + [p.pid for p in _until(lambda: len(_children(boss)) == 2 and _children(boss))]
        time.sleep(0.3)
        caller.terminate()
        out, err = caller.communicate(timeout=10)
        assert caller.returncode != 0 and "Interrupted" in err
        assert not _gone(run, 2.0)
    finally:
        _kill(_alive(run) + _alive([caller.pid]))
        if caller.returncode is None:
            caller.communicate()


def test_caller_with_default_sigpipe_gets_boss_died_not_killed_when_writing_to_a_dead_boss():
    caller = _start(_script("""
        import signal, taylor
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        boss = taylor.Boss()
        os.kill(boss.pid, signal.SIGKILL)
        os.waitid(os.P_PID, boss.pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped
        try:
            boss.set_instructions(dict(noop=True), dict(value=[1]))
        except taylor.BossDiedError as exc:
            print(type(exc).__name__, exc.exitcode, flush=True)
        """))
    out, err = caller.communicate(timeout=20)
    assert caller.returncode == 0, err
    assert out == f"BossDiedError {-signal.SIGKILL}\n"


def test_boss_keeps_enforcing_timeouts_after_stop_listening_while_the_caller_does_not_read():
    """STOP_LISTENING hands the caller a final report larger than the socket holds; a caller
    that does not read it yet must not freeze the boss (its workers' timeouts, its reaping)."""
    names = [f"{i:05}-" + "n" * 300 for i in range(5000)]
    boss = Boss(scheduler=MaxThreadsScheduler(max_threads=1), stop_grace=0.3)
    workers = []
    try:
        boss.set_instructions(None, dict(crash=["hang"], timeout=[0.5], name=["slow"]))
        boss.set_instructions(dict(noop=True), dict(name=names))
        boss.make_them_work()
        workers = [p.pid for p in _until(lambda: _children(boss.pid))]
        boss.send_signal("STOP_LISTENING")
        assert not _gone(workers, 5.0), "the boss froze: the worker outlived its timeout"
        report = boss.get_report()
        assert report["status"] == "pending" and len(report["pending"]) == 5000
    finally:
        boss.close()
        _kill(_alive(workers))


def test_boss_delivering_its_final_report_notices_its_callers_death():
    """The caller dies while the boss waits for it to read a large final report, and a process the
    caller forked still holds the caller's end of the channel: the boss must end anyway."""
    caller = _start(_script("""
        import time
        from taylor import Boss
        boss = Boss()
        boss.set_instructions(None, dict(crash=["exit"]))
        boss.set_instructions(dict(noop=True), dict(name=[f"{i:05}-" + "n" * 300 for i in range(5000)]))
        child = os.fork()
        if child == 0:  # a child of the caller, holding its socket to the boss
            time.sleep(60)
            os._exit(0)
        boss.make_them_work()  # the run aborts at once; its final report outgrows the socket
        print(boss.pid, child, flush=True)
        time.sleep(60)
        """))
    run = []
    try:
        boss, child = map(int, caller.stdout.readline().split())
        run = [boss, child]
        _until(lambda: not _children(boss), what="the abort")
        time.sleep(0.5)
        assert _alive([boss]) == [boss]
        caller.kill()
        caller.wait(5)
        assert not _gone([boss], 3.0), "the boss outlived its caller"
    finally:
        _kill(_alive(run) + _alive([caller.pid]))
        caller.communicate()
