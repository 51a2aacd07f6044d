"""Instruction sets: built from ``common`` + ``individual``, checked in the caller.

Everything that can be known wrong before a process starts is found here, in
the caller, so that bad input raises at once with the culprit named: lists of
unequal lengths, duplicate names, instructions no Worker class fits (with
footprints' reasons), worker classes the boss cannot see.

Depends only on :mod:`taylor.checks` and :mod:`taylor.errors`: it runs in the caller before any
process exists, and must not import the worker's process side, the boss loop or the Boss.
"""

from __future__ import annotations

import functools
import importlib
import pickle
from collections.abc import Set as AbstractSet
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import footprints

from . import checks
from .errors import InstructionsError, NoWorkerFitError, _safe_repr, _short

__all__ = ["Instructions", "expand", "resolve", "worker_classes"]


class Instructions(dict):
    """One instruction set: the keyword arguments of one worker.

    A plain ``dict`` to schedulers and reports, holding the keys the caller
    gave (with the values footprints cast them to) and the worker's name.  It
    also carries what the caller resolved: the Worker class, the values of
    the attributes the caller left to their defaults (``defaults``), and the
    ``memory``, ``expected_time`` and ``timeout`` the worker will have.
    """

    __slots__ = ("worker_class", "defaults", "memory", "expected_time", "timeout")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.worker_class: Optional[type] = None
        self.defaults: Dict[str, Any] = {}
        self.memory = 0.0
        self.expected_time = 0.0
        self.timeout: Optional[float] = None

    def __reduce__(self):
        return (_rebuild, (dict(self), class_ref(self.worker_class), self.defaults, self.memory,
                           self.expected_time, self.timeout))

    @property
    def name(self) -> str:
        return self["name"]

    def attributes(self, shared: Mapping[str, Any]) -> Dict[str, Any]:
        """Every footprint attribute of the worker, as the worker process builds it."""
        attributes = dict(self.defaults)
        attributes.update(self)
        attributes.update(shared)
        return attributes


def class_ref(cls: Optional[type]) -> Optional[Tuple[int, str, str]]:
    """How a Worker class travels to the boss: the boss is a fork of the caller, so a
    class that existed when it was created is at the same address there, even a
    class defined in a function; others are imported by name."""
    return None if cls is None else (id(cls), cls.__module__, cls.__qualname__)


_classes_by_ref: Dict[Tuple[int, str, str], type] = {}


def remember_classes() -> None:
    """Index the Worker classes known now by their reference (a fork inherits the index)."""
    for known in worker_classes():
        _classes_by_ref[class_ref(known)] = known


def class_from_ref(ref: Optional[Tuple[int, str, str]]) -> Optional[type]:
    """The class ``class_ref`` made ``ref`` of, in this fork (or a fork of a fork) of the caller."""
    if ref is None:
        return None
    cls = _classes_by_ref.get(ref)
    if cls is None:
        remember_classes()
        cls = _classes_by_ref.get(ref)
    if cls is None:  # defined after the fork in an importable module
        module = importlib.import_module(ref[1])
        cls = functools.reduce(getattr, ref[2].split("."), module)
    return cls


def _rebuild(items, worker_class, defaults, memory, expected_time, timeout) -> Instructions:
    obj = Instructions(items)
    obj.worker_class, obj.defaults = class_from_ref(worker_class), defaults
    obj.memory, obj.expected_time, obj.timeout = memory, expected_time, timeout
    return obj


def expand(common: Optional[Mapping[str, Any]], individual: Optional[Mapping[str, Sequence[Any]]]
           ) -> List[Dict[str, Any]]:
    """Merge ``common`` with each row of ``individual`` (equal-length lists).

    A key present in both takes its individual value.  With no individual
    instructions there is nothing to run and the result is empty.  Both must
    be mappings (or None); each individual value must be an ordered sized
    collection (list, tuple, range, array...): not a set or a mapping (their
    order is not the caller's), and not a string or bytes (one value, not a
    list of characters: give ``[value]`` for one worker, or put it in
    ``common`` for all).
    """
    for what, given in (("common", common), ("individual", individual)):
        if given is not None and not isinstance(given, Mapping):
            raise InstructionsError(
                f"{what} instructions must be a mapping (a dict of key: value) or None, "
                f"got {type(given).__name__} {_short_repr(given)}")
    common = dict(common or {})
    individual = dict(individual or {})
    for key in list(common) + list(individual):
        if not isinstance(key, str):
            raise InstructionsError(f"instruction keys must be strings, got {key!r}")
    lengths = {}
    for key, values in individual.items():
        length = _column_length(values)
        if length is None:
            raise InstructionsError(
                f"individual instruction {key!r} must be a list of values (one per worker), "
                f"got {type(values).__name__} {_short({key: values}, 80)}{_column_hint(values)}")
        lengths[key] = length
    if len(set(lengths.values())) > 1:
        first = next(iter(lengths))
        odd = next(k for k, n in lengths.items() if n != lengths[first])
        detail = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise InstructionsError(f"individual instructions must all have the same length; got {detail}: "
                                f"{odd!r} has {lengths[odd]} values where {first!r} has {lengths[first]}")
    count = next(iter(lengths.values()), 0)
    columns = [(key, list(values)) for key, values in individual.items()]
    rows = []
    for i in range(count):
        row = dict(common)
        for key, values in columns:
            row[key] = values[i]
        rows.append(row)
    return rows


