"""What programs written for taylorism rely on, with real processes.

After the first failure (on_error='abort') every later call raises it with the
final report; SIGTERM ends a program even through ``except Exception:``;
``batch_main(print_report=...)`` shows or hands over each worker's report; a
failing worker is logged, with its traceback and instructions, as it fails.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time

import faultworkers  # noqa: F401 - registers the fault workers before any Boss exists
import psutil
import pytest
import workers  # noqa: F401 - registers Noop and Faulty
from processes import alive, gone, kill, workers_of
from processes import until as _until

import taylor
from taylor import Worker, batch_main, run_as_server
from taylor.schedulers import LaxistScheduler

pytestmark = pytest.mark.timeout(40)

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


class Reporter(Worker):
    """Reports a dict too long for one line, or a text of several lines."""

    _footprint = dict(attr=dict(
        reporter=dict(values=["dict", "text"]),
    ))

    def _task(self):
        if self.reporter == "text":
            return "first line of the text\nsecond line of the text"
        return {"file": f"/data/{self.name}.nc", "fields": [f"field-{i:02d}" for i in range(12)],
                "checksum": "0123456789abcdef" * 3}




def _process_ended(pid: int) -> bool:
    """True once ``pid`` (our child) has exited: a zombie waiting for our wait."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _aborted_boss():
    """A run whose first worker fails at once beside one sleeping 60 s; returned once the boss has
    stopped the sleeper and ended, its news unread by the caller (who sleeps, as in the issue)."""
    boss = run_as_server(None, dict(fault=["raise", "hang"], seconds=[0.0, 60.0], name=["bad", "sleeper"]),
                         scheduler=LaxistScheduler())
    _until(lambda: _process_ended(boss.pid), what="the boss to abort")
    return boss


def _check_final(report) -> None:
    assert report["status"] == "failed"
    assert {w["name"]: w["status"] for w in report.workers} == {"bad": "failed", "sleeper": "stopped"}


