"""The ``taylor`` command line: batches from the shell and inside batch-job scripts.

``taylor run`` runs one batch to the end, of a Python Worker class or of a
shell command per instruction set, with GNU parallel's habits (``:::``
input, replacement strings, grouped output, ``--halt``, ``--retries``);
``taylor status`` shows a batch from its journal; ``taylor workers`` and
``taylor schedulers`` say what can be chosen.  Exit codes: 0 all succeeded, 1 a task
failed, 2 usage or input error, 130 SIGINT, 143 SIGTERM.

The top of the layering: it may import any module of taylor, and none imports it but ``__main__``.
It drives runs through the public Boss API only, never the boss process (:mod:`taylor.bossprocess`)
nor the boss loop (:mod:`taylor.engine`).
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
task; all -i lists have the same length), --from (a file: JSON list of
mappings or {"common": ..., "individual": ...}, YAML, JSON lines or CSV with
a header, by extension; any other file, and "-" (stdin), is one value per
line, {1}) or, as in GNU parallel, ::: groups after the command. Values are
passed as written: "1.10" stays 1.10; JSON and YAML values appear as JSON
text (true, null). A Worker class converts them by its declared types.

\b
With --command (or a COMMAND after the options), each task runs the
template through /bin/sh, every {key} replaced by that task's value,
shell-quoted (a value can never inject shell code). GNU parallel's
replacement strings work: {} (all the values), {1} {2} (::: groups), {.}
(no extension), {/} (basename), {//} (dirname), {/.}, {#} (task number),
{%} (slot, 1 to -j), and the same modifiers on keys ({file/.}). A COMMAND
without any {...} gets " {}" appended. Options come before COMMAND: what
follows it is the command and its input. Tasks are named task-0001...
({name}); {{ and }} are literal braces.

\b
Each task's stdout goes to taylor's stdout and its stderr to stderr, a
task's output whole when it ends (--line-buffer: line by line; -k: in input
order; --tag: each line prefixed with the task's values; --quiet: none).

\b
Exit codes: 0 all tasks succeeded (or no input, with a warning); 1 a task
failed (or was stopped, or never started); 2 usage or input error, with a
one-line reason; 130 on SIGINT; 143 on SIGTERM, after stopping the tasks and
every program they started and writing the journal and the report.

\b
Examples:
  taylor run gzip -k ::: a.txt b.txt c.txt
  taylor run -j 50% --tag 'convert {} {.}.png' ::: *.jpg
  ls *.log | taylor run -k 'wc -l {}'
  taylor run --command 'convert {src} {dst}' --from jobs.csv --journal run.jsonl --resume
  taylor run --worker mypackage.workers:Simulation --from cases.yaml --max-memory 64000 --report out.json
"""

#: Instruction keys taylor run sets on command tasks itself.
RESERVED = frozenset({"command", "logdir", "outdir", "live", "taylor_seq"})


@main.command(context_settings=dict(CONTEXT, allow_interspersed_args=False), help=RUN_HELP, no_args_is_help=True)
@click.argument("command_line", nargs=-1, metavar="[COMMAND [::: VALUES...] [:::+ VALUES...] [:::: FILE]]")
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
              help="Read instruction sets from FILE (.json, .yaml, .jsonl, .csv; else one value per line; "
                   "'-' is stdin, one value per line).")
@click.option("--format", "from_format", type=click.Choice(["json", "yaml", "jsonl", "csv", "lines"]),
              help="Format of the --from file, whatever its name says.")
@click.option("--csv", "csv_input", is_flag=True, help="The --from file (stdin too) is CSV with a header line.")
@click.option("--jsonl", "jsonl_input", is_flag=True, help="The --from file (stdin too) is JSON lines.")
@click.option("--logdir", metavar="DIR",
              help="Keep each task's non-empty stdout and stderr in DIR/<name>.out and .err (created if missing).")
@click.option("--line-buffer", "--lb", "line_buffer", is_flag=True,
              help="Print whole lines as tasks write them (lines of tasks may alternate) instead of a task's "
                   "output whole when it ends.")
