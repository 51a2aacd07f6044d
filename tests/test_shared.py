"""SharedNumpyArray: an ndarray in shared memory that workers write in place."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pytest

np = pytest.importorskip("numpy")

from taylor import Boss, InstructionsError, Worker, batch_main  # noqa: E402
from taylor.examples import Logarithmer, MatrixProducter, Summer  # noqa: E402, F401 - registered
from taylor.schedulers import LaxistScheduler  # noqa: E402
from taylor.util import SharedNumpyArray  # noqa: E402

DTYPES = ["float32", "float64", "int32", "int64"]


class Masker(Worker):
    """Masks the elements of ``data`` at ``masked`` and writes ``value`` at ``index``."""

    _footprint = dict(attr=dict(
        data=dict(type=SharedNumpyArray),
        index=dict(type=int),
        value=dict(type=float),
        masked=dict(type=int),
    ))

    def _task(self):
        self.data[self.index] = self.value
        self.data[self.masked] = np.ma.masked
        return os.getpid()


class Leaker(Worker):
    """Returns its shared array itself as its report (which cannot be sent)."""

    _footprint = dict(attr=dict(leaked=dict(type=SharedNumpyArray), leak=dict(values=[True], type=bool)))

    def _task(self):
        return self.leaked


class LockHolder(Worker):
    """Takes the lock of ``locked`` and dies holding it."""

    _footprint = dict(attr=dict(locked=dict(type=SharedNumpyArray), die_holding=dict(values=[True], type=bool)))

    def _task(self):
        self.locked.acquire()
        os.kill(os.getpid(), signal.SIGKILL)


def run(common, individual, shared, **options):
    options.setdefault("print_report", False)
    return batch_main(common, individual, sharedmemory_common_instructions=shared, **options)


def test_importing_taylor_does_not_import_numpy():
    code = ("import sys, taylor, taylor.examples, taylor.util, taylor.cli; "
            "assert 'numpy' not in sys.modules, 'numpy imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("dtype", DTYPES)
def test_behaves_like_the_ndarray(dtype):
    original = np.arange(12, dtype=dtype).reshape(3, 4)
    shared = SharedNumpyArray(original)
    assert shared.shape == (3, 4) and shared.dtype == np.dtype(dtype) and shared.ndim == 2 and len(shared) == 3
    assert shared[1, 2] == original[1, 2]
    np.testing.assert_array_equal(shared[:, 1], original[:, 1])
    np.testing.assert_array_equal(np.sum(shared, axis=0), original.sum(axis=0))
    np.testing.assert_array_equal(shared * 2 + 1, original * 2 + 1)
    np.testing.assert_array_equal(1 - shared, 1 - original)
    shared[0] = 7  # the copy is the shared one; the original is untouched
    assert original[0, 0] == 0 and shared.array[0, 0] == 7
    row = shared[2]  # a view: writes go to shared memory
    row[:] = 5
    assert (shared.array[2] == 5).all()
    handle = shared
    shared += 1  # in place: still the same shared handle
    assert shared is handle and shared.array[2, 0] == 6
    np.add(shared, 1, out=shared)
    assert shared.array[2, 0] == 7
    assert shared == shared and shared != SharedNumpyArray(original)  # handles compare by identity
    np.testing.assert_array_equal(np.equal(shared, shared.array), np.ones((3, 4), bool))


def test_unsupported_dtypes_and_layout_changes_are_refused():
    with pytest.raises(TypeError, match="dtype"):
        SharedNumpyArray(np.array(["a", "b"]))
    with pytest.raises(TypeError, match="dtype"):
        SharedNumpyArray(np.array([object()]))
    shared = SharedNumpyArray(np.zeros(4))
    with pytest.raises(AttributeError, match="fixed"):
        shared.shape = (2, 2)


def test_cannot_be_pickled_nor_sent_as_an_ordinary_instruction():
    shared = SharedNumpyArray(np.zeros(3))
    with pytest.raises(TypeError, match="sharedmemory_common_instructions"):
        pickle.dumps(shared)
    with Boss(scheduler=LaxistScheduler()) as boss:
        with pytest.raises(InstructionsError, match="sharedmemory_common_instructions"):
            boss.set_instructions(dict(shared_sum=shared), dict(value=[1.0, 2.0]))
    assert boss.get_report()["workers_report"] == []  # nothing was sent, nothing ran


def test_returning_it_as_a_report_is_a_clear_worker_error():
    shared = SharedNumpyArray.zeros(2)
    report = run(dict(leak=True), dict(name=["leaker"]), dict(leaked=shared), on_error="continue")
    (failure,) = report.failures
    assert failure["name"] == "leaker" and "sharedmemory_common_instructions" in str(failure["report"])


def test_workers_write_in_place_and_the_caller_sees_it():
    values = np.arange(1, 13, dtype="float64").reshape(4, 3)
    shared = SharedNumpyArray(values)
    report = run({}, dict(row=[0, 1, 2, 3]), dict(array=shared), scheduler=LaxistScheduler())
    assert sorted(w["report"] for w in report.workers) == [0, 1, 2, 3]
    np.testing.assert_allclose(shared.array, np.log(values))


def test_matrix_product_by_blocks():
    rng = np.random.default_rng(0)
    a, b = SharedNumpyArray(rng.random((6, 5))), SharedNumpyArray(rng.random((5, 4)))
    c = SharedNumpyArray.zeros((6, 4))
    blocks = dict(i1=[0, 0, 3, 3], i2=[3, 3, 6, 6], j1=[0, 2, 0, 2], j2=[2, 4, 2, 4])
    run({}, blocks, dict(A=a, B=b, C=c))
    np.testing.assert_allclose(c.array, a.array @ b.array)


def test_summer_with_the_lock_is_exact():
    total = SharedNumpyArray.zeros(1, dtype="int64")
    values = list(range(1, 9))
    run(dict(use_lock=True, hold=0.02), dict(value=values), dict(shared_sum=total), scheduler=LaxistScheduler())
    assert total[0] == sum(values)


def test_summer_without_the_lock_loses_updates():
    # Three workers read the sum at once, wait, then write: the last write wins.
    total = SharedNumpyArray.zeros(1)
    run(dict(use_lock=False, hold=1.0), dict(value=[1.0, 10.0, 100.0]), dict(shared_sum=total),
        scheduler=LaxistScheduler())
    assert total[0] < 111.0


def test_masked_arrays_share_data_and_mask():
    data = np.ma.array(np.arange(6, dtype="float32"), mask=[0, 1, 0, 0, 0, 0])
    shared = SharedNumpyArray(data)
    assert shared.sum() == data.sum()  # the masked element is left out
    run({}, dict(index=[1, 2], value=[10.0, 20.0], masked=[4, 5]), dict(data=shared))
    assert list(shared.mask) == [False, False, False, False, True, True]  # writing 10 unmasked element 1
    assert list(shared.data[:4]) == [0.0, 10.0, 20.0, 3.0]
    assert shared.sum() == 33.0


def test_the_lock_is_released_when_its_holder_dies():
    shared = SharedNumpyArray.zeros(1)
    report = run(dict(die_holding=True), dict(name=["holder"]), dict(locked=shared), on_error="continue")
    assert report.failures and "SIGKILL" in str(report.failures[0]["report"])
    assert shared.acquire(block=False)  # not held by the dead worker
    shared.release()


def test_lock_excludes_threads_and_processes():
    shared = SharedNumpyArray.zeros(1)
    with shared:
        assert not shared.acquire(block=False)  # another thread (here: the same one) waits
        pid = os.fork()
        if pid == 0:
            os._exit(0 if not shared.acquire(block=False) else 1)
        assert os.waitpid(pid, 0)[1] == 0
    assert shared.acquire(block=False)
    shared.release()
    with pytest.raises(RuntimeError, match="not held"):
        shared.release()


def test_lock_excludes_threads_of_one_process():
    # Record locks alone do not exclude threads of one process: the array also takes a thread lock.
    counter = SharedNumpyArray.zeros(1, dtype="int64")

    def add():
        for _ in range(50):
            with counter:
                value = counter[0]
                time.sleep(0)  # let another thread run between the read and the write
                counter[0] = value + 1

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert counter[0] == 200


def test_scalar_conversions():
    shared = SharedNumpyArray(np.array(3, dtype="int32"))  # 0-d, as numpy requires
    assert float(shared) == 3.0 and int(shared) == 3 and [10, 20, 30, 40][shared] == 40
