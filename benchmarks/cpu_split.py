"""Where an Executor call's CPU goes: the caller, the boss, the spawner (or reused processes), the workers.

Runs one batch of calls through ``taylor.Executor`` (2 at a time) after a warm-up
call, and reads each process's CPU time and page faults before and after it
(``/proc/<pid>/stat``: the boss's own, and the ``cutime`` of the processes that
reap the workers), so that the cost of a payload can be followed from process
to process.  Workloads as in ``benchmarks/executor.py``: no-op calls, calls
given 1 MiB, calls returning 1 MiB.

    python benchmarks/cpu_split.py                    # 200 calls of each, fresh processes
    python benchmarks/cpu_split.py --calls 400 --reuse
    PYTHONPATH=/path/to/other/tree python benchmarks/cpu_split.py   # another version of taylor
"""

from __future__ import annotations

import argparse
import os
import resource
import time

from executor import MIB, give, noop, take  # the calls of benchmarks/executor.py, beside this file

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list:
    """utime, stime, cutime, cstime (seconds) and minor faults of ``pid``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return [int(x) / TICK for x in fields[11:15]] + [int(fields[7])]


def split(workload: str, calls: int, reuse: bool) -> str:
    import taylor

    with taylor.Executor(max_workers=2, reuse=reuse) as executor:
        executor.submit(noop, None).result()
        boss = executor._boss.pid
        with open(f"/proc/{boss}/task/{boss}/children") as listing:
            helpers = [int(pid) for pid in listing.read().split()]  # the spawner, or the reused processes
        boss0, helpers0 = _stat(boss), {pid: _stat(pid) for pid in helpers}
        own0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        if workload == "in":
            list(executor.map(take, [bytes(MIB)] * calls))
        elif workload == "out":
            list(executor.map(give, range(calls)))
        else:
            list(executor.map(noop, range(calls)))
        wall = time.perf_counter() - start
        own1 = resource.getrusage(resource.RUSAGE_SELF)
        boss1 = _stat(boss)
        helpers1 = {pid: _stat(pid) for pid in helpers if os.path.exists(f"/proc/{pid}")}
    caller = own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime
    boss_cpu = boss1[0] + boss1[1] - boss0[0] - boss0[1]
    reaped = boss1[2] + boss1[3] - boss0[2] - boss0[3]
    helper_cpu = 0.0
    for pid, after in helpers1.items():
        before = helpers0[pid]
        helper_cpu += after[0] + after[1] - before[0] - before[1]
        reaped += after[2] + after[3] - before[2] - before[3]
    total = caller + boss_cpu + helper_cpu + reaped

    def ms(seconds: float) -> str:
        return f"{1000 * seconds / calls:.2f}"

    return (f"| {workload} | {calls / wall:,.0f} | {ms(caller)} | {ms(boss_cpu)} | {ms(helper_cpu)} | {ms(reaped)} | "
            f"{ms(total)} | {(own1.ru_minflt - own0.ru_minflt) / calls:.0f} | {(boss1[4] - boss0[4]) / calls:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--reuse", action="store_true", help="Executor(reuse=True)")
    parser.add_argument("--workloads", nargs="+", choices=["noop", "in", "out"], default=["noop", "in", "out"])
    args = parser.parse_args()
    helpers = "reused processes" if args.reuse else "spawner"
    print(f"ms of CPU per call ({args.calls} calls, 2 at a time); page faults per call in the caller and the boss\n")
    print(f"| workload | calls/s | caller | boss | {helpers} | workers | total | caller faults | boss faults |")
    print("|---|---|---|---|---|---|---|---|---|")
    for workload in args.workloads:
        print(split(workload, args.calls, args.reuse), flush=True)


if __name__ == "__main__":
    main()