@click.option("--tag", is_flag=True, help="Prefix each output line with the task's values (space-separated) and a tab.")
@click.option("-k", "--keep-order", is_flag=True, help="Print the tasks' outputs in input order.")
@click.option("-q", "--quiet", is_flag=True, help="Print no task output (--logdir and --report still have it).")
@click.option("-j", "--jobs", "--max-threads", "jobs", metavar="N|N%|-N|+N",
              help="Run at most N tasks at once; N% of the usable CPUs; -N: CPUs minus N; +N: CPUs plus N. "
                   "0 (the default) means the CPUs this job may use.")
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
@click.option("--bind", is_flag=True, help="Pin each task to its own CPU (with --cluster: one of its host's CPUs).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Terminate (and fail) a task that runs longer than SECONDS.")
@click.option("--retries", type=click.IntRange(min=0), default=0, metavar="N",
              help="Run a failed task again, up to N more times (the journal and report count the attempts).")
@click.option("--halt", "halt_spec", metavar="WHEN,WHY",
              help="When to stop, as GNU parallel: now|soon,fail=N|fail=P%|success=N|success=P%|done=N; now "
                   "terminates the running tasks, soon lets them finish. Default: now,fail=1.")
@click.option("--keep-going", is_flag=True,
              help="Never halt: run every task even after failures (--halt never).")
@click.option("--dry-run", is_flag=True,
              help="Print each command that would run (after --resume skips the done ones), run nothing.")
@click.option("--report", "report_path", metavar="FILE",
              help="Write the full report as JSON to FILE ('-' is stdout).")
@click.option("--journal", "journal_path", metavar="FILE",
              help="Write one JSON line per task start and end to FILE, as they happen (the file is started "
                   "afresh, unless --resume); 'taylor status FILE' reads it.")
@click.option("--resume", is_flag=True,
              help="With --journal: skip the tasks the journal records as done, run the rest, keep appending.")
@click.option("--progress/--no-progress", default=None,
              help="Show progress on stderr: a line redrawn on a terminal, a status line now and then "
                   "elsewhere (default: when stderr is a terminal).")
@click.option("--reuse", is_flag=True,
              help="With --worker: run many tasks per long-lived process (one per slot) rather than one fresh "
                   "process per task, for tasks of a millisecond; a task sees what earlier ones left in its "
                   "process (globals, cwd, environment).")
@click.option("-v", "--verbose", is_flag=True, help="Log each task's start and end.")
@click.option("--cluster", metavar="ADDRESS|SCHEDULER_FILE",
              help="Run the tasks on this Dask cluster (a scheduler address, tcp://host:8786, or the file "
                   "written by dask scheduler --scheduler-file) instead of on this host; -j 0 (the default) then "
                   "means the cluster's threads. Needs pip install 'taylor[dask]'.")
@click.option("--cluster-mode", type=click.Choice(["isolated", "in-worker"]), default="isolated",
              show_default=True,
              help="With --cluster: a fresh process per task on its host, or the Dask worker's own thread "
                   "(tiny tasks; no timeout kill, no process isolation).")
