"""The core contract: instructions in, one report per worker out, errors raised in the caller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import workers  # noqa: F401 - registers the test workers

import taylor
from taylor import Boss, batch_main, run_as_server
from taylor.schedulers import MaxThreadsScheduler


def test_batch_main_runs_every_instruction_and_returns_the_report(capsys):
    report = batch_main(dict(wakeup_sentence="hi"), dict(sleeping_time=[0.01, 0.02, 0.03]))
    assert report["status"] == "finished"
    assert sorted(w["report"]["sentence"] for w in report["workers_report"]) == ["hi"] * 3
    assert all(w["status"] == "done" and w["exitcode"] == 0 for w in report.workers)
    assert {w["instructions"]["sleeping_time"] for w in report.workers} == {0.01, 0.02, 0.03}
    assert "finished: 3 done" in capsys.readouterr().out


def test_names_are_unique_uuids_unless_given_and_substitution_works():
    report = batch_main(None, dict(noop=[True, True]), print_report=False)
    names = [w["name"] for w in report.workers]
    assert len(set(names)) == 2 and all(len(n) == 36 for n in names)
    report = batch_main(dict(noop=True), dict(value=[1, 2], name=["job-[value]"] * 2), print_report=False)
    assert sorted(w["name"] for w in report.workers) == ["job-1", "job-2"]


def test_worker_exception_is_raised_in_caller_with_remote_traceback_and_report():
    with pytest.raises(KeyError) as info:
        batch_main(None, dict(fault=["ok", "raise"]), scheduler=MaxThreadsScheduler(max_threads=1),
                   print_report=False)
    exc = info.value
    assert isinstance(exc.__cause__, taylor.RemoteTraceback)
    assert "_task" in str(exc.__cause__) and "KeyError" in str(exc.__cause__)
    report = exc.report
    assert report["status"] == "failed"
    statuses = sorted(w["status"] for w in report.workers)
    assert statuses == ["done", "failed"]


def test_abort_stops_others_and_lists_never_started():
    start = time.monotonic()
    with pytest.raises(KeyError) as info:
        batch_main(None, dict(fault=["hang", "raise", "ok", "ok"]), scheduler=MaxThreadsScheduler(max_threads=2),
                   print_report=False)
    assert time.monotonic() - start < 10
    report = info.value.report
    by_status = {w["instructions"]["fault"]: w["status"] for w in report.workers}
    assert by_status == {"hang": "stopped", "raise": "failed"}
    assert [p["fault"] for p in report["pending"]] == ["ok", "ok"]


def test_on_error_continue_reports_every_outcome_without_raising():
    report = batch_main(None, dict(fault=["ok", "raise", "exit"]), on_error="continue", print_report=False)
    assert report["status"] == "finished"
    assert sorted(w["status"] for w in report.workers) == ["done", "failed", "failed"]
    assert not report.ok and len(report.failures) == 2


def test_failed_boss_keeps_raising_instead_of_hanging():
    boss = run_as_server(None, dict(fault=["raise"]))
    with pytest.raises(KeyError):
        boss.wait_till_finished()
    for call in (lambda: boss.get_report(), boss.wait_till_finished, lambda: boss.set_instructions(None, {})):
        with pytest.raises(KeyError):
            call()


def test_server_mode_takes_new_instructions_and_gives_interim_reports():
    boss = run_as_server(None, dict(fault=["hang"], seconds=[0.5]), scheduler=MaxThreadsScheduler(max_threads=4))
    try:
        boss.set_instructions(dict(noop=True), dict(value=[1, 2, 3]))
        deadline = time.monotonic() + 10
        while True:
            interim = boss.get_report()
            if interim["counts"]["done"] >= 3 or time.monotonic() > deadline:
                break
        assert interim["status"] == "interim"
        assert sorted(w["report"] for w in interim.workers) == [1, 2, 3]
        report = boss.wait_till_finished()
        assert report["status"] == "finished" and len(report.workers) == 4
        assert boss.get_report() is report
    finally:
        boss.close()


def test_halt_holds_workers_until_resume():
    boss = Boss(scheduler=MaxThreadsScheduler(max_threads=2))
    try:
        boss.set_instructions(dict(noop=True), dict(value=[1, 2]))
        assert boss.get_report()["counts"] == dict(done=0, failed=0, stopped=0, running=0, pending=2)
        boss.make_them_work()
        assert sorted(w["report"] for w in boss.wait_till_finished().workers) == [1, 2]
    finally:
        boss.close()


def test_stop_lets_running_finish_and_reports_pending():
    boss = run_as_server(None, dict(fault=["hang", "ok"], seconds=[0.3, 0]),
                         scheduler=MaxThreadsScheduler(max_threads=1))
    try:
        while not boss.get_report()["running"]:  # STOP before any start would leave both pending
            pass
        boss.send_signal("STOP")
        report = boss.wait_till_finished()
        assert report["status"] == "pending"
        assert [w["status"] for w in report.workers] == ["done"]
        assert [p["fault"] for p in report["pending"]] == ["ok"]
    finally:
        boss.close()


def test_bad_input_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="same length"):
        batch_main(None, dict(noop=[True], value=[1, 2]))
    with pytest.raises(ValueError, match="unique"):
        batch_main(dict(noop=True), dict(name=["a", "a"]))
    with pytest.raises(taylor.NoWorkerFitError) as info:
        batch_main(None, dict(fault=["nonsense"]))
    assert "fault" in str(info.value) and "Not in values" in str(info.value)
    assert info.value.instructions == {"fault": "nonsense"}
    with pytest.raises(taylor.InstructionsError, match="cannot be sent"):
        batch_main(dict(noop=True), dict(payload=[lambda: None]))
    with pytest.raises(ValueError, match="must be a list"):
        batch_main(None, dict(noop="True"))


def test_report_is_json_serialisable():
    report = batch_main(None, dict(fault=["ok", "raise"]), on_error="continue", print_report=False)
    data = json.loads(report.to_json())
    failed = [w for w in data["workers_report"] if w["status"] == "failed"][0]
    assert failed["report"]["type"] == "KeyError" and "Traceback" in failed["traceback"]


def test_boss_pid_is_a_live_child_until_the_end():
    boss = run_as_server(dict(noop=True), dict(value=[1]))
    assert boss.pid != os.getpid() and os.getppid() != boss.pid
    boss.wait_till_finished()
    with pytest.raises(ChildProcessError):
        os.waitpid(boss.pid, os.WNOHANG)


def test_worker_binding_reports_all_cpus_as_none():
    report = batch_main(None, dict(sleeping_time=[0]), print_report=False)
    assert report.workers[0]["report"]["binding"] == [None]


def test_worker_classes_defined_in_functions_work_if_defined_before_the_boss():
    class Local(taylor.Worker):
        _footprint = dict(attr=dict(local=dict(type=int)))

        def _task(self):
            return self.local * 2

    report = batch_main(None, dict(local=[1, 2]), print_report=False)
    assert sorted(w["report"] for w in report.workers) == [2, 4]

    boss = Boss()
    try:
        class TooLate(taylor.Worker):
            _footprint = dict(attr=dict(too_late=dict(type=int)))

        with pytest.raises(taylor.InstructionsError, match="defined after the Boss was created"):
            boss.set_instructions(None, dict(too_late=[1]))
    finally:
        boss.close()


@pytest.mark.timeout(60)
def test_no_deadlock_when_a_large_final_report_meets_a_large_batch_of_instructions():
    # The first worker fails at once; the final report (40,000 pending names) fills the channel
    # while the caller is still writing another large batch: each side must not wait on the other.
    boss = run_as_server(None, dict(fault=["raise"] + ["ok"] * 40000), scheduler=MaxThreadsScheduler(max_threads=1))
    try:
        time.sleep(0.5)
        try:
            boss.set_instructions(dict(noop=True), dict(value=list(range(40000))))
        except KeyError:
            pass  # the failure was already known: fine too
        with pytest.raises(KeyError) as info:
            boss.wait_till_finished()
        assert len(info.value.report["pending"]) >= 40000 - 1
    finally:
        boss.close()


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_multiprocessing_start_method_does_not_matter(method, tmp_path):
    # taylor forks explicitly: a program that set another default start method still works,
    # with a Worker class defined in __main__.
    script = tmp_path / "main.py"
    script.write_text(
        "import multiprocessing\n"
        f"multiprocessing.set_start_method({method!r}, force=True)\n"
        "from taylor import Worker, batch_main\n"
        "class Double(Worker):\n"
        "    _footprint = dict(attr=dict(double=dict(type=int)))\n"
        "    def _task(self):\n"
        "        return 2 * self.double\n"
        "if __name__ == '__main__':\n"
        "    report = batch_main(None, dict(double=[1, 2, 3]), print_report=False)\n"
        "    print(sorted(w['report'] for w in report.workers))\n")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[2, 4, 6]"


def test_verbose_boss_logs_each_worker_start_and_report():
    # In a program that configured no logging, as most scripts: the lines reach stderr.
    code = ("from taylor import batch_main\n"
            "from taylor.examples import Sleeper\n"
            "batch_main(None, dict(sleeping_time=[0], name=['chatty']), verbose=True, print_report=False)\n")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    assert "worker chatty started" in out.stderr and "worker chatty done" in out.stderr
