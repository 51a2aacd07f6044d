"""The ``taylor`` command line: batches from the shell and inside batch-job scripts.

``taylor run`` runs one batch to the end, of a Python Worker class or of a
shell command per instruction set; ``taylor workers`` and ``taylor
schedulers`` say what can be chosen.  Exit codes: 0 all succeeded, 1 a task
failed, 2 usage or input error, 130 SIGINT, 143 SIGTERM.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import signal
import sys
import time
from typing import Any, Dict, List, NoReturn, Optional, Sequence

import click

from . import __version__
from .progress import Progress

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SCHEDULERS = ("threads", "memory", "threads+memory", "laxist")

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


def _fail(message: str) -> NoReturn:
    """Exit 2 with a one-line reason (what a batch script's log shows)."""
    click.echo("taylor: error: " + " ".join(str(message).split()), err=True)
    sys.exit(EXIT_USAGE)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="taylor")
def main() -> None:
    """Run batches of tasks in processes, scheduled by CPUs and memory.

    A batch is a list of instruction sets; each one runs in its own process,
    as a Python Worker class or as a shell command, as many at once as the
    scheduler allows. Nothing hangs and nothing is left behind: a failure or
    a signal stops every task and every program a task started.

    Example: taylor run --command 'gzip -k {file}' -i file=a.txt,b.txt -j 2
    """


@main.command(context_settings=CONTEXT)
@click.option("-n", "--tasks", default=8, show_default=True, help="How many example workers to run.")
def demo(tasks: int) -> None:
    """Run a demo batch of example Sleeper workers and print their report.

    Example: taylor demo -n 4
    """
    from . import batch_main
    from .examples import Sleeper  # noqa: F401 - registers the example worker

    times = [round(0.1 + 0.05 * (i % 4), 2) for i in range(tasks)]
    batch_main(dict(wakeup_sentence="Hello from a worker"), dict(sleeping_time=times))


# ------------------------------------------------------------------ imports
def import_module(spec: str) -> Any:
    """Import a module by dotted name, or from a ``.py`` file path; the current directory is searched first."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    if spec.endswith(".py") or os.sep in spec:
        path = os.path.abspath(spec)
        name = os.path.splitext(os.path.basename(path))[0]
        if not os.path.isfile(path):
            _fail(f"cannot import {spec}: no such file")
        loader = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[name] = module  # classes are pickled by module name
        try:
            loader.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - any error in the user's module
            sys.modules.pop(name, None)
            _fail(f"importing {spec} failed: {type(exc).__name__}: {exc}")
        return module
    try:
        return importlib.import_module(spec)
    except Exception as exc:  # noqa: BLE001 - any error in the user's module
        _fail(f"cannot import module {spec!r}: {type(exc).__name__}: {exc}")


def load_worker(spec: str) -> Optional[type]:
    """Import ``MODULE`` or ``MODULE:CLASS``; return the class if one is named."""
    from .worker import Worker

    module_name, _, class_name = spec.partition(":")
    module = import_module(module_name)
    if not class_name:
        return None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Worker)):
        _fail(f"{spec}: {module_name} has no Worker subclass named {class_name!r}")
    if cls.footprint_abstract():
        _fail(f"{spec}: {class_name} is abstract; name a concrete Worker class")
    return cls


# --------------------------------------------------------------- schedulers
def scheduler_classes(description: Dict[str, Any]) -> List[type]:
    """Scheduler classes that fit ``description`` and declare every one of its keys.

    Footprints ignores keys a class does not declare: without this check
    ``binded=True`` would select a scheduler that does not bind.
    """
    import footprints

    from . import schedulers  # noqa: F401 - registers the schedulers

    found = footprints.collectors.get(tag="scheduler").find_all(dict(description))
    return [cls for cls, _, _ in found if set(description) <= set(cls.footprint_retrieve().attr)]


def make_scheduler(kind: Optional[str], max_threads: Optional[int], max_memory: Optional[float],
                   memory_per_task: Optional[float], bind: bool, measured: bool = False, enforce: bool = False) -> Any:
    """The scheduler the options describe, built through footprints (exit 2 if none fits)."""
    import footprints

    from . import schedulers  # noqa: F401 - registers the schedulers

    memory_given = max_memory is not None or memory_per_task is not None or measured or enforce
    if kind is None:
        kind = "threads+memory" if memory_given else "threads"
    if kind in ("threads", "laxist") and memory_given:
        _fail(f"--max-memory, --memory-per-task, --measured-memory and --enforce-memory need a memory "
              f"scheduler, not --scheduler {kind}")
    if kind in ("memory", "laxist") and max_threads is not None:
        _fail(f"-j/--max-threads does not apply to --scheduler {kind}")
    if kind == "laxist" and bind:
        _fail("--bind needs a threads or memory scheduler, not --scheduler laxist")
    if kind == "laxist":
        description: Dict[str, Any] = dict(nosort=True)
    else:
        description = dict(limit=kind)
        if kind != "memory":
            description["max_threads"] = max_threads or 0
        if max_memory is not None:
            description["max_memory"] = max_memory
        if memory_per_task is not None:
            description["memory_per_task"] = memory_per_task
        if measured:
            description["measured"] = True
        if enforce:
            description["enforce"] = True
    if bind:
        description["binded"] = True
    if not scheduler_classes(description):
        _fail(f"no scheduler of this taylor installation accepts {description} (--scheduler {kind}"
              f"{' --bind' if bind else ''}); 'taylor schedulers' lists those available")
    try:
        scheduler = footprints.proxy.scheduler(**description)
    except Exception as exc:  # noqa: BLE001 - bad figures, said by the scheduler
        _fail(f"--scheduler {kind}: {exc}")
    if scheduler is None:
        _fail(f"no scheduler accepts {description}")
    return scheduler


# ----------------------------------------------------------------------- run
RUN_HELP = """Run one batch of tasks to the end: a Python Worker class or a shell command per instruction set.

