"""The engine drives any launcher through taylor.launcher.Launcher's methods alone.

A launcher with no process of its own (it runs each task in the boss process,
as a wake-up of a descriptor it watches) stands in for a non-local one: the
engine must start, account for and report its workers as it does local ones.
"""

import os
from collections import deque

import pytest
import workers  # noqa: F401 - registers the test workers

import taylor
from taylor import Boss
from taylor import bossprocess as boss_module
from taylor.engine import Engine
from taylor.launcher import Launcher
from taylor.schedulers import MaxThreadsScheduler
from taylor.worker import _outcome


class InBoss(Launcher):
    """Runs each task in the boss process, when its wake-up pipe is read; ``value=-1`` is lost."""

    def open(self, host):
        self.host = host
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.queue = deque()
        host.watch(self.wake_r, self._on_ready)

    def start(self, worker):
        self.queue.append(worker)
        os.write(self.wake_w, b"x")
        self.host.started(worker, None)  # no process here: the caller is told nothing to kill
        return None  # no report channel: the outcome is set at the end

    def close_channel(self, fd):
        raise AssertionError("this launcher gave the engine no channel")

    def alive(self):
        return len(self.queue)

    def signal(self, worker, signum):
        pass  # its tasks run to their end at once

    def _on_ready(self, fd, mask):
        os.read(fd, 4096)
        while self.queue:
            worker = self.queue.popleft()
            if worker.instructions.get("value") == -1:
                self.host.lost(worker, "was dropped by the test launcher")
                continue
            instructions = worker.instructions
            worker.outcome = _outcome(instructions.worker_class, instructions.attributes({}))
            self.host.ended(worker, 0)

    def close(self):
        if self.queue is not None:
            self.host.unwatch(self.wake_r)
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.queue = None


@pytest.fixture
def in_boss(monkeypatch):
    def serve(control, caller_pid, scheduler, options, inherited_fds):
        return Engine(control, caller_pid, scheduler, options, inherited_fds, launcher=InBoss()).run()

    monkeypatch.setattr(boss_module, "serve", serve)


def test_another_launcher_runs_a_batch_with_one_entry_per_worker(in_boss):
    boss = Boss(scheduler=MaxThreadsScheduler(max_threads=3))
    try:
        boss.set_instructions(dict(noop=True), dict(value=list(range(20))))
        boss.make_them_work()
        report = boss.wait_till_finished()
        assert sorted(w["report"] for w in report.workers) == list(range(20))
        assert report["counts"]["done"] == 20 and all(w["pid"] is None for w in report.workers)
    finally:
        boss.close()


def test_another_launchers_failures_and_losses_are_entries_that_say_why(in_boss):
    boss = Boss(on_error="continue")
    try:
        boss.set_instructions(None, dict(fault=["raise", "ok"]))
        boss.set_instructions(dict(noop=True), dict(value=[-1]))
        boss.make_them_work()
        report = boss.wait_till_finished()
        by_status = sorted((w["status"], type(w["report"]).__name__) for w in report.workers)
        assert by_status == [("done", "str"), ("failed", "KeyError"), ("failed", "WorkerDiedError")]
        lost = next(w for w in report.workers if isinstance(w["report"], taylor.WorkerDiedError))
        assert "was dropped by the test launcher" in str(lost["report"])
    finally:
        boss.close()
