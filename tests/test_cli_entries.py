"""Boss.wait_for_entries / entries(): what the command line journals and shows as workers finish."""

from __future__ import annotations

import time

import workers  # noqa: F401 - registers the test workers before any Boss is created

from taylor import Boss


def test_entries_arrive_as_workers_end_not_at_the_end():
    boss = Boss(on_error="continue")
    try:
        boss.set_instructions({}, dict(fault=["ok", "hang"], seconds=[0.0, 1.5], name=["fast", "slow"]))
        boss.make_them_work()
        boss.end()
        assert boss.wait_for_entries(timeout=0.0) == []  # a zero timeout does not block
        first = []
        while not first:
            first = boss.wait_for_entries(timeout=5)
        assert [e["name"] for e in first] == ["fast"]
        assert not boss.ended  # "slow" still runs: the entry came before the end of the run
        started = time.monotonic()
        assert boss.wait_for_entries(timeout=0.2) == []  # the timeout bounds the wait
        assert 0.15 < time.monotonic() - started < 1.0
        rest = list(boss.entries())
        assert [e["name"] for e in rest] == ["slow"] and boss.ended
        assert boss.wait_for_entries() == []
        assert boss.wait_till_finished().ok
    finally:
        boss.close()


def test_failure_entry_is_returned_and_the_failure_raised_by_wait_till_finished():
    boss = Boss()
    try:
        boss.set_instructions({}, dict(fault=["raise"], name=["bad"]))
        boss.make_them_work()
        boss.end()
        got = list(boss.entries())
        assert [(e["name"], e["status"]) for e in got] == [("bad", "failed")]
        try:
            boss.wait_till_finished()
        except KeyError as exc:
            assert exc.report["status"] == "failed"
        else:
            raise AssertionError("the failure was not raised")
    finally:
        boss.close()
