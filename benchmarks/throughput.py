"""Throughput of taylor against taylorism 1.1.0 and a raw fork/exit/wait loop.

No-op workers, one process each, two at a time.  Each measurement runs in a
fresh process; the contenders alternate round by round so that they share
the machine's mood.  The raw loops import what taylor imports, so their
parent has the same size as taylor's boss.  ``raw`` forks with ``os.fork``;
``raw_bare`` with libc's ``fork()`` through ctypes, as taylor's spawner does,
which skips Python's at-fork hooks: it is the floor of what forking costs
here.  The measuring process imports nothing else: ``statistics`` is imported
only where results are summed up, as it imports ``random``, which Python
reseeds in every os.fork child (about 0.1 ms each).  Also measured: the
boss's CPU use while two workers sleep, and the latency from
``run_as_server`` to the first worker starting.

    python benchmarks/throughput.py                 # 1000 tasks, 5 rounds
    python benchmarks/throughput.py --tasks 2000 --rounds 7 --no-taylorism
    python benchmarks/throughput.py --no-taylorism --baseline ../old-checkout   # before/after a change

``--baseline`` adds a contender: taylor imported from another source tree (a
checkout of an earlier commit), measured the same way, alternating with this
tree's, so that a change is judged in one run rather than across two.

taylorism is installed on first use into benchmarks/.venv-taylorism (from the
package index), never imported into this interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-taylorism"
THREADS = 2


# --------------------------------------------------------------- contenders
def _noop_class(library: str):
    """The no-op Worker class, defined on ``library``'s (taylor's or taylorism's) Worker."""
    Worker = __import__(library).Worker

    class Noop(Worker):
        _footprint = dict(info="no-op", attr=dict(noop=dict(type=bool, values=[True])))

        def _task(self):
            return None

    return Noop


def run_taylor(tasks: int) -> float:
    import taylor
    from taylor.schedulers import MaxThreadsScheduler

    _noop_class("taylor")
    start = time.perf_counter()
    report = taylor.batch_main(dict(noop=True), dict(expected_time=[0.0] * tasks),
                               scheduler=MaxThreadsScheduler(max_threads=THREADS), print_report=False)
    elapsed = time.perf_counter() - start
    assert len(report["workers_report"]) == tasks
    return tasks / elapsed


def run_taylorism(tasks: int) -> float:
    import footprints
    import taylorism

    _noop_class("taylorism")
    start = time.perf_counter()
    boss = taylorism.run_as_server(dict(noop=True), dict(expected_time=[0.0] * tasks),
                                   scheduler=footprints.proxy.scheduler(limit="threads", max_threads=THREADS))
    boss.wait_till_finished()
    report = boss.get_report()
    elapsed = time.perf_counter() - start
    assert len(report["workers_report"]) == tasks
    return tasks / elapsed


def run_raw(tasks: int, bare: bool = False) -> float:
    """``bare``: libc's fork() through ctypes, which runs none of Python's at-fork hooks
    (taylor's spawner forks so), instead of os.fork."""
    import taylor  # noqa: F401 - the parent has the size of the process that forks taylor's workers

    fork = os.fork
    if bare:
        import ctypes
        fork = ctypes.PyDLL(None).fork
    start = time.perf_counter()
    running = started = done = 0
    while done < tasks:
        while running < THREADS and started < tasks:
            if fork() == 0:
                os._exit(0)
            running += 1
            started += 1
        os.wait()
        running -= 1
        done += 1
    return tasks / (time.perf_counter() - start)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(which: str, seconds: float = 5.0) -> float:
    """Percent of one CPU the boss uses while two workers sleep ``seconds``."""
    if which == "taylor":
        import taylor
        from taylor.examples import Sleeper  # noqa: F401
        from taylor.schedulers import MaxThreadsScheduler

        boss = taylor.run_as_server(None, dict(sleeping_time=[seconds] * 2),
                                    scheduler=MaxThreadsScheduler(max_threads=THREADS))
        pid = boss.pid
    else:
        import footprints
        import taylorism
        from taylorism.examples import Sleeper  # noqa: F401

        boss = taylorism.run_as_server({}, dict(sleeping_time=[seconds] * 2),  # it needs a dict
                                       scheduler=footprints.proxy.scheduler(limit="threads", max_threads=THREADS))
        pid = boss._process.pid
    time.sleep(0.5)
    before, t0 = _cpu_seconds(pid), time.monotonic()
    time.sleep(seconds - 1.0)
    used = (_cpu_seconds(pid) - before) / (time.monotonic() - t0)
    boss.wait_till_finished()
    return 100.0 * used


