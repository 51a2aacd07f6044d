"""The ``taylor`` command line: parsing with click's runner, runs, signals and resume in real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from taylor.cli import main

ROOT = Path(__file__).resolve().parent.parent


def taylor(*args, cwd=None, input=None, timeout=30):
    """Run the real console entry point (python -m taylor) and return the completed process."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    return subprocess.run([sys.executable, "-m", "taylor", *map(str, args)], cwd=cwd or ROOT, env=env,
                          input=input, capture_output=True, text=True, timeout=timeout)


def start_taylor(*args, cwd):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    return subprocess.Popen([sys.executable, "-m", "taylor", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def journal_lines(path):
    """The journal's end records (its run and start events left out)."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [record for record in records if "event" not in record]


# --------------------------------------------------------------------- help
def test_help_version_and_every_command_has_an_example():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "workers", "schedulers", "demo"):
        assert command in result.output
        sub = runner.invoke(main, [command, "--help"])
        assert sub.exit_code == 0, sub.output
        assert "Example" in sub.output, command
    version = runner.invoke(main, ["--version"])
    assert version.exit_code == 0 and "taylor" in version.output and "0." in version.output


# ------------------------------------------------------------- input errors
@pytest.mark.parametrize("args, reason", [
    (["--command", "true", "--worker", "x"], "exactly one of"),
    (["-i", "a=1"], "exactly one of"),
    (["--command", "echo {missing}", "-i", "file=a,b"], "unknown key {missing}"),
    (["--command", "echo {a}", "-i", "a=1,2", "-i", "b=1"], "same length"),
    (["--command", "true", "--from", "/nonexistent/jobs.json"], "cannot read instruction file"),
    (["--command", "true", "-c", "novalue"], "KEY=VALUE"),
    (["--command", "true", "-i", "a=1", "--resume"], "--resume needs --journal"),
    (["--command", "true", "-i", "a=1", "--max-memory", "100", "--scheduler", "threads"], "memory scheduler"),
    (["--command", "true", "-c", "a=1"], "no instruction sets"),
    (["--command", "echo {a.b}", "-i", "a=1"], "plain instruction key"),
    (["--command", "echo {n:03d}", "-i", "n=7,x"], "task 'task-0002': cannot fill the command template"),
    (["--worker", "no_such_module_xyz", "-i", "a=1"], "cannot import module"),
    (["--command", "true", "-i", "a=1", "--journal", "/nonexistent/j.jsonl"], "cannot write the journal"),
    (["--command", "true", "-i", "a=1", "--report", "/nonexistent/r.json"], "cannot write the report"),
])
def test_usage_and_input_errors_exit_2_with_one_line(args, reason):
    result = CliRunner().invoke(main, ["run", *args])
    assert result.exit_code == 2, result.output
    assert reason in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("taylor: error:")]
    assert len(errors) == 1


def test_yaml_without_pyyaml_says_how_to_install(tmp_path, monkeypatch):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("- {a: 1}\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` fail
    result = CliRunner().invoke(main, ["run", "--command", "true", "--from", str(jobs)])
    assert result.exit_code == 2
    assert "pip install pyyaml" in result.output


def test_option_that_does_not_apply_to_the_scheduler_is_a_usage_error():
    result = CliRunner().invoke(main, ["run", "--command", "true", "-i", "a=1", "--scheduler", "laxist", "-j", "2"])
    assert result.exit_code == 2 and "does not apply" in result.output


# ---------------------------------------------------------- instruction files
def test_instruction_sources(tmp_path):
    from taylor.sources import build_rows, parse_common, parse_individual, read_rows

    # Text is passed as written (issue 13): a Worker class converts by its declared types.
    assert parse_common(["n=3", "x=2.5", "ok=true", "s=hello world", "q=\"7\""]) == \
        {"n": "3", "x": "2.5", "ok": "true", "s": "hello world", "q": '"7"'}
    assert parse_individual(["f=a.txt,b.txt"]) == {"f": ["a.txt", "b.txt"]}
    (tmp_path / "a.json").write_text(json.dumps([{"f": "a"}, {"f": "b", "n": 2}]))
    (tmp_path / "b.json").write_text(json.dumps({"common": {"m": 1}, "individual": {"f": ["x", "y"]}}))
    (tmp_path / "c.jsonl").write_text('{"f": "a"}\n\n{"f": "b"}\n')
    (tmp_path / "d.csv").write_text("f,n\na,1\nb,2\n")
    (tmp_path / "e.yaml").write_text("common: {m: 1}\nindividual: {f: [x, y]}\n")
    assert read_rows(str(tmp_path / "a.json")) == [{"f": "a"}, {"f": "b", "n": 2}]
    assert read_rows(str(tmp_path / "b.json")) == [{"m": 1, "f": "x"}, {"m": 1, "f": "y"}]
    assert read_rows(str(tmp_path / "c.jsonl")) == [{"f": "a"}, {"f": "b"}]
    assert read_rows(str(tmp_path / "d.csv")) == [{"f": "a", "n": "1"}, {"f": "b", "n": "2"}]
    assert read_rows(str(tmp_path / "e.yaml")) == [{"m": 1, "f": "x"}, {"m": 1, "f": "y"}]
    rows = build_rows({"m": 0}, {"n": [1, 2]}, [{"f": "a"}, {"f": "b", "m": 5}])
    assert rows == [{"m": 0, "f": "a", "n": 1}, {"m": 5, "f": "b", "n": 2}]


def test_from_stdin_and_heterogeneous_rows(tmp_path):
    rows = [{"word": "one"}, {"word": "two", "extra": 1}, {"word": "three"}]
    result = taylor("run", "--command", "echo {word} >> out.txt", "-j", "1", "--from", "-", "--format", "json",
                    "--no-progress",
                    cwd=tmp_path, input=json.dumps(rows))
    assert result.returncode == 0, result.stderr
    assert sorted((tmp_path / "out.txt").read_text().split()) == ["one", "three", "two"]


# ------------------------------------------------------------ command worker
def test_values_are_shell_quoted_so_they_cannot_inject(tmp_path):
    evil = ["$(touch injected1)", "x; touch injected2", "`touch injected3`", "a'b\"c"]
    result = taylor("run", "--command", "printf '%s\\n' {v} >> seen.txt", "-j", "1", "--report", "report.json",
                    "--from", "-", "--format", "json", cwd=tmp_path, input=json.dumps([{"v": v} for v in evil]))
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.glob("injected*"))
    assert (tmp_path / "seen.txt").read_text().splitlines() == evil


def test_command_worker_as_a_python_class(tmp_path):
    from taylor import batch_main
    from taylor.command import CommandFailed, CommandWorker  # noqa: F401 - registers the worker

    report = batch_main(dict(command="echo out-{n}; echo err-{n} >&2; exit {n}", logdir=str(tmp_path)),
                        dict(n=[0, 3], name=["ok", "bad"]), on_error="continue", print_report=False)
    by_name = {e["name"]: e for e in report.workers}
    ok, bad = by_name["ok"], by_name["bad"]
    assert ok["status"] == "done"
    assert ok["report"]["exit_code"] == 0 and ok["report"]["stdout_tail"] == "out-0"
    assert ok["report"]["stderr_tail"] == "err-0" and ok["report"]["duration"] >= 0
    assert (tmp_path / "ok.out").read_text() == "out-0\n" and (tmp_path / "ok.err").read_text() == "err-0\n"
    assert bad["status"] == "failed" and isinstance(bad["report"], CommandFailed)
    assert bad["report"].exit_code == 3 and bad["report"].stderr_tail == "err-3"
    assert "exit code 3" in str(bad["report"])


# ------------------------------------------------------ exit codes, journal
def test_exit_codes_keep_going_report_and_journal(tmp_path):
    ok = taylor("run", "--command", "test {n} -gt 0", "-i", "n=1,2,3", "-j", "2", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "3 done" in ok.stderr

    failed = taylor("run", "--command", "test {n} -gt 0", "-i", "n=1,0,2,3", "-j", "1", "--keep-going",
                    "--journal", "j.jsonl", "--report", "r.json", cwd=tmp_path)
    assert failed.returncode == 1
    lines = journal_lines(tmp_path / "j.jsonl")
    assert sorted(line["name"] for line in lines) == ["task-0001", "task-0002", "task-0003", "task-0004"]
    bad = next(line for line in lines if line["instructions"] == {"n": "0"})  # as written
    assert bad["status"] == "failed" and bad["report"]["exit_code"] == 1 and "exit code 1" in bad["error"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counts"]["done"] == 3 and report["counts"]["failed"] == 1
    assert "task-0002" in failed.stderr

    aborted = taylor("run", "--command", "test {n} -gt 0", "-i", "n=0,1,2,3,4,5", "-j", "1", "--journal",
                     "k.jsonl", cwd=tmp_path)
    assert aborted.returncode == 1
    assert len(journal_lines(tmp_path / "k.jsonl")) == 1  # stopped at the first failure
    assert "--keep-going" in aborted.stderr


def test_timeout_and_logdir(tmp_path):
    result = taylor("run", "--command", "echo hi {n}; sleep {n}", "-i", "n=0,10", "--timeout", "0.5",
                    "--keep-going", "--logdir", "logs", "--journal", "j.jsonl", cwd=tmp_path)
    assert result.returncode == 1
    assert (tmp_path / "logs" / "task-0001.out").read_text() == "hi 0\n"
    slow = next(line for line in journal_lines(tmp_path / "j.jsonl") if line["name"] == "task-0002")
    assert slow["status"] == "failed" and "timeout" in slow["error"]


def test_python_worker_class(tmp_path):
    result = taylor("run", "--worker", "workers:Noop", "-c", "noop=true", "-i", "value=4,5", "--report", "-",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert sorted(e["report"] for e in report["workers_report"]) == [4, 5]
    wrong = taylor("run", "--worker", "workers:Noop", "-i", "fault=ok", cwd=tmp_path)
    assert wrong.returncode == 2 and "does not fit Noop" in wrong.stderr
    raised = taylor("run", "--worker", "workers", "-i", "fault=raise", cwd=tmp_path)
    assert raised.returncode == 1 and "KeyError" in raised.stderr
    # A task that calls sys.exit() is a failed task (exit 1), not the command line's own exit.
    (tmp_path / "exiting.py").write_text(
        "import sys\nfrom taylor import Worker\n\n\nclass Exiter(Worker):\n"
        "    _footprint = dict(attr=dict(exiter=dict(type=int)))\n\n"
        "    def _task(self):\n        sys.exit(self.exiter)\n")
    exited = taylor("run", "--worker", "exiting.py:Exiter", "-i", "exiter=3", "--progress", cwd=tmp_path)
    assert exited.returncode == 1 and "SystemExit: 3" in exited.stderr


def test_resume_skips_what_is_done_and_appends(tmp_path):
    args = ("run", "--command", "test {n} != 3 || test -e fixed", "-i", "n=1,2,3,4", "-j", "2", "--keep-going",
            "--journal", "j.jsonl")
    first = taylor(*args, cwd=tmp_path)
    assert first.returncode == 1
    (tmp_path / "fixed").touch()
    with open(tmp_path / "j.jsonl", "a") as stream:
        stream.write('{"name": "task-0009", "status": "do')  # a line cut short by a kill
    second = taylor(*args, "--resume", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "3 of 4 tasks already done, 1 to run" in second.stderr
    lines = journal_lines_tolerant(tmp_path / "j.jsonl")
    assert [line["name"] for line in lines[4:]] == ["task-0003"] and lines[-1]["status"] == "done"
    third = taylor(*args, "--resume", cwd=tmp_path)
    assert third.returncode == 0 and "0 to run" in third.stderr


def journal_lines_tolerant(path):
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return [record for record in out if "event" not in record]


# ------------------------------------------------------------------- signals
def _wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_tasks_and_their_children_and_records_what_finished(tmp_path, signum, code):
    # Task 1 ends at once; tasks 2 to 4 start a grandchild that would sleep 60 s, writing its pid first;
    # task 5 never gets a slot.
    proc = start_taylor("run", "--command", "if [ {n} -gt 1 ]; then sleep 60 & echo $! > pid{n}; wait; fi",
                        "-i", "n=1,2,3,4,5", "-j", "3", "--journal", "j.jsonl", "--report", "r.json",
                        cwd=tmp_path)
    try:
        _wait_for(lambda: all((tmp_path / f"pid{n}").exists() and (tmp_path / f"pid{n}").read_text().strip()
                              for n in (2, 3, 4)))
        _wait_for(lambda: (tmp_path / "j.jsonl").exists() and (tmp_path / "j.jsonl").read_text().strip())
        grandchildren = [int((tmp_path / f"pid{n}").read_text()) for n in (2, 3, 4)]
        started = time.monotonic()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == code, err
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for pid in grandchildren:
        _wait_for(lambda pid=pid: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 5)
    lines = journal_lines(tmp_path / "j.jsonl")
    statuses = {line["name"]: line["status"] for line in lines}
    assert statuses["task-0001"] == "done"
    assert statuses["task-0002"] == statuses["task-0003"] == statuses["task-0004"] == "stopped"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "stopped"
    assert [p["name"] for p in report["pending"]] == ["task-0005"]
    assert signal.Signals(signum).name in err


# ---------------------------------------------------------- progress, lists
def test_progress_line_only_when_asked(tmp_path):
    shown = taylor("run", "--command", "true", "-i", "n=1,2,3", "--progress", cwd=tmp_path)
    assert shown.returncode == 0
    assert "3/3" in shown.stderr and "done 3" in shown.stderr and "ETA" in shown.stderr
    hidden = taylor("run", "--command", "true", "-i", "n=1,2,3", cwd=tmp_path)  # stderr is no terminal
    assert "ETA" not in hidden.stderr and "3 done" in hidden.stderr


def test_workers_and_schedulers_lists():
    runner = CliRunner()
    listed = runner.invoke(main, ["workers", "workers"])
    assert listed.exit_code == 0, listed.output
    assert "taylor.command:CommandWorker" in listed.output and "workers:Faulty" in listed.output
    assert "fault" in listed.output and "'segfault'" in listed.output
    scheds = runner.invoke(main, ["schedulers"])
    assert scheds.exit_code == 0
    assert "MaxThreadsScheduler" in scheds.output and "max_threads" in scheds.output
    from taylor.schedulers.host import describe

    assert f"cpus               {describe()['cpus'][0]}" in scheds.output


def test_plain_commands_run_without_a_shell_and_behave_as_with_one(tmp_path):
    from taylor.command import _plain_words

    assert _plain_words("gzip -k 'a b.txt'") == ["gzip", "-k", "a b.txt"]
    for shell_only in ("echo $HOME", "a > b", "cd /tmp", "x=1 prog", "ls *.txt", "true; false"):
        assert _plain_words(shell_only) is None
    (tmp_path / "noshebang").write_text("echo from a script without a shebang\n")
    (tmp_path / "noshebang").chmod(0o755)
    result = taylor("run", "--command", "{prog}", "-i", "prog=./noshebang,no_such_program_xyz", "--keep-going",
                    "--report", "r.json", cwd=tmp_path)
    assert result.returncode == 1
    entries = {e["name"]: e for e in json.loads((tmp_path / "r.json").read_text())["workers_report"]}
    assert entries["task-0001"]["report"]["stdout_tail"] == "from a script without a shebang"
    missing = entries["task-0002"]["report"]
    assert missing["type"] == "CommandFailed" and missing["exit_code"] == 127 and "not found" in missing["stderr_tail"]


def test_slurm_example_script_runs_stops_on_sigterm_and_resumes(tmp_path):
    """examples/slurm_job.sh outside Slurm: SIGTERM to the script stops the run (143), a rerun resumes."""
    script = ROOT / "examples" / "slurm_job.sh"
    (tmp_path / "a.txt").write_text("a" * 1000)
    (tmp_path / "b.txt").write_text("b" * 1000)
    (tmp_path / "blocked").write_text("c" * 1000)
    (tmp_path / "files.csv").write_text("file\na.txt\nb.txt\nblocked\n")
    # A gzip that hangs on "blocked" while a file named "hang" exists, and is the real gzip otherwise.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real_gzip = shutil.which("gzip")
    (bin_dir / "gzip").write_text(f'#!/bin/sh\nfor a; do [ "$a" = blocked ] && [ -e hang ] && sleep 60; done\n'
                                  f'exec {real_gzip} "$@"\n')
    (bin_dir / "gzip").chmod(0o755)
    (tmp_path / "hang").touch()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TAYLOR=f"{sys.executable} -m taylor",
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: (tmp_path / "a.txt.gz").exists() and (tmp_path / "b.txt.gz").exists()
                  and len(journal_lines_tolerant(tmp_path / "gzip.journal.jsonl")) >= 2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, out
    assert "stopped by SIGTERM" in out
    statuses = {line["instructions"]["file"]: line["status"]
                for line in journal_lines(tmp_path / "gzip.journal.jsonl")}
    assert statuses == {"a.txt": "done", "b.txt": "done", "blocked": "stopped"}
    (tmp_path / "hang").unlink()
    again = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=30)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 of 3 tasks already done, 1 to run" in again.stderr
    assert (tmp_path / "blocked.gz").exists()


def test_empty_instruction_file_runs_nothing_and_succeeds(tmp_path):
    (tmp_path / "none.csv").write_text("")
    result = CliRunner().invoke(main, ["run", "--command", "echo {x}", "--from", str(tmp_path / "none.csv")])
    assert result.exit_code == 0, result.output
    assert "0 done, 0 failed" in result.output


def _has_scheduler(**description):
    from taylor.cli import scheduler_classes

    return bool(scheduler_classes(description))


def test_memory_scheduler_caps_and_refuses_what_could_never_fit(tmp_path):
    if not _has_scheduler(limit="memory"):
        result = taylor("run", "--command", "true", "-i", "n=1", "--max-memory", "100", cwd=tmp_path)
        assert result.returncode == 2 and "no scheduler of this taylor installation" in result.stderr
        return
    too_big = taylor("run", "--command", "true", "-i", "memory=50,500", "--max-memory", "300", cwd=tmp_path)
    assert too_big.returncode == 2
    assert "task-0002" in too_big.stderr and "max_memory" in too_big.stderr
    # Two tasks of 200 MiB under a 300 MiB cap never run together, whatever -j allows.
    both = taylor("run", "--command", "python3 -c 'import time; time.sleep(0.3)'", "-i", "memory=200,200",
                  "--max-memory", "300", "-j", "2", "--report", "r.json", cwd=tmp_path)
    assert both.returncode == 0, both.stderr
    first, second = sorted(json.loads((tmp_path / "r.json").read_text())["workers_report"],
                           key=lambda e: e["start_time"])
    assert second["start_time"] >= first["end_time"] - 0.05


def test_bind_pins_each_running_task_to_its_own_cpu(tmp_path):
    if not _has_scheduler(limit="threads", max_threads=2, binded=True):
        refused = taylor("run", "--command", "true", "-i", "n=1", "--bind", cwd=tmp_path)
        assert refused.returncode == 2 and "--bind" in refused.stderr  # never a silent run unbound
        return
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 usable CPUs")
    result = taylor("run", "--command", "python3 -c 'import os, time; print(sorted(os.sched_getaffinity(0))); "
                    "time.sleep(0.3)'", "-i", "n=1,2", "-j", "2", "--bind", "--report", "r.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cpus = [json.loads(e["report"]["stdout_tail"]) for e in
            json.loads((tmp_path / "r.json").read_text())["workers_report"]]
    assert all(len(c) == 1 for c in cpus) and cpus[0] != cpus[1]


def test_bad_input_leaves_an_existing_journal_untouched(tmp_path):
    journal = tmp_path / "j.jsonl"
    journal.write_text('{"name": "task-0001", "status": "done", "instructions": {"a": 1}}\n')
    result = taylor("run", "--command", "true", "-i", "name=x,x", "--journal", journal, cwd=tmp_path)
    assert result.returncode == 2 and "named 'x'" in result.stderr  # found when the boss is given the tasks
    assert journal.read_text().startswith('{"name": "task-0001"')
