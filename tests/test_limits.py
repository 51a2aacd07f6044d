"""The job's limits: the boss's descriptors bound how many workers run; declared memory can be enforced.

Descriptor tests run a real caller (the command line, or a script) in a subprocess whose open-file limit
(RLIMIT_NOFILE) is lowered to 64, with more workers asked for at once than 64 descriptors allow.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
NOFILE = 64


def _low_nofile() -> None:
    """preexec_fn: the child (the caller, hence its boss and workers) may open NOFILE descriptors."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, hard))


def _run_low(argv, timeout=45):
    return subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_low_nofile)


def _script(body: str):
    return _run_low([sys.executable, "-c", textwrap.dedent(body)])


def _most_at_once(entries) -> int:
    """The largest number of entries whose [start_time, end_time] overlap."""
    events = sorted([(e["start_time"], 1) for e in entries] + [(e["end_time"], -1) for e in entries],
                    key=lambda ev: (ev[0], ev[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


# ------------------------------------------------------------------ descriptors
def test_cli_command_tasks_beyond_open_file_limit_finish(tmp_path):
    """The issue's repro, scaled down: -j 200 command tasks under `ulimit -n 64` all run, a warning
    says once why fewer run at once, and no more ran at once than the descriptors allow."""
    report = tmp_path / "report.json"
    done = _run_low([sys.executable, "-m", "taylor", "run", "--command", "sleep 0.05; true {x}",
                     "-i", "x=" + ",".join(map(str, range(200))), "-j", "200", "--no-progress",
                     "--report", str(report)])
    assert done.returncode == 0, done.stderr
    assert "200 done, 0 failed" in done.stderr
    assert done.stderr.count("RLIMIT_NOFILE") == 1, done.stderr
    assert "Too many open files" not in done.stderr
    entries = json.loads(report.read_text())["workers_report"]
    assert len(entries) == 200 and all(e["status"] == "done" for e in entries)
    assert 1 < _most_at_once(entries) < NOFILE


def test_api_laxist_scheduler_beyond_open_file_limit_finishes():
    """A laxist scheduler over 300 workers under `ulimit -n 64`: the boss holds concurrency to its
    descriptors and finishes the batch (it crashed with "Too many open files" before)."""
    done = _script("""
        import json
        from taylor import batch_main
        from taylor.schedulers import LaxistScheduler
        import workers  # noqa: F401 - registers the test workers
        report = batch_main(dict(sleeping_time=0.02), dict(name=[f"w{i}" for i in range(300)]),
                            scheduler=LaxistScheduler(), print_report=False)
        entries = [dict(status=e["status"], start_time=e["start_time"], end_time=e["end_time"])
                   for e in report["workers_report"]]
        print(json.dumps(entries))
    """)
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout.splitlines()[-1])
    assert len(entries) == 300 and all(e["status"] == "done" for e in entries)
    assert 1 < _most_at_once(entries) < NOFILE
    assert done.stderr.count("RLIMIT_NOFILE") == 1, done.stderr
    assert "LaxistScheduler" in done.stderr


# A scheduler that, in the boss, takes all its descriptors but ``SPARE`` behind the boss's back: the
# budget the boss measured is then wrong, and starting a worker meets EMFILE at pipe().
_GREEDY = """
    import errno, json, os
    from taylor import batch_main
    from taylor.schedulers import LaxistScheduler
    import workers  # noqa: F401 - registers the test workers

    class Greedy(LaxistScheduler):
        taken = None

        def launchable(self, pending, workers, report):
            if self.taken is None:
                self.taken = []
                try:
                    while True:
                        self.taken.append(os.open(os.devnull, os.O_RDONLY))
                except OSError as exc:
                    assert exc.errno == errno.EMFILE
                for _ in range(SPARE):
                    os.close(self.taken.pop())
            return super().launchable(pending, workers, report)

    report = batch_main(dict(sleeping_time=0.02), dict(name=[f"w{i}" for i in range(TASKS)]),
                        scheduler=Greedy(), print_report=False, on_error="continue")
    print(json.dumps([dict(status=e["status"], start_time=e["start_time"], end_time=e["end_time"],
                           report=str(e["report"])) for e in report["workers_report"]]))
"""


def test_emfile_at_start_puts_the_task_back_until_a_worker_ends():
    """EMFILE when the boss opens a worker's report pipe is "not now": the task waits for a running
    worker to end and runs then; the batch finishes, a warning says so once."""
    done = _script(_GREEDY.replace("SPARE", "7").replace("TASKS", "60"))
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout.splitlines()[-1])
    assert [e["status"] for e in entries] == ["done"] * 60, entries
    assert _most_at_once(entries) <= 7
    assert done.stderr.count("could not be started (Too many open files) while") == 1, done.stderr
    assert "boss process failed" not in done.stderr


def test_emfile_with_nothing_running_fails_the_task_saying_why():
    """With no descriptor at all and no worker running to free one, waiting would never end: each
    task fails with an entry that says why, and the run ends."""
    done = _script(_GREEDY.replace("SPARE", "0").replace("TASKS", "3"))
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout.splitlines()[-1])
    assert [e["status"] for e in entries] == ["failed"] * 3
    assert all("could not be started (Too many open files) although no other worker" in e["report"]
               for e in entries), entries
