"""taylor's command line against GNU parallel and xargs -P: many trivial commands, a few at a time.

Runs ``--tasks`` commands (``echo N`` by default: each prints its number)
``--jobs`` at a time with each tool, tools alternating round after round so
that a busy machine slows them alike, and prints each tool's median rate,
its range and the ratios.  Every tool reads the numbers on its stdin, runs
the command with the number appended, as GNU parallel does, and is timed
from its own start to its end (interpreter start-up included).  The output
is shown: each tool prints every task's output on its stdout (read here
through a pipe, and checked to hold one line per task):

* taylor:       seq N | taylor run -j 2 --no-progress echo
* GNU parallel: seq N | parallel --will-cite -j 2 echo
* xargs:        seq N | xargs -P 2 -n 1 echo

Target (issue 13): taylor at least 2.5x GNU parallel, output shown.

    python benchmarks/cli_vs_parallel.py                 # 1000 tasks, 2 at a time, 3 rounds
    python benchmarks/cli_vs_parallel.py --tasks 200 --rounds 1 --command 'sleep 0.01; echo'
    python benchmarks/cli_vs_parallel.py --command true  # no output at all
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv, stdin_text, lines: int, env=None) -> tuple:
    """(wall seconds, CPU seconds of the tool and everything it started); the tool must print ``lines`` lines
    (``lines`` < 0: no check)."""
    cpu = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(argv, input=stdin_text, text=True, env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    if lines >= 0 and done.stdout.count("\n") != lines:
        raise SystemExit(f"{argv[0]} printed {done.stdout.count(chr(10))} lines, not {lines}")
    return elapsed, _children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1000, help="commands per run (default 1000)")
    parser.add_argument("--jobs", type=int, default=2, help="commands at once (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each tool, alternating (default 3)")
    parser.add_argument("--command", default="echo",
                        help="the command each task runs, its number appended (default: echo, one line per task)")
    parser.add_argument("--quiet-too", action="store_true",
                        help="also time taylor run --quiet (no output shown), to see what showing it costs")
    args = parser.parse_args()

    lines = "".join(f"{i}\n" for i in range(1, args.tasks + 1))
    expect = args.tasks if args.command.split()[-1] == "echo" else -1
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    tools = {
        "taylor": lambda: timed([sys.executable, "-m", "taylor", "run", "-j", str(args.jobs), "--no-progress",
                                 args.command], lines, expect, env=env),
        "xargs -P": lambda: timed(["sh", "-c", f"xargs -P {args.jobs} -n 1 sh -c '{args.command} \"$0\"'"],
                                  lines, expect) if ";" in args.command else
        timed(["xargs", "-P", str(args.jobs), "-n", "1", *args.command.split()], lines, expect),
    }
    if args.quiet_too:
        tools["taylor -q"] = lambda: timed([sys.executable, "-m", "taylor", "run", "-q", "-j", str(args.jobs),
                                            "--no-progress", args.command], lines, -1, env=env)
    parallel = shutil.which("parallel")
    if parallel:
        tools["GNU parallel"] = lambda: timed([parallel, "--will-cite", "-j", str(args.jobs), args.command], lines,
                                              expect)
    else:
        print("GNU parallel is not installed, so it is left out. Install it to compare:\n"
              "    apt-get install parallel      (Debian, Ubuntu)\n"
              "    dnf install parallel          (Fedora, RHEL with EPEL)\n"
              "    brew install parallel         (macOS)\n")

    times = {name: [] for name in tools}
    cpus = {name: [] for name in tools}
    for round_ in range(args.rounds):
        for name, run in tools.items():
            wall, cpu = run()
            times[name].append(wall)
            cpus[name].append(cpu)
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()),
              flush=True)

    rates = {name: args.tasks / statistics.median(t) for name, t in times.items()}
    print(f"\n{args.tasks} x {args.command!r} N, output shown, {args.jobs} at a time, median of {args.rounds} "
          f"(on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}):")
    for name, rate in rates.items():
        cpu_ms = statistics.median(cpus[name]) / args.tasks * 1000
        low, high = args.tasks / max(times[name]), args.tasks / min(times[name])
        print(f"  {name:<13} {rate:8.1f} tasks/s (range {low:.1f} to {high:.1f})   {cpu_ms:5.2f} ms of CPU per task "
              "(all its processes)")
    for other in ("GNU parallel", "xargs -P"):
        if other in rates:
            ratios = [a / b for a, b in zip(times[other], times["taylor"])]  # round by round
            print(f"  taylor / {other}: {statistics.median(ratios):.2f}x, median of the rounds "
                  f"({', '.join(f'{r:.2f}x' for r in ratios)}); of the median rates: "
                  f"{rates['taylor'] / rates[other]:.2f}x")


if __name__ == "__main__":
    main()
