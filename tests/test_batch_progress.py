"""Issue 15, part 4: ``batch_main(progress=...)`` shows the command line's progress line while the batch runs,
on a pipe (status lines) and on a real terminal (one line redrawn, taken away before the report), and takes
it away when the run fails or is interrupted, the error going on unchanged."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
import workers  # noqa: F401 - registers Faulty and Sleeper before any Boss is created
from processes import on_terminal
from test_cli import ROOT

from taylor import batch_main
from taylor.batch import format_report
from taylor.schedulers import MaxThreadsScheduler

SCRIPT = '''
import signal
import sys

import workers  # noqa: F401
from taylor import batch_main
from taylor.schedulers import MaxThreadsScheduler

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background child ignores SIGINT by default
    try:
        batch_main(None, {instructions}, scheduler=MaxThreadsScheduler(max_threads=2), progress={progress})
    except BaseException as exc:
        report = getattr(exc, "report", None)
        print("raised", type(exc).__name__, report and report["status"], flush=True)
        sys.exit(3)
'''


def _progress_lines(err: str) -> list:
    return [line for line in err.splitlines() if line.startswith("taylor: progress ")]


def _on_terminal(tmp_path, instructions: str, progress: str = "True", interrupt=None):
    """Run a batch_main script with stdout and stderr on one pseudo-terminal (as a person at a terminal sees
    it); with ``interrupt``, send that signal to it once the progress line shows.  Return (exit code, text)."""
    (tmp_path / "batch.py").write_text(SCRIPT.format(instructions=instructions, progress=progress))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")

    def seen(data, proc):
        nonlocal interrupt
        if interrupt is not None and b"running 2" in data:
            proc.send_signal(interrupt)
            interrupt = None

    return on_terminal([sys.executable, "batch.py"], tmp_path, env, seen)


def _cleared_before(text: str, what: str) -> str:
    """What follows the progress line's last erasure, checked to start with ``what`` and to hold nothing of the
    line: the terminal shows the report (or the error) on a clean line."""
    assert "ETA" in text, text  # the line was drawn
    drawn, erased, after = text.rpartition("\r\x1b[K")
    assert erased, repr(text)
    assert after.startswith(what), repr(after[:200])
    assert "ETA" not in after and "\x1b" not in after and "\r[" not in after, repr(after)
    return after


def test_on_a_pipe_status_lines_end_with_the_final_counts(capsys):
    report = batch_main(None, dict(fault=["ok", "raise", "ok", "ok"]), scheduler=MaxThreadsScheduler(max_threads=2),
                        on_error="continue", progress=True)
    out, err = capsys.readouterr()
    assert "\r" not in err and "\x1b" not in err
    lines = _progress_lines(err)
    assert lines[0].startswith("taylor: progress 0/4  done 0  failed 0  ")
    assert lines[-1].startswith("taylor: progress 4/4  done 3  failed 1  running 0  ")
    assert lines[-1].endswith("ETA 0:00")
    assert out == format_report(report) + "\n"  # the report is as without progress


def test_without_progress_stderr_stays_empty_and_none_follows_the_terminal(capsys):
    for progress in (False, None):  # None: shown only when stderr is a terminal, and here it is not
        report = batch_main(None, dict(noop=[True, True], value=[1, 2]), progress=progress)
        out, err = capsys.readouterr()
        assert err == ""
        assert out == format_report(report) + "\n"
    batch_main(None, dict(noop=[True]))  # the default: no progress
    assert capsys.readouterr().err == ""


def test_on_a_terminal_the_line_is_redrawn_then_taken_away_before_the_report(tmp_path):
    # progress=None: shown because stderr is a terminal
    code, text = _on_terminal(tmp_path, 'dict(sleeping_time=[0.3] * 6, wakeup_sentence=list("abcdef"))', "None")
    assert code == 0, text
    drawn = text.rpartition("\r\x1b[K")[0]
    assert drawn.count("\r[") >= 2  # redrawn in place, on one line
    assert "\n" not in drawn  # nothing else was written meanwhile
    after = _cleared_before(text, "worker ")
    assert after.rstrip().endswith("finished: 6 done")
    assert after.count("worker ") == 6


def test_a_failure_takes_the_line_away_and_raises_as_without_progress(tmp_path, capsys):
    instructions = dict(fault=["hang", "raise", "ok", "ok"])
    errors = []
    for progress in (False, True):
        with pytest.raises(KeyError) as info:
            batch_main(None, instructions, scheduler=MaxThreadsScheduler(max_threads=2), progress=progress)
        errors.append(info.value)
        out, err = capsys.readouterr()
        assert out == ""
    plain, shown = errors
    assert str(shown) == str(plain) and type(shown.__cause__) is type(plain.__cause__)
    assert shown.report["status"] == "failed"
    assert sorted(w["status"] for w in shown.report.workers) == ["failed", "stopped"]
    assert [p["fault"] for p in shown.report["pending"]] == ["ok", "ok"]
    last = _progress_lines(err)[-1]  # the pipe's last status line says how it ended
    assert "done 0  failed 1" in last

    code, text = _on_terminal(tmp_path, 'dict(fault=["hang", "raise", "ok", "ok"])')
    assert code == 3, text
    _cleared_before(text, "raised KeyError failed")


@pytest.mark.parametrize("signum, error", [(signal.SIGINT, "KeyboardInterrupt"), (signal.SIGTERM, "Interrupted")])
def test_an_interruption_takes_the_line_away_and_stops_the_run(tmp_path, signum, error):
    start = time.monotonic()
    code, text = _on_terminal(tmp_path, 'dict(fault=["hang"] * 4, seconds=[20.0] * 4)', interrupt=signum)
    assert code == 3, text
    after = _cleared_before(text, f"raised {error} ")
    assert after.split()[2] != "None"  # with the run's report, as without progress
    assert time.monotonic() - start < 15  # stopped, not waited for


def test_an_interruption_between_two_waits_still_stops_the_run_and_carries_its_report(monkeypatch, capsys):
    """SIGINT while the progress line asks the boss how many run (not inside a wait): the same outcome."""
    from taylor.boss import Boss

    asked = Boss.get_report

    def interrupted(self, interim=True):
        if interim:
            os.kill(os.getpid(), signal.SIGINT)  # delivered here, before the question is sent
        return asked(self, interim)

    monkeypatch.setattr(Boss, "get_report", interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        batch_main(None, dict(fault=["hang"] * 3, seconds=[20.0] * 3), scheduler=MaxThreadsScheduler(max_threads=2),
                   progress=True)
    assert info.value.report["status"] in ("stopped", "pending")
    assert sorted(w["status"] for w in info.value.report.workers) == ["stopped", "stopped"]
    out, err = capsys.readouterr()
    assert out == "" and _progress_lines(err)