def run(command_line: Sequence[str], worker_spec: Optional[str], template: Optional[str], common: Sequence[str],
        individual: Sequence[str], from_file: Optional[str], from_format: Optional[str], csv_input: bool,
        jsonl_input: bool, logdir: Optional[str], line_buffer: bool, tag: bool, keep_order: bool, quiet: bool,
        jobs: Optional[str], max_memory: Optional[float], memory_per_task: Optional[float],
        scheduler_kind: Optional[str], measured_memory: bool, bind: bool, timeout: Optional[float], retries: int,
        halt_spec: Optional[str], keep_going: bool, dry_run: bool, report_path: Optional[str],
        journal_path: Optional[str], resume: bool, progress: Optional[bool], reuse: bool, verbose: bool,
        enforce_memory: bool = False, cluster: Optional[str] = None, cluster_mode: str = "isolated") -> None:
    from .errors import TaylorError
    from .gnu import parse_halt, parse_jobs, split_command_line

    if cluster and reuse:
        _fail("--reuse reuses processes of this host; with --cluster, use --cluster-mode in-worker for tasks "
              "of a millisecond")
    if cluster and bind and cluster_mode == "in-worker":
        _fail("--bind with --cluster pins each task process to a CPU of its host: it needs --cluster-mode isolated "
              "(the default); in-worker mode runs tasks in the Dask worker's threads, which it must not pin")
    words, groups = split_command_line(command_line)
    positional = bool(words)
    if positional:
        if template or worker_spec:
            _fail(f"give the command once: {' '.join(words)!r} after the options, or --command/--worker")
        template = " ".join(words)
    elif groups and not template and not worker_spec:
        _fail(f"{groups[0][0]} gives values to a command: write the command before it (taylor run echo ::: a b)")
    if bool(worker_spec) == bool(template):
        _fail("give exactly one of --worker MODULE[:CLASS], --command TEMPLATE or a COMMAND after the options")
    if reuse and enforce_memory:
        _fail("--reuse cannot go with --enforce-memory: a memory limit is set on a task's process and would stay "
              "for the next tasks of that process")
    if reuse and not worker_spec:
        _fail("--reuse runs the tasks of a Python Worker class (--worker MODULE[:CLASS]) in long-lived processes; "
              "a command has a process of its own anyway")
    if resume and not journal_path:
        _fail("--resume needs --journal FILE (the journal of the run to resume)")
    if timeout is not None:
        from .checks import seconds

        why = seconds(timeout, "--timeout")  # NaN passes click's range; inf and > 24.8 days too
        if why:
            _fail(why)
    if sum(map(bool, (from_format, csv_input, jsonl_input))) > 1:
        _fail("give one of --format, --csv and --jsonl")
    from_format = from_format or ("csv" if csv_input else "jsonl" if jsonl_input else None)
    if groups and from_file:
        _fail("::: groups and --from cannot be combined: give the input one way")
    if positional and not groups and not individual and not from_file:
        if sys.stdin.isatty():
            _fail("no input: give values after ::: (taylor run echo ::: a b), -i, --from FILE, or pipe lines "
                  "to stdin")
        from_file = "-"
    if line_buffer and keep_order:
        _fail("--line-buffer prints lines as they come: it cannot keep the input order (-k)")
    if sum(map(bool, (line_buffer, quiet))) > 1:
        _fail("--quiet prints no task output: --line-buffer does not apply")
    if keep_going and halt_spec:
        _fail("--keep-going means --halt never: give one of them")
    try:
        halt = parse_halt(halt_spec) if halt_spec else (None if keep_going else parse_halt("now,fail=1"))
        from .schedulers.host import usable_cpus

        max_threads = parse_jobs(jobs, usable_cpus)
    except TaylorError as exc:
        _fail(str(exc))
    if report_path and report_path != "-":
        folder = os.path.dirname(os.path.abspath(report_path))
        if not os.access(folder, os.W_OK):
            _fail(f"cannot write the report {report_path}: {folder} is not a writable directory")
    if logdir and not dry_run:
        try:
            os.makedirs(logdir, exist_ok=True)
        except OSError as exc:
            _fail(f"cannot use --logdir {logdir}: {exc.strerror or exc}")
        if not os.access(logdir, os.W_OK | os.X_OK):
            _fail(f"cannot write in --logdir {logdir}: permission denied")
    try:
        user_rows = _instruction_rows(common, individual, from_file, from_format, groups,
                                      as_written=template is not None)
    except TaylorError as exc:
        _fail(str(exc))
    if not user_rows and not from_file and not groups and not individual:
        _fail("no instruction sets: give -i KEY=V1,V2,..., --from FILE or ::: VALUES")

    # {} and --tag show the task's input values: not its name, nor what -c gives every task.
    inputs_only = {"name"} | {item.partition("=")[0].strip() for item in common}
    worker_class = None
    if template is not None:
        from .command import CommandWorker, check_template, expand_braces, template_keys

        worker_class = CommandWorker
        for row in user_rows:
            clash = RESERVED & set(row)
            if clash:
                _fail(f"instruction key {sorted(clash)[0]!r} is reserved with --command; rename it")
        try:
            if not user_rows:
                pass  # nothing to fill: an empty input is a warning, not an error
            elif positional and not template_keys(template) and not _fields(template) & {"#", "%"}:
                template += " {}"  # GNU parallel appends the values to a command that names none
            if user_rows:
                template = expand_braces(template, [k for k in user_rows[0] if k not in inputs_only])
                check_template(template, user_rows)
        except TaylorError as exc:
            _fail(str(exc))
    else:
        worker_class = load_worker(worker_spec)
        if worker_class is not None:
            _convert_booleans(worker_class, user_rows)
    scheduler = make_scheduler(scheduler_kind, max_threads, max_memory, memory_per_task, bind, measured_memory,
                               enforce_memory)

    width = max(4, len(str(len(user_rows))))
    numbered = template is not None and "#" in _fields(template)
    tasks: List[Dict[str, Any]] = []
    for index, row in enumerate(user_rows, 1):
        task = dict(row)
        task.setdefault("name", f"task-{index:0{width}d}")
        if template is not None:
            task["command"] = template
            if numbered:
                task["taylor_seq"] = index
        tasks.append(task)
    originals = {str(t["name"]): row for t, row in zip(tasks, user_rows)}
    order = {str(t["name"]): index for index, t in enumerate(tasks)}
    if template is not None:
        from .command import render

        for task in tasks:  # a format spec that does not suit a value fails here, not in a task
            try:
                render(template, task)
            except (ValueError, TypeError, TaylorError) as exc:
                _fail(f"task {task['name']!r}: cannot fill the command template {template!r}: {exc}")

    skipped = 0
    attempts: Dict[str, int] = {}
    if resume:
        from .journal import read_attempts, read_done, row_key

        try:
            done, bad = read_done(journal_path)
        except (OSError, ValueError) as exc:  # a directory, no permission, not UTF-8 (JournalError)
            _fail(str(exc) if isinstance(exc, ValueError) else
                  f"cannot read the journal {journal_path}: {exc.strerror or exc}")
        if bad:
            click.echo(f"taylor: {bad} unreadable line(s) in {journal_path} ignored (a line cut by a kill?)",
                       err=True)
        tried = read_attempts(journal_path)
        keep = [t for t, row in zip(tasks, user_rows) if row_key(row) not in done]
        attempts = {str(t["name"]): tried.get(row_key(originals[str(t["name"])]), 0) for t in keep}
        skipped = len(tasks) - len(keep)
        tasks = keep
        click.echo(f"taylor: resuming: {skipped} of {len(user_rows)} tasks already done, {len(tasks)} to run",
                   err=True)

    if worker_spec and worker_class is not None and tasks:
        _check_class(worker_class, tasks)

    if dry_run:
        _dry_run(tasks, template)
        sys.exit(EXIT_OK)
    if not user_rows:
        click.echo("taylor: warning: the input is empty: no task to run", err=True)

    tags = {name: " ".join(_tag_text(v) for k, v in row.items() if k not in inputs_only) + "\t"
            for name, row in originals.items()} if tag else None
    mode = "quiet" if quiet else "line" if line_buffer else "group"
    code = _run_batch(tasks, originals, scheduler, halt=halt, halt_spec=halt_spec, retries=retries,
                      attempts=attempts, timeout=timeout, verbose=verbose, report_path=report_path,
                      journal_path=journal_path, append=resume, skipped=skipped,
                      progress=sys.stderr.isatty() if progress is None else progress,
                      output=dict(mode=mode, order=order, tags=tags, keep_order=keep_order, logdir=logdir,
                                  command=template is not None), command=template,
                      window=_window(halt, scheduler_kind, max_threads), reuse=reuse,
                      cluster=dict(cluster=cluster, cluster_mode=cluster_mode) if cluster else {})
    sys.exit(code)


