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
import types
from pathlib import Path

import footprints
import limitworkers  # noqa: F401 - registers the test workers
import pytest

from taylor import Boss, MemoryLimitError
from taylor.schedulers import MaxMemoryScheduler
from taylor.schedulers.memory_limit import LimitMemory, cgroup_parent

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


def test_spawner_fork_eagain_puts_the_task_back():
    """The spawner's fork failing with EAGAIN (no process to spare: ulimit -u) is "not now" too: the
    task goes back to the queue and runs once a worker ended; nothing fails."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import ctypes, errno, json
        from taylor import batch_main, spawner
        from taylor.schedulers import MaxThreadsScheduler
        import workers  # noqa: F401 - registers the test workers

        real, calls = spawner.bare_fork, [0]

        def flaky():  # in the spawner process: its 3rd and 6th forks fail as under RLIMIT_NPROC
            calls[0] += 1
            if calls[0] in (3, 6):
                ctypes.set_errno(errno.EAGAIN)
                return -1
            return real()

        spawner.bare_fork = flaky
        report = batch_main(dict(sleeping_time=0.2), dict(name=[f"w{i}" for i in range(24)]),
                            scheduler=MaxThreadsScheduler(max_threads=8), print_report=False)
        print(json.dumps([e["status"] for e in report["workers_report"]]))
    """)], cwd=ROOT, env=dict(ENV, TAYLOR_FORK_HOOKS="0"), capture_output=True, text=True, timeout=45)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == ["done"] * 24
    assert done.stderr.count("could not be started (Resource temporarily unavailable) while") == 1, done.stderr


# ----------------------------------------------------------------------- memory
def _hogs(scheduler, hogs, on_error="continue", memory=50):
    common = {} if memory is None else dict(memory=memory)
    boss = Boss(scheduler=scheduler, on_error=on_error)
    try:
        boss.set_instructions(common, dict(name=[f"hog{mib}" for mib in hogs], hog=hogs))
        boss.make_them_work(terminate=True)
        return {e["name"]: e for e in boss.wait_till_finished()["workers_report"]}
    finally:
        boss.close()


def test_enforced_memory_fails_the_worker_over_it_alone():
    """A worker declaring 50 MiB that allocates 300 MiB fails with a MemoryLimitError that says so;
    its neighbours within their 50 MiB run to the end."""
    entries = _hogs(MaxMemoryScheduler(max_memory=200, enforce=True), [10, 300, 20, 30])
    assert {name: e["status"] for name, e in entries.items()} == \
        dict(hog10="done", hog300="failed", hog20="done", hog30="done")
    assert entries["hog20"]["report"] == 20 << 20
    error = entries["hog300"]["report"]
    assert isinstance(error, MemoryLimitError) and isinstance(error, MemoryError)
    assert "worker 'hog300'" in str(error) and "exceeded its declared memory of 50 MiB" in str(error)
    assert "MemoryError" in entries["hog300"]["traceback"]  # where, in the task, the allocation failed


def test_declared_memory_is_advisory_without_enforce():
    """The same batch without enforce=True: the 300 MiB worker runs to the end (what the issue saw)."""
    entries = _hogs(MaxMemoryScheduler(max_memory=200), [10, 300])
    assert [e["status"] for e in entries.values()] == ["done", "done"]
    assert MaxMemoryScheduler(max_memory=200)._workers_hooks() == []  # nothing to run in the worker


def test_enforced_memory_under_abort_is_the_runs_error():
    boss = Boss(scheduler=MaxMemoryScheduler(max_memory=200, enforce=True))
    try:
        boss.set_instructions(dict(memory=50), dict(name=["big"], hog=[300]))
        boss.make_them_work(terminate=True)
        with pytest.raises(MemoryLimitError, match="exceeded its declared memory of 50 MiB") as caught:
            boss.wait_till_finished()
        assert caught.value.report is not None
    finally:
        boss.close()


def test_longest_first_enforces_memory_per_task_for_undeclared():
    """Every scheduler that reads memory enforces it: a worker declaring none counts (and is held to)
    memory_per_task."""
    scheduler = footprints.proxy.scheduler(limit="threads+memory", max_threads=2, max_memory=300,
                                           memory_per_task=64, enforce=True)
    entries = _hogs(scheduler, [10, 200], memory=None)
    assert entries["hog10"]["status"] == "done"
    assert "exceeded its declared memory of 64 MiB" in str(entries["hog200"]["report"])


