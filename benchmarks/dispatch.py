"""Dispatch rate with a short and a very long queue: the cost per task must not grow with it.

For each scheduler, no-op tasks are queued (1,000 then 100,000 by default),
the run is started, and the rate at which workers end is measured over a
fixed window of tasks (after a warm-up), from the workers' end times.  The run
is then stopped: the 100,000 are never all run.  Target: the rate with the
long queue is at least 0.8 times the rate with the short one.

    python benchmarks/dispatch.py                      # all schedulers, 1,000 vs 100,000
    python benchmarks/dispatch.py --schedulers threads --sizes 1000 100000 --measure 1000

Setting up 100,000 instructions takes a few seconds in the caller (checking
them against the worker footprints); that is not part of the measure.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import logging  # noqa: E402

import footprints  # noqa: E402

from taylor import Boss, Worker  # noqa: E402
from taylor.schedulers import host  # noqa: E402


class BenchNoop(Worker):
    """Does nothing (defined before any Boss, so that the boss knows it)."""

    _footprint = dict(attr=dict(
        benchnoop=dict(type=bool, values=[True]),
        file=dict(optional=True, default=None),
    ))

    def _task(self):
        return None


def scheduler_for(kind: str, threads: int):
    fpx = footprints.proxy
    if kind == "threads":
        return fpx.scheduler(limit="threads", max_threads=threads)
    if kind == "memory":  # memory is the cap: room for `threads` tasks of 10 MiB
        return fpx.scheduler(limit="memory", max_memory=10.0 * threads, memory_per_task=10.0)
    if kind == "threads+memory":
        return fpx.scheduler(limit="threads+memory", max_threads=threads, max_memory=1e6)
    if kind == "singlefile":
        return fpx.scheduler(limit="threads", max_threads=threads, singlefile=True, file_keys=["file"])
    raise SystemExit(f"unknown scheduler {kind!r}")


def instructions(kind: str, size: int):
    individual = {"name": [f"t{i}" for i in range(size)]}
    if kind in ("memory", "threads+memory"):
        individual["memory"] = [10.0] * size
    if kind == "threads+memory":
        rng = random.Random(0)
        individual["expected_time"] = [rng.random() for _ in range(size)]
    if kind == "singlefile":
        individual["file"] = [f"f{i % 64}" for i in range(size)]
    return individual


def rate(kind: str, size: int, threads: int, warmup: int, measure: int) -> float:
    """Workers ended per second between the warmup-th and the (warmup+measure)-th."""
    boss = Boss(scheduler=scheduler_for(kind, threads))
    try:
        boss.set_instructions(dict(benchnoop=True), instructions(kind, size))
        boss.make_them_work()
        target = warmup + measure
        boss._process.pump(lambda: len(boss._record.entries) >= target)  # progress as entries stream in
        ends = sorted(e["end_time"] for e in boss._record.entries)
        boss.send_signal("STOP")  # start nothing more; the rest stays pending
        boss.wait_till_finished()
    finally:
        boss.close()
    return measure / (ends[target - 1] - ends[warmup - 1])


class _Running:
    """A running worker as the boss shows it to schedulers (for the in-process measure)."""

    def __init__(self, instructions):
        self.instructions = instructions
        self.name = instructions["name"]
        self.memory = float(instructions.get("memory", 0.0))
        self.expected_time = float(instructions.get("expected_time", 0.0))
        self.scheduler_ticket = instructions.get("scheduler_ticket")
        self.pid = None

    def __getattr__(self, key):
        try:
            return self.__dict__["instructions"][key]
        except KeyError:
            raise AttributeError(key) from None


def decision_cost(kind: str, size: int, threads: int, decisions: int) -> float:
    """Microseconds per started task of the scheduler's decisions alone, with ``size`` pending,
    driven as the boss does: one worker ends, the scheduler is asked, what it starts runs."""
    from taylor.instructions import expand, resolve

    scheduler = scheduler_for(kind, threads)
    rows = resolve(expand(dict(benchnoop=True), instructions(kind, size)))
    queue = scheduler.pending_queue()
    pending = rows if queue is None else queue
    if queue is not None:
        queue.extend(rows)
    del rows
    workers = {}
    launch, pending = scheduler.launchable(pending, workers, [])  # first call: builds any index
    workers.update((i["name"], _Running(i)) for i in launch)
    started, begin = 0, time.perf_counter()
    for _ in range(decisions):
        workers.pop(next(iter(workers)))
        launch, pending = scheduler.launchable(pending, workers, [])
        workers.update((i["name"], _Running(i)) for i in launch)
        started += len(launch)
    return (time.perf_counter() - begin) / max(started, 1) * 1e6


def main() -> None:
    logging.getLogger("footprints").setLevel(logging.ERROR)  # "multiple candidates" for singlefile
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedulers", default="threads,memory,threads+memory,singlefile",
                        help="comma-separated: threads, memory, threads+memory, singlefile")
    parser.add_argument("--sizes", type=int, nargs=2, default=[1000, 100_000], metavar=("SHORT", "LONG"))
    parser.add_argument("--warmup", type=int, default=100, help="tasks ended before the measure starts")
    parser.add_argument("--measure", type=int, default=800, help="tasks the rate is measured over")
    parser.add_argument("--threads", type=int, default=host.usable_cpus(), help="workers at once")
    parser.add_argument("--decisions-only", action="store_true",
                        help="only measure the schedulers' decisions, in this process (no workers)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of each size, alternated; the best rate of each size is kept")
    args = parser.parse_args()
    short, long_ = args.sizes
    if args.warmup + args.measure > short:
        parser.error("--warmup + --measure must not exceed the short queue size")
    print(f"scheduler decisions alone (in this process, {args.measure} decisions), microseconds per started task")
    print(f"{'scheduler':<16}{short:>10,} pending{long_:>10,} pending")
    for kind in args.schedulers.split(","):
        cost = [decision_cost(kind, size, args.threads, args.measure) for size in (short, long_)]
        print(f"{kind:<16}{cost[0]:>12.1f} us{cost[1]:>14.1f} us")
    if args.decisions_only:
        return
    print()
    print(f"no-op tasks, {args.threads} at once; rate over tasks {args.warmup}..{args.warmup + args.measure}")
    print(f"{'scheduler':<16}{short:>10,} pending{long_:>10,} pending{'ratio':>9}")
    worst = None
    for kind in args.schedulers.split(","):
        started = time.monotonic()
        fast = slow = 0.0
        for _ in range(args.repeat):  # alternate, so that a busy moment of the machine hits both
            fast = max(fast, rate(kind, short, args.threads, args.warmup, args.measure))
            slow = max(slow, rate(kind, long_, args.threads, args.warmup, args.measure))
        ratio = slow / fast
        worst = ratio if worst is None else min(worst, ratio)
        print(f"{kind:<16}{fast:>11.0f} /s{slow:>13.0f} /s{ratio:>9.2f}   ({time.monotonic() - started:.0f} s)")
    print(f"worst ratio {worst:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
