"""A first batch: count the lines of a few files, one worker process per file.

Run it with:  python examples/first_batch.py
"""

import os
import tempfile

from taylor import Worker, batch_main


class LineCounter(Worker):
    """Counts the lines of one file."""

    # The footprint declares the worker's instructions: here one, `path`.
    # Footprints picks this class for any instruction set that has a `path`.
    _footprint = dict(
        info="Count the lines of a file",
        attr=dict(path=dict(info="The file to read.")),
    )

    def _task(self):
        # Runs in the worker's own process; the return value is its report.
        with open(self.path) as lines:
            return sum(1 for _ in lines)


if __name__ == "__main__":  # the guard matters: taylor forks this process
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for name, count in (("a.txt", 3), ("b.txt", 5), ("c.txt", 8)):
            paths.append(os.path.join(folder, name))
            with open(paths[-1], "w") as out:
                out.write("a line\n" * count)
        # One worker per row of the individual instructions (lists of equal
        # length); the common instructions would go to every worker.
        report = batch_main(common_instructions={},
                            individual_instructions=dict(path=paths, name=["a", "b", "c"]))
    # batch_main printed one line per worker and a summary; it also returns the report.
    print("total lines:", sum(entry["report"] for entry in report.done))