def _column_length(values: Any) -> Optional[int]:
    """How many workers an individual value list makes, or None when it is no such list."""
    if isinstance(values, (str, bytes, bytearray, memoryview, AbstractSet, Mapping)) \
            or not hasattr(values, "__iter__"):
        return None
    try:
        return len(values)
    except TypeError:  # no __len__, or a 0-d array
        return None


def _column_hint(values: Any) -> str:
    if isinstance(values, (str, bytes, bytearray)):
        return ": a string is one value, not a list (give [value] for one worker, or put it in common)"
    if isinstance(values, (AbstractSet, Mapping)):
        return ": sets and mappings have no order of their own (give a list, e.g. sorted(...))"
    return ""


def _short_repr(value: Any, limit: int = 80) -> str:
    text = _safe_repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _too_deep(row: Mapping[str, Any]) -> Optional[str]:
    """The key of ``row`` whose value is nested too deeply to be printed or pickled, if any.

    Both are tried: where each gives up depends on the Python version (3.12 and
    later print deep structures that pickling still refuses).
    """
    for key, value in row.items():
        for attempt in (repr, pickle.dumps):
            try:
                attempt(value)
            except RecursionError:
                return key
            except Exception:  # noqa: BLE001 - another failure: not a matter of depth
                break
    return None


def too_deep_error(row: Mapping[str, Any], error: BaseException) -> Optional[InstructionsError]:
    """The error to raise for ``row`` if ``error`` came from one of its values being nested too deeply."""
    key = _too_deep(row) if isinstance(error, RecursionError) else None
    return None if key is None else _refuse_deep(key, row, error)


def _refuse_deep(key: str, row: Mapping[str, Any], error: BaseException) -> InstructionsError:
    return InstructionsError(
        f"instruction {key!r} is nested too deeply ({type(error).__name__}: {error}): taylor prints, "
        "checks and pickles instructions, which Python does recursively; flatten the structure, or give "
        "a path to a file that holds it", instructions={k: v for k, v in row.items() if k != key})


def worker_classes() -> List[type]:
    """Every concrete Worker class footprints knows of now."""
    return list(footprints.collectors.get(tag="worker").items())


class _Description(dict):
    """Instructions as footprints examines them, printed short: its collector formats the whole
    description for a debug message even when debug is off (5.6 ms for a 1 MiB value)."""

    def __repr__(self) -> str:
        return f"<instructions {', '.join(sorted(map(str, self)))}>"

    __str__ = __repr__


def _best_fit(collector: Any, description: Dict[str, Any]):
    """(class, resolved attributes) of the best Worker for ``description``, or None.

    Ties are broken as footprints itself does (footprint weight, then priority).
    """
    candidates = collector.find_all(description)
    if not candidates:
        return None
    if len(candidates) > 1:
        candidates.sort(key=lambda c: c[0].footprint_weight(len(c[2])), reverse=True)
    cls, resolved, _ = candidates[0]
    # Footprints marks attributes whose default is None with UNKNOWN until instantiation.
    return cls, {k: (None if isinstance(v, str) and v == footprints.UNKNOWN else v) for k, v in resolved.items()}


def uuid4() -> str:
    """A random worker name.  ``uuid`` is imported here, when first needed: by then the boss
    (and its spawner) are forked, and every fork is smaller without it."""
    import uuid

    return str(uuid.uuid4())