def latency(which: str, trials: int = 15) -> float:
    """Median seconds from calling run_as_server to the first worker's task starting."""
    import statistics
    samples = []
    if which == "taylor":
        import taylor as lib
        from taylor import Worker
        from taylor.schedulers import MaxThreadsScheduler

        def scheduler():
            return MaxThreadsScheduler(max_threads=THREADS)
    else:
        import footprints
        import taylorism as lib
        from taylorism import Worker

        def scheduler():
            return footprints.proxy.scheduler(limit="threads", max_threads=THREADS)

    class Clock(Worker):
        _footprint = dict(info="clock", attr=dict(clock=dict(type=bool, values=[True])))

        def _task(self):
            return time.monotonic()

    for _ in range(trials):
        called = time.monotonic()
        boss = lib.run_as_server(dict(clock=True), dict(expected_time=[0.0]), scheduler=scheduler())
        boss.wait_till_finished()
        started = boss.get_report()["workers_report"][0]["report"]
        samples.append(started - called)
    return statistics.median(samples)


# ------------------------------------------------------------------ driver
def ensure_taylorism() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"installing taylorism 1.1.0 into {VENV} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "taylorism==1.1.0"], check=True)
    return python


def measure(python: str, what: str, *args: str, tree: Path = HERE.parent) -> float:
    """Run one measurement of ``what`` in a fresh ``python``, importing taylor from ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree) if what != "taylorism" else "")
    out = subprocess.run([python, __file__, "--one", what, *args], check=True, capture_output=True, text=True,
                         env=env, cwd=str(HERE)).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-taylorism", action="store_true", help="skip taylorism (no install needed)")
    parser.add_argument("--baseline", type=Path, help="also measure taylor from this source tree (before/after)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--extra", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a single measurement, in this fresh process
        if args.extra == "idle":
            print(json.dumps(idle_cpu(args.one)))
        elif args.extra == "latency":
            print(json.dumps(latency(args.one)))
        else:
            run = dict(taylor=run_taylor, taylorism=run_taylorism, raw=run_raw,
                       raw_bare=lambda tasks: run_raw(tasks, bare=True))[args.one]
            print(json.dumps(run(args.tasks)))
        return

    import statistics  # not before the measurements: it imports random, which Python reseeds in every fork
    pythons = {"taylor": sys.executable, "raw": sys.executable, "raw_bare": sys.executable}
    trees = {name: HERE.parent for name in pythons}
    if args.baseline:
        pythons["baseline"], trees["baseline"] = sys.executable, args.baseline.resolve()
    if not args.no_taylorism:
        pythons["taylorism"] = str(ensure_taylorism())
    rates = {name: [] for name in pythons}
    order = list(pythons)
    for round_ in range(args.rounds):
        for name in order[round_ % len(order):] + order[:round_ % len(order)]:
            tasks = args.tasks if name != "taylorism" else max(100, args.tasks // 5)  # it is slow
            what = "taylor" if name == "baseline" else name
            rates[name].append(measure(pythons[name], what, "--tasks", str(tasks), tree=trees.get(name, HERE.parent)))
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {r[-1]:.0f}/s" for n, r in rates.items()), flush=True)
    med = {name: statistics.median(r) for name, r in rates.items()}
    print(f"\n{args.tasks} no-op tasks, {THREADS} at a time, median of {args.rounds} rounds (tasks/s):")
    for name, value in med.items():
        print(f"  {name:10s} {value:8.0f}")
    print(f"  taylor / raw fork loop (os.fork):    {med['taylor'] / med['raw']:.2f}x")
    print(f"  taylor / raw loop, libc's fork():    {med['taylor'] / med['raw_bare']:.2f}x")
    if "taylorism" in med:
        print(f"  taylor / taylorism:                  {med['taylor'] / med['taylorism']:.1f}x")
    if "baseline" in med:
        ratios = sorted(a / b for a, b in zip(rates["taylor"], rates["baseline"]))
        print(f"  taylor / baseline ({args.baseline}): {med['taylor'] / med['baseline']:.2f}x "
              f"(round by round {ratios[0]:.2f}x to {ratios[-1]:.2f}x)")
    for name in [n for n in ("taylor", "taylorism") if n in pythons]:
        cpu = measure(pythons[name], name, "--extra", "idle")
        lat = measure(pythons[name], name, "--extra", "latency")
        print(f"  {name:10s} boss CPU while 2 workers sleep: {cpu:5.1f}% of a core; "
              f"run_as_server to first task: {lat * 1000:.1f} ms (median)")


if __name__ == "__main__":
    main()