\b
Instruction sets come from -c (the same for every task), -i (one value per
task; all -i lists have the same length) and --from (a file: JSON list of
mappings or {"common": ..., "individual": ...}, YAML, JSON lines, or CSV with
a header; "-" reads stdin). Values are read as JSON scalars when they parse
(3, 2.5, true, null), as strings otherwise.

\b
With --command, each task runs the template through /bin/sh, every {key}
replaced by that task's value, shell-quoted (a value can never inject shell
code). A task fails when its command exits non-zero. Tasks without a "name"
are named task-0001, task-0002... in input order; {name} is available too.

\b
Exit codes: 0 all tasks succeeded; 1 a task failed (or was stopped, or never
started); 2 usage or input error, with a one-line reason; 130 on SIGINT; 143
on SIGTERM, after stopping the tasks and every program they started and
writing the journal and the report of what finished.

\b
Examples:
  taylor run --command 'gzip -k {file}' -i file=a.txt,b.txt,c.txt -j 2
  taylor run --command 'convert {src} {dst}' --from jobs.csv --journal run.jsonl --resume
  taylor run --worker mypackage.workers:Simulation --from cases.yaml --max-memory 64000 --report out.json
"""


@main.command(context_settings=CONTEXT, help=RUN_HELP, no_args_is_help=True)
@click.option("--worker", "worker_spec", metavar="MODULE[:CLASS]",
              help="Run a Python Worker class. MODULE is imported (a dotted name, or a .py file); with :CLASS "
                   "every task must run that class, without it footprints picks a class per task.")
@click.option("--command", "template", metavar="TEMPLATE",
              help="Run this shell command per task; {key} is replaced by the task's value of key, shell-quoted.")
@click.option("-c", "--common", multiple=True, metavar="KEY=VALUE",
              help="An instruction given to every task. Repeatable.")
@click.option("-i", "--individual", multiple=True, metavar="KEY=V1,V2,...",
              help="One value of KEY per task, comma-separated. Repeatable; all lists have the same length.")
@click.option("--from", "from_file", metavar="FILE",
              help="Read instruction sets from FILE (JSON, YAML, JSON lines or CSV; '-' is stdin).")
@click.option("--format", "from_format", type=click.Choice(["json", "yaml", "jsonl", "csv"]),
              help="Format of the --from file, when its extension does not say it.")
@click.option("--logdir", metavar="DIR",
              help="With --command: keep each task's full stdout and stderr in DIR/<name>.out and .err.")
@click.option("-j", "--max-threads", type=click.IntRange(min=0), metavar="N",
              help="Run at most N tasks at once; 0 (the default) means the CPUs this job may use.")
@click.option("--max-memory", type=click.FloatRange(min=0, min_open=True), metavar="MIB",
              help="Keep the memory the running tasks declare under MIB mebibytes.")
@click.option("--memory-per-task", type=click.FloatRange(min=0), metavar="MIB",
              help="Memory (MiB) of tasks that declare none, for memory schedulers.")
@click.option("--scheduler", "scheduler_kind", type=click.Choice(SCHEDULERS),
              help="How tasks are started: threads (at most -j at once), memory (within --max-memory), "
                   "threads+memory (both, longest expected_time first), laxist (all at once). Default: "
                   "threads, or threads+memory when a memory option is given.")
@click.option("--measured-memory", is_flag=True,
              help="With a memory scheduler: also start a task only when the memory the host has available "
                   "now (less what running tasks declared but do not use yet) covers it.")
@click.option("--enforce-memory", is_flag=True,
              help="With a memory scheduler: keep each task's processes to the memory it declares (or "
                   "--memory-per-task), with the job's cgroup where it is delegated, else an address-space "
                   "limit; a task that exceeds it fails alone, saying so.")
@click.option("--bind", is_flag=True, help="Pin each task to its own CPU.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Terminate (and fail) a task that runs longer than SECONDS.")
@click.option("--keep-going", is_flag=True,
              help="Run every task even after failures (default: stop everything at the first failure).")
@click.option("--report", "report_path", metavar="FILE",
              help="Write the full report as JSON to FILE ('-' is stdout).")
@click.option("--journal", "journal_path", metavar="FILE",
              help="Write one JSON line per finished task to FILE, as it finishes (the file is started "
                   "afresh, unless --resume).")
@click.option("--resume", is_flag=True,
              help="With --journal: skip the tasks the journal records as done, run the rest, keep appending.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress line on stderr (default: when stderr is a terminal).")
@click.option("-v", "--verbose", is_flag=True, help="Log each task's start and end.")
def run(worker_spec: Optional[str], template: Optional[str], common: Sequence[str], individual: Sequence[str],
        from_file: Optional[str], from_format: Optional[str], logdir: Optional[str], max_threads: Optional[int],
        max_memory: Optional[float], memory_per_task: Optional[float], scheduler_kind: Optional[str],
        measured_memory: bool, bind: bool, timeout: Optional[float], keep_going: bool, report_path: Optional[str],
        journal_path: Optional[str], resume: bool, progress: Optional[bool], verbose: bool,
        enforce_memory: bool = False) -> None:
    from .errors import TaylorError

    if bool(worker_spec) == bool(template):
        _fail("give exactly one of --worker MODULE[:CLASS] and --command TEMPLATE")
    if resume and not journal_path:
        _fail("--resume needs --journal FILE (the journal of the run to resume)")
    if logdir and not template:
        _fail("--logdir applies to --command runs only")
    if timeout is not None:
        from .checks import seconds

        why = seconds(timeout, "--timeout")  # NaN passes click's range; inf and > 24.8 days too
        if why:
            _fail(why)
    if report_path and report_path != "-":
        folder = os.path.dirname(os.path.abspath(report_path))
        if not os.access(folder, os.W_OK):
            _fail(f"cannot write the report {report_path}: {folder} is not a writable directory")
    try:
        user_rows = _instruction_rows(common, individual, from_file, from_format)
    except TaylorError as exc:
        _fail(str(exc))
    if not user_rows and not from_file:
        _fail("no instruction sets: give -i KEY=V1,V2,... or --from FILE")

    worker_class = None
    if template is not None:
        from .command import CommandWorker, check_template

        worker_class = CommandWorker
        for row in user_rows:
            clash = {"command", "logdir"} & set(row)
            if clash:
                _fail(f"instruction key {sorted(clash)[0]!r} is reserved with --command; rename it")
        try:
            check_template(template, user_rows)
        except TaylorError as exc:
            _fail(str(exc))
    else:
        worker_class = load_worker(worker_spec)
    scheduler = make_scheduler(scheduler_kind, max_threads, max_memory, memory_per_task, bind, measured_memory,
                               enforce_memory)

    width = max(4, len(str(len(user_rows))))
    tasks: List[Dict[str, Any]] = []
    for index, row in enumerate(user_rows, 1):
        task = dict(row)
        task.setdefault("name", f"task-{index:0{width}d}")
        if template is not None:
            task["command"] = template
            if logdir:
                task["logdir"] = logdir
        tasks.append(task)
    originals = {str(t["name"]): row for t, row in zip(tasks, user_rows)}
    if template is not None:
        from .command import render

        for task in tasks:  # a format spec that does not suit a value fails here, not in a task
            try:
                render(template, task)
            except (ValueError, TypeError) as exc:
                _fail(f"task {task['name']!r}: cannot fill the command template {template!r}: {exc}")

    skipped = 0
    if resume:
        from .journal import read_done, row_key

        try:
            done, bad = read_done(journal_path)
        except (OSError, ValueError) as exc:  # a directory, no permission, not UTF-8 (JournalError)
            _fail(str(exc) if isinstance(exc, ValueError) else
                  f"cannot read the journal {journal_path}: {exc.strerror or exc}")
        if bad:
            click.echo(f"taylor: {bad} unreadable line(s) in {journal_path} ignored (a line cut by a kill?)",
                       err=True)
        keep = [t for t, row in zip(tasks, user_rows) if row_key(row) not in done]
        skipped = len(tasks) - len(keep)
        tasks = keep
        click.echo(f"taylor: resuming: {skipped} of {len(user_rows)} tasks already done, {len(tasks)} to run",
                   err=True)

    if worker_spec and worker_class is not None and tasks:
        _check_class(worker_class, tasks)

    code = _run_batch(tasks, originals, scheduler, keep_going=keep_going, timeout=timeout, verbose=verbose,
                      report_path=report_path, journal_path=journal_path, append=resume, skipped=skipped,
                      progress=sys.stderr.isatty() if progress is None else progress)
    sys.exit(code)


def _instruction_rows(common: Sequence[str], individual: Sequence[str], from_file: Optional[str],
                      from_format: Optional[str]) -> List[Dict[str, Any]]:
    from .sources import build_rows, parse_common, parse_individual, read_rows

    file_rows = read_rows(from_file, from_format) if from_file else None
    return build_rows(parse_common(common), parse_individual(individual), file_rows)


def _check_class(cls: type, tasks: List[Dict[str, Any]]) -> None:
    """With --worker MODULE:CLASS, every task must go to CLASS (footprints could pick another)."""
    from .errors import TaylorError
    from .instructions import resolve

    try:
        resolved = resolve(tasks)
    except TaylorError as exc:
        _fail(str(exc))
    for instructions in resolved:
        if instructions.worker_class is not cls and not cls.footprint_couldbe(dict(instructions))[0]:
            attrs = cls.footprint_retrieve().attr
            missing = sorted(a for a, d in attrs.items() if not d.get("optional") and a not in instructions)
            why = (f"it lacks the required {', '.join(missing)}" if missing
                   else "a value is not one it allows (see 'taylor workers')")
            _fail(f"task {instructions.name!r} does not fit {cls.__qualname__}: {why}")
        if instructions.worker_class is not cls:
            _fail(f"task {instructions.name!r} fits {instructions.worker_class.__qualname__} better than "
                  f"{cls.__qualname__} (footprints chooses by instructions); give an instruction only "
                  f"{cls.__qualname__} accepts")


def _groups(tasks: List[Dict[str, Any]]) -> List[Dict[str, List[Any]]]:
    """Consecutive tasks with the same keys, as ``individual`` columns for Boss.set_instructions."""
    groups: List[Dict[str, List[Any]]] = []
    keys = None
    for task in tasks:
        if tuple(task) != keys:
            keys = tuple(task)
            groups.append({k: [] for k in keys})
        for key, value in task.items():
            groups[-1][key].append(value)
    return groups


def _raise_interrupted(signum: int, frame: Any) -> None:
    from .errors import Interrupted

    raise Interrupted(f"received {signal.Signals(signum).name}", signum=signum)


def _run_batch(tasks: List[Dict[str, Any]], originals: Dict[str, Dict[str, Any]], scheduler: Any, *,
               keep_going: bool, timeout: Optional[float], verbose: bool, report_path: Optional[str],
               journal_path: Optional[str], append: bool, skipped: int, progress: bool) -> int:
    """Run the tasks, journal and show them as they finish, write the report; return the exit code."""
    from .boss import Boss
    from .errors import BossDiedError, Interrupted, TaylorError
    from .journal import Journal
    from .report import Report

    logger = logging.getLogger("taylor")
    level = logger.level
    limits, limits_level = logging.getLogger("taylor.limits"), logging.getLogger("taylor.limits").level
    if not verbose:  # the summary below says what failed; the boss's log would say it twice
        logger.setLevel(logging.CRITICAL)
        limits.setLevel(logging.WARNING)  # but no summary says what held the run back (descriptors...)
    journal: Optional[Journal] = None
    bar = Progress(len(tasks), progress)
    started = time.monotonic()
    interrupted: Optional[int] = None
    error: Optional[BaseException] = None
    report: Optional[Report] = None
    boss: Optional[Boss] = None

    def record(entry: Dict[str, Any]) -> None:
        # A signal now would cut the journal line short: hold it until the line is written.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            if journal is not None:
                journal.write(entry, originals.get(str(entry["name"]), entry.get("instructions", {})))
            bar.count(entry["status"])
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    previous_int = signal.getsignal(signal.SIGINT)
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        try:
            if tasks:
                boss = Boss(scheduler=scheduler, on_error="continue" if keep_going else "abort",
                            timeout=timeout, verbose=verbose)
                try:
                    for group in _groups(tasks):
                        boss.set_instructions({}, group)
                    # Opened once the input is known good: a bad input leaves an old journal as it was.
                    journal = Journal(journal_path, append=append) if journal_path else None
                except (TaylorError, OSError) as exc:
                    boss.close()
                    if isinstance(exc, OSError):
                        _fail(f"cannot write the journal {journal_path}: {exc.strerror or exc}")
                    _fail(str(exc))
                boss.make_them_work()
                boss.end()
                bar.draw(force=True)
                while not boss.ended:
                    for entry in boss.wait_for_entries(bar.interval if bar.enabled else None):
                        record(entry)
                    if bar.enabled and not boss.ended and time.monotonic() - bar.asked >= bar.interval:
                        _refresh_running(boss, bar)
                    bar.draw()
                for entry in boss.wait_for_entries(0):
                    record(entry)
                try:
                    report = boss.wait_till_finished()  # the run has ended: this only reads the outcome
                except BaseException as exc:  # noqa: BLE001 - a worker's own exception ends the run
                    if _is_signal(exc):
                        raise
                    error = exc
                    report = getattr(exc, "report", None)
            else:
                try:
                    if journal_path:
                        Journal(journal_path, append=append).close()
                except OSError as exc:
                    _fail(f"cannot write the journal {journal_path}: {exc.strerror or exc}")
                report = Report(workers_report=[], status="finished",
                                counts=dict(done=0, failed=0, stopped=0, running=0, pending=0))
        except (KeyboardInterrupt, Interrupted) as exc:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the batch system's second notice: we are on it
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            interrupted = getattr(exc, "signum", None) or signal.SIGINT
            report = _drain(boss, record, getattr(exc, "report", None))
    finally:
        bar.close()
        if journal is not None:
            journal.close()
        if boss is not None:
            boss.close()
        signal.signal(signal.SIGTERM, previous_term if previous_term is not None else signal.SIG_DFL)
        signal.signal(signal.SIGINT, previous_int if previous_int is not None else signal.SIG_DFL)
        logger.setLevel(level)
        limits.setLevel(limits_level)

    if report is None:
        report = Report(workers_report=[], status="failed")
    if skipped:
        report["skipped_as_done"] = skipped
    if error is not None and "error" not in report:
        report["error"] = error
    if report_path:
        _write_report(report, report_path)
    _summary(report, time.monotonic() - started, interrupted, error, skipped)
    if interrupted is not None:
        return 128 + int(interrupted)
    if isinstance(error, BossDiedError):
        return EXIT_FAILED
    return EXIT_OK if report.ok and error is None else EXIT_FAILED


def _is_signal(exc: BaseException) -> bool:
    """True for SIGINT/SIGTERM received here; False for a worker's failure, even a KeyboardInterrupt or
    SystemExit raised in a task (the boss hands those back with the run's ``report``)."""
    from .errors import Interrupted

    return isinstance(exc, (KeyboardInterrupt, Interrupted)) and getattr(exc, "report", None) is None


def _refresh_running(boss: Any, bar: Progress) -> None:
    """Ask the boss how many tasks run now (one round trip; only for the progress line)."""
    bar.asked = time.monotonic()
    try:
        interim = boss.get_report(interim=True)
    except BaseException as exc:  # noqa: BLE001 - the run ended meanwhile: the main loop will see it
        if _is_signal(exc):
            raise
        return
    if interim is not None:
        bar.running = interim.get("counts", {}).get("running")


def _drain(boss: Any, record: Any, report: Any) -> Any:
    """After SIGTERM/SIGINT: stop every task, record what finished, return the final report."""
    if boss is None:
        return report
    boss.stop_them_working()
    try:
        for entry in boss.entries():
            record(entry)
        return boss.wait_till_finished()
    except BaseException as exc:  # noqa: BLE001 - whatever ended the run, keep its report
        return getattr(exc, "report", None) or report


def _write_report(report: Any, path: str) -> None:
    import json

    from .journal import error_details
    from .report import to_jsonable

    data = report.to_jsonable()
    for raw, entry in zip(report.workers, data.get("workers_report", [])):
        if isinstance(raw.get("report"), BaseException) and isinstance(entry.get("report"), dict):
            entry["report"].update(to_jsonable(error_details(raw["report"])))
    text = json.dumps(data, indent=1) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except OSError as exc:
        click.echo(f"taylor: could not write the report to {path}: {exc}", err=True)


def _summary(report: Any, elapsed: float, interrupted: Optional[int], error: Optional[BaseException],
             skipped: int) -> None:
    counts: Dict[str, int] = {}
    for entry in report.workers:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    pending = len(report.get("pending") or ())
    finished = sum(counts.values())
    rate = f" ({finished / elapsed:.1f} tasks/s)" if elapsed > 0 and finished else ""
    parts = [f"{counts.get(k, 0)} {k}" for k in ("done", "failed", "stopped")]
    parts.append(f"{pending} not started")
    if skipped:
        parts.append(f"{skipped} skipped as done before")
    lines = [f"taylor: {', '.join(parts)} in {elapsed:.2f} s{rate}"]
    failures = [e for e in report.workers if e["status"] == "failed"]
    for entry in failures[:5]:
        lines.append(f"  {entry['name']}: {_one_line(entry['report'])}")
    if len(failures) > 5:
        lines.append(f"  ... and {len(failures) - 5} more failures (see --report or --journal)")
    if interrupted is not None:
        lines.append(f"taylor: stopped by {signal.Signals(interrupted).name}: the running tasks were terminated")
    elif error is not None and not failures:
        lines.append(f"taylor: the run failed: {_one_line(error)}")
    elif failures and report.get("status") == "failed":
        lines.append("taylor: stopped at the first failure (use --keep-going to run every task)")
    click.echo("\n".join(lines), err=True)


def _one_line(value: Any) -> str:
    text = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


# ------------------------------------------------------------ introspection
@main.command(context_settings=CONTEXT)
@click.argument("modules", nargs=-1, metavar="[MODULE ...]")
def workers(modules: Sequence[str]) -> None:
    """List the Worker classes footprints can choose from, with their attributes.

    The built-in command worker (what --command runs) is always listed; each
    MODULE (a dotted name or a .py file) is imported first, so that the
    classes it defines are listed too. Each attribute shows its type, its
    default (or "required"), its allowed values and its description.

    Example: taylor workers mypackage.workers
    """
    from . import command  # noqa: F401 - the built-in command worker
    from .instructions import worker_classes

    for module in modules:
        import_module(module)
    for cls in sorted(worker_classes(), key=lambda c: (c.__module__, c.__qualname__)):
        _describe_class(cls, skip=_BASE_WORKER_ATTRS)
    click.echo(f"Every worker also takes: {', '.join(sorted(_BASE_WORKER_ATTRS))} (see the Worker class).")


_BASE_WORKER_ATTRS = frozenset({"name", "memory", "expected_time", "timeout", "scheduler_ticket",
                                "scheduler_hooks"})


def _describe_class(cls: type, skip: frozenset = frozenset()) -> None:
    footprint = cls.footprint_retrieve()
    info = footprint.info or ""
    if info.startswith("Abstract") and not cls.footprint_abstract():  # inherited: the docstring says more
        info = (cls.__doc__ or "").strip().split("\n")[0]
    click.echo(f"{cls.__module__}:{cls.__qualname__}  {info}".rstrip())
    for attr, desc in sorted(footprint.attr.items()):
        if attr in skip:
            continue
        kind = getattr(desc.get("type"), "__name__", "str") if desc.get("type") else "str"
        if desc.get("optional"):
            default = f"default {desc.get('default')!r}"
        else:
            default = "required"
        values = f", one of {sorted(map(str, desc['values']))}" if desc.get("values") else ""
        click.echo(f"    {attr:<18} {kind}, {default}{values}")
        if desc.get("info"):
            click.echo(f"    {'':<18} {desc['info']}")
    click.echo("")


@main.command(context_settings=CONTEXT)
def schedulers() -> None:
    """List the schedulers, their parameters, and what the defaults resolve to here.

    The figures are those of this job, not of the whole node: the CPUs this
    process may use and the memory it may take, each with where it came from
    (CPU affinity, cgroup limits, the batch system's allocation...).

    Example: taylor schedulers
    """
    import footprints

    from . import schedulers as _  # noqa: F401 - registers the schedulers
    from .schedulers import host

    for cls in sorted(footprints.collectors.get(tag="scheduler").items(),
                      key=lambda c: (c.__module__, c.__qualname__)):
        _describe_class(cls, skip=frozenset({"identity"}))
    click.echo("On this host / in this job:")
    for key, value in host.describe().items():
        figure, source = value if isinstance(value, tuple) and len(value) == 2 else (value, "")
        if isinstance(figure, float):
            figure = f"{figure:.0f}"
        click.echo(f"    {key:<18} {figure}" + (f"  ({source})" if source else ""))
    cpus = host.describe().get("cpus", (None,))[0]
    click.echo(f"So 'taylor run -j 0' (the default) runs at most {cpus} tasks at once.")
    if scheduler_classes(dict(limit="memory")):
        memory = footprints.proxy.scheduler(limit="memory")
        source = getattr(memory, "memory_source", "")
        click.echo(f"And without --max-memory, memory schedulers keep the tasks' declared memory under "
                   f"{memory.max_memory:.0f} MiB" + (f" ({source})." if source else "."))
