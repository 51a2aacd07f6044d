"""Command tasks the boss runs directly (no Python worker process): taken when it may be, same results."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from taylor import batch_main, run_as_server
from taylor.command import CommandFailed, CommandWorker
from taylor.schedulers.threads import MaxThreadsScheduler


class OwnTaskCommand(CommandWorker):
    """A subclass with its own _task: must run in a worker process, where that code runs."""

    _footprint = dict(info="Command with its own task", attr=dict(own_task=dict(values=[True])))

    def _task(self):
        report = super()._task()
        report["own"] = os.getpid()
        return report


class BrokenReportCommand(CommandWorker):
    """A direct run whose report-making raises: the worker fails, the boss goes on."""

    _footprint = dict(info="Command with a broken report", attr=dict(broken_report=dict(values=[True])))

    def _direct_report(self, spec, exitcode, duration):
        raise RuntimeError(f"no report for exit code {exitcode}")


def _stat(tail: str) -> tuple:
    """(pid, process group) from a line of /proc/<pid>/stat."""
    fields = tail.rsplit(")", 1)[1].split()
    return int(tail.split()[0]), int(fields[2])


def _figures(entry) -> dict:
    """What a command's report (a dict, or a CommandFailed's attributes) says, but its duration."""
    report = entry["report"]
    get = report.get if isinstance(report, dict) else lambda key: getattr(report, key, None)
    return {key: get(key) for key in ("command", "exit_code", "stdout_tail", "stderr_tail")}


def test_a_command_task_is_its_program_own_process_group_no_boss_descriptor(tmp_path):
    report = batch_main(dict(command="cat /proc/self/stat"), dict(n=[1, 2]), print_report=False)
    assert report.ok
    for entry in report.workers:
        pid, group = _stat(entry["report"]["stdout_tail"])
        assert entry["pid"] == pid == group  # the program is the worker: own pid, own process group
        assert entry["exitcode"] == 0 and entry["report"]["exit_code"] == 0
    # The program holds no descriptor of the boss: the same ones as when a worker process starts it.
    direct = batch_main(dict(command="ls /proc/self/fd"), dict(n=[1]), print_report=False)
    forked = batch_main(dict(command="ls /proc/self/fd", own_task=True), dict(n=[1]), print_report=False)
    assert direct.workers[0]["report"]["stdout_tail"] == forked.workers[0]["report"]["stdout_tail"]
    assert forked.workers[0]["report"]["own"] == forked.workers[0]["pid"]


def test_direct_and_worker_process_runs_give_the_same_environment_signals_and_reports(tmp_path):
    command = "grep -E '^(SigIgn|SigBlk)' /proc/self/status; echo $TAYLOR_WORKER_NAME; echo to-err >&2; exit {n}"
    common = dict(command=command, logdir=str(tmp_path / "direct"))
    direct = batch_main(common, dict(n=[0, 3], name=["ok", "bad"]), on_error="continue", print_report=False)
    common = dict(command=command, logdir=str(tmp_path / "forked"), own_task=True)
    forked = batch_main(common, dict(n=[0, 3], name=["ok", "bad"]), on_error="continue", print_report=False)
    by_name = [{e["name"]: e for e in run.workers} for run in (direct, forked)]
    for name in ("ok", "bad"):
        one, other = by_name[0][name], by_name[1][name]
        assert one["status"] == other["status"] and one["exitcode"] == other["exitcode"] == 0
        assert _figures(one) == _figures(other)
        assert (tmp_path / "direct" / f"{name}.out").read_text() == (tmp_path / "forked" / f"{name}.out").read_text()
    ok = by_name[0]["ok"]["report"]
    assert ok["stdout_log"] == str(tmp_path / "direct" / "ok.out")
    ignored = int(ok["stdout_tail"].splitlines()[0].split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)) and not ignored & (1 << (signal.SIGTERM - 1))
    assert ok["stdout_tail"].splitlines()[-1] == "ok"
    bad = by_name[0]["bad"]
    assert isinstance(bad["report"], CommandFailed) and bad["report"].exit_code == 3
    assert "exit code 3" in str(bad["report"]) and "CommandFailed" in bad["traceback"]
    # The subclass with its own _task ran in a worker process, not as the program itself.
    assert by_name[1]["ok"]["report"]["own"] == by_name[1]["ok"]["pid"]


def test_a_failing_report_is_that_worker_failure_not_the_boss(tmp_path):
    report = batch_main(dict(command="true", broken_report=True), dict(n=[1, 2]), on_error="continue",
                        print_report=False)
    assert len(report.failures) == 2 and not report.done
    for entry in report.failures:
        assert isinstance(entry["report"], RuntimeError) and "no report for exit code 0" in str(entry["report"])
        assert "_direct_report" in entry["traceback"]


def test_stopping_and_timeouts_end_the_program_and_what_it_started(tmp_path):
    pidfile = tmp_path / "child"
    boss = run_as_server(dict(command=f"sleep 30 & echo $! > {pidfile}; wait"), dict(n=[1]),
                         scheduler=MaxThreadsScheduler(max_threads=2))
    try:
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.02)
        child = psutil.Process(int(pidfile.read_text()))
        boss.stop_them_working()
        report = boss.wait_till_finished()
    finally:
        boss.close()
    (entry,) = report.workers
    assert entry["status"] == "stopped" and entry["exitcode"] == -signal.SIGTERM
    assert child.pid != entry["pid"]
    child.wait(5)
    assert not child.is_running()

    timed = batch_main(dict(command="sleep {n}"), dict(n=[0, 30]), timeout=0.3, on_error="continue",
                       print_report=False)
    slow = next(e for e in timed.workers if e["report"].__class__.__name__ == "WorkerTimeoutError")
    assert slow["exitcode"] == -signal.SIGTERM and "timeout of 0.3 s" in str(slow["report"])
    assert [e["status"] for e in timed.workers].count("done") == 1


def test_binding_hooks_run_in_a_worker_process(tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 usable CPUs")
    report = batch_main(dict(command="grep Cpus_allowed_list /proc/self/status; echo $PPID"), dict(n=[1, 2]),
                        scheduler=MaxThreadsScheduler(max_threads=2, binded=True), print_report=False)
    assert report.ok
    for entry in report.workers:
        cpus, parent = entry["report"]["stdout_tail"].splitlines()
        assert "," not in cpus and "-" not in cpus.split()[-1]  # one CPU each
        assert int(parent) == entry["pid"]  # the shell is the child of the worker process


def test_when_descriptors_are_scarce_tasks_fall_back_to_worker_processes():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 40, hard))  # the boss, a fork, inherits it
    try:
        report = batch_main(dict(command="sleep 0.5; echo $$"), dict(n=list(range(16))),
                            scheduler=MaxThreadsScheduler(max_threads=16), print_report=False)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert report.ok and len(report.done) == 16
    direct = [e for e in report.done if int(e["report"]["stdout_tail"]) == e["pid"]]
    assert 0 < len(direct) < 16  # some ran directly, the others in worker processes
