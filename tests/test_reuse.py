"""Reuse mode (taylor.reuse): many tasks per long-lived process, with the guarantees of fresh processes
where they matter: a death fails its own task alone, timeouts and aborts stop the process running the
task, and nothing is left behind."""

import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import workers  # noqa: F401 - registers the test workers
from processes import gone, until

import taylor
from taylor import Boss, Worker
from taylor.errors import Interrupted
from taylor.schedulers import MaxThreadsScheduler

ROOT = Path(__file__).resolve().parent.parent

#: Set by one task, seen by the next task of the same process (reuse gives that up).
_LEFT_BY_EARLIER_TASKS = []


class PidTeller(Worker):
    """Reports (its process id, its ``pid_value``, what earlier tasks of its process left);
    ``pid_exit`` ends its process with that exit code instead."""

    _footprint = dict(attr=dict(
        pid_value=dict(type=int),
        pid_exit=dict(type=int, optional=True, default=None),
        pid_sleep=dict(type=float, optional=True, default=0.0),
        pid_payload=dict(type=object, optional=True, default=None),
        pid_spawn=dict(type=bool, optional=True, default=False),
    ))

    def _task(self):
        if self.pid_exit is not None:
            os._exit(self.pid_exit)
        if self.pid_spawn:  # a program left running in the background: its pid is the report
            return subprocess.Popen(["sleep", "60"]).pid
        if self.pid_sleep:
            time.sleep(self.pid_sleep)
        seen = len(_LEFT_BY_EARLIER_TASKS)
        _LEFT_BY_EARLIER_TASKS.append(self.pid_value)
        size = None if self.pid_payload is None else len(self.pid_payload)
        return os.getpid(), self.pid_value, seen, size


def _run(individual, common=None, **options):
    boss = Boss(reuse=True, **options)
    try:
        boss.set_instructions(common, individual)
        boss.make_them_work()
        return boss.wait_till_finished()
    finally:
        boss.close()


def test_many_tasks_run_in_as_many_processes_as_slots_each_seeing_what_earlier_ones_left():
    report = _run(dict(pid_value=list(range(300))), scheduler=MaxThreadsScheduler(max_threads=2))
    assert report["counts"]["done"] == 300
    reports = [w["report"] for w in report.workers]
    pids = {pid for pid, _, _, _ in reports}
    assert 1 <= len(pids) <= 2, pids  # one process per slot, reused
    assert sorted(value for _, value, _, _ in reports) == list(range(300))
    assert all(w["pid"] == w["report"][0] for w in report.workers)  # the entry names the task's process
    # State is shared between the tasks of a process: each saw what the earlier ones appended.
    for pid in pids:
        seen = sorted(s for p, _, s, _ in reports if p == pid)
        assert seen == list(range(len(seen)))


def test_max_tasks_per_process_replaces_processes():
    report = _run(dict(pid_value=list(range(40))), scheduler=MaxThreadsScheduler(max_threads=2),
                  max_tasks_per_process=5)
    assert report["counts"]["done"] == 40
    per_pid = Counter(w["report"][0] for w in report.workers)
    assert max(per_pid.values()) <= 5 and len(per_pid) >= 8, per_pid
    assert all(seen < 5 for _, _, seen, _ in (w["report"] for w in report.workers))


def test_max_tasks_per_process_needs_reuse_and_a_whole_number():
    with pytest.raises(ValueError, match="reuse=True"):
        Boss(max_tasks_per_process=3)
    with pytest.raises(ValueError, match="whole number"):
        Boss(reuse=True, max_tasks_per_process=0)


def test_reuse_refuses_to_enforce_memory_per_task():
    from taylor.schedulers import MaxMemoryScheduler

    with pytest.raises(ValueError, match="enforce"):
        Boss(reuse=True, scheduler=MaxMemoryScheduler(max_memory=1000, enforce=True))


