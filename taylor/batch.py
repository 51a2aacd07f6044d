"""One call to run a batch: :func:`run_as_server` starts one, :func:`batch_main` runs it to the end and
prints its report (:func:`format_report`), showing its progress meanwhile if asked
(:func:`refresh_running` feeds the progress line of ``taylor run`` too).

Built on the public :class:`~taylor.boss.Boss` API alone, as a user's script would be: must not
reach into the Boss's internals, its process (``bossprocess``) or the boss loop (``engine``).
"""

from __future__ import annotations

import pprint
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

from .boss import Boss
from .errors import Interrupted
from .interrupts import is_signal, sigterm_raises
from .progress import Progress
from .report import Report

__all__ = ["run_as_server", "batch_main", "format_report"]


def run_as_server(common_instructions: Optional[Mapping[str, Any]] = None,
                  individual_instructions: Optional[Mapping[str, Sequence[Any]]] = None,
                  scheduler: Any = None, verbose: bool = False, **boss_options: Any) -> Boss:
    """Create a Boss, give it these instructions, start the workers, return the Boss.

    The run goes on until :meth:`Boss.end` or :meth:`Boss.wait_till_finished`;
    more instructions may be given meanwhile.  ``boss_options`` are the other
    :class:`Boss` parameters.
    """
    return _start(common_instructions, individual_instructions, scheduler, verbose, boss_options)[0]


def _start(common_instructions: Optional[Mapping[str, Any]],
           individual_instructions: Optional[Mapping[str, Sequence[Any]]],
           scheduler: Any, verbose: bool, boss_options: Mapping[str, Any]) -> Tuple[Boss, int]:
    """:func:`run_as_server`, and how many workers it was given (the progress line's total)."""
    boss = Boss(scheduler=scheduler, verbose=verbose, **boss_options)
    try:
        names = boss.set_instructions(common_instructions, individual_instructions)
        boss.make_them_work()
    except BaseException:
        boss.close()
        raise
    return boss, len(names)


def _report_text(report: Any) -> str:
    """A worker's report as readable text: a string as it is, an exception as its type and
    message, anything else pretty-printed (one item a line when it does not fit in one)."""
    if isinstance(report, str):
        return report
    if isinstance(report, BaseException):
        return f"{type(report).__name__}: {report}"
    return pprint.pformat(report, width=100, sort_dicts=False)


def format_report(report: Report) -> str:
    """The text batch_main prints: for each worker a header with its name and how it
    ended, then its whole report as an indented block; last, the run's summary."""
    blocks = []
    for entry in report.workers:
        header = f"worker {entry['name']}: {entry['status']}"
        text = _report_text(entry["report"])
        blocks.append(header + "\n" + "\n".join("    " + line for line in text.splitlines() or [""]))
    pending = report.get("pending")
    if pending:
        blocks.append("never started: " + ", ".join(str(p.get("name")) for p in pending))
    blocks.append(report.summary())
    return "\n".join(blocks)


def batch_main(common_instructions: Optional[Mapping[str, Any]] = None,
               individual_instructions: Optional[Mapping[str, Sequence[Any]]] = None,
               scheduler: Any = None, verbose: bool = False,
               print_report: Union[bool, Callable[[Any], Any]] = True, progress: Optional[bool] = False,
               **boss_options: Any) -> Report:
    """Run one batch to the end, show its report and return it.

    ``print_report``: ``True`` prints, for each worker, its name and its whole
    report (see :func:`format_report`), then a summary; ``False`` prints
    nothing; a callable is called with each worker's report in turn, as
    taylorism did (``print_report=lambda report: None`` silences it; taylor
    then prints nothing itself).  Nothing is shown when the run fails: the
    error raised carries the report.

    ``progress``: ``True`` shows the progress line of ``taylor run`` on stderr
    while the batch runs (done, failed and running workers, elapsed time,
    ETA): redrawn in place on a terminal, and taken away before the report is
    printed or an error raised; on a file or pipe, a status line at the start,
    every 10 seconds and at the end.  ``None`` shows it when stderr is a
    terminal, as ``taylor run`` does; ``False`` (default) shows nothing.

    Raises the first worker error (with ``.report``) unless
    ``on_error='continue'``; see :func:`run_as_server` for the parameters.
    """
    shown = bool(sys.stderr is not None and sys.stderr.isatty()) if progress is None else bool(progress)
    boss, total = _start(common_instructions, individual_instructions, scheduler, verbose, boss_options)
    bar = Progress(total, enabled=True) if shown else None
    try:
        report = boss.wait_till_finished() if bar is None else _follow(boss, bar)
    finally:
        if bar is not None:
            bar.close(keep=False)  # before anything else is printed, whatever happened
        boss.close()
    if callable(print_report):
        for entry in report.workers:
            print_report(entry["report"])
    elif print_report:
        print(format_report(report))
    return report


def refresh_running(boss: Boss, bar: Progress) -> Optional[Report]:
    """Ask the boss how many workers run now (one round trip), for the progress line ``bar``; return its
    interim report (None if the run ended meanwhile: the caller's wait sees how, and raises its failure)."""
    bar.asked = time.monotonic()
    try:
        interim = boss.get_report(interim=True)
    except BaseException as exc:  # noqa: BLE001 - a worker's failure: wait_till_finished raises it
        if is_signal(exc):
            raise
        return None
    if interim is not None:
        bar.running = interim.get("counts", {}).get("running")
    return interim


def _follow(boss: Boss, bar: Progress) -> Report:
    """Wait for the run's end as :meth:`Boss.wait_till_finished` does, counting the entries on ``bar`` as
    they come and redrawing it every ``bar.interval`` seconds (the wait's bound: no polling)."""
    try:
        with sigterm_raises():  # between two waits too, as during wait_till_finished's one wait
            boss.end()  # every instruction is given: the run ends with its last worker
            bar.draw(force=True)
            while not boss.ended:
                for entry in boss.wait_for_entries(bar.interval):
                    bar.count(entry["status"])
                if not boss.ended and time.monotonic() - bar.asked >= bar.interval:
                    refresh_running(boss, bar)
                bar.draw()
            for entry in boss.wait_for_entries(0):
                bar.count(entry["status"])
            bar.running = 0
            return boss.wait_till_finished()
    except (KeyboardInterrupt, Interrupted) as exc:
        if getattr(exc, "report", None) is None:  # came between two waits: stop the run as a wait would have
            boss.close()
            try:
                exc.report = boss.get_report(interim=False)
            except Exception:  # noqa: BLE001 - the run had failed before: keep the interruption
                pass
        raise
