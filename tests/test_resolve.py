"""Choosing each row's Worker class: the Executor's shortcut gives what footprints gives row by row."""

from __future__ import annotations

import pytest

from taylor.calls import CallWorker, Payload
from taylor.errors import InstructionsError
from taylor.examples import Sleeper
from taylor.instructions import resolve


def _rows(count, **extra):
    return [dict(taylor_call=Payload(b"x" * i), taylor_claims=3, taylor_seq=i, name=f"call#{i}", **extra)
            for i in range(count)]


def _plain(instructions):
    return [(i.worker_class, dict(i), i.defaults, i.memory, i.expected_time, i.timeout) for i in instructions]


@pytest.mark.parametrize("extra", [{}, dict(memory=12.5, timeout=30.0, expected_time=2.0)])
def test_rows_made_for_a_class_resolve_as_footprints_resolves_each(extra):
    rows = _rows(5, **extra)
    assert _plain(resolve(rows, fits=CallWorker)) == _plain(resolve(rows))


def test_the_shortcut_still_refuses_taken_names_and_bad_numbers():
    with pytest.raises(InstructionsError, match="call#3"):
        resolve(_rows(5), fits=CallWorker, taken={"call#3"})
    rows = _rows(3)
    rows[2]["memory"] = -1.0
    rows[0]["memory"] = rows[1]["memory"] = 1.0
    with pytest.raises(InstructionsError, match="memory"):
        resolve(rows, fits=CallWorker)


def test_rows_another_class_fits_are_examined_one_by_one():
    rows = [dict(sleeping_time=0.0, name="a"), dict(sleeping_time=1.0, name="b")]
    resolved = resolve(rows, fits=CallWorker)
    assert [i.worker_class for i in resolved] == [Sleeper, Sleeper]
    assert [i["sleeping_time"] for i in resolved] == [0.0, 1.0]


def test_taken_names_are_not_changed_by_resolve():
    taken = {"x"}
    resolve(_rows(2), taken=taken)
    assert taken == {"x"}