def _window(halt: Any, kind: Optional[str], max_threads: Optional[int]) -> Optional[int]:
    """How many tasks the boss may hold at once: its thread count when a --halt rule other than the
    default now,fail=1 must be met exactly (see _run_batch), else None (all at once: the fastest)."""
    if halt is None or halt == ("now", "fail", 1, None) or kind in ("memory", "laxist"):
        return None
    from .schedulers.host import usable_cpus

    return max_threads or usable_cpus()


def _fields(template: str) -> set:
    """The placeholder fields of a (well-formed) template: ``{#:03d}`` is ``#``."""
    import string

    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def _tag_text(value: Any) -> str:
    from .command import as_text

    return as_text(value)


def _instruction_rows(common: Sequence[str], individual: Sequence[str], from_file: Optional[str],
                      from_format: Optional[str], groups: Sequence[Any] = (),
                      as_written: bool = True) -> List[Dict[str, Any]]:
    from .gnu import group_rows
    from .sources import build_rows, parse_common, parse_individual, read_lines, read_rows

    if groups:
        file_rows: Optional[List[Dict[str, Any]]] = group_rows(groups, lambda p: [r["1"] for r in read_lines(p)])
    else:
        file_rows = read_rows(from_file, from_format, as_written=as_written) if from_file else None
    return build_rows(parse_common(common), parse_individual(individual), file_rows)


_TRUE, _FALSE = frozenset({"true", "yes", "on", "1"}), frozenset({"false", "no", "off", "0", ""})


