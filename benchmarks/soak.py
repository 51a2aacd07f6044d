"""Soak test: many no-op tasks through one long-lived, server-mode boss.

Feeds ``--tasks`` no-op workers in batches to a single boss and prints, at
intervals, what the boss process holds: open file descriptors, child
processes (zombies counted apart) and resident memory.  None of them should
grow with the number of tasks run: after the first thousand tasks (the boss
keeps the last 1,000 entries for schedulers) the figures must stay flat.

    python benchmarks/soak.py                 # 100,000 tasks (minutes)
    python benchmarks/soak.py --tasks 10000   # a quick look

Exits non-zero if the boss ends with more descriptors or children than
after the first interval, or if any task did not end ``done``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from taylor import Boss, Worker  # noqa: E402
from taylor.schedulers import MaxThreadsScheduler  # noqa: E402
from taylor.schedulers.host import usable_cpus  # noqa: E402


class SoakNoop(Worker):
    """Does nothing and reports its number."""

    _footprint = dict(attr=dict(soak=dict(type=int)))

    def _task(self):
        return self.soak


def boss_figures(pid: int) -> dict:
    proc = psutil.Process(pid)
    children = proc.children()
    zombies = 0
    for child in children:
        try:
            zombies += child.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            pass
    return dict(fds=proc.num_fds(), children=len(children), zombies=zombies,
                rss_mib=proc.memory_info().rss / 2**20)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="how many no-op tasks to run (default 100000)")
    parser.add_argument("--batch", type=int, default=1000, help="instructions sent at once (default 1000)")
    parser.add_argument("--every", type=int, default=0, help="print figures every N tasks (default tasks/10)")
    parser.add_argument("--threads", type=int, default=0, help="workers at once (default: usable CPUs)")
    args = parser.parse_args(argv)
    every = args.every or max(1, args.tasks // 10)
    threads = args.threads or usable_cpus()

    boss = Boss(scheduler=MaxThreadsScheduler(max_threads=threads))
    print(f"soak: {args.tasks} no-op tasks, batches of {args.batch}, {threads} at once, boss pid {boss.pid}")
    print(f"{'tasks':>8} {'seconds':>8} {'tasks/s':>8} {'fds':>5} {'children':>8} {'zombies':>7} "
          f"{'boss RSS MiB':>12} {'caller RSS MiB':>14}")
    rows = []
    start = time.monotonic()
    fed = done = 0
    next_print = min(every, args.tasks)
    try:
        boss.make_them_work()
        while done < args.tasks:
            while fed < args.tasks and fed - done < 2 * args.batch:  # keep a bounded backlog
                count = min(args.batch, args.tasks - fed)
                boss.set_instructions(None, dict(soak=list(range(fed, fed + count))))
                fed += count
            done = boss.get_report()["counts"]["done"]
            if done >= next_print:
                elapsed = time.monotonic() - start
                row = boss_figures(boss.pid)
                rows.append(row)
                caller = psutil.Process().memory_info().rss / 2**20
                print(f"{done:>8} {elapsed:>8.1f} {done / elapsed:>8.0f} {row['fds']:>5} {row['children']:>8} "
                      f"{row['zombies']:>7} {row['rss_mib']:>12.1f} {caller:>14.1f}", flush=True)
                next_print = min(args.tasks, (done // every + 1) * every)
            else:
                time.sleep(0.05)  # a benchmark's pacing: the interim report is one round trip
        report = boss.wait_till_finished()
    finally:
        boss.close()

    failed = [w for w in report.workers if w["status"] != "done"]
    first, last = rows[0], rows[-1]
    print(f"done: {len(report.workers)} tasks in {time.monotonic() - start:.1f} s; boss fds {first['fds']} -> "
          f"{last['fds']}, children {first['children']} -> {last['children']}, RSS {first['rss_mib']:.1f} -> "
          f"{last['rss_mib']:.1f} MiB; {len(failed)} not done")
    grew = last["fds"] > first["fds"] or last["zombies"] > 0 or last["children"] > threads
    return 1 if grew or failed or len(report.workers) != args.tasks else 0


if __name__ == "__main__":
    sys.exit(main())
