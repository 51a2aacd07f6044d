"""Reuse mode's channels and the Executor's fast paths: what crosses them arrives whole.

A slot process gets its tasks on a pipe (large ones in a memory file) and sends
its outcomes on another (large ones in several writes, read in place by the
boss); the Executor pickles calls with the C pickler unless cloudpickle must
send something by value, and wakes its manager once per burst of submits.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import pytest

import taylor


def _digest_and_echo(data: bytes, factor: int) -> tuple:
    return hashlib.sha256(data).hexdigest(), data * factor, os.getpid()


def test_large_calls_and_results_cross_a_reused_process_whole():
    sizes = [100, 40 << 10, 1 << 20, 3 << 20, 10, 2 << 20]  # under and over the inline size, and a pipe's
    payloads = [bytes([i + 1]) * size for i, size in enumerate(sizes)]
    with taylor.Executor(max_workers=2, reuse=True) as executor:
        futures = [executor.submit(_digest_and_echo, data, 2) for data in payloads]
        results = [future.result(timeout=60) for future in futures]
    for data, (digest, echoed, _) in zip(payloads, results):
        assert digest == hashlib.sha256(data).hexdigest()
        assert echoed == data * 2
    assert len({pid for *_, pid in results}) <= 2  # the same processes took them one after the other


def _square(x: int) -> int:
    return x * x


def test_a_burst_of_calls_all_complete_in_order():
    with taylor.Executor(max_workers=2, reuse=True) as executor:
        assert list(executor.map(_square, range(3000), timeout=60)) == [x * x for x in range(3000)]
        # and after the burst, a lone call still wakes the manager
        assert executor.submit(_square, 12).result(timeout=20) == 144


def _area(shape) -> float:
    return shape.area()


def test_instances_of_a_class_made_in_a_function_go_by_value():
    pytest.importorskip("cloudpickle")
    with taylor.Executor(max_workers=1, reuse=True) as executor:
        class Square:  # not importable by name: cloudpickle sends it by value, pickle would fail in the process
            def __init__(self, side: float) -> None:
                self.side = side

            def area(self) -> float:
                return self.side ** 2

        assert executor.submit(_area, Square(3.0)).result(timeout=20) == 9.0
        assert executor.submit(_square, 5).result(timeout=20) == 25  # the C pickler's path still


def test_instances_of_a_main_class_made_after_the_executor_go_by_value(tmp_path):
    pytest.importorskip("cloudpickle")
    script = tmp_path / "late_class.py"
    script.write_text(textwrap.dedent("""
        import taylor

        def area(shape):
            return shape.side ** 2

        with taylor.Executor(max_workers=1, reuse=True) as ex:
            class Late:  # in __main__ but made after the processes were forked: pickle's name would not be found
                def __init__(self, side):
                    self.side = side

            print(ex.submit(area, Late(4)).result(timeout=20))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["16"]