def _convert_booleans(cls: type, rows: List[Dict[str, Any]]) -> None:
    """Text for the class's bool attributes as a person means it: ``false`` is False (Python's bool() of any
    non-empty text is True); the other declared types convert in footprints, as in Python."""
    attrs = cls.footprint_retrieve().attr
    flags = [name for name, desc in attrs.items() if desc.get("type") is bool]
    for row in rows:
        for name in flags:
            value = row.get(name)
            if isinstance(value, str):
                word = value.strip().lower()
                if word in _TRUE or word in _FALSE:
                    row[name] = word in _TRUE
                else:
                    _fail(f"{name}={value!r}: {cls.__qualname__}.{name} is a bool: give true or false")


def _dry_run(tasks: List[Dict[str, Any]], template: Optional[str]) -> None:
    """--dry-run: each task's command (or, for a Worker class, its instructions), one per line."""
    import json

    from .command import render
    from .report import to_jsonable

    out = sys.stdout
    for task in tasks:
        if template is not None:
            out.write(render(template, task) + "\n")
        else:
            plain = {k: v for k, v in task.items() if k != "name"}
            out.write(f"{task['name']}: {json.dumps(to_jsonable(plain), sort_keys=True)}\n")
    out.flush()


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


class _Tracker:
    """What the command line follows of a run: each task's attempts, its final entry, the halting rule.

    The boss knows workers; a task retried runs as a new worker (named
    ``<name>#<attempt>``), so entries are mapped back to the task here.
    """

    def __init__(self, tasks: List[Dict[str, Any]], retries: int, halt: Any, attempts: Dict[str, int]) -> None:
        self.tasks = {str(t["name"]): t for t in tasks}
        self.retries = retries
        self.halt = halt
        self.total = len(tasks)
        self.first = {name: attempts.get(name, 0) + 1 for name in self.tasks}
        self.worker = {name: (name, self.first[name]) for name in self.tasks}  # worker name -> (task, attempt)
        self.final: List[Dict[str, Any]] = []
        self.done = self.failed = 0
        self.halting: Any = None
        self.interrupted = False  # SIGINT/SIGTERM: record what ends, retry nothing
        self.seen_running: set = set()

    def resolve(self, worker: str) -> tuple:
        return self.worker.get(worker, (worker, 1))

    def retry(self, name: str, attempt: int, status: str) -> bool:
        return (status == "failed" and self.halting is None and not self.interrupted
                and attempt - self.first[name] < self.retries)

    def again(self, name: str, attempt: int) -> Dict[str, List[Any]]:
        """The instructions of the next attempt of task ``name`` (a new worker, for Boss.set_instructions)."""
        worker = f"{name}#{attempt}"
        self.worker[worker] = (name, attempt)
        task = dict(self.tasks[name], name=worker)
        return {k: [v] for k, v in task.items()}

    def ended(self, entry: Dict[str, Any]) -> None:
        self.final.append(entry)
        if entry["status"] == "done":
            self.done += 1
        elif entry["status"] == "failed":
            self.failed += 1
        if self.halt is not None and self.halting is None and self.halt.reached(self.done, self.failed, self.total):
            self.halting = self.halt

    @property
    def all_final(self) -> bool:
        return len(self.final) >= self.total