# ------------------------------------------------------------ after an abort
CALLS = {
    "set_instructions": lambda boss: boss.set_instructions(dict(noop=True), dict(value=[1])),
    "get_report": lambda boss: boss.get_report(),
    "get_report(interim=False)": lambda boss: boss.get_report(interim=False),
    "make_them_work": lambda boss: boss.make_them_work(),
    "send_signal": lambda boss: boss.send_signal("HALT"),
    "wait_till_finished": lambda boss: boss.wait_till_finished(),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_every_call_after_an_abort_raises_the_failure_with_the_final_report(call):
    boss = _aborted_boss()
    try:
        with pytest.raises(KeyError, match="bad key") as info:
            CALLS[call](boss)
        _check_final(info.value.report)
        assert "Traceback" in str(info.value.__cause__)  # the worker's own traceback
        for again in CALLS.values():  # and it goes on saying so, with the same report
            with pytest.raises(KeyError) as info_again:
                again(boss)
            _check_final(info_again.value.report)
            assert not info_again.value.report.get("pending")
    finally:
        boss.close()


def test_a_call_made_while_the_boss_stops_its_workers_raises_once_they_are_stopped():
    """The boss says it aborts before its workers are stopped: a call then waits for the
    final report (here, a worker that ignores SIGTERM is killed after stop_grace) and raises."""
    boss = run_as_server(None, dict(crash=["exit", "stubborn"], seconds=[0.0, 30.0], name=["bad", "stubborn"]),
                         scheduler=LaxistScheduler(), stop_grace=1.0)
    try:
        entries = []
        deadline = time.monotonic() + 10
        while not entries and time.monotonic() < deadline:  # the failure arrives, not the final report
            entries += boss.wait_for_entries(timeout=1)
        assert [(e["name"], e["status"]) for e in entries] == [("bad", "failed")]
        assert not boss.ended
        with pytest.raises(taylor.WorkerDiedError, match="'bad'.*exit code 3") as info:
            boss.set_instructions(dict(noop=True), dict(value=[1], name=["late"]))
        report = info.value.report
        assert report["status"] == "failed"
        assert {w["name"]: (w["status"], w["exitcode"]) for w in report.workers} == \
            {"bad": ("failed", 3), "stubborn": ("stopped", -signal.SIGKILL)}
        assert "pending" not in report  # 'late' was refused, not queued
    finally:
        boss.close()


def test_instructions_reaching_a_stopping_boss_are_listed_as_pending():
    """The caller asked STOP while a worker that ignores SIGTERM runs on: instructions that
    reach the boss then never start, and the final report lists them."""
    boss = run_as_server(None, dict(crash=["stubborn"], seconds=[1.0], name=["slow"]), scheduler=LaxistScheduler())
    try:
        _until(lambda: boss.get_report()["running"], what="the worker to start")
        boss.send_signal("STOP")
        names = boss.set_instructions(dict(noop=True), dict(value=[1, 2], name=["late1", "late2"]))
        assert names == ["late1", "late2"]
        report = boss.wait_till_finished()
        assert report["status"] == "pending"
        assert [p["name"] for p in report["pending"]] == ["late1", "late2"]
        assert [p["value"] for p in report["pending"]] == [1, 2]
        assert [(w["name"], w["status"]) for w in report.workers] == [("slow", "done")]
    finally:
        boss.close()


def test_instructions_after_stop_listening_are_refused_not_lost():
    """STOP_LISTENING's report has gone: later instructions could never be reported."""
    boss = run_as_server(None, dict(crash=["hang"], seconds=[0.5]), scheduler=LaxistScheduler())
    try:
        boss.send_signal("STOP_LISTENING")
        with pytest.raises(taylor.BossClosedError, match="STOP_LISTENING"):
            boss.set_instructions(dict(noop=True), dict(value=[1]))
        assert boss.wait_till_finished()["status"] == "pending"
    finally:
        boss.close()


def test_instructions_sent_around_a_failure_never_vanish():
    """Whenever set_instructions is called around a failure, what it accepted is in the final
    report: run (an entry), or listed as pending; and the failure is raised."""
    rng = random.Random(11)
    for _ in range(8):
        boss = run_as_server(None, dict(fault=["raise", "hang"], seconds=[0.0, 60.0]), scheduler=LaxistScheduler())
        try:
            time.sleep(rng.uniform(0.0, 0.03))
            accepted = []
            try:
                accepted = boss.set_instructions(dict(noop=True), dict(value=[1, 2]))
            except KeyError:
                pass
            with pytest.raises(KeyError) as info:
                boss.wait_till_finished()
            report = info.value.report
            seen = {w["name"] for w in report.workers} | {p["name"] for p in report.get("pending", [])}
            assert set(accepted) <= seen, f"instructions vanished: {set(accepted) - seen}"
        finally:
            boss.close()


# ------------------------------------------------------------ signals
def test_interrupted_is_a_base_exception_that_keeps_signum_and_report():
    assert issubclass(taylor.Interrupted, BaseException)
    assert not issubclass(taylor.Interrupted, Exception)
    assert not issubclass(taylor.Interrupted, taylor.TaylorError)
    exc = taylor.Interrupted("received SIGTERM", signum=signal.SIGTERM)
    exc.report = {"status": "stopped"}
    copy = pickle.loads(pickle.dumps(exc))  # built in the boss, it travels to the caller
    assert (type(copy), str(copy), copy.signum, copy.report) == \
        (taylor.Interrupted, "received SIGTERM", signal.SIGTERM, {"status": "stopped"})


def test_sigterm_to_the_boss_reaches_the_caller_through_except_exception():
    boss = run_as_server(None, dict(crash=["hang", "hang"]), scheduler=LaxistScheduler(), stop_grace=0.5)
    try:
        _until(lambda: len(workers_of(boss.pid)) == 2, what="the workers")
        os.kill(boss.pid, signal.SIGTERM)
        with pytest.raises(taylor.Interrupted, match="SIGTERM") as info:
            try:
                boss.wait_till_finished()
            except Exception:  # what programs wrap batches in: it must not catch the interruption
                pytest.fail("except Exception swallowed the interruption")
        assert info.value.signum == signal.SIGTERM
        assert [w["status"] for w in info.value.report.workers] == ["stopped", "stopped"]
        with pytest.raises(taylor.Interrupted):
            boss.set_instructions(None, dict(crash=["ok"]))
    finally:
        boss.close()


def test_sigterm_ends_a_program_that_catches_exception(tmp_path):
    code = textwrap.dedent(f"""\
        import sys
        sys.path[:0] = [{TESTS!r}, {ROOT!r}]
        import faultworkers
        from taylor import batch_main
        from taylor.schedulers import LaxistScheduler
        print("imported", flush=True)
        try:
            batch_main(None, dict(crash=["hang", "hang"]), scheduler=LaxistScheduler(), stop_grace=0.5)
        except Exception as exc:
            print("swallowed", type(exc).__name__, flush=True)
        print("carried on", flush=True)
        """)
    caller = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True, cwd=ROOT)
    run = []
    try:
        assert caller.stdout.readline() == "imported\n"
        boss = _until(lambda: psutil.Process(caller.pid).children(), what="the boss")[0].pid
        run = [boss] + [p.pid for p in _until(lambda: len(workers_of(boss)) == 2 and workers_of(boss),
                                              what="the workers")]
        caller.send_signal(signal.SIGTERM)
        out, err = caller.communicate(timeout=15)
        assert "swallowed" not in out and "carried on" not in out
        assert caller.returncode != 0
        assert "taylor.errors.Interrupted: received SIGTERM" in err
        assert not gone(run, 5.0)
    finally:
        kill(alive(run) + alive([caller.pid]))
        if caller.returncode is None:
            caller.communicate()


