"""What the tasks of ``taylor run`` print, brought to taylor's own stdout and stderr.

Each task writes to files, never to the terminal: a task's output is printed
whole when it ends (grouped, the default), in input order with ``-k``, or
line by line as it comes (``--line-buffer``), each line optionally prefixed
with the task's values (``--tag``).  Small outputs arrive inside the task's
report (the boss had them in its scratch file anyway); large ones as files,
streamed to the terminal in chunks, never held whole in memory.

Depends on nothing of taylor: the command line hands it files and reports.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any, Callable, Dict, Optional, Tuple

__all__ = ["OutputPrinter", "take_output", "OUTPUT_KEYS"]

#: Report keys that carry output for the command line only (never journaled or reported).
OUTPUT_KEYS = ("stdout_data", "stdout_file", "stderr_data", "stderr_file")

CHUNK = 1 << 20

Piece = Tuple[Optional[bytes], Optional[str]]  # (the bytes, or the file holding them)


def take_output(report: Any) -> Dict[str, Piece]:
    """Remove the output keys from a task's report (a dict, or an exception's attributes); return them."""
    holder = report if isinstance(report, dict) else getattr(report, "__dict__", None)
    found: Dict[str, Piece] = {}
    if not isinstance(holder, dict):
        return found
    for stream in ("stdout", "stderr"):
        data, path = holder.pop(stream + "_data", None), holder.pop(stream + "_file", None)
        if data is not None or path is not None:
            found[stream] = (data, path)
    return found


class OutputPrinter:
    """Prints each task's output on taylor's stdout/stderr as ``--group``/``--line-buffer``/``-k``/``--tag`` say.

    ``order`` maps task names to their input position (for ``-k``), ``tags``
    to their ``--tag`` prefix.  ``private`` is the directory whose files are
    taylor's own (deleted once printed); ``logdir`` the user's, where the
    non-empty ``<worker>.out``/``.err`` files of ``private`` are moved once
    printed (as ``<task>.out``/``.err``; when the tasks did not write to
    ``logdir`` themselves).  ``clear`` is called before anything is written
    (it takes the progress line away).
    """

    def __init__(self, mode: str, private: str, order: Dict[str, int], tags: Optional[Dict[str, str]] = None,
                 keep_order: bool = False, logdir: Optional[str] = None,
                 clear: Callable[[], None] = lambda: None) -> None:
        self.mode = mode  # "group", "line" or "quiet"
        self.private = private
        self.order = order
        self.tags = tags
        self.keep_order = keep_order
        self.logdir = logdir
        self.clear = clear
        self._held: Dict[int, Tuple[str, Dict[str, Piece]]] = {}
        self._next = 0
        self._skipped: set = set()
        self._offsets: Dict[str, int] = {}  # --line-buffer: bytes of each live file printed so far

    # ------------------------------------------------------------ grouped
    def finished(self, name: str, pieces: Dict[str, Piece], worker: Optional[str] = None) -> None:
        """Task ``name`` ended (for good: no retry follows) with ``pieces`` of output; ``worker`` names its files
        (the worker of its last attempt)."""
        if self.mode == "line":
            self._finish_live(name, worker or name, keep=True)
            return
        if self.mode == "quiet":
            self._discard(pieces, name)
            return
        if not self.keep_order:
            self._print(name, pieces)
            return
        self._held[self.order.get(name, -1)] = (name, pieces)
        self._release()

    def skip(self, name: str) -> None:
        """A task that will print nothing (never started, or dropped): ``-k`` goes past it."""
        if self.keep_order and name in self.order:
            self._skipped.add(self.order[name])
            self._release()

    def discard(self, name: str, pieces: Dict[str, Piece], worker: str) -> None:
        """Output of an attempt that is retried: not shown (GNU parallel shows the last attempt only;
        ``--line-buffer`` has shown it as it came)."""
        if self.mode == "line":
            self._finish_live(name, worker, keep=False)
        else:
            for _, path in pieces.values():
                self._remove(path, None)

    def close(self) -> None:
        """At the end of the run: print what ``-k`` still holds, in order, whatever is missing before it."""
        for position in sorted(self._held):
            if position not in self._held:  # dropped: the reader is gone
                continue
            name, pieces = self._held.pop(position)
            self._print(name, pieces)
        if self.mode == "line":
            self.poll()

    def _release(self) -> None:
        while True:
            if self._next in self._skipped:
                self._skipped.discard(self._next)
            elif self._next in self._held:
                name, pieces = self._held.pop(self._next)
                self._print(name, pieces)
            else:
                return
            self._next += 1

    def _discard(self, pieces: Dict[str, Piece], name: Optional[str]) -> None:
        for _, path in pieces.values():
            self._remove(path, name)

    def _remove(self, path: Optional[str], name: Optional[str]) -> None:
        """Delete a file of ``private`` once printed, or move it into ``logdir`` as task ``name``'s."""
        if not path or os.path.dirname(path) != self.private:
            return
        try:
            ext = os.path.splitext(path)[1]
            if name is not None and self.logdir and ext in (".out", ".err") and os.path.getsize(path):
                shutil.move(path, os.path.join(self.logdir, name.replace(os.sep, "_") + ext))
            else:
                os.unlink(path)
        except OSError:
            pass

    def _print(self, name: str, pieces: Dict[str, Piece]) -> None:
        try:
            self._print_pieces(name, pieces)
        except BrokenPipeError:
            self._reader_gone(pieces)

    def _reader_gone(self, pieces: Dict[str, Piece]) -> None:
        """Whoever read taylor's output is gone (``taylor run ... | head``): the tasks go on, unprinted."""
        self.mode = "quiet"
        self._discard(pieces, None)
        for _, held in self._held.values():
            self._discard(held, None)
        self._held.clear()

    def _print_pieces(self, name: str, pieces: Dict[str, Piece]) -> None:
        if not pieces:
            return
        self.clear()
        tag = self.tags.get(name, "").encode() if self.tags is not None else None
        for stream, target in (("stdout", sys.stdout), ("stderr", sys.stderr)):
            if stream not in pieces:
                continue
            data, path = pieces[stream]
            target.flush()
            fd = target.fileno()
            if data is not None:
                _write(fd, _tagged(data, tag) if tag is not None else data)
            elif path is not None:
                try:
                    _copy(path, fd, tag)
                except OSError as exc:
                    print(f"taylor: cannot read the output of task {name} from {path}: {exc.strerror or exc}",
                          file=sys.stderr)
                self._remove(path, name)

    # --------------------------------------------------------- line buffer
    def poll(self) -> None:
        """``--line-buffer``: print the whole lines the running tasks wrote since the last call."""
        try:
            entries = list(os.scandir(self.private))
        except OSError:
            return
        for entry in entries:
            name, ext = os.path.splitext(entry.name)
            if ext in (".out", ".err"):
                self._emit(entry.path, name, whole=False)

    def _emit(self, path: str, name: str, whole: bool) -> None:
        offset = self._offsets.get(path, 0)
        try:
            with open(path, "rb") as stream:
                stream.seek(offset)
                while True:
                    chunk = stream.read(CHUNK)
                    if not chunk:
                        break
                    if not whole:
                        cut = chunk.rfind(b"\n") + 1
                        if not cut:
                            break  # no whole line yet (or one longer than CHUNK: printed when it ends)
                        chunk = chunk[:cut]
                        stream.seek(offset + cut)
                    offset += len(chunk)
                    self._write_lines(name, path, chunk)
        except FileNotFoundError:
            return
        except BrokenPipeError:
            self._reader_gone({})
        self._offsets[path] = offset

    def _write_lines(self, name: str, path: str, chunk: bytes) -> None:
        if self.mode == "quiet":
            return
        self.clear()
        target = sys.stderr if path.endswith(".err") else sys.stdout
        target.flush()
        tag = None
        if self.tags is not None:  # a retried attempt's files are named <task>#<attempt>
            tag = self.tags.get(name, self.tags.get(name.rpartition("#")[0], "")).encode()
        _write(target.fileno(), _tagged(chunk, tag) if tag is not None else chunk)

    def _finish_live(self, name: str, worker: str, keep: bool) -> None:
        safe = worker.replace(os.sep, "_")
        for ext in (".out", ".err"):
            path = os.path.join(self.private, safe + ext)
            self._emit(path, safe, whole=True)
            self._offsets.pop(path, None)
            if os.path.exists(path):
                self._remove(path, name if keep else None)


def _tagged(data: bytes, tag: bytes) -> bytes:
    """``data`` with ``tag`` before each line (a last line without newline gets one)."""
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()
    return b"".join(tag + line + b"\n" for line in lines)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy(path: str, fd: int, tag: Optional[bytes]) -> None:
    """Stream a file to ``fd`` (prefixing lines with ``tag``), a chunk at a time."""
    with open(path, "rb") as stream:
        if tag is None:
            size = os.fstat(stream.fileno()).st_size
            offset = 0
            try:
                while offset < size:
                    sent = os.sendfile(fd, stream.fileno(), offset, min(CHUNK, size - offset))
                    if not sent:
                        break
                    offset += sent
                return
            except OSError:
                stream.seek(offset)
            while True:
                chunk = stream.read(CHUNK)
                if not chunk:
                    return
                _write(fd, chunk)
        start = True  # at the start of a line: a line longer than CHUNK comes in pieces, tagged once
        while True:
            line = stream.readline(CHUNK)
            if not line:
                break
            ends = line.endswith(b"\n")
            _write(fd, (tag if start else b"") + line + (b"" if ends else b""))
            start = ends
        if not start:
            _write(fd, b"\n")
