"""One call to run a batch: :func:`run_as_server` starts one, :func:`batch_main` runs it to the end and
prints its report (:func:`format_report`).

Built on the public :class:`~taylor.boss.Boss` API alone, as a user's script would be: must not
reach into the Boss's internals, its process (``bossprocess``) or the boss loop (``engine``).
"""

from __future__ import annotations

import pprint
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from .boss import Boss
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
    boss = Boss(scheduler=scheduler, verbose=verbose, **boss_options)
    try:
        boss.set_instructions(common_instructions, individual_instructions)
        boss.make_them_work()
    except BaseException:
        boss.close()
        raise
    return boss


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
               print_report: Union[bool, Callable[[Any], Any]] = True, **boss_options: Any) -> Report:
    """Run one batch to the end, show its report and return it.

    ``print_report``: ``True`` prints, for each worker, its name and its whole
    report (see :func:`format_report`), then a summary; ``False`` prints
    nothing; a callable is called with each worker's report in turn, as
    taylorism did (``print_report=lambda report: None`` silences it; taylor
    then prints nothing itself).  Nothing is shown when the run fails: the
    error raised carries the report.

    Raises the first worker error (with ``.report``) unless
    ``on_error='continue'``; see :func:`run_as_server` for the parameters.
    """
    boss = run_as_server(common_instructions, individual_instructions, scheduler=scheduler,
                         verbose=verbose, **boss_options)
    try:
        report = boss.wait_till_finished()
    finally:
        boss.close()
    if callable(print_report):
        for entry in report.workers:
            print_report(entry["report"])
    elif print_report:
        print(format_report(report))
    return report
