"""Megabyte instructions and reports through ``Boss``/``batch_main``, and what building them before the Boss costs.

The boss is a fork of the script made when the Boss is created, and every worker
a fork of it: memory the script holds then is in every worker's address space
(free to read, copy-on-write), and each fork costs more the more of it there is.
Three ways, each measurement in a fresh Python process, the three alternating
within each round in a rotating order:

* ``boss-first``: the Boss is created, then the individual instructions (one
  distinct 1 MiB ``bytes`` value per worker) are built and given to it;
* ``rows-first``: the same instructions built first, then the Boss created
  (what ``batch_main(common, individual)`` does with lists built beforehand);
* ``reports``: small instructions, each worker returns 1 MiB.

Reported: medians and ranges of tasks per second (from ``set_instructions`` to
the final report) and of CPU per task (the script and every process it reaped,
from before the Boss's creation to after its end).

    python benchmarks/payloads.py                 # 200 tasks, 2 at a time, 5 rounds
    python benchmarks/payloads.py --tasks 400 --rounds 7
    python benchmarks/payloads.py --baseline ../old   # the same with the taylor of another tree too
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
MIB = 1 << 20
WORKERS = 2
WAYS = ("boss-first", "rows-first", "reports")


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(way: str, tasks: int) -> dict:
    """One measurement, in this (fresh) process."""
    import taylor
    from taylor import Worker
    from taylor.schedulers import MaxThreadsScheduler

    class Payloaded(Worker):
        _footprint = dict(attr=dict(data=dict(type=bytes), give=dict(type=int, optional=True, default=0)))

        def _task(self):
            return bytes(self.give) if self.give else len(self.data)

    def rows():
        if way == "reports":
            return dict(data=[b"x"] * tasks, give=[MIB] * tasks)
        return dict(data=[i.to_bytes(4, "big") * (MIB // 4) for i in range(tasks)])

    cpu0 = _cpu()
    individual = rows() if way == "rows-first" else None
    boss = taylor.Boss(scheduler=MaxThreadsScheduler(max_threads=WORKERS))
    if individual is None:
        individual = rows()
    try:
        start = time.perf_counter()
        boss.set_instructions(None, individual)
        del individual
        boss.make_them_work()
        report = boss.wait_till_finished()
        wall = time.perf_counter() - start
    finally:
        boss.close()
    assert report.ok and len(report.workers) == tasks
    return {"wall": wall, "cpu": _cpu() - cpu0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="also measure each way with the taylor of this tree")
    parser.add_argument("--measure", nargs=2, metavar=("WAY", "TASKS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]))))
        return
    roots = {way: HERE.parent for way in WAYS}
    if args.baseline:
        roots.update({f"{way}@base": args.baseline.resolve() for way in WAYS})
    names = list(roots)
    results: dict = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            results[name].append(sides.run(__file__, [name.split("@")[0], str(args.tasks)], roots[name], name))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{args.tasks} tasks of 1 MiB, {WORKERS} at a time, {args.rounds} rounds: median (min-max); "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    print("| way | tasks/s | CPU ms per task |")
    print("|---|---|---|")
    for name in sorted(names, key=lambda n: (WAYS.index(n.split("@")[0]), n)):
        runs = results[name]
        way = name if "@" not in name else f"{name.split('@')[0]} ({args.baseline})"
        print(f"| {way} | {sides.median_range([args.tasks / r['wall'] for r in runs], ',.0f')} | "
              f"{sides.median_range([1000 * r['cpu'] / args.tasks for r in runs], '.2f')} |")


if __name__ == "__main__":
    main()
