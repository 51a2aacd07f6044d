"""Shared-memory instructions: numpy arrays that every worker reads and writes in place.

Why an anonymous shared mapping: taylor forks the boss at ``Boss()`` and the
boss forks each worker, so memory mapped ``MAP_SHARED | MAP_ANONYMOUS`` in the
caller before the Boss is created is inherited by the boss and every worker,
with no copy and no name.  The kernel frees it when the last process using it
ends, however that process ends: a crash cannot leave a segment behind in
``/dev/shm``.

Why the lock is a POSIX record lock (``fcntl.lockf``) on an anonymous file
rather than a semaphore: the kernel releases it when its holder dies, so a
worker killed while holding it (timeout, SIGKILL, segfault) cannot block the
others or the caller forever.

numpy is optional for taylor: this module imports it only when an array is
made, and says how to install it if it is missing.

Depends on nothing else of taylor: arrays are made in the caller before any Boss exists.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import numbers
import operator
import os
import tempfile
import threading
import weakref
from typing import Any, Optional, Sequence, Union

__all__ = ["SharedNumpyArray"]

#: Kinds of dtypes whose values live entirely in the array's buffer
#: (bool, signed and unsigned integers, floats, complex numbers).
_PLAIN_KINDS = "biufc"
_ALIGN = 64

_LAYOUT = ("shape", "dtype", "strides", "data")


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - numpy is installed where the tests run
        raise ImportError("taylor.shared.SharedNumpyArray needs numpy; install it with: pip install 'taylor[numpy]'"
                          ) from exc
    return numpy


def _lock_fd() -> Any:
    """An open file nobody else can name, to hang the inter-process lock on.

    Returns (fd, owner): ``owner`` keeps a temporary file object alive where
    memfd does not exist (macOS).
    """
    if hasattr(os, "memfd_create"):
        return os.memfd_create("taylor-shared-lock", os.MFD_CLOEXEC), None
    handle = tempfile.TemporaryFile(prefix="taylor-shared-lock-")  # already unlinked
    return handle.fileno(), handle


def _unwrap(value: Any) -> Any:
    return value._array if isinstance(value, SharedNumpyArray) else value


def _unwrap_deep(value: Any) -> Any:
    if isinstance(value, SharedNumpyArray):
        return value._array
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap_deep(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap_deep(v) for k, v in value.items()}
    return value


_live: weakref.WeakSet = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A thread of the parent may have held an array's thread lock while forking;
    # that thread does not exist here.  (The record lock is per process: a
    # child never inherits it.)
    for shared in list(_live):
        object.__setattr__(shared, "_thread_lock", threading.Lock())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class SharedNumpyArray:
    """A numpy array (or masked array) in memory shared by the caller, the boss and every worker.

    Create it before the :class:`~taylor.Boss` and hand it over with
    ``Boss(sharedmemory_common_instructions=dict(name=array))`` (also accepted
    by :func:`~taylor.run_as_server` and :func:`~taylor.batch_main`): every
    worker then has it as attribute ``name`` and reads and writes the same
    memory; the caller sees the workers' writes.  Its contents are copied
    once, into shared memory, when it is made from ``array``.

    It behaves like the array: indexing and slicing (views write through),
    ``shape``, ``dtype`` and the other attributes and methods, arithmetic
    operators, numpy functions (``numpy.log(a)``, ``numpy.sum(a)``,
    ``numpy.add(a, 1, out=a)``); :attr:`array` is the shared
    :class:`numpy.ndarray` (or :class:`numpy.ma.MaskedArray`, whose data and
    mask are both shared) itself.  Two differences: ``==`` compares the
    handles, not the elements (use ``numpy.equal(a, b)`` or ``a[...] == b``),
    because footprints compares instruction values with ``==``; and its
    layout (shape, dtype) is fixed.

    :meth:`acquire` / :meth:`release`, or ``with array:``, make a
    read-modify-write safe among processes and threads.  The lock is not
    re-entrant, and it is released by the kernel if its holder dies.

    It cannot be pickled: shared memory reaches workers by inheritance when
    processes fork, never as an ordinary instruction.

    :param array: the initial contents (anything :func:`numpy.asarray`
        accepts, or a masked array); dtypes whose values fit in the buffer:
        bool, integers, floats, complex (float32/64 and int32/64 are the
        tested ones).
    :param dtype: convert to this dtype first.
    """

    __slots__ = ("_array", "_lock_fd", "_lock_owner", "_thread_lock", "__weakref__")

    def __init__(self, array: Any, dtype: Any = None) -> None:
        np = _numpy()
        masked = isinstance(array, np.ma.MaskedArray)
        if masked:
            source = array if dtype is None else array.astype(dtype)
        else:
            source = np.asarray(array, dtype=dtype)
        self._allocate(np, source.shape, source.dtype, masked)
        if masked:
            self._array.data[...] = source.data
            self._array.mask[...] = np.ma.getmaskarray(source)
            self._array.fill_value = source.fill_value
        else:
            self._array[...] = source

    @classmethod
    def zeros(cls, shape: Union[int, Sequence[int]], dtype: Any = float, masked: bool = False) -> SharedNumpyArray:
        """A new shared array of zeros (nothing masked), made without a private copy first."""
        np = _numpy()
        self = cls.__new__(cls)
        dims = (int(shape),) if isinstance(shape, numbers.Integral) else tuple(int(n) for n in shape)
        self._allocate(np, dims, np.dtype(dtype), masked)
        return self

    def _allocate(self, np: Any, shape: Sequence[int], dtype: Any, masked: bool) -> None:
        """Map zero-filled shared memory for the data (and mask), and make the lock."""
        if dtype.kind not in _PLAIN_KINDS or dtype.hasobject:
            raise TypeError(f"a SharedNumpyArray holds booleans, integers, floats or complex numbers; dtype {dtype} "
                            "does not keep its values in the array's own memory (objects, strings, structures)")
        size = 1
        for n in shape:
            size *= int(n)
        data_bytes = size * dtype.itemsize
        mask_offset = -(-data_bytes // _ALIGN) * _ALIGN
        total = mask_offset + (size if masked else 0)
        memory = mmap.mmap(-1, max(total, 1))  # MAP_SHARED | MAP_ANONYMOUS: inherited by forks, never named
        data = np.ndarray(shape, dtype=dtype, buffer=memory, offset=0)
        if masked:
            mask = np.ndarray(shape, dtype=bool, buffer=memory, offset=mask_offset)
            array = np.ma.MaskedArray(data, mask=mask, copy=False, shrink=False)
            array._sharedmask = False  # numpy would otherwise copy the mask on the first write
            if not np.shares_memory(array.mask, mask):  # pragma: no cover - guards numpy changes
                raise RuntimeError("numpy copied the mask of a shared masked array; please report this")
        else:
            array = data
        fd, owner = _lock_fd()
        object.__setattr__(self, "_array", array)
        object.__setattr__(self, "_lock_fd", fd)
        object.__setattr__(self, "_lock_owner", owner)
        object.__setattr__(self, "_thread_lock", threading.Lock())
        _live.add(self)

    # ------------------------------------------------------------ the lock
    def acquire(self, block: bool = True) -> bool:
        """Take the array's lock (wait for it if ``block``); return whether it was taken."""
        if not self._thread_lock.acquire(block):
            return False
        try:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX if block else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._thread_lock.release()
            if not block and exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        except BaseException:
            self._thread_lock.release()
            raise
        return True

    def release(self) -> None:
        """Give the lock back (``RuntimeError`` if it is not held)."""
        if not self._thread_lock.locked():
            raise RuntimeError("release() of a SharedNumpyArray whose lock is not held")
        fcntl.lockf(self._lock_fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def __enter__(self) -> SharedNumpyArray:
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def __del__(self) -> None:
        fd = getattr(self, "_lock_fd", None)
        if fd is not None and getattr(self, "_lock_owner", None) is None:
            with contextlib.suppress(OSError):
                os.close(fd)

    # --------------------------------------------------------- the array
    @property
    def array(self) -> Any:
        """The shared :class:`numpy.ndarray` (or masked array): writes to it are seen by every process."""
        return self._array

    def __getattr__(self, name: str) -> Any:
        if name in SharedNumpyArray.__slots__:  # not made yet (a failed __init__): no recursion
            raise AttributeError(name)
        return getattr(self._array, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in SharedNumpyArray.__slots__:
            raise AttributeError(f"{name} of a SharedNumpyArray is fixed")
        if name in _LAYOUT:
            raise AttributeError(f"the {name} of a SharedNumpyArray is fixed (every process maps the same memory); "
                                 "use .reshape() or .view() for another view of it")
        setattr(self._array, name, value)

    def __getitem__(self, index: Any) -> Any:
        return self._array[_unwrap_deep(index)]

    def __setitem__(self, index: Any, value: Any) -> None:
        self._array[_unwrap_deep(index)] = _unwrap(value)

    def __len__(self) -> int:
        return len(self._array)

    def __iter__(self):
        return iter(self._array)

    def __contains__(self, value: Any) -> bool:
        return value in self._array

    def __bool__(self) -> bool:
        return bool(self._array)

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> Any:
        np = _numpy()
        base = np.asarray(self._array)  # a masked array gives its data, as numpy.asarray does
        if dtype is not None and np.dtype(dtype) != base.dtype:
            if copy is False:
                raise ValueError(f"converting a shared {base.dtype} array to {dtype} needs a copy")
            return base.astype(dtype)
        return base.copy() if copy else base

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        if out:
            kwargs["out"] = tuple(_unwrap(o) for o in out)
        result = getattr(ufunc, method)(*(_unwrap(i) for i in inputs), **kwargs)
        if out and len(out) == 1 and isinstance(out[0], SharedNumpyArray):
            return out[0]
        return result

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        return func(*_unwrap_deep(args), **_unwrap_deep(kwargs))

    # Handles compare by identity: footprints compares instruction values
    # with ``==`` and hashes them while choosing a Worker class.
    def __eq__(self, other: Any) -> bool:
        return self is other

    def __ne__(self, other: Any) -> bool:
        return self is not other

    __hash__ = object.__hash__

    def __copy__(self) -> SharedNumpyArray:
        return self  # a copy of a handle on shared memory is the same handle; .copy() gives a private ndarray

    def __deepcopy__(self, memo: Any) -> SharedNumpyArray:
        return self

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            "a SharedNumpyArray cannot be pickled: its memory reaches the workers by inheritance when the boss "
            "forks, not by copying. Pass it with Boss(sharedmemory_common_instructions=dict(name=array)) (also "
            "accepted by run_as_server and batch_main), not as an ordinary instruction, nor in a report")

    def __repr__(self) -> str:
        return f"SharedNumpyArray({self._array!r})"

    def __str__(self) -> str:
        return str(self._array)

    def __format__(self, spec: str) -> str:
        return format(self._array, spec)


def _binary(op: Any) -> Any:
    def forward(self: SharedNumpyArray, other: Any) -> Any:
        return op(self._array, _unwrap(other))

    def reflected(self: SharedNumpyArray, other: Any) -> Any:
        return op(_unwrap(other), self._array)

    return forward, reflected


def _inplace(op: Any) -> Any:
    def method(self: SharedNumpyArray, other: Any) -> SharedNumpyArray:
        op(self._array, _unwrap(other))  # numpy updates the shared buffer in place
        return self

    return method


def _unary(op: Any) -> Any:
    def method(self: SharedNumpyArray) -> Any:
        return op(self._array)

    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "lshift", "rshift",
              "and", "xor", "or"):
    _op = getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    _forward, _reflected = _binary(_op)
    setattr(SharedNumpyArray, f"__{_name}__", _forward)
    setattr(SharedNumpyArray, f"__r{_name}__", _reflected)
    setattr(SharedNumpyArray, f"__i{_name}__", _inplace(getattr(operator, f"i{_name}")))
for _name in ("lt", "le", "gt", "ge"):
    setattr(SharedNumpyArray, f"__{_name}__", _binary(getattr(operator, _name))[0])
for _name in ("neg", "pos", "abs", "invert", "index"):
    setattr(SharedNumpyArray, f"__{_name}__", _unary(getattr(operator, _name)))
for _name, _op in (("int", int), ("float", float), ("complex", complex)):
    setattr(SharedNumpyArray, f"__{_name}__", _unary(_op))
del _name, _op, _forward, _reflected
