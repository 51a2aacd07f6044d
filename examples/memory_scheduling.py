"""Memory-aware scheduling: never start more work than the memory allows.

Each instruction set declares the `memory` (MiB) its task needs; the memory
scheduler keeps the sum of what running workers declared under `max_memory`.
Here five tasks of 60 MiB under a 150 MiB cap run at most two at a time.

Run it with:  python examples/memory_scheduling.py
"""

import time

from taylor import Worker, batch_main
from taylor.schedulers import MaxMemoryScheduler


class Allocator(Worker):
    """Fills `size` MiB of memory, holds it a moment, and lets it go."""

    _footprint = dict(
        info="Use some memory for a while",
        attr=dict(size=dict(info="MiB to fill.", type=int)),
    )

    def _task(self):
        block = b"x" * (self.size << 20)  # touched, so really resident
        time.sleep(0.3)
        return len(block) >> 20


if __name__ == "__main__":
    report = batch_main(
        # `memory` is an attribute of every Worker: what the scheduler reads.
        common_instructions=dict(size=50, memory=60),
        individual_instructions=dict(name=[f"task-{i}" for i in range(5)]),
        scheduler=MaxMemoryScheduler(max_memory=150),
        print_report=False,
    )
    # How many ran at once? Count overlaps of the start and end times in the report.
    events = sorted([(e["start_time"], 1) for e in report.done] + [(e["end_time"], -1) for e in report.done])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    print(report.summary())
    print(f"at most {peak} tasks ran at once ({peak * 60} MiB declared, cap 150 MiB)")