def _run_batch(tasks: List[Dict[str, Any]], originals: Dict[str, Dict[str, Any]], scheduler: Any, *,
               halt: Any, halt_spec: Optional[str], retries: int, attempts: Dict[str, int],
               timeout: Optional[float], verbose: bool, report_path: Optional[str], journal_path: Optional[str],
               append: bool, skipped: int, progress: bool, output: Dict[str, Any],
               command: Optional[str] = None, window: Optional[int] = None, reuse: bool = False,
               cluster: Optional[Dict[str, Any]] = None) -> int:
    """Run the tasks, print their output, journal and show them as they finish, write the report; return
    the exit code.

    With ``window``, the boss is given that many tasks first and one more as each ends, so that a
    ``--halt soon`` rule is met exactly (the boss has no task at hand to start in the slot a failure
    freed); otherwise it has them all at once, and a halt reaches it within milliseconds.
    """
    import shutil
    import tempfile

    from .boss import Boss
    from .errors import BossDiedError, Interrupted, TaylorError, WorkerError
    from .interrupts import is_signal, raise_interrupted
    from .journal import Journal
    from .output import OutputPrinter, take_output
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
    tracker = _Tracker(tasks, retries, halt, attempts)
    mode, logdir = output["mode"], output["logdir"]
    # taylor's own folder for output files: to print them, or (--quiet, a Worker class, no --logdir) to drop them.
    needed = mode != "quiet" or not (output["command"] or logdir)
    private = tempfile.mkdtemp(prefix="taylor-output-") if needed and tasks else ""
    # Where a Worker class's processes write (see worker._redirect_output): taylor's own folder, to be
    # printed, or straight into --logdir when nothing is printed.
    worker_dir = (private or logdir) if not output["command"] and tasks else None
    printer = OutputPrinter(mode, private, output["order"], output["tags"], output["keep_order"],
                            logdir if mode == "line" or worker_dir else None, clear=bar.clear)
    # A task the boss terminates on --timeout sends no report: with named files (not the default: they
    # cost a little per task), what it printed before is still there to be shown.
    killable = output["command"] and mode == "group" and timeout is not None
    if output["command"]:
        for task in tasks:
            if private:
                task["outdir"] = private
            if mode == "line" or killable:
                task["live"] = True
            if logdir and mode != "line":
                task["logdir"] = logdir
    abort_in_boss = retries == 0 and halt is not None and halt == ("now", "fail", 1, None)
    stopping = False
    queue = list(reversed(tasks))  # what the boss has not been given yet, next last

    def feed(count: int) -> None:
        if boss is None or tracker.halting is not None or tracker.interrupted:
            return
        given = [queue.pop() for _ in range(min(count, len(queue)))]
        for group in _groups(given):
            boss.set_instructions({}, group)

    def record(entry: Dict[str, Any]) -> None:
        nonlocal stopping
        worker = str(entry["name"])
        name, attempt = tracker.resolve(worker)
        pieces = take_output(entry.get("report"))
        if worker_dir and mode != "line":
            pieces = _worker_output(worker_dir, worker)
        elif killable and not pieces and isinstance(entry.get("report"), WorkerError):
            pieces = _worker_output(logdir or private, worker)
        again = tracker.retry(name, attempt, entry["status"])
        entry["name"] = name
        entry["attempts"] = attempt
        # A signal now would cut the journal line short: hold it until the line is written.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            if journal is not None:
                journal.write(entry, originals.get(name, entry.get("instructions", {})), attempt, again)
            if not again:
                tracker.ended(entry)
                bar.count(entry["status"])
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if again:
            printer.discard(name, pieces, worker)
            if boss is not None:
                boss.set_instructions({}, tracker.again(name, attempt + 1))
            return
        if window:
            feed(1)
        if logdir and mode != "line" and attempt > tracker.first[name]:
            _rename_logs(logdir, f"{name}#{attempt}", name)
        if pieces or entry["status"] != "stopped":
            printer.finished(name, pieces, worker)
        else:
            printer.skip(name)
        if tracker.halting is not None and not stopping and boss is not None and not abort_in_boss:
            stopping = True
            if tracker.halting.when == "now":
                boss.stop_them_working()
            else:
                boss.send_signal("STOP")

    previous_int = signal.getsignal(signal.SIGINT)
    previous_term = signal.signal(signal.SIGTERM, raise_interrupted)
    if worker_dir:
        os.environ["TAYLOR_OUTPUT_DIR"] = os.path.abspath(worker_dir)
    try:
        try:
            if tasks:
                boss = Boss(scheduler=scheduler, on_error="abort" if abort_in_boss else "continue",
                            timeout=timeout, verbose=verbose, reuse=reuse, **(cluster or {}))
                try:
                    feed(window or len(tasks))
                    # Opened once the input is known good: a bad input leaves an old journal as it was.
                    journal = Journal(journal_path, append=append) if journal_path else None
                    if journal is not None:
                        journal.begin(len(tasks) + skipped, command)
                except (TaylorError, OSError) as exc:
                    boss.close()
                    if isinstance(exc, OSError):
                        _fail(f"cannot write the journal {journal_path}: {exc.strerror or exc}")
                    _fail(str(exc))
                boss.make_them_work()
                told_end = False
                if not retries and not queue:
                    boss.end()
                    told_end = True
                bar.draw(force=True)
                watch = bar.enabled or journal is not None
                wait = 0.05 if mode == "line" else bar.interval if watch else None
                while not boss.ended:
                    for entry in boss.wait_for_entries(wait):
                        record(entry)
                    if mode == "line":
                        printer.poll()
                    if not told_end and not boss.ended and (
                            stopping or (not queue and (not retries or tracker.all_final))):
                        boss.end()
                        told_end = True
                    if watch and not boss.ended and time.monotonic() - bar.asked >= bar.interval:
                        _refresh_running(boss, bar, tracker, journal)
                    bar.draw()
                for entry in boss.wait_for_entries(0):
                    record(entry)
                try:
                    report = boss.wait_till_finished()  # the run has ended: this only reads the outcome
                except BaseException as exc:  # noqa: BLE001 - a worker's own exception ends the run
                    if is_signal(exc):
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
            tracker.interrupted = True
            report = _drain(boss, record, getattr(exc, "report", None))
    finally:
        try:
            printer.close()
        except OSError:
            pass
        bar.close()
        if journal is not None:
            journal.close()
        if boss is not None:
            boss.close()
        if private:
            shutil.rmtree(private, ignore_errors=True)
        if worker_dir:
            os.environ.pop("TAYLOR_OUTPUT_DIR", None)
        signal.signal(signal.SIGTERM, previous_term if previous_term is not None else signal.SIG_DFL)
        signal.signal(signal.SIGINT, previous_int if previous_int is not None else signal.SIG_DFL)
        logger.setLevel(level)
        limits.setLevel(limits_level)

    if report is None:
        report = Report(workers_report=[], status="failed")
    if tasks:
        # One entry per task (its last attempt); what never started is named as the task.
        report["workers_report"] = tracker.final
        for item in report.get("pending") or ():
            if isinstance(item, dict) and "name" in item:
                item["name"] = tracker.resolve(str(item["name"]))[0]
        if queue:  # never given to the boss (a halt came first)
            report["pending"] = list(report.get("pending") or ()) + [dict(t) for t in reversed(queue)]
        for item in [e.get("instructions") for e in tracker.final] + list(report.get("pending") or ()):
            if isinstance(item, dict):  # taylor's own plumbing, not the user's instructions
                for key in ("outdir", "live"):
                    item.pop(key, None)
    if skipped:
        report["skipped_as_done"] = skipped
    if error is not None and "error" not in report:
        report["error"] = error
    if report_path:
        _write_report(report, report_path)
    _summary(report, time.monotonic() - started, interrupted, error, skipped, tracker, halt_spec)
    if interrupted is not None:
        return 128 + int(interrupted)
    if isinstance(error, BossDiedError):
        return EXIT_FAILED
    if tracker.halting is not None and error is None and (
            tracker.halting.why == "success" or (tracker.halting.why == "done" and not tracker.failed)):
        return EXIT_OK  # halted as asked, on success (GNU parallel too exits 0 then)
    counts = {e["status"] for e in report.workers}
    complete = counts <= {"done"} and not report.get("pending") and len(report.workers) == len(tasks)
    return EXIT_OK if complete and error is None else EXIT_FAILED


