"""Throughput on a local Dask cluster: taylor's Dask launcher against plain ``client.map``.

A ``LocalCluster`` of two worker processes (one thread each, as the local
throughput benchmark runs two workers at a time) runs N no-op tasks for each
contender, the contenders alternating round by round so that they share the
machine's mood:

* ``client.map``: the same no-op through Dask directly (submit all, gather all);
* ``isolated``: taylor's DaskLauncher, each task in a fresh process forked on
  its host by the forker (the default mode);
* ``in-worker``: taylor's DaskLauncher running each task in the Dask
  worker's thread.
* ``Boss isolated`` and ``Boss in-worker``: the whole public path, a
  ``taylor.Boss(cluster=client, cluster_mode=...)`` in server mode (connected
  once, outside the timings) given the N instructions, until N entries are back
  in the caller: the boss process, its scheduler and ClusterLauncher included.

taylor's side starts all tasks in one batch (as its engine's dispatch would
when the scheduler lets them all start) and collects every end through the
launcher's descriptor, as the boss's loop would.  Connection and forker
set-up are made once, outside the timings.  The no-op Worker class is
defined here, in ``__main__``: it travels by value, as a user's would.

    python benchmarks/cluster.py                  # 2000 tasks, 5 rounds
    python benchmarks/cluster.py --tasks 500 --rounds 3

Why in-worker mode can beat plain ``client.map``: taylor pins each task to
the worker it placed it on and keeps ``ahead`` tasks per thread queued there
(see taylor.cluster.capacity), so a worker starts its next task at once;
plain ``client.map`` tasks are held by the Dask scheduler's queuing
(``distributed.scheduler.worker-saturation``) and sent as threads free up,
one scheduler round trip per task.  Isolated mode pays a fork and a process
end on the worker's host per task on top.

Measured on the 2-core reference VM, shared with other jobs (load average
4 to 9), 2000 tasks, 5 rounds, median (min to max):

    client.map   5.14 s (4.89 to 5.38)   389 tasks/s
    isolated     7.67 s (6.48 to 9.26)   261 tasks/s   0.67x client.map
    in-worker    3.24 s (2.49 to 3.61)   617 tasks/s   1.59x client.map

and in a second run, after task processes were named: client.map 5.20 s
(4.67 to 5.97), isolated 8.59 s (6.59 to 8.92, 0.60x), in-worker 4.00 s
(3.12 to 4.20, 1.30x).  Targets: isolated >= 0.5x, in-worker >= 0.9x.
Through the Boss, see docs/cluster.rst (final code: client.map 3.31 s, Boss
isolated 5.87 s, 0.56x; Boss in-worker 2.52 s, 1.31x).
"""

from __future__ import annotations

import argparse
import json
import select
import statistics
import time

from distributed import Client, LocalCluster

from taylor import Worker
from taylor.cluster.launcher import IN_WORKER, ISOLATED, DaskLauncher


class Noop(Worker):
    _footprint = dict(info="no-op", attr=dict(noop=dict(type=bool, values=[True])))

    def _task(self):
        return None


def noop(i):
    return None


def run_map(client: Client, tasks: int) -> float:
    start = time.perf_counter()
    futures = client.map(noop, range(tasks), pure=False)
    results = client.gather(futures)
    elapsed = time.perf_counter() - start
    assert len(results) == tasks
    del futures
    return elapsed


def run_launcher(launcher: DaskLauncher, tasks: int) -> float:
    attributes = [dict(noop=True, name=f"n{i}", memory=0.0, expected_time=0.0, timeout=None, scheduler_ticket=None,
                       scheduler_hooks=[]) for i in range(tasks)]
    start = time.perf_counter()
    with launcher.batch():
        for one in attributes:
            launcher.start(one["name"], Noop, one)
    ended = []
    while len(ended) < tasks:
        ready, _, _ = select.select([launcher.fileno()], [], [], 120)
        assert ready, f"{len(ended)} of {tasks} ended within 120 s"
        ended += launcher.ended()
    elapsed = time.perf_counter() - start
    bad = [e for e in ended if not (isinstance(e.outcome, tuple) and e.outcome[0] == "ok")]
    assert not bad, bad[:3]
    return elapsed


def boss_runner(client: Client, mode: str):
    """A taylor Boss on the cluster (server mode, connected once), and how to time ``tasks`` no-ops through it:
    the whole public path, caller -> boss -> its scheduler -> the cluster and back, one entry per task."""
    from taylor import Boss

    boss = Boss(cluster=client, cluster_mode=mode)
    boss.make_them_work()
    count = [0]

    def run(tasks: int) -> float:
        start = time.perf_counter()
        base = count[0]
        boss.set_instructions(dict(noop=True), dict(name=[f"b{base + i}" for i in range(tasks)]))
        got = 0
        while got < tasks:
            entries = boss.wait_for_entries(timeout=120)
            assert entries, f"{got} of {tasks} entries within 120 s"
            bad = [e for e in entries if e["status"] != "done"]
            assert not bad, bad[:3]
            got += len(entries)
        count[0] += tasks
        return time.perf_counter() - start

    return boss, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ahead", type=int, default=None,
                        help="tasks per thread a Dask worker is given at a time (the launcher's default if absent)")
    parser.add_argument("--json", action="store_true", help="print the timings as JSON too")
    args = parser.parse_args()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        options = {} if args.ahead is None else {"ahead": args.ahead}
        isolated = DaskLauncher(client, mode=ISOLATED, **options)
        inside = DaskLauncher(client, mode=IN_WORKER, **options)
        isolated.open()
        inside.open()
        boss_isolated, through_isolated = boss_runner(client, ISOLATED)
        boss_inside, through_inside = boss_runner(client, IN_WORKER)
        contenders = {
            "client.map": lambda: run_map(client, args.tasks),
            "isolated": lambda: run_launcher(isolated, args.tasks),
            "in-worker": lambda: run_launcher(inside, args.tasks),
            "Boss isolated": lambda: through_isolated(args.tasks),
            "Boss in-worker": lambda: through_inside(args.tasks),
        }
        run_map(client, 50)  # warm-up: imports, first forks, class transport
        run_launcher(isolated, 50)
        run_launcher(inside, 50)
        through_isolated(50)
        through_inside(50)
        timings = {name: [] for name in contenders}
        for round_ in range(args.rounds):
            order = list(contenders) if round_ % 2 == 0 else list(reversed(contenders))
            for name in order:
                timings[name].append(contenders[name]())
        isolated.close()
        inside.close()
        for boss in (boss_isolated, boss_inside):
            boss.end()
            boss.wait_till_finished()
            boss.close()
    base = statistics.median(timings["client.map"])
    print(f"{args.tasks} no-op tasks on a local Dask cluster of 2 worker processes x 1 thread, {args.rounds} rounds")
    print(f"{'contender':<15} {'median s':>9} {'min s':>7} {'max s':>7} {'tasks/s':>8} {'vs map':>7}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:<15} {median:9.3f} {min(values):7.3f} {max(values):7.3f} {args.tasks / median:8.0f} "
              f"{base / median:6.2f}x")
    if args.json:
        print(json.dumps(timings))


if __name__ == "__main__":
    main()
