"""Shared arrays: workers read and write numpy arrays in place, without copies.

A SharedNumpyArray lives in memory shared by this process, the boss and every
worker.  Make it before the Boss, hand it over with
`sharedmemory_common_instructions`, and every worker gets it as an attribute.
Needs numpy:  pip install 'taylor[numpy]'

Run it with:  python examples/shared_arrays.py
"""

import numpy

from taylor import batch_main
from taylor.examples import Logarithmer, MatrixProducter, Summer  # noqa: F401 - registers the workers
from taylor.schedulers import LaxistScheduler
from taylor.shared import SharedNumpyArray

if __name__ == "__main__":
    # 1. Each worker takes the logarithm of one row, in place.
    table = SharedNumpyArray(numpy.arange(1.0, 13.0).reshape(3, 4))
    batch_main({}, dict(row=[0, 1, 2]), sharedmemory_common_instructions=dict(array=table), print_report=False)
    print("log by rows:\n", numpy.round(table.array, 3))

    # 2. Each worker adds its value to one shared total.  The lock makes the
    #    read-and-write of each worker whole; try use_lock=False to lose updates.
    total = SharedNumpyArray.zeros(1)
    values = list(range(1, 11))
    batch_main(dict(use_lock=True), dict(value=values), sharedmemory_common_instructions=dict(shared_sum=total),
               scheduler=LaxistScheduler(), print_report=False)  # all at once, to make them collide
    print(f"sum: {total[0]:g} (expected {sum(values)})")

    # 3. A matrix product by blocks: each worker computes C[i1:i2, j1:j2].
    rng = numpy.random.default_rng(0)
    A, B = SharedNumpyArray(rng.random((4, 6))), SharedNumpyArray(rng.random((6, 4)))
    C = SharedNumpyArray.zeros((4, 4))
    blocks = dict(i1=[0, 0, 2, 2], i2=[2, 2, 4, 4], j1=[0, 2, 0, 2], j2=[2, 4, 2, 4])
    batch_main({}, blocks, sharedmemory_common_instructions=dict(A=A, B=B, C=C), print_report=False)
    print("product by blocks equals A @ B:", numpy.allclose(C.array, A.array @ B.array))