def _worker_output(folder: str, worker: str) -> Dict[str, Any]:
    """The output files a Worker class's process left in ``folder``: the non-empty ones (empty ones removed)."""
    pieces: Dict[str, Any] = {}
    for stream, ext in (("stdout", ".out"), ("stderr", ".err")):
        path = os.path.join(folder, worker.replace(os.sep, "_") + ext)
        try:
            if os.path.getsize(path):
                pieces[stream] = (None, path)
            else:
                os.unlink(path)
        except OSError:
            pass
    return pieces


def _rename_logs(logdir: str, worker: str, name: str) -> None:
    """The --logdir files of a task's last attempt take the task's name (earlier attempts' are replaced)."""
    for ext in (".out", ".err"):
        source = os.path.join(logdir, worker.replace(os.sep, "_") + ext)
        target = os.path.join(logdir, name.replace(os.sep, "_") + ext)
        try:
            if os.path.exists(source):
                os.replace(source, target)
            elif os.path.exists(target):
                os.unlink(target)
        except OSError:
            pass


def _refresh_running(boss: Any, bar: Progress, tracker: Optional[_Tracker] = None, journal: Any = None) -> None:
    """Ask the boss which tasks run now (one round trip): for the progress line, and the journal's starts."""
    from .batch import refresh_running

    interim = refresh_running(boss, bar)
    if interim is None:
        return
    if journal is not None and tracker is not None:
        for worker in interim.get("running") or ():
            if worker not in tracker.seen_running:
                tracker.seen_running.add(worker)
                name, attempt = tracker.resolve(str(worker))
                held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
                try:
                    journal.started(name, attempt)
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, held)


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
             skipped: int, tracker: Optional[_Tracker] = None, halt_spec: Optional[str] = None) -> None:
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
    retried = sum(1 for e in report.workers if (e.get("attempts") or 1) > 1)
    if tracker is not None and tracker.retries and retried:
        parts.append(f"{retried} retried")
    lines = [f"taylor: {', '.join(parts)} in {elapsed:.2f} s{rate}"]
    failures = [e for e in report.workers if e["status"] == "failed"]
    for entry in failures[:5]:
        tries = f" (after {entry['attempts']} attempts)" if (entry.get("attempts") or 1) > 1 else ""
        lines.append(f"  {entry['name']}: {_one_line(entry['report'])}{tries}")
    if len(failures) > 5:
        lines.append(f"  ... and {len(failures) - 5} more failures (see --report or --journal)")
    halting = tracker.halting if tracker is not None else None
    if interrupted is not None:
        lines.append(f"taylor: stopped by {signal.Signals(interrupted).name}: the running tasks were terminated")
    elif error is not None and not failures:
        lines.append(f"taylor: the run failed: {_one_line(error)}")
    elif halting is not None and halt_spec:
        what = "the running tasks were terminated" if halting.when == "now" else "the running tasks finished"
        lines.append(f"taylor: halted as --halt {halt_spec} asks: {what}, no other task was started")
    elif failures and (report.get("status") == "failed" or halting is not None):
        lines.append("taylor: stopped at the first failure (use --keep-going to run every task)")
    click.echo("\n".join(lines), err=True)


