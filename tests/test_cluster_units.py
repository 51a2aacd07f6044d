"""The cluster package's parts that need no cluster: imports, class transport, capacity, connection errors."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("distributed")

from dask_cluster import free_port  # noqa: E402

from taylor.cluster import ClusterError  # noqa: E402
from taylor.cluster.capacity import ClusterCapacity  # noqa: E402
from taylor.cluster.launcher import DaskLauncher  # noqa: E402
from taylor.cluster.pickling import dumps_class, loads_class  # noqa: E402
from taylor.worker import OK, _outcome, prepare_class  # noqa: E402

GIB = 1 << 30


def test_import_taylor_imports_no_dask():
    code = "import sys, taylor, taylor.cluster; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('dask', 'distributed', 'cloudpickle', 'tornado')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "[]"


SCRIPT = textwrap.dedent("""
    import sys
    from taylor import Worker
    from taylor.cluster.pickling import dumps_class

    class Base(Worker):
        _abstract = True
        _footprint = dict(attr=dict(n=dict(type=int, optional=True, default=3)))

        def double(self):
            return 2 * self.n

    class ByValue(Base):
        _footprint = dict(attr=dict(kind=dict(values=["by-value"])))

        def _task(self):
            return (self.kind, super().double(), type(self).__module__)

    sys.stdout.buffer.write(dumps_class(ByValue))
""")


def test_class_of_the_callers_script_travels_by_value(tmp_path):
    """A Worker class (and its abstract base) defined in ``__main__`` arrives whole: footprints accepts
    it, it runs, and receiving it again gives the same class (footprints registers it once)."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    data = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=30, check=True).stdout
    cls = loads_class(data)
    assert loads_class(data) is cls and pickle.loads(data) is cls
    assert cls.__module__ == "__main__" and {"kind", "n", "memory", "timeout"} <= set(cls._footprint.attr)
    prepare_class(cls)
    assert _outcome(cls, dict(kind="by-value", n=5, name="x", scheduler_hooks=[])) == (OK, ("by-value", 10, "__main__"))
    assert cls(dict(kind="by-value")).n == 3  # footprints' own construction, defaults included


def test_importable_class_travels_by_reference():
    from cluster_workers import Where

    data = dumps_class(Where)
    assert b"cluster_workers" in data and len(data) < 200
    assert pickle.loads(data) is Where


def _identity(*workers):
    return {"workers": {address: dict(host="127.0.0.1", name=address[-1], nthreads=threads, memory_limit=limit)
                        for address, threads, limit in workers}}


def test_capacity_says_where_each_figure_comes_from():
    capacity = ClusterCapacity("tcp://s:1")
    joined, left = capacity.update(_identity(("tcp://a:1", 2, GIB), ("tcp://b:1", 4, 3 * GIB)))
    assert sorted(joined) == ["tcp://a:1", "tcp://b:1"] and left == []
    described = capacity.describe()
    assert described["workers"][0] == 2 and described["cpus"][0] == 6 and described["memory_mib"][0] == 4096
    assert "tcp://b:1" in described["cpus"][1] and "--memory-limit" in described["memory_mib"][1]
    assert capacity.scheduler_limits() == {"max_threads": 6 * capacity.ahead, "max_memory": 4096}
    # A worker leaves, one joins: the figures follow; a worker without a memory limit is not capped.
    joined, left = capacity.update(_identity(("tcp://b:1", 4, 3 * GIB), ("tcp://c:1", 1, 0)))
    assert joined == ["tcp://c:1"] and left == ["tcp://a:1"]
    assert capacity.threads == 5 and capacity.scheduler_limits()["max_memory"] is None
    assert "no memory limit" in capacity.describe()["memory_mib"][1]


def test_placement_needs_the_memory_free_on_one_worker():
    capacity = ClusterCapacity()
    capacity.update(_identity(("tcp://a:1", 2, GIB), ("tcp://b:1", 2, 3 * GIB)))
    big = capacity.place(2048)
    assert big.address == "tcp://b:1"
    capacity.assign(big, 2048)
    assert capacity.place(2048) is None  # 4 GiB in all, but no single worker has 2 GiB free now
    assert capacity.place(1024).address == "tcp://a:1"  # the least loaded
    capacity.release("tcp://b:1", 2048)
    assert capacity.place(2048).address == "tcp://b:1"
    assert capacity.largest_memory_mib == 3072


def test_a_worker_takes_ahead_tasks_per_thread_at_most():
    capacity = ClusterCapacity(ahead=2)
    capacity.update(_identity(("tcp://a:1", 1, GIB), ("tcp://b:1", 2, GIB)))
    placed = []
    while capacity.has_room():
        worker = capacity.place()
        capacity.assign(worker, 0)
        placed.append(worker.address)
    assert sorted(placed) == ["tcp://a:1"] * 2 + ["tcp://b:1"] * 4  # spread by thread, then full
    assert capacity.place() is None
    assert not capacity.wants_more()
    capacity.release("tcp://a:1", 0)
    assert capacity.place().address == "tcp://a:1"  # the next goes where a place was freed
    assert capacity.wants_more()  # a:1 is down to half of its two


def test_unreachable_scheduler_is_a_clear_error_not_a_hang():
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    launcher = DaskLauncher(address, connect_timeout=2)
    began = time.monotonic()
    with pytest.raises(ClusterError) as caught:
        launcher.open()
    assert time.monotonic() - began < 20
    message = str(caught.value)
    assert address in message and "Check that the scheduler is running" in message


def test_scheduler_file_missing_or_empty(tmp_path):
    with pytest.raises(ClusterError, match="neither a scheduler address"):
        DaskLauncher(str(tmp_path / "nowhere.json")).open()
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(ClusterError, match="holds no scheduler address"):
        DaskLauncher(str(empty)).open()
    stale = tmp_path / "stale.json"
    stale.write_text(f'{{"address": "tcp://127.0.0.1:{free_port()}"}}')
    with pytest.raises(ClusterError, match=f"scheduler file {stale}"):
        DaskLauncher(str(stale), connect_timeout=2).open()


def test_mode_is_checked():
    with pytest.raises(ValueError, match="mode"):
        DaskLauncher("tcp://127.0.0.1:1", mode="threads")
