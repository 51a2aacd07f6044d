"""Issue 13, part 5: ``taylor status JOURNAL`` shows a running or finished batch from another shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from test_cli import ROOT, start_taylor, taylor


def _records(path: Path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_status_of_a_running_then_finished_batch(tmp_path):
    journal = tmp_path / "j.jsonl"
    # One quick failure, two quick successes (one slower), then two tasks that run until told to stop.
    command = ("case {} in bad) echo going wrong; echo really wrong >&2; exit 3;; slow) sleep 0.3;; "
               "hold*) while [ ! -e release ]; do sleep 0.05; done;; esac")
    proc = start_taylor("run", "-j", "2", "--keep-going", "--journal", "j.jsonl", command, ":::",
                        "ok", "bad", "slow", "hold1", "hold2", "after", cwd=tmp_path)
    try:
        assert _wait_for(lambda: sum(r.get("event") == "start" and r["name"] in ("task-0004", "task-0005")
                                     for r in _records(journal)) == 2, 20), journal.read_text()
        running = taylor("status", "j.jsonl", cwd=tmp_path)
        assert running.returncode == 0, running.stderr
        text = running.stdout
        assert "batch running" in text and "3/6 finished: 2 done, 1 failed" in text
        assert "running (2):" in text and "task-0004  for" in text and "task-0005  for" in text
        assert "rate:" in text and "ETA" in text
        assert "failed (1):" in text and "task-0002" in text and "| really wrong" in text
        assert "slowest:" in text and text.index("task-0003") < text.index("task-0001")
    finally:
        (tmp_path / "release").touch()
        proc.communicate(timeout=30)
    finished = taylor("status", "j.jsonl", cwd=tmp_path)
    assert "batch ended: 6/6 finished: 5 done, 1 failed, 0 stopped, 0 running" in finished.stdout
    assert "running (" not in finished.stdout


def test_status_shows_tasks_left_unfinished_by_a_killed_run(tmp_path):
    # TMPDIR here: a SIGKILLed run cannot remove its output folder.
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "taylor", "run", "--journal", "j.jsonl", "sleep {}", ":::", "30"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _wait_for(lambda: any(r.get("event") == "start" for r in _records(tmp_path / "j.jsonl")), 20)
    finally:
        proc.kill()  # SIGKILL: the run cannot record anything more (its task is stopped with the boss)
        proc.communicate(timeout=30)
    result = taylor("status", "j.jsonl", cwd=tmp_path)
    assert "batch ended" in result.stdout and "left unfinished when the run ended (1): task-0001" in result.stdout


def test_status_watch_refreshes_until_the_run_ends(tmp_path):
    proc = start_taylor("run", "--journal", "j.jsonl", "-j", "1", "sleep 0.{}", ":::", "8", "8", "8", cwd=tmp_path)
    try:
        assert _wait_for(lambda: any(r.get("event") == "run" for r in _records(tmp_path / "j.jsonl")), 20)
        watched = taylor("status", "j.jsonl", "--watch", "0.2", cwd=tmp_path, timeout=30)
    finally:
        proc.communicate(timeout=30)
    assert watched.returncode == 0
    screens = watched.stdout.count("batch ")
    assert screens >= 2 and watched.stdout.rstrip().split("\n\n")[-1].startswith("batch ended")
    missing = taylor("status", "nothing.jsonl", cwd=tmp_path)
    assert missing.returncode == 2 and "cannot read the journal" in missing.stderr
