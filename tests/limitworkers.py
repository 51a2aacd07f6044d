"""Worker classes for tests/test_limits.py (imported before any Boss is created)."""

from __future__ import annotations

from taylor import Worker


class Hog(Worker):
    """Allocates ``hog`` MiB (a real allocation, written to) and reports its size."""

    _footprint = dict(attr=dict(hog=dict(type=int)))

    def _task(self):
        data = bytearray(self.hog << 20)
        data[::4096] = b"x" * len(data[::4096])  # touch every page
        return len(data)
