"""Pending queues that let a scheduler pick what to start in O(log n) per start,
and keep a long queue out of the boss's heap.

The boss keeps its pending instructions in the object a scheduler's
``pending_queue()`` returns (a plain list when it returns None).  The boss
only appends (``extend``), puts back at the front (``insert(0, x)``), counts,
reads the first one and iterates (final report); everything else is the
scheduler's business.

Why out of the heap: the boss forks every worker, and a fork copies the page
tables of the boss's private memory, so each fork costs time in proportion to
the boss's heap (about 35 us per MiB here: 100,000 queued instructions as
Python objects, ~70 MiB, add ~2.5 ms to every start).  :class:`PackedStore`
keeps each pending instruction pickled in shared anonymous memory segments,
whose page tables a fork does not copy; the queues hold small handles only.

:class:`FitQueue` answers "the first instruction, in this queue's order,
whose need fits in ``free``" and removes it, in O(log n): a treap (a binary
search tree kept balanced by node priorities: heights after a bulk build,
random for nodes inserted one by one) ordered by a key, where each
node also knows the smallest need in its subtree.

Like every scheduler module, imports nothing of taylor outside :mod:`taylor.schedulers` and
:mod:`taylor.errors`: never the boss loop, the Boss or a worker process's side.
"""

from __future__ import annotations

import itertools
import mmap
import pickle
import struct
from array import array
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

__all__ = ["PackedStore", "PlainStore", "PackedFifo", "FitQueue"]


class _Segment:
    __slots__ = ("buffer", "used", "live")

    def __init__(self, size: int) -> None:
        self.buffer = mmap.mmap(-1, size, flags=getattr(mmap, "MAP_SHARED", 1))
        self.used = 0
        self.live = 0


_LENGTH = struct.Struct("<I")


class PackedStore:
    """Pickled items in shared memory segments, addressed by integer handles.

    A handle is ``segment << 32 | offset``; the item's length is written
    before it.  A segment is unmapped as soon as its last item is taken.  An
    item that cannot be pickled (rare: a hook built by a custom scheduler) is
    kept as an object, under a negative handle; so are items put while the
    store holds fewer than ``PACK_AFTER``: a short queue costs forks nothing,
    and pickling it would only cost the boss time on every start.
    """

    SEGMENT = 4 << 20
    PACK_AFTER = 2000

    def __init__(self) -> None:
        self._segments: Dict[int, _Segment] = {}
        self._current = -1
        self._objects: Dict[int, Any] = {}
        self._ids = itertools.count(-1, -1)
        self._live = 0

    def put(self, item: Any) -> int:
        self._live += 1
        if self._live <= self.PACK_AFTER:
            return self._keep(item)
        try:
            data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - keep it as it is
            return self._keep(item)
        size = _LENGTH.size + len(data)
        segment = self._segments.get(self._current)
        if segment is None or segment.used + size > len(segment.buffer):
            self._current += 1
            segment = self._segments[self._current] = _Segment(max(self.SEGMENT, size))
        offset = segment.used
        _LENGTH.pack_into(segment.buffer, offset, len(data))
        segment.buffer[offset + _LENGTH.size:offset + size] = data
        segment.used += size
        segment.live += 1
        return self._current << 32 | offset

    def _keep(self, item: Any) -> int:
        handle = next(self._ids)
        self._objects[handle] = item
        return handle

    def get(self, handle: int) -> Any:
        if handle < 0:
            return self._objects[handle]
        buffer = self._segments[handle >> 32].buffer
        offset = (handle & 0xFFFFFFFF) + _LENGTH.size
        (length,) = _LENGTH.unpack_from(buffer, offset - _LENGTH.size)
        return pickle.loads(buffer[offset:offset + length])

    def drop(self, handle: int) -> None:
        self._live -= 1
        if handle < 0:
            del self._objects[handle]
            return
        number = handle >> 32
        segment = self._segments[number]
        segment.live -= 1
        if segment.live == 0 and number != self._current:
            del self._segments[number]
            segment.buffer.close()

    def take(self, handle: int) -> Any:
        item = self.get(handle)
        self.drop(handle)
        return item


