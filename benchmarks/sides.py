"""Side by side: one measurement in a fresh interpreter that imports taylor from a given source tree
(``--baseline``), and a series shown as its median (min-max).

Shared by the benchmarks that compare contenders or trees round by round; each runs its own script
with ``--measure ...``, which prints its result as the last line of JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import List


def run(script: str, arguments: List[str], root: Path, what: str) -> dict:
    """Run ``script --measure *arguments`` with taylor from ``root``; its result (``what`` names
    the measurement in the error when it fails)."""
    out = subprocess.run([sys.executable, script, "--measure", *arguments], capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, PYTHONPATH=str(root)))
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_range(values: list, fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"