# ------------------------------------------------------------ print_report
def test_print_report_true_shows_each_worker_name_and_whole_report(capsys):
    report = batch_main(None, dict(reporter=["dict", "text"], name=["converter", "notes"]), print_report=True)
    out = capsys.readouterr().out
    assert len(report.workers) == 2
    assert "worker converter: done\n    {'file': '/data/converter.nc',\n" in out
    assert "     'fields': ['field-00'," in out  # one item a line, indented under its worker
    assert "'field-11'" in out and "0123456789abcdef" * 3 in out  # the whole report, not cut
    assert "worker notes: done\n    first line of the text\n    second line of the text\n" in out
    assert out.rstrip().endswith("finished: 2 done")


def test_print_report_false_prints_nothing(capsys):
    report = batch_main(None, dict(reporter=["dict", "text"]), print_report=False)
    assert len(report.workers) == 2
    assert capsys.readouterr().out == ""


def test_print_report_callable_is_given_each_worker_report(capsys):
    shown = []
    report = batch_main(None, dict(reporter=["dict", "text"], name=["converter", "notes"]), print_report=shown.append)
    assert capsys.readouterr().out == ""
    assert shown == [w["report"] for w in report.workers]
    assert sorted(type(r).__name__ for r in shown) == ["dict", "str"]


# ------------------------------------------------------------ failure logged
@pytest.mark.parametrize("handlers", ["as imported", "none"])
def test_a_failing_worker_is_logged_with_traceback_and_instructions_when_it_fails(handlers):
    """Logged by the boss as the worker fails, before the caller hears of it, once; with no
    handler at all (logging's last resort) it still reaches stderr."""
    code = textwrap.dedent(f"""\
        import logging, sys, time
        sys.path[:0] = [{TESTS!r}, {ROOT!r}]
        import psutil
        import workers
        from taylor import run_as_server
        if {handlers == "none"!r}:
            logging.getLogger().handlers.clear()
        boss = run_as_server(None, dict(fault=["raise"], name=["culprit"], seconds=[12.5]))
        while psutil.Process(boss.pid).status() != psutil.STATUS_ZOMBIE:  # the boss has ended
            time.sleep(0.01)
        print("CALLER GOES ON", file=sys.stderr, flush=True)
        try:
            boss.wait_till_finished()
        except KeyError:
            print("caught", flush=True)
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "caught\n"
    err = done.stderr
    assert err.count("worker 'culprit' (pid ") == 1
    assert err.count("failed: KeyError: 'bad key'") == 1
    assert "its instructions:\n    fault = 'raise'\n    name = 'culprit'\n    seconds = 12.5\n" in err
    assert err.count("Traceback (most recent call last)") == 1
    assert 'raise KeyError("bad key")' in err
    assert err.index("failed: KeyError") < err.index("CALLER GOES ON")


def test_failures_left_to_the_caller_are_not_logged():
    """Boss(log_failures=False), and so the Executor (its futures carry the failures): no log line."""
    code = textwrap.dedent(f"""\
        import sys
        sys.path[:0] = [{TESTS!r}, {ROOT!r}]
        import workers
        import taylor
        from taylor import batch_main
        report = batch_main(None, dict(fault=["raise"], name=["culprit"]), on_error="continue",
                            log_failures=False, print_report=False)
        assert report.failures and report.failures[0]["name"] == "culprit"
        with taylor.Executor(max_workers=1) as ex:
            future = ex.submit(int, "not a number")
            assert isinstance(future.exception(timeout=20), ValueError)
        print("done", flush=True)
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 0 and done.stdout == "done\n", done.stderr
    assert "failed" not in done.stderr and "Traceback" not in done.stderr, done.stderr