class PlainStore:
    """The :class:`PackedStore` interface keeping items as they are (for short-lived queues)."""

    def put(self, item: Any) -> Any:
        return item

    def get(self, handle: Any) -> Any:
        return handle

    def drop(self, handle: Any) -> None:
        pass

    def take(self, handle: Any) -> Any:
        return handle


class PackedFifo:
    """First in, first out, items packed in a :class:`PackedStore`, handles in a flat array."""

    def __init__(self) -> None:
        self.store = PackedStore()
        self._handles = array("q")
        self._head = 0
        self._front: List[int] = []  # put back in front by the boss (stack: last put back first)

    def extend(self, items: Iterable[Any]) -> None:
        put = self.store.put
        self._handles.extend(put(item) for item in items)

    def append(self, item: Any) -> None:
        self._handles.append(self.store.put(item))

    def insert(self, index: int, item: Any) -> None:
        if index != 0:
            raise ValueError("PackedFifo only takes items back at the front")
        self._front.append(self.store.put(item))

    def popleft(self) -> Any:
        if self._front:
            return self.store.take(self._front.pop())
        if self._head >= len(self._handles):
            raise IndexError("pop from an empty queue")
        handle = self._handles[self._head]
        self._head += 1
        if self._head > 4096 and self._head * 2 > len(self._handles):
            del self._handles[:self._head]  # amortised O(1): each handle is moved at most once
            self._head = 0
        return self.store.take(handle)

    def _order(self) -> List[int]:
        return self._front[::-1] + list(self._handles[self._head:])

    def __len__(self) -> int:
        return len(self._front) + len(self._handles) - self._head

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[Any]:
        return (self.store.get(handle) for handle in self._order())

    def __getitem__(self, index: int) -> Any:
        if index == 0 and self._front:
            return self.store.get(self._front[-1])
        if index == 0 and self._head < len(self._handles):
            return self.store.get(self._handles[self._head])
        return self.store.get(self._order()[index])

    def __repr__(self) -> str:
        return f"<PackedFifo of {len(self)} pending>"


_INF = float("inf")


class _Node:
    __slots__ = ("key", "need", "item", "prio", "left", "right", "least")

    def __init__(self, key: tuple, need: float, item: Any, prio: float) -> None:
        self.key, self.need, self.item, self.prio = key, need, item, prio
        self.left: Optional[_Node] = None
        self.right: Optional[_Node] = None
        self.least = need


def _update(node: _Node) -> None:
    least = node.need
    if node.left is not None and node.left.least < least:
        least = node.left.least
    if node.right is not None and node.right.least < least:
        least = node.right.least
    node.least = least


def _split(node: Optional[_Node], key: tuple):
    """(nodes with keys < key, the others)."""
    if node is None:
        return None, None
    if node.key < key:
        node.right, rest = _split(node.right, key)
        _update(node)
        return node, rest
    before, node.left = _split(node.left, key)
    _update(node)
    return before, node


def _merge(a: Optional[_Node], b: Optional[_Node]) -> Optional[_Node]:
    """Join two treaps, every key of ``a`` below every key of ``b``."""
    if a is None:
        return b
    if b is None:
        return a
    if a.prio > b.prio:
        a.right = _merge(a.right, b)
        _update(a)
        return a
    b.left = _merge(a, b.left)
    _update(b)
    return b


def _take(node: Optional[_Node], free: float):
    """(treap without it, the first node whose need <= free, or None)."""
    if node is None or node.least > free:
        return node, None
    if node.left is not None and node.left.least <= free:
        node.left, found = _take(node.left, free)
        _update(node)
        return node, found
    if node.need <= free:
        return _merge(node.left, node.right), node
    node.right, found = _take(node.right, free)
    _update(node)
    return node, found


