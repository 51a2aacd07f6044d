"""taylor's command line against GNU parallel and xargs -P: many trivial commands, a few at a time.

Runs ``--tasks`` commands (``true`` by default) ``--jobs`` at a time with
each tool, tools alternating round after round so that a busy machine slows
them alike, and prints each tool's median rate and the ratios.  Every tool
is timed from its own start to its end (interpreter start-up included), and
runs each command through /bin/sh or an exec, as it normally would:

* taylor:       taylor run --command true -i n=1,...,N -j 2 --no-progress
* GNU parallel: seq N | parallel --will-cite -j 2 true
* xargs:        seq N | xargs -P 2 -n 1 true

Target (issue 5): taylor at least 1.5x GNU parallel.

    python benchmarks/cli_vs_parallel.py                 # 1000 tasks, 2 at a time, 3 rounds
    python benchmarks/cli_vs_parallel.py --tasks 200 --rounds 1 --command 'sleep 0.01'
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


def timed(argv, stdin_text=None, env=None) -> tuple:
    """(wall seconds, CPU seconds of the tool and everything it started)."""
    cpu = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(argv, input=stdin_text, text=True, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return elapsed, _children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1000, help="commands per run (default 1000)")
    parser.add_argument("--jobs", type=int, default=2, help="commands at once (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each tool, alternating (default 3)")
    parser.add_argument("--command", default="true", help="the command each task runs (default: true)")
    args = parser.parse_args()

    numbers = [str(i) for i in range(1, args.tasks + 1)]
    lines = "\n".join(numbers) + "\n"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    tools = {
        "taylor": lambda: timed([sys.executable, "-m", "taylor", "run", "--command", args.command, "-i",
                                 "n=" + ",".join(numbers), "-j", str(args.jobs), "--no-progress"], env=env),
        "xargs -P": lambda: timed(["xargs", "-P", str(args.jobs), "-n", "1", *args.command.split()], lines),
    }
    parallel = shutil.which("parallel")
    if parallel:
        tools["GNU parallel"] = lambda: timed([parallel, "--will-cite", "-j", str(args.jobs), args.command], lines)
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
    print(f"\n{args.tasks} x {args.command!r}, {args.jobs} at a time, median of {args.rounds} "
          f"(on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}):")
    for name, rate in rates.items():
        cpu_ms = statistics.median(cpus[name]) / args.tasks * 1000
        print(f"  {name:<13} {rate:8.1f} tasks/s   {cpu_ms:5.2f} ms of CPU per task (all its processes)")
    for other in ("GNU parallel", "xargs -P"):
        if other in rates:
            print(f"  taylor / {other}: {rates['taylor'] / rates[other]:.2f}x")


if __name__ == "__main__":
    main()
