"""Makespan of a mixed batch under each scheduler, against its lower bound.

The batch: sleeping tasks of varied durations (a few long ones, many short)
and varied declared memory, seeded so every scheduler gets the same one.
The lower bound is max(total work / threads, longest task): no schedule of
``threads`` workers can do better.  A ratio of 1.00 is perfect.

    python benchmarks/makespan.py                     # 2 threads, 30 tasks, about 50 s in all
    python benchmarks/makespan.py --threads 4 --tasks 60 --scale 0.5

The memory scheduler has no thread cap: its ``max_memory`` is set to
``threads`` times the mean declared memory, so it runs about as many tasks
at once; its "peak" column says how many it really ran together.  Tasks sleep,
so a schedule that runs more than ``threads`` at once can beat the bound.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import footprints  # noqa: E402

from taylor import Worker, batch_main  # noqa: E402


class Nap(Worker):
    """Sleeps ``nap`` seconds (defined before any Boss, so that the boss knows it)."""

    _footprint = dict(attr=dict(
        nap=dict(type=float),
        file=dict(optional=True, default=None),
    ))

    def _task(self):
        time.sleep(self.nap)
        return self.nap


def batch(tasks: int, scale: float, seed: int):
    """Durations: mostly short, a few long; memory 100 to 800 MiB; 8 files shared by the tasks."""
    rng = random.Random(seed)
    naps = [round(scale * (rng.uniform(2.0, 4.0) if rng.random() < 0.12 else rng.uniform(0.1, 1.0)), 3)
            for _ in range(tasks)]
    memory = [rng.choice([100.0, 200.0, 400.0, 800.0]) for _ in range(tasks)]
    files = [f"f{rng.randrange(8)}" for _ in range(tasks)]
    return naps, memory, files


def peak(entries) -> int:
    events = sorted([(e["start_time"], 1) for e in entries] + [(e["end_time"], -1) for e in entries],
                    key=lambda event: (event[0], event[1]))
    level = best = 0
    for _, delta in events:
        level += delta
        best = max(best, level)
    return best


def main() -> None:
    logging.getLogger("footprints").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--scale", type=float, default=0.7, help="multiplies every duration")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    naps, memory, files = batch(args.tasks, args.scale, args.seed)
    mean_memory = sum(memory) / len(memory)
    fpx = footprints.proxy
    schedulers = {
        "threads (FIFO)": fpx.scheduler(limit="threads", max_threads=args.threads),
        "memory": fpx.scheduler(limit="memory", max_memory=args.threads * mean_memory),
        "threads+memory longest-first": fpx.scheduler(limit="threads+memory", max_threads=args.threads,
                                                      max_memory=1e9),
        "single open file": fpx.scheduler(limit="threads", max_threads=args.threads, singlefile=True),
    }
    bound = max(sum(naps) / args.threads, max(naps))
    print(f"{args.tasks} tasks, {sum(naps):.1f} s of work, longest {max(naps):.2f} s, {args.threads} threads: "
          f"lower bound {bound:.2f} s")
    print(f"{'scheduler':<30}{'makespan':>10}{'ratio':>8}{'peak':>6}")
    for label, scheduler in schedulers.items():
        individual = dict(nap=naps, memory=memory, expected_time=naps, file=files)
        report = batch_main(None, individual, scheduler=scheduler, print_report=False)
        entries = report.workers
        makespan = max(e["end_time"] for e in entries) - min(e["start_time"] for e in entries)
        print(f"{label:<30}{makespan:>9.2f}s{makespan / bound:>8.2f}{peak(entries):>6}")


if __name__ == "__main__":
    main()
