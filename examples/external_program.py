"""A worker that runs an external program, on the CPU the scheduler bound it to.

With `binded=True` the scheduler pins each worker to its own CPU; a program
the worker starts inherits that CPU affinity.  Tell the program how many
threads to use as well (OMP_NUM_THREADS for OpenMP codes, or its own option),
or it may start one thread per CPU of the machine on a single CPU.

Run it with:  python examples/external_program.py
"""

import os
import subprocess
import sys

from taylor import Worker, batch_main
from taylor.schedulers import MaxThreadsScheduler

# The "external program": prints what it was given and the CPUs it may use.
PROGRAM = ("import os, sys; cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'; "
           "print(sys.argv[1], 'threads:', os.environ['OMP_NUM_THREADS'], 'cpus:', cpus)")


class Program(Worker):
    """Runs PROGRAM on one input, with as many threads as the worker has CPUs."""

    _footprint = dict(
        info="Run an external program",
        attr=dict(input=dict(info="What to give the program.")),
    )

    def _task(self):
        cpus = self.binding()  # e.g. [1] when bound to CPU 1; [None] when not bound
        threads = os.cpu_count() if cpus == [None] else len(cpus)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        # A non-zero exit raises CalledProcessError: the worker fails and the batch reports it.
        done = subprocess.run([sys.executable, "-c", PROGRAM, self.input], env=env,
                              capture_output=True, text=True, check=True, timeout=60)
        return dict(binding=cpus, output=done.stdout.strip())


if __name__ == "__main__":
    report = batch_main({}, dict(input=["first", "second", "third", "fourth"]),
                        scheduler=MaxThreadsScheduler(max_threads=2, binded=True), print_report=False)
    for entry in report.done:
        print(f"worker bound to {entry['report']['binding']}: {entry['report']['output']}")