@pytest.mark.parametrize("fault, says", [("sigkill", "SIGKILL"), ("segfault", "SIGSEGV"), ("exit", "exit code 3")])
def test_a_task_that_kills_its_process_fails_alone_and_the_run_goes_on(fault, says):
    boss = Boss(reuse=True, on_error="continue", scheduler=MaxThreadsScheduler(max_threads=2))
    try:
        boss.set_instructions(None, dict(pid_value=list(range(10))))
        boss.set_instructions(None, dict(fault=[fault]))
        boss.set_instructions(None, dict(pid_value=list(range(10, 20))))
        boss.make_them_work()
        report = boss.wait_till_finished()
    finally:
        boss.close()
    failed = [w for w in report.workers if w["status"] == "failed"]
    assert len(failed) == 1 and isinstance(failed[0]["report"], taylor.WorkerDiedError), failed
    assert says in str(failed[0]["report"]) and failed[0]["instructions"]["fault"] == fault
    assert report["counts"]["done"] == 20
    dead = failed[0]["pid"]
    assert dead is not None and all(w["report"][0] != dead for w in report.workers if w["status"] == "done"
                                    and w["start_time"] > failed[0]["end_time"])  # replaced, not reused
    assert len({w["report"][0] for w in report.workers if w["status"] == "done"}) <= 3


def test_a_death_aborts_the_run_by_default_and_leaves_no_process():
    boss = Boss(reuse=True, scheduler=MaxThreadsScheduler(max_threads=2), stop_grace=0.5)
    try:
        boss.set_instructions(None, dict(fault=["hang"], seconds=[30.0]))
        boss.set_instructions(None, dict(pid_value=[1], pid_exit=[5], pid_sleep=[0.2]))
        boss.make_them_work()
        with pytest.raises(taylor.WorkerDiedError, match="exit code 5") as raised:
            boss.wait_till_finished()
        statuses = sorted(w["status"] for w in raised.value.report.workers)
        assert statuses == ["failed", "stopped"]
        pids = [w["pid"] for w in raised.value.report.workers]
    finally:
        boss.close()
    assert gone(pids, within=5.0) == []


def test_a_timeout_stops_the_process_of_its_task_which_is_replaced():
    started = time.monotonic()
    report = _run(dict(pid_value=[1, 2, 3], pid_sleep=[0.0, 30.0, 0.0]), scheduler=MaxThreadsScheduler(max_threads=1),
                  on_error="continue", timeout=0.5, stop_grace=0.5)
    assert time.monotonic() - started < 15
    by_value = {w["instructions"]["pid_value"]: w for w in report.workers}
    assert isinstance(by_value[2]["report"], taylor.WorkerTimeoutError)
    assert by_value[1]["status"] == by_value[3]["status"] == "done"
    assert by_value[1]["report"][0] == by_value[2]["pid"] != by_value[3]["report"][0]
    assert gone([by_value[2]["pid"]], within=5.0) == []


def _slot_processes(boss, count):
    """The boss's ``count`` slot processes (each its own group's leader), or None before they all are."""
    procs = [p for p in psutil.Process(boss.pid).children() if os.getpgid(p.pid) == p.pid]
    return procs if len(procs) == count else None


def test_stop_right_now_and_close_leave_no_process():
    boss = Boss(reuse=True, scheduler=MaxThreadsScheduler(max_threads=2), stop_grace=0.5)
    try:
        boss.set_instructions(None, dict(pid_value=[1, 2, 3, 4], pid_sleep=[30.0] * 4))
        boss.make_them_work()
        procs = until(lambda: _slot_processes(boss, 2), what="two slot processes")
        boss.stop_them_working()
        report = boss.wait_till_finished()
    finally:
        boss.close()
    assert sorted(w["status"] for w in report.workers) == ["stopped", "stopped"]
    assert len(report["pending"]) == 2
    assert gone([p.pid for p in procs], within=5.0) == []


def test_large_instructions_and_shared_ones_reach_the_tasks():
    big = b"y" * (3 << 20)
    report = _run(dict(pid_value=[1, 2, 3]), common=dict(pid_payload=big),
                  scheduler=MaxThreadsScheduler(max_threads=2))
    assert [w["report"][3] for w in report.workers] == [len(big)] * 3


