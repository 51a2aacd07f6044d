"""Single open file: instructions naming the same file never run at the same time.

The files of an instruction are the values of its ``file_keys`` (a string, or
a list of strings; missing or None values are ignored).  Within that rule and
``max_threads``, instructions start in arrival order.  An instruction whose
file is open waits on that file only, and is reconsidered when the file is
closed, so a long queue of conflicting instructions is never scanned again.

Like every scheduler module, imports nothing of taylor outside :mod:`taylor.schedulers` and
:mod:`taylor.errors`: never the boss loop, the Boss or a worker process's side.
"""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from footprints.stdtypes import FPList

from .base import Decision, Pending, Running, give_back, owns_queue
from .queues import PackedStore, PlainStore
from .threads import MaxThreadsScheduler

__all__ = ["SingleOpenFileScheduler", "FileQueue", "DEFAULT_FILE_KEYS"]

DEFAULT_FILE_KEYS = ("file", "fileA", "fileB")

_Entry = Tuple[int, int, int, Optional[str]]  # (seq, unique, handle in the store, file it waited on)


class FileQueue:
    """Pending instructions: a ready heap in arrival order, and per-file waiting heaps.

    The instructions themselves are packed in a :class:`~.queues.PackedStore`.
    """

    def __init__(self, packed: bool = True) -> None:
        self.store: Any = PackedStore() if packed else PlainStore()
        self.ready: List[_Entry] = []
        self.waiting: Dict[str, List[_Entry]] = defaultdict(list)
        self.open: Set[str] = set()
        self._size = 0
        self._seq = itertools.count()
        self._front = itertools.count(-1, -1)
        self._unique = itertools.count()

    def extend(self, items: Any) -> None:
        for item in items:
            self.append(item)

    def append(self, item: Any) -> None:
        self._push(next(self._seq), item)

    def insert(self, index: int, item: Any) -> None:
        self._push(next(self._front) if index == 0 else next(self._seq), item)

    def _push(self, seq: int, item: Any) -> None:
        heapq.heappush(self.ready, (seq, next(self._unique), self.store.put(item), None))
        self._size += 1

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[Any]:
        entries = list(self.ready)
        for heap in self.waiting.values():
            entries.extend(heap)
        return (self.store.get(entry[2]) for entry in sorted(entries, key=lambda e: (e[0], e[1])))

    def __getitem__(self, index: int) -> Any:
        return list(self)[index]

    def release(self, name: str) -> None:
        """``name`` was closed: the first instruction waiting on it may start."""
        heap = self.waiting.get(name)
        if heap:
            seq, unique, item, _ = heapq.heappop(heap)
            heapq.heappush(self.ready, (seq, unique, item, name))
        if not heap:
            self.waiting.pop(name, None)

    def pop_ready(self) -> Optional[_Entry]:
        if not self.ready:
            return None
        self._size -= 1
        return heapq.heappop(self.ready)

    def wait_on(self, name: str, entry: _Entry) -> None:
        seq, unique, item, came_from = entry
        heapq.heappush(self.waiting[name], (seq, unique, item, None))
        self._size += 1
        if came_from is not None and came_from != name:
            self.release(came_from)  # that file is still closed: let the next one on it try


class SingleOpenFileScheduler(MaxThreadsScheduler):
    """At most ``max_threads`` workers, and never two with the same file open.

    ``file_keys`` names the instructions that hold file names (default
    ``file``, ``fileA`` and ``fileB``).
    """

    _footprint = dict(
        info="No two running workers with the same file, at most max_threads",
        attr=dict(
            singlefile=dict(
                info="Select this scheduler: never two workers with the same file at once.",
                values=[True],
                type=bool,
            ),
            file_keys=dict(
                info="Instruction keys whose values are file names (a string or a list of strings).",
                type=FPList,
                optional=True,
                default=FPList(DEFAULT_FILE_KEYS),
            ),
        ),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not args:  # a plain-class call: SingleOpenFileScheduler(max_threads=2)
            kwargs.setdefault("singlefile", True)
            if "file_keys" in kwargs and not isinstance(kwargs["file_keys"], FPList):
                keys = kwargs["file_keys"]
                kwargs["file_keys"] = FPList([keys] if isinstance(keys, str) else list(keys))
        super().__init__(*args, **kwargs)
        self._keys = tuple(self.file_keys)

    def files(self, instructions: Any) -> List[str]:
        """The file names ``instructions`` (a dict, or a running worker) hold open."""
        source = getattr(instructions, "instructions", instructions)
        names: List[str] = []
        for key in self._keys:
            value = source.get(key) if isinstance(source, Mapping) else getattr(source, key, None)
            if value is None:
                continue
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                names.append(str(value))
            else:
                names.extend(str(v) for v in value if v is not None)
        return names

    def _new_queue(self) -> FileQueue:
        return FileQueue()

    @owns_queue
    def launchable(self, pending: Pending, workers: Running, report: Sequence[Mapping]) -> Decision:
        queue = pending if isinstance(pending, FileQueue) else FileQueue(packed=False)
        if queue is not pending:
            queue.extend(pending)
        open_now: Set[str] = set()
        for worker in workers.values():
            open_now.update(self.files(worker))
        for name in queue.open - open_now:
            queue.release(name)
        room = self.threads - len(workers)
        launch = []
        while room > 0:
            entry = queue.pop_ready()
            if entry is None:
                break
            item = queue.store.get(entry[2])
            names = self.files(item)
            busy = next((n for n in names if n in open_now), None)
            if busy is not None:
                queue.wait_on(busy, entry)
                continue
            queue.store.drop(entry[2])
            launch.append(item)
            open_now.update(names)
            room -= 1
        queue.open = open_now
        return self._assign_tickets(workers, launch), give_back(queue, pending)
