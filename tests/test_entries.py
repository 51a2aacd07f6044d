"""How a worker's end becomes its entry, without any process: taylor.entries and taylor.deadlines alone."""

import pickle
import signal

from taylor import wire
from taylor.deadlines import Deadlines
from taylor.entries import failure_text, for_caller, make_entry
from taylor.errors import ReportError, WorkerDiedError, WorkerTimeoutError
from taylor.report import DONE, FAILED, STOPPED
from taylor.running import RunningWorker
from taylor.worker import OK, RAISED, UNSENDABLE


def ended(outcome=None, **state):
    worker = RunningWorker({"name": "w1", "x": 3}, pid=1234)
    worker.outcome = outcome
    for key, value in state.items():
        setattr(worker, key, value)
    return worker


def test_a_report_is_a_done_entry_whose_report_travels_pickled_apart():
    entry, packed = make_entry(ended((OK, {"total": 7})), 0, None)
    assert entry["status"] == DONE and entry["report"] == {"total": 7} and entry["exitcode"] == 0
    sent = for_caller(entry, packed)
    assert "instructions" not in sent and pickle.loads(sent["report"]) == {"total": 7}


def test_a_raised_exception_is_a_failed_entry_with_its_traceback():
    error = ValueError("bad input")
    entry, packed = make_entry(ended((RAISED, error, "Traceback: here")), 0, None)
    assert entry["status"] == FAILED and entry["report"] is error and entry["traceback"] == "Traceback: here"
    assert packed is not None


def test_a_worker_killed_without_reporting_says_how_it_died():
    entry, packed = make_entry(ended(), -signal.SIGKILL, None)
    assert entry["status"] == FAILED and packed is None
    assert isinstance(entry["report"], WorkerDiedError)
    assert "ended without reporting" in str(entry["report"]) and "SIGKILL" in str(entry["report"])
    assert "'w1'" in str(entry["report"]) and "x=3" in str(entry["report"])


def test_a_half_sent_report_says_the_worker_died_while_sending_it():
    worker = ended()
    worker.decoder.feed(wire.encode(("ok", 1))[:5])
    entry, _ = make_entry(worker, -signal.SIGKILL, None)
    assert "died while sending its report" in str(entry["report"])


def test_a_timed_out_worker_names_the_boss_timeout_it_ran_under():
    entry, _ = make_entry(ended(timed_out=True), -signal.SIGTERM, 2.5)
    assert isinstance(entry["report"], WorkerTimeoutError) and "timeout of 2.5 s" in str(entry["report"])


def test_a_stopped_worker_is_stopped_not_failed():
    entry, _ = make_entry(ended(stop_requested=True), -signal.SIGTERM, None)
    assert entry["status"] == STOPPED and entry["report"] is None


def test_a_lost_worker_says_why_and_unreadable_reports_are_report_errors():
    entry, _ = make_entry(ended(lost="was killed with the spawner"), None, None)
    assert isinstance(entry["report"], WorkerDiedError) and "was killed with the spawner" in str(entry["report"])
    entry, _ = make_entry(ended((UNSENDABLE, "its report does not pickle")), 0, None)
    assert isinstance(entry["report"], ReportError)
    entry, _ = make_entry(ended(wire.Undecodable(ImportError("no module x"))), 0, None)
    assert isinstance(entry["report"], ReportError) and "no module x" in str(entry["report"])


def test_a_report_that_does_not_pickle_again_fails_that_worker():
    entry, packed = make_entry(ended((OK, lambda: None)), 0, None)
    assert entry["status"] == FAILED and isinstance(entry["report"], ReportError) and packed is None
    assert isinstance(pickle.loads(for_caller(entry, packed)["report"]), ReportError)


def test_the_failure_log_text_lists_instructions_cut_short_and_the_traceback():
    worker = RunningWorker({"name": "w1", "data": "y" * 10000}, pid=99)
    worker.outcome = (RAISED, ValueError("bad"), "Traceback (most recent call last):\n  boom\n")
    entry, _ = make_entry(worker, 0, None)
    text = failure_text(entry)
    assert text.startswith("worker 'w1' (pid 99) failed: ValueError: bad")
    assert max(len(line) for line in text.splitlines()) < 400 and text.endswith("  boom")


class Subject:
    def __init__(self):
        self.finished = False


def test_deadlines_are_met_in_order_and_those_of_finished_subjects_are_forgotten():
    deadlines, met = Deadlines(), []
    first, second = Subject(), Subject()
    deadlines.at(0.0, lambda s: met.append("second"), second)
    deadlines.at(-1.0, lambda s: met.append("first"), first)
    deadlines.at(60.0, lambda s: met.append("later"), first)
    deadlines.expire()
    assert met == ["first", "second"] and len(deadlines) == 1 and deadlines.next_at() is not None
    first.finished = True
    for _ in range(70):
        deadlines.at(60.0, lambda s: None, first)
    assert len(deadlines) <= 65  # compacted once past 64 + 4 per running subject
