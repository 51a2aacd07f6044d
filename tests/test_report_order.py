"""Entries carry the position of their instruction set; Report.in_order gives them in input order."""

from __future__ import annotations

from taylor import batch_main, run_as_server
from taylor.examples import Sleeper  # noqa: F401 - registers the worker class
from taylor.schedulers import MaxThreadsScheduler


def test_entries_end_out_of_order_and_in_order_puts_them_back():
    times = [0.6, 0.3, 0.0, 0.15]
    report = batch_main(None, dict(sleeping_time=times, wakeup_sentence=["a", "b", "c", "d"]),
                        scheduler=MaxThreadsScheduler(max_threads=4), print_report=False)
    assert [e["index"] for e in report.workers] != [0, 1, 2, 3]  # they ended in another order
    assert [e["index"] for e in report.in_order] == [0, 1, 2, 3]
    assert [e["report"]["sentence"] for e in report.in_order] == ["a", "b", "c", "d"]


def test_index_counts_across_calls_of_set_instructions():
    boss = run_as_server(None, dict(sleeping_time=[0.2, 0.0]), scheduler=MaxThreadsScheduler(max_threads=4))
    try:
        boss.set_instructions(dict(sleeping_time=0.0), dict(wakeup_sentence=["x", "y"]))
        report = boss.wait_till_finished()
    finally:
        boss.close()
    assert sorted(e["index"] for e in report.workers) == [0, 1, 2, 3]
    assert [e["instructions"].get("wakeup_sentence") for e in report.in_order][2:] == ["x", "y"]
