"""Example workers, used by the demo, the documentation and the tests.

Importing this module registers them with footprints, so that instructions
such as ``sleeping_time=0.5`` find :class:`Sleeper`.  The workers on shared
arrays need numpy only when they run (``pip install 'taylor[numpy]'``); they
take their arrays from ``sharedmemory_common_instructions`` (see
:class:`taylor.shared.SharedNumpyArray`).

Depends only on :mod:`taylor.worker` and :mod:`taylor.shared`, as a user's workers would: never on
the Boss, the boss loop or the command line.
"""

from __future__ import annotations

import time
from typing import Any, Dict

from .shared import SharedNumpyArray
from .worker import Worker

__all__ = ["Sleeper", "Summer", "Logarithmer", "MatrixProducter"]


class Sleeper(Worker):
    """Sleeps ``sleeping_time`` seconds, then reports what it did and where it ran."""

    _footprint = dict(
        info="Sleep for a while",
        attr=dict(
            sleeping_time=dict(
                info="Seconds to sleep.",
                type=float,
            ),
            wakeup_sentence=dict(
                info="What to say when waking up.",
                optional=True,
                default="Hello, world!",
            ),
        ),
    )

    def _task(self) -> Dict[str, Any]:
        start = time.monotonic()
        time.sleep(self.sleeping_time)
        return dict(sentence=self.wakeup_sentence, slept=time.monotonic() - start, binding=self.binding())


class Summer(Worker):
    """Adds ``value`` to ``shared_sum[0]``, a shared array, under its lock if ``use_lock``.

    The addition is a read, then a write: ``hold`` seconds between the two
    widen the window in which another worker's update is lost when the lock
    is not used.
    """

    _footprint = dict(
        info="Add a value to a shared sum",
        attr=dict(
            value=dict(
                info="Value to add.",
                type=float,
            ),
            shared_sum=dict(
                info="Shared array whose element 0 receives the sum.",
                type=SharedNumpyArray,
            ),
            use_lock=dict(
                info="Take the array's lock around the read and the write (without it, updates may be lost).",
                type=bool,
                optional=True,
                default=True,
            ),
            hold=dict(
                info="Seconds to wait between reading the sum and writing it back.",
                type=float,
                optional=True,
                default=0.0,
            ),
        ),
    )

    def _add(self) -> None:
        current = self.shared_sum[0]
        if self.hold:
            time.sleep(self.hold)
        self.shared_sum[0] = current + self.value

    def _task(self) -> Dict[str, Any]:
        if self.use_lock:
            with self.shared_sum:
                self._add()
        else:
            self._add()
        return dict(added=self.value, locked=self.use_lock)


class Logarithmer(Worker):
    """Replaces row ``row`` of the shared ``array`` by its natural logarithm, in place."""

    _footprint = dict(
        info="Logarithm of one row of a shared array",
        attr=dict(
            row=dict(
                info="Index of the row to work on.",
                type=int,
            ),
            array=dict(
                info="Shared array (2 dimensions) to work on.",
                type=SharedNumpyArray,
            ),
        ),
    )

    def _task(self) -> int:
        import numpy

        numpy.log(self.array[self.row], out=self.array[self.row])  # rows are views: no copy, no lock needed
        return self.row


class MatrixProducter(Worker):
    """Computes the block ``C[i1:i2, j1:j2]`` of the product ``C = A @ B`` of shared matrices.

    Blocks are half-open ranges, as in Python slices: ``i2`` and ``j2`` are
    excluded.  Workers write disjoint blocks of ``C``, so they need no lock.
    """

    _footprint = dict(
        info="One block of a product of shared matrices",
        attr=dict(
            A=dict(info="Left shared matrix.", type=SharedNumpyArray),
            B=dict(info="Right shared matrix.", type=SharedNumpyArray),
            C=dict(info="Shared matrix that receives the product.", type=SharedNumpyArray),
            i1=dict(info="First row of the block.", type=int),
            i2=dict(info="Row after the last row of the block.", type=int),
            j1=dict(info="First column of the block.", type=int),
            j2=dict(info="Column after the last column of the block.", type=int),
        ),
    )

    def _task(self) -> Dict[str, Any]:
        import numpy

        numpy.matmul(self.A[self.i1:self.i2, :], self.B[:, self.j1:self.j2],
                     out=self.C[self.i1:self.i2, self.j1:self.j2])
        return dict(rows=(self.i1, self.i2), columns=(self.j1, self.j2))
