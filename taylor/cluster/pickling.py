"""How a task's Worker class and instructions travel to a remote host.

A Worker class defined in an importable module travels by reference (its
module and name) and must be importable on every Dask worker's host.  One
defined in the caller's script (``__main__``, a notebook) cannot be imported
there: it travels by value, with cloudpickle (which distributed ships).

cloudpickle rebuilds a class in two steps, an empty skeleton first, its
namespace after; footprints' metaclass refuses the empty skeleton ("Explicit
class without any mandatory footprint attribute").  So a Worker class sent
by value is rebuilt here in the same two steps, but with its footprint (and
what footprints' metaclass reads) in the first: footprints then registers a
complete class, once per process and class (a class received again is the
one already built, see :func:`loads_class`).
"""

from __future__ import annotations

import io
import pickle
import sys
import threading
import uuid
import weakref
from typing import Any, Dict, Mapping, Tuple

from footprints import FootprintBase

__all__ = ["dumps_class", "loads_class", "dumps_attributes", "ClassTransportError"]

#: What footprints' metaclass reads when it builds a class: they go in the first step.
_META_KEYS = ("_footprint", "_abstract", "_explicit", "_collector", "_reusable", "_mkshort", "__module__",
              "__qualname__")
#: What the metaclass makes itself (descriptors, its auth hash, the docstring) or Python does.
_SKIPPED = ("__dict__", "__weakref__", "_fp_auth", "__doc__")


class ClassTransportError(pickle.PicklingError):
    """A Worker class could not be pickled to reach the remote hosts."""


_tracker_ids: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()
_rebuilt: Dict[str, type] = {}
_lock = threading.Lock()


def _by_value(cls: type) -> bool:
    """Whether cloudpickle would send ``cls`` by value (it cannot be imported by name)."""
    try:
        from cloudpickle.cloudpickle import _should_pickle_by_reference
    except ImportError:  # an older cloudpickle: decide as it does, by importability
        module = sys.modules.get(cls.__module__)
        found = module
        for part in cls.__qualname__.split("."):
            found = getattr(found, part, None)
        return cls.__module__ == "__main__" or found is not cls
    return not _should_pickle_by_reference(cls)


def _make_class(tracker: str, metaclass: type, name: str, bases: Tuple[type, ...],
                first: Dict[str, Any]) -> type:
    """First step: the class built by its metaclass with its footprint; the same class again
    when this process rebuilt it already."""
    with _lock:
        cls = _rebuilt.get(tracker)
        if cls is None:
            cls = _rebuilt[tracker] = metaclass(name, bases, dict(first))
    return cls


def _set_class_state(cls: type, state: Tuple[Dict[str, Any], Any]) -> type:
    """Second step: methods and other attributes (they may refer to the class itself)."""
    namespace, _ = state
    for key, value in namespace.items():
        if key not in cls.__dict__ or cls.__dict__[key] is not value:
            setattr(cls, key, value)
    return cls


def _class_reduce(cls: type) -> tuple:
    tracker = _tracker_ids.get(cls)
    if tracker is None:
        tracker = _tracker_ids.setdefault(cls, uuid.uuid4().hex)
    own = cls.__dict__
    attributes = set(getattr(cls._footprint, "attr", {}) or {})
    first = {key: own[key] for key in _META_KEYS if key in own}
    rest = {key: value for key, value in own.items()
            if key not in first and key not in _SKIPPED and key not in attributes}
    return (_make_class, (tracker, type(cls), cls.__name__, cls.__bases__, first), (rest, None), None, None,
            _set_class_state)


_Pickler: Any = None


def _pickler(file: io.BytesIO) -> pickle.Pickler:
    """A cloudpickle pickler that sends Worker classes by value in two steps (see the module's docstring)."""
    global _Pickler
    if _Pickler is None:
        import cloudpickle

        class _Pickler(cloudpickle.Pickler):
            def reducer_override(self, obj: Any) -> Any:
                if isinstance(obj, type) and issubclass(obj, FootprintBase) and _by_value(obj):
                    return _class_reduce(obj)
                return super().reducer_override(obj)

    return _Pickler(file, protocol=pickle.HIGHEST_PROTOCOL)


def dumps_class(cls: type) -> bytes:
    """``cls`` pickled for a remote process: by reference when importable, else by value.

    Raises :class:`ClassTransportError` saying how to make the class reachable
    when it cannot be pickled either way.
    """
    buffer = io.BytesIO()
    try:
        _pickler(buffer).dump(cls)
    except Exception as exc:  # noqa: BLE001 - cloudpickle fails in many ways
        raise ClassTransportError(
            f"the Worker class {cls.__module__}.{cls.__qualname__} cannot be sent to the Dask workers "
            f"({type(exc).__name__}: {exc}); define it at the top level of an importable module installed on "
            "every worker host, or at the top level of the script that runs the batch") from exc
    return buffer.getvalue()


def dumps_attributes(attributes: Mapping[str, Any]) -> bytes:
    """A task's attributes pickled for a remote process: with pickle when it can (fast), with
    cloudpickle when it must (hooks may be lambdas, values instances of the script's classes)."""
    attributes = dict(attributes)
    try:
        data = pickle.dumps(attributes, protocol=pickle.HIGHEST_PROTOCOL)
        if b"__main__" not in data:
            return data
    except Exception:  # noqa: BLE001 - not picklable by reference: cloudpickle may
        pass
    buffer = io.BytesIO()
    _pickler(buffer).dump(attributes)
    return buffer.getvalue()


_loaded: Dict[bytes, type] = {}


def loads_class(data: bytes) -> type:
    """The class ``dumps_class`` pickled: unpickled once per process, looked up after."""
    cls = _loaded.get(data)
    if cls is None:
        cls = _loaded[data] = pickle.loads(data)
    return cls