def test_reports_that_cannot_be_sent_fail_alone():
    report = _run(dict(fault=["unpicklable", "huge", "ok", "raise"]), on_error="continue",
                  scheduler=MaxThreadsScheduler(max_threads=1), max_report_bytes=1 << 20)
    by_fault = {w["instructions"]["fault"]: w for w in report.workers}
    assert isinstance(by_fault["unpicklable"]["report"], taylor.ReportError)
    assert isinstance(by_fault["huge"]["report"], taylor.ReportError)
    assert isinstance(by_fault["raise"]["report"], KeyError)
    assert by_fault["ok"]["report"] == "fine"
    assert len({w["pid"] for w in report.workers}) == 1  # none of these ends its process


def _crash(x):
    if x == 7:
        os._exit(9)
    return x * 2, os.getpid()


def test_executor_reuse_runs_calls_in_few_processes_and_a_death_fails_its_future_alone():
    with taylor.Executor(max_workers=2, reuse=True) as executor:
        futures = {executor.submit(_crash, x): x for x in range(40)}
        results, errors = {}, {}
        for future in cf.as_completed(futures, timeout=30):
            x = futures[future]
            if future.exception() is not None:
                errors[x] = future.exception()
            else:
                results[x] = future.result()
        assert list(errors) == [7] and isinstance(errors[7], taylor.WorkerDiedError)
        assert "exit code 9" in str(errors[7])
        assert {x: r[0] for x, r in results.items()} == {x: 2 * x for x in range(40) if x != 7}
        assert len({pid for _, pid in results.values()}) <= 3
        assert executor.submit(_crash, 1).result(timeout=10)[0] == 2  # it goes on working
        assert list(executor.map(abs, [-1, -2, -3])) == [1, 2, 3]


def test_cli_reuse_runs_a_worker_class_in_long_lived_processes(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    result = subprocess.run([sys.executable, "-m", "taylor", "run", "--reuse", "-j", "2", "--worker",
                             "test_reuse:PidTeller", "-i", "pid_value=" + ",".join(map(str, range(12))),
                             "--report", "-"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)["workers_report"]
    assert sorted(e["report"][1] for e in entries) == list(range(12))
    assert len({e["report"][0] for e in entries}) <= 2
    refused = subprocess.run([sys.executable, "-m", "taylor", "run", "--reuse", "--command", "true", "-i", "a=1"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--reuse" in refused.stderr
    from click.testing import CliRunner

    from taylor.cli import main

    enforced = CliRunner().invoke(main, ["run", "--reuse", "--enforce-memory", "--max-memory", "100", "--worker",
                                         "test_reuse:PidTeller", "-i", "pid_value=1"])
    assert enforced.exit_code == 2 and "--enforce-memory" in enforced.output


def test_sigterm_to_the_boss_leaves_no_process():
    boss = Boss(reuse=True, scheduler=MaxThreadsScheduler(max_threads=2), stop_grace=0.5)
    try:
        boss.set_instructions(None, dict(pid_value=[1, 2, 3], pid_sleep=[30.0] * 3))
        boss.make_them_work()
        procs = until(lambda: _slot_processes(boss, 2), what="two slot processes")
        os.kill(boss.pid, signal.SIGTERM)
        with pytest.raises(Interrupted):
            boss.wait_till_finished()
    finally:
        boss.close()
    assert gone([p.pid for p in procs], within=5.0) == []


def test_programs_a_task_left_running_end_with_its_process_at_the_latest():
    """Reuse does not kill a task's background programs when the task returns (a fresh process's
    end would), but when its process ends: replaced after max_tasks_per_process, or at the run's end."""
    from taylor import batch_main

    report = batch_main(None, dict(pid_value=[1, 2, 3], pid_spawn=[True, False, False]), print_report=False,
                        scheduler=MaxThreadsScheduler(max_threads=1), reuse=True, max_tasks_per_process=2)
    spawned = report.workers[0]["report"]
    assert report["counts"]["done"] == 3 and isinstance(spawned, int)
    assert gone([spawned], within=5.0) == []
