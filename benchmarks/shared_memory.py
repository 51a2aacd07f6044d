"""Hand a large numpy array to workers: as shared memory, or as a plain instruction.

A plain instruction is pickled in the caller and sent to the boss, which
unpickles it before forking the workers (who then share the boss's copy
copy-on-write).  A SharedNumpyArray is made in shared memory from the start
and reaches the boss and workers by inheritance: nothing is pickled or copied.
Each worker sums one block of the array; the caller checks the total.

Each run is a fresh child process, timed; a second run of the same is
sampled every few milliseconds for the proportional set size (PSS: shared pages divided among the
processes that map them, so the sum over processes is the physical memory
used) of the child and all its descendants, to report the peak.  Modes
alternate; the median time and the largest peak are printed side by side.

Usage:  python benchmarks/shared_memory.py [--mib 200] [--workers 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the taylor of this checkout

from taylor import Worker, batch_main  # noqa: E402
from taylor.shared import SharedNumpyArray  # noqa: E402


class BlockSum(Worker):
    """Sums block ``block`` of ``blocks`` of ``data`` (a plain or a shared array)."""

    _footprint = dict(attr=dict(data=dict(type=object), block=dict(type=int), blocks=dict(type=int)))

    def _task(self) -> float:
        import numpy

        data = self.data[0] if isinstance(self.data, list) else self.data
        size = len(data)
        start, stop = size * self.block // self.blocks, size * (self.block + 1) // self.blocks
        return float(numpy.sum(data[start:stop]))


def child(mode: str, mib: int, workers: int) -> None:
    """One run, in its own process: make the data, run the batch, print timings as JSON."""
    import numpy

    count = (mib << 20) // 8
    rng = numpy.random.default_rng(0)
    if mode == "shared":
        data = SharedNumpyArray.zeros(count)
        rng.random(out=data.array)  # filled in place: the only copy is the shared one
    else:
        data = rng.random(count)
    expected = float(numpy.sum(data))
    print("ready", flush=True)  # the sampler notes the memory before the batch
    sys.stdin.readline()
    start = time.perf_counter()
    common = dict(blocks=workers)
    shared = {}
    if mode == "shared":
        shared["data"] = data
    else:
        # In a list: footprints compares instruction values with ==, which an ndarray does element-wise.
        common["data"] = [data]
    report = batch_main(common, dict(block=list(range(workers))), print_report=False,
                        sharedmemory_common_instructions=shared, scheduler=None)
    elapsed = time.perf_counter() - start
    total = sum(entry["report"] for entry in report.done)
    assert abs(total - expected) < 1e-6 * abs(expected), (total, expected)
    print(json.dumps(dict(seconds=elapsed)), flush=True)


def tree_pss(root: psutil.Process) -> float:
    """Sum of the PSS (MiB) of ``root`` and its descendants now."""
    total = 0
    for proc in [root] + root.children(recursive=True):
        try:
            total += proc.memory_full_info().pss
        except psutil.Error:
            pass
    return total / (1 << 20)


def measure(mode: str, mib: int, workers: int, interval: float) -> dict:
    """Run one child; sample its tree's memory every ``interval`` s (not at all if 0)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, __file__, "--child", mode, "--mib", str(mib), "--workers", str(workers)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        root = psutil.Process(proc.pid)
        before = peak = tree_pss(root)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        if interval:
            while proc.poll() is None:  # a benchmark may poll: sample while the batch runs
                peak = max(peak, tree_pss(root))
                time.sleep(interval)
        proc.wait()
        out = proc.stdout.read()
        if proc.returncode != 0:
            raise SystemExit(f"the {mode} run failed (exit {proc.returncode})")
        result = json.loads(out.strip().splitlines()[-1])
        result.update(before=before, peak=peak)
        return result
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=200, help="size of the array in MiB (default 200)")
    parser.add_argument("--workers", type=int, default=8, help="workers, one block each (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each mode, alternating (default 3)")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between memory samples (default 0.02)")
    parser.add_argument("--child", choices=["shared", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mib, args.workers)
        return
    if not sys.platform.startswith("linux"):
        raise SystemExit("this benchmark reads PSS from /proc: Linux only")
    results = {"shared": [], "plain": []}
    for _ in range(args.repeat):
        for mode in results:
            # Timed without sampling (reading PSS walks page tables, which slows the run down),
            # then run again to sample the memory.
            timed = measure(mode, args.mib, args.workers, 0)
            sampled = measure(mode, args.mib, args.workers, args.interval)
            results[mode].append(dict(seconds=timed["seconds"], before=sampled["before"], peak=sampled["peak"]))
    print(f"{args.mib} MiB float64 array to {args.workers} workers (each sums one block); "
          f"{args.repeat} run(s) of each, alternating; usable CPUs: {len(os.sched_getaffinity(0))}")
    rows = [
        ("time, median (s)", lambda rs: statistics.median(r["seconds"] for r in rs), "{:.2f}"),
        ("memory before the batch (MiB)", lambda rs: max(r["before"] for r in rs), "{:.0f}"),
        ("peak memory, all processes (MiB)", lambda rs: max(r["peak"] for r in rs), "{:.0f}"),
        ("peak added by the batch (MiB)", lambda rs: max(r["peak"] - r["before"] for r in rs), "{:.0f}"),
    ]
    print(f"{'':36}{'shared memory':>16}{'plain instruction':>20}")
    for label, stat, fmt in rows:
        print(f"{label:36}{fmt.format(stat(results['shared'])):>16}{fmt.format(stat(results['plain'])):>20}")
    print("memory is the sum of PSS of the caller, the boss and the workers, sampled every "
          f"{args.interval * 1000:g} ms")


if __name__ == "__main__":
    main()