def _build(nodes: List[_Node], lo: int, hi: int) -> Optional[_Node]:
    """A balanced treap of sorted ``nodes[lo:hi]`` (priorities by height, above any random one)."""
    if lo >= hi:
        return None
    mid = (lo + hi) // 2
    node = nodes[mid]
    node.left = _build(nodes, lo, mid)
    node.right = _build(nodes, mid + 1, hi)
    node.prio = 1.0 + max(node.left.prio if node.left else 0.0, node.right.prio if node.right else 0.0)
    _update(node)
    return node


class _Priorities:
    """Pseudo-random treap priorities in [0, 1) (a 64-bit xorshift*).

    Not the ``random`` module: importing it makes Python reseed it in every
    forked process, which costs each worker about 45 page faults (0.1 ms).
    """

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        self._state = seed or 1

    def next(self) -> float:
        x = self._state
        x ^= x >> 12
        x ^= (x << 25) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 27
        self._state = x
        return ((x * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF) / 18446744073709551616.0


class FitQueue:
    """Pending instructions in ``order(item, seq)`` order, each needing ``need(item)``.

    ``seq`` is the arrival number (negative for instructions put back in
    front).  New instructions are staged and merged into the tree at the next
    query: in one linear build when many came at once, one by one otherwise.
    """

    def __init__(self, order: Callable[[Any, int], tuple], need: Callable[[Any], float],
                 packed: bool = True) -> None:
        self._order = order
        self._need = need
        self.store: Any = PackedStore() if packed else PlainStore()
        self._root: Optional[_Node] = None
        self._size = 0
        self._staged: List[_Node] = []
        self._seq = itertools.count()
        self._front = itertools.count(-1, -1)
        self._random = _Priorities(0x7A710)

    # -- what the boss uses
    def extend(self, items: Iterable[Any]) -> None:
        for item in items:
            self.append(item)

    def append(self, item: Any) -> None:
        self._stage(next(self._seq), item)

    def insert(self, index: int, item: Any) -> None:
        """Put ``item`` back (the boss does so, at index 0, when it stops before starting it)."""
        self._stage(next(self._front) if index == 0 else next(self._seq), item)

    def _stage(self, seq: int, item: Any) -> None:
        self._staged.append(_Node(self._order(item, seq), self._need(item), self.store.put(item), 0.0))
        self._size += 1

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[Any]:
        self._settle()
        return (self.store.get(node.item) for node in self._in_order())

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            index += self._size
        if not 0 <= index < self._size:
            raise IndexError("pending queue index out of range")
        return next(itertools.islice(iter(self), index, None))

    def __repr__(self) -> str:
        return f"<FitQueue of {self._size} pending>"

    # -- what schedulers use
    def least_need(self) -> float:
        """The smallest need of any queued instruction (inf when empty)."""
        self._settle()
        return self._root.least if self._root is not None else _INF

    def pop_fit(self, free: float = _INF) -> Optional[Any]:
        """Remove and return the first instruction whose need is at most ``free`` (None if none)."""
        self._settle()
        self._root, node = _take(self._root, free)
        if node is None:
            return None
        self._size -= 1
        return self.store.take(node.item)

    def need(self, item: Any) -> float:
        return self._need(item)

    def _settle(self) -> None:
        staged = self._staged
        if not staged:
            return
        self._staged = []
        staged.sort(key=lambda n: n.key)
        tree = self._size - len(staged)
        if self._root is None or len(staged) * 16 > tree:
            # Many at once: rebuild the whole tree from the sorted nodes in linear time.
            nodes = list(self._in_order()) + staged if self._root is not None else staged
            if self._root is not None:
                nodes.sort(key=lambda n: n.key)
            self._root = _build(nodes, 0, len(nodes))
            return
        for node in staged:
            node.prio = self._random.next()  # below every built node's priority (>= 1)
            before, after = _split(self._root, node.key)
            self._root = _merge(_merge(before, node), after)

    def _in_order(self) -> Iterator[_Node]:
        """The tree's nodes in key order (iteratively: no recursion limit on a deep tree)."""
        stack: List[_Node] = []
        node = self._root
        while stack or node is not None:
            while node is not None:
                stack.append(node)
                node = node.left
            node = stack.pop()
            yield node
            node = node.right