def test_cli_enforce_memory(tmp_path):
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "taylor", "run", "--worker", "limitworkers:Hog", "-i",
                           "hog=10,300", "-c", "memory=50", "--enforce-memory", "--keep-going", "--no-progress",
                           "--report", str(report)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=45)
    assert done.returncode == 1, done.stderr
    assert "1 done, 1 failed" in done.stderr
    assert "MemoryLimitError" in done.stderr and "exceeded its declared memory of 50 MiB" in done.stderr
    refused = subprocess.run([sys.executable, "-m", "taylor", "run", "--worker", "limitworkers:Hog", "-i", "hog=1",
                              "--enforce-memory", "--scheduler", "threads"], cwd=ROOT, env=ENV, capture_output=True,
                             text=True, timeout=45)
    assert refused.returncode == 2 and "--enforce-memory need a memory scheduler" in refused.stderr


# -------------------------------------------------- cgroup v2, against a tree made in a temporary directory
def _tree(tmp_path, own="/job/task_0", mount_root="/", parent_controls="cpu memory pids", own_controls=""):
    """A cgroup v2 hierarchy as files: mounted at tmp/cg, this process in ``own``."""
    mount = tmp_path / "cg"
    inside = own[len(mount_root.rstrip("/")):].lstrip("/")
    leaf = mount / inside
    leaf.mkdir(parents=True)
    (leaf / "cgroup.subtree_control").write_text(own_controls + "\n")
    (leaf / "cgroup.procs").write_text("")
    if leaf != mount:
        (leaf.parent / "cgroup.subtree_control").write_text(parent_controls + "\n")
        (leaf.parent / "cgroup.procs").write_text("")
    (tmp_path / "cgroup").write_text(f"12:memory:/elsewhere\n0::{own}\n")
    (tmp_path / "mountinfo").write_text(
        f"25 1 0:22 / /sys rw shared:7 - sysfs sysfs rw\n"
        f"31 25 0:27 {mount_root} {mount} rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n")
    return dict(proc_cgroup=str(tmp_path / "cgroup"), mountinfo=str(tmp_path / "mountinfo")), leaf


def test_cgroup_detection(tmp_path):
    paths, leaf = _tree(tmp_path / "a")
    assert cgroup_parent(**paths)[0] == str(leaf.parent)  # beside the job's leaf, in the delegated cgroup
    paths, leaf = _tree(tmp_path / "b", parent_controls="cpu pids")
    parent, why = cgroup_parent(**paths)
    assert parent is None and "does not delegate the memory controller" in why
    paths, leaf = _tree(tmp_path / "c", own="/", own_controls="memory")  # the hierarchy's root (a container's)
    assert cgroup_parent(**paths)[0] == str(leaf)
    paths, leaf = _tree(tmp_path / "d", own="/ns/job/task_0", mount_root="/ns")  # a namespace's mount
    assert cgroup_parent(**paths)[0] == str(tmp_path / "d" / "cg" / "job")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "cgroup").write_text("4:memory:/x\n")
    assert cgroup_parent(str(tmp_path / "e" / "cgroup"), "/nonexistent")[0] is None  # cgroup v1 only


def test_cgroup_limit_written_and_read(tmp_path):
    """The worker's side writes its cgroup's limit and moves itself in; the boss's side reads
    memory.events when it ends and names the limit."""
    paths, leaf = _tree(tmp_path)
    hook = LimitMemory(64, str(leaf.parent), creator=4242)
    hook(types.SimpleNamespace(memory=50.0))  # as in the worker's process (here only files are written)
    made = leaf.parent / f"taylor-4242-{os.getpid()}"
    assert (made / "memory.max").read_text() == str(50 << 20)
    assert (made / "memory.swap.max").read_text() == "0"
    assert (made / "memory.oom.group").read_text() == "1"
    assert (made / "cgroup.procs").read_text() == str(os.getpid())
    running = types.SimpleNamespace(memory=50.0)
    (made / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\n")
    assert hook.ended(running, os.getpid(), None) is None  # throttled, not killed: not its end
    (made / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    said = hook.ended(running, os.getpid(), None)
    assert "exceeded its declared memory of 50 MiB" in said and str(made) in said
    undeclared = LimitMemory(64, str(tmp_path / "absent"), creator=4242)
    assert not undeclared._enter_cgroup(64)  # cannot make it: the worker falls back to RLIMIT_AS
