"""Every script in examples/ runs to the end, in a fresh interpreter, in a few seconds."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from taylor import schedulers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))


def _has_binding() -> bool:
    return "binded" in schedulers.MaxThreadsScheduler.footprint_retrieve().attr


def _has_numpy() -> bool:
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


# What a script needs that may be missing here, and how to tell.
NEEDS = {
    "memory_scheduling.py": (lambda: hasattr(schedulers, "MaxMemoryScheduler"),
                             "taylor.schedulers.MaxMemoryScheduler (schedulers issue) is not in this tree"),
    "external_program.py": (_has_binding, "MaxThreadsScheduler(binded=True) (schedulers issue) is not in this tree"),
    "shared_arrays.py": (_has_numpy, "numpy is not installed (pip install 'taylor[numpy]')"),
}


def test_there_are_examples():
    assert len(SCRIPTS) >= 5


@pytest.mark.timeout(40)
@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_example_runs(script):
    available, reason = NEEDS.get(os.path.basename(script), (lambda: True, ""))
    if not available():
        pytest.skip(reason)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{os.path.basename(script)} failed:\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip(), "an example shows what it did"
