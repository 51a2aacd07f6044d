"""taylor.Executor against the executors Python users already use, two calls at a time.

Contenders: taylor's Executor (a fresh process per call, and ``reuse=True``: many calls per
long-lived process), ProcessPoolExecutor,
multiprocessing.Pool with ``maxtasksperchild=1`` (a fresh process per call)
and plain, loky and joblib when they are installed (skipped otherwise).
Workloads: no-op calls, calls given 1 MiB, calls returning 1 MiB, calls
spending 20 ms of CPU.  Each measurement runs in a fresh Python process (so
imports and CPU accounting are the contender's alone); the contenders
alternate within each round, in a rotating order, so that they share the
machine's mood.  Reported: medians and ranges over the rounds of calls per
second (wall time from the first submit to the last result, the pool already
started), CPU time per call (the measuring process and every process it
reaped, from before the pool's creation to after its shutdown), and for the
20 ms calls the makespan over the ideal ``calls x 20 ms / 2``.

    python benchmarks/executor.py                          # default sizes, 3 rounds
    python benchmarks/executor.py --rounds 5 --scale 2     # twice the calls
    python benchmarks/executor.py --only taylor ppe        # some contenders
    python benchmarks/executor.py --baseline ../main       # taylor's contenders from another tree too
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import sides  # beside this file

HERE = Path(__file__).resolve().parent
WORKERS = 2
MIB = 1 << 20
CPU_SECONDS = 0.02

#: Workload name -> (calls at scale 1, description).
WORKLOADS = {
    "noop": (1000, "no-op calls"),
    "in_1mib": (100, "calls given 1 MiB"),
    "out_1mib": (100, "calls returning 1 MiB"),
    "cpu_20ms": (100, "calls of 20 ms CPU"),
}


# ------------------------------------------------------------------- the calls
def noop(_):
    return None


def take(data):
    return len(data)


def give(_):
    return bytes(MIB)


def spin(_):
    end = time.thread_time() + CPU_SECONDS
    while time.thread_time() < end:
        pass


def _arguments(workload: str, calls: int) -> tuple:
    if workload == "in_1mib":
        return take, [bytes(MIB)] * calls
    return {"noop": noop, "out_1mib": give, "cpu_20ms": spin}[workload], list(range(calls))


# ------------------------------------------------------------------ contenders
# Each opens a pool of WORKERS, warms it with one call, and returns (run, close): run(fn, items)
# must return the results in order.
def open_taylor():
    import taylor

    ex = taylor.Executor(max_workers=WORKERS)
    ex.submit(noop, None).result()
    return (lambda fn, items: list(ex.map(fn, items))), ex.shutdown


def open_taylor_reuse():
    import taylor

    ex = taylor.Executor(max_workers=WORKERS, reuse=True)
    ex.submit(noop, None).result()
    return (lambda fn, items: list(ex.map(fn, items))), ex.shutdown


def open_ppe():
    from concurrent.futures import ProcessPoolExecutor

    ex = ProcessPoolExecutor(max_workers=WORKERS)
    ex.submit(noop, None).result()
    return (lambda fn, items: list(ex.map(fn, items))), ex.shutdown


def _open_pool(**options):
    import multiprocessing

    pool = multiprocessing.Pool(WORKERS, **options)
    pool.apply(noop, (None,))

    def close():
        pool.close()
        pool.join()

    return (lambda fn, items: pool.map(fn, items, chunksize=1)), close


def open_pool_fresh():
    return _open_pool(maxtasksperchild=1)


def open_pool():
    return _open_pool()


def open_loky():
    import loky

    ex = loky.ProcessPoolExecutor(max_workers=WORKERS)
    ex.submit(noop, None).result()
    return (lambda fn, items: list(ex.map(fn, items))), ex.shutdown


def open_joblib():
    import joblib

    parallel = joblib.Parallel(n_jobs=WORKERS)
    parallel.__enter__()  # keeps its workers between calls, as the other pools do
    parallel(joblib.delayed(noop)(None) for _ in range(1))

    def run(fn, items):
        return parallel(joblib.delayed(fn)(item) for item in items)

    return run, lambda: parallel.__exit__(None, None, None)


#: Contender name -> (opener, module it needs, label in the table).
CONTENDERS = {
    "taylor": (open_taylor, "taylor", "taylor Executor (fresh process per call)"),
    "taylor_reuse": (open_taylor_reuse, "taylor", "taylor Executor(reuse=True)"),
    "ppe": (open_ppe, "concurrent.futures", "ProcessPoolExecutor"),
    "pool_fresh": (open_pool_fresh, "multiprocessing", "multiprocessing.Pool(maxtasksperchild=1)"),
    "pool": (open_pool, "multiprocessing", "multiprocessing.Pool"),
    "loky": (open_loky, "loky", "loky ProcessPoolExecutor"),
    "joblib": (open_joblib, "joblib", "joblib.Parallel (loky backend)"),
}


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(contender: str, workload: str, calls: int) -> dict:
    """One measurement, in this (fresh) process."""
    fn, items = _arguments(workload, calls)
    opener = CONTENDERS[contender][0]
    cpu0 = _cpu()
    run, close = opener()
    start = time.perf_counter()
    results = run(fn, items)
    wall = time.perf_counter() - start
    close()
    cpu = _cpu() - cpu0
    assert len(results) == calls
    return {"wall": wall, "cpu": cpu}


# ------------------------------------------------------------------ the driver
def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the number of calls")
    parser.add_argument("--only", nargs="+", choices=sorted(CONTENDERS), help="these contenders only")
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--baseline", type=Path, help="also measure taylor's contenders with the taylor of "
                        "this source tree (e.g. the main branch's), alternating with the others")
    parser.add_argument("--measure", nargs=3, metavar=("CONTENDER", "WORKLOAD", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        contender, workload, calls = args.measure
        print(json.dumps(measure(contender, workload, int(calls))))
        return
    names = [n for n in (args.only or CONTENDERS) if _installed(CONTENDERS[n][1])]
    skipped = [n for n in (args.only or CONTENDERS) if n not in names]
    if skipped:
        print(f"skipped (not installed): {', '.join(skipped)}", file=sys.stderr)
    roots = {name: HERE.parent for name in names}
    if args.baseline:
        for name in [n for n in names if n.startswith("taylor")]:
            roots[f"{name}@base"] = args.baseline.resolve()
            names.insert(names.index(name) + 1, f"{name}@base")
    results: dict = {(n, w): [] for n in names for w in args.workloads}
    for round_ in range(args.rounds):
        for workload in args.workloads:
            calls = max(1, int(WORKLOADS[workload][0] * args.scale))
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                result = sides.run(__file__, [name.split("@")[0], workload, str(calls)], roots[name],
                                 f"{name} on {workload}")
                results[name, workload].append((calls, result))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{WORKERS} calls at a time, {args.rounds} rounds: median (min-max); Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs\n")
    for workload in args.workloads:
        calls = results[names[0], workload][0][0]
        print(f"{WORKLOADS[workload][1]}, {calls} calls")
        extra = " | makespan / ideal" if workload == "cpu_20ms" else ""
        print(f"| contender | calls/s | CPU ms per call{extra} |")
        print("|---|---|---|" + ("---|" if extra else ""))
        for name in names:
            runs = [r for _, r in results[name, workload]]
            rate = sides.median_range([calls / r["wall"] for r in runs], ",.0f")
            cpu = sides.median_range([1000 * r["cpu"] / calls for r in runs], ".2f")
            label = CONTENDERS[name.split("@")[0]][2] + (f" ({args.baseline})" if "@" in name else "")
            row = f"| {label} | {rate} | {cpu} |"
            if extra:
                ideal = calls * CPU_SECONDS / WORKERS
                row += f" {sides.median_range([r['wall'] / ideal for r in runs], '.2f')} |"
            print(row)
        print()


if __name__ == "__main__":
    main()