def resolve(rows: Iterable[Mapping[str, Any]], *, shared: Mapping[str, Any] = (),
            taken: Optional[AbstractSet[str]] = None, visible: Optional[frozenset] = None,
            fits: Optional[type] = None) -> List[Instructions]:
    """Choose each row's Worker class and name; refuse what cannot run.

    ``shared`` are instructions given to every worker outside the rows
    (shared-memory objects); ``taken`` holds names already used in this run
    (the new ones are not added: the caller does, once they are sent);
    ``visible`` are the classes the boss process knows (those defined before
    it was created).  ``fits``: a Worker class the rows were made for, all
    with the same keys and values of the declared types (the Executor's
    calls): footprints examines the first row only, and if ``fits`` is its
    class the others take its class and defaults (some 20 us a row less).
    """
    collector = footprints.collectors.get(tag="worker")
    taken = set() if taken is None else taken
    shared = dict(shared)
    result = []
    new_names: set = set()
    known: Optional[tuple] = None  # (keys, class, defaults) of the first row, for the others if it fits ``fits``
    for row in rows:
        description = _Description(row)
        description.update(shared)
        if known is not None and known[0] == description.keys():
            fit = known[1], {**known[2], **description}
        else:
            fit = _fit(collector, description, row)
            if known is None and fits is not None and fit is not None and fit[0] is fits:
                known = (description.keys(), fits, {k: v for k, v in fit[1].items() if k not in description})
        if fit is None:
            whynot = collector.report_last.as_dict() if collector.report_last else {}
            reasons = "; ".join(
                f"{cls}: " + ", ".join(f"{attr} {why.get('why', why)}" + (
                    f" ({why['args']!r})" if isinstance(why, dict) and "args" in why else "")
                    for attr, why in attrs.items())
                for cls, attrs in whynot.items()) or "no Worker class is defined (import the module that defines them)"
            raise NoWorkerFitError(
                f"no Worker class fits the instructions {_short(row)} with keys {sorted(row)}: {reasons}",
                instructions=dict(row), whynot=whynot)
        cls, resolved = fit
        if visible is not None and cls not in visible and (
                cls.__module__ == "__main__" or "<locals>" in cls.__qualname__):
            raise InstructionsError(
                f"Worker class {cls.__qualname__} was defined after the Boss was created, outside any "
                "importable module, so the boss process cannot know it: define worker classes before "
                "creating the Boss")
        name = resolved.get("name")
        if name is None:
            name = uuid4()
        elif not isinstance(name, str):
            name = str(name)
        if name in taken or name in new_names:
            raise InstructionsError(f"two workers would be named {name!r}: worker names must be unique in a run")
        new_names.add(name)
        instructions = Instructions({key: resolved.get(key, value) for key, value in row.items()})
        instructions["name"] = name
        instructions.worker_class = cls
        instructions.defaults = {k: v for k, v in resolved.items() if k not in row and k not in shared
                                 and k != "name"}
        _check_numbers(name, resolved, row)
        instructions.memory = float(resolved.get("memory") or 0.0)
        instructions.expected_time = float(resolved.get("expected_time") or 0.0)
        timeout = resolved.get("timeout")
        instructions.timeout = None if timeout is None else float(timeout)
        result.append(instructions)
    return result


def _fit(collector: Any, description: Dict[str, Any], row: Mapping[str, Any]):
    """:func:`_best_fit`, its failures said in taylor's words."""
    try:
        return _best_fit(collector, description)
    except Exception as exc:  # noqa: BLE001 - footprints trips on some values (e.g. arrays)
        deep = too_deep_error(description, exc)
        if deep is not None:
            raise deep from None
        raise InstructionsError(
            f"footprints could not examine the instructions {_short(row)}: {type(exc).__name__}: {exc}. "
            "Large arrays belong in sharedmemory_common_instructions (see taylor.shared.SharedNumpyArray)",
            instructions=dict(row)) from exc


def _check_numbers(name: str, resolved: Mapping[str, Any], row: Mapping[str, Any]) -> None:
    """Refuse, naming the worker, the ``memory``, ``expected_time``, ``timeout`` and
    ``scheduler_hooks`` the boss could not act on (see :mod:`taylor.checks`)."""
    memory, expected, timeout = resolved.get("memory"), resolved.get("expected_time"), resolved.get("timeout")
    why = ((memory is not None and checks.amount(memory, "memory", "MiB"))
           or (expected is not None and checks.amount(expected, "expected_time", "seconds"))
           or (timeout is not None and checks.seconds(timeout, "timeout")))
    hooks = resolved.get("scheduler_hooks")
    if not why and hooks:
        odd = [hook for hook in hooks if not callable(hook)]
        if odd:
            why = f"scheduler_hooks must be callables run as hook(worker), got {_short_repr(odd[0])}"
    if why:
        raise InstructionsError(f"worker {name!r}: {why}; its instructions were {_short(row)}",
                                instructions=dict(row))