def _one_line(value: Any) -> str:
    text = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


# ------------------------------------------------------------------- status
@main.command(context_settings=CONTEXT)
@click.argument("journal_path", metavar="JOURNAL")
@click.option("--watch", "watch", is_flag=False, flag_value=2.0, default=None, type=click.FloatRange(min=0.1),
              metavar="[SECONDS]", help="Refresh every SECONDS (2 when not given) until the run ends.")
def status(journal_path: str, watch: Optional[float]) -> None:
    """Show a batch from its --journal, while it runs or after: counts, rate, ETA, running tasks and their age,
    the slowest tasks, the failed ones with their last output lines.

    Example: taylor status run.jsonl --watch
    """
    from .status import read_status

    terminal = sys.stdout.isatty()
    while True:
        try:
            state = read_status(journal_path)
        except OSError as exc:
            _fail(f"cannot read the journal {journal_path}: {exc.strerror or exc}")
        text = "\n".join(state.lines())
        if watch and terminal:
            click.echo("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S ") + journal_path, nl=True)
        click.echo(text)
        if not watch or state.alive is not True:
            return
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return
        if not terminal:
            click.echo("")


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
@click.option("--cluster", metavar="ADDRESS|SCHEDULER_FILE",
              help="Describe this Dask cluster (its workers, threads, memory, hosts) instead of this host.")
def schedulers(cluster: Optional[str] = None) -> None:
    """List the schedulers, their parameters, and what the defaults resolve to here.

    The figures are those of this job, not of the whole node: the CPUs this
    process may use and the memory it may take, each with where it came from
    (CPU affinity, cgroup limits, the batch system's allocation...).

    With --cluster, the figures are the Dask cluster's, which a run with
    --cluster uses instead.

    Example: taylor schedulers --cluster scheduler.json
    """
    import footprints

    if cluster:
        _describe_cluster(cluster)
        return

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


def _describe_cluster(cluster: str) -> None:
    """What ``taylor run --cluster`` would use: the Dask cluster's figures, each with its source."""
    from .cluster.connection import ClusterError

    try:
        from .cluster.capacity import ClusterCapacity
        from .cluster.launcher import describe_cluster

        described = describe_cluster(cluster)
    except ClusterError as exc:
        _fail(str(exc))
    except ImportError as exc:
        _fail(f"--cluster needs Dask distributed: pip install 'taylor[dask]' ({exc})")
    click.echo("On the Dask cluster:")
    for key, (figure, source) in described.items():
        if isinstance(figure, float):
            figure = "unlimited" if figure == float("inf") else f"{figure:.0f}"
        elif isinstance(figure, list):
            figure = ", ".join(map(str, figure))
        click.echo(f"    {key:<18} {figure}  ({source})")
    cpus = described["cpus"][0]
    ahead = ClusterCapacity().ahead
    click.echo(f"So 'taylor run --cluster {cluster}' (-j 0, the default) runs {cpus} tasks at once, one per Dask "
               f"worker thread, with up to {ahead} more per thread queued on each worker.")
