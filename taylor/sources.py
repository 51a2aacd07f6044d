"""Instruction sets from the command line: KEY=VALUE options and instruction files.

Everything ends as a list of rows (one dict per worker).  Values given as
text (``-c``, ``-i``, CSV cells, lines) stay the text as written: ``1.10``
is not ``1.1``, ``true`` is not ``True``; a Worker class converts them by
its footprint's declared types.  JSON and YAML keep their types, except that
with ``as_written`` numbers keep their text (``1.10``) so that a command
sees them as written.

Depends only on :mod:`taylor.instructions` and :mod:`taylor.errors`: parsing, no process, no Boss.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import InstructionsError

__all__ = ["Written", "scalar", "parse_common", "parse_individual", "read_rows", "read_lines", "build_rows", "FORMATS"]

#: Formats of instruction files; "lines" is one value per line, under key "1".
FORMATS = ("json", "yaml", "jsonl", "csv", "lines")

Row = Dict[str, Any]


def scalar(text: str) -> Any:
    """``text`` as a JSON scalar if it is one, else the text itself (kept for library users; the command
    line passes text as written)."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if value is None or isinstance(value, (bool, int, float, str)) else text


def _split(option: str, item: str) -> Tuple[str, str]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InstructionsError(f"{option} expects KEY=VALUE, got {item!r}")
    return key, value


def parse_common(items: Sequence[str]) -> Row:
    """``-c KEY=VALUE`` options as a dict."""
    common: Row = {}
    for item in items:
        key, value = _split("-c/--common", item)
        common[key] = value
    return common


def parse_individual(items: Sequence[str]) -> Dict[str, List[Any]]:
    """``-i KEY=V1,V2,...`` options as lists of values (one per worker)."""
    individual: Dict[str, List[Any]] = {}
    for item in items:
        key, value = _split("-i/--individual", item)
        if key in individual:
            raise InstructionsError(f"-i/--individual gives key {key!r} twice; give all its values at once")
        individual[key] = value.split(",") if value else []
    return individual


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read()
    except OSError as exc:
        raise InstructionsError(f"cannot read instruction file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InstructionsError(f"instruction file {path} is not UTF-8 text: {exc}") from None


def _from_document(doc: Any, path: str) -> List[Row]:
    if isinstance(doc, dict) and set(doc) <= {"common", "individual"}:
        common, individual = doc.get("common") or {}, doc.get("individual") or {}
        if not isinstance(common, dict) or not isinstance(individual, dict):
            raise InstructionsError(f"{path}: 'common' must be a mapping and 'individual' a mapping of lists")
        from .instructions import expand

        return expand(common, individual)
    if isinstance(doc, list):
        for index, row in enumerate(doc):
            if not isinstance(row, dict):
                raise InstructionsError(f"{path}: item #{index + 1} is a {type(row).__name__}, not a mapping "
                                        "of instructions")
        return [dict(row) for row in doc]
    raise InstructionsError(f"{path}: expected a list of instruction mappings or a mapping with 'common' "
                            f"and 'individual', got a {type(doc).__name__}")


class Written(str):
    """A JSON or YAML number kept as the text it was written as (``1.10``), shown as such in JSON text."""

    __slots__ = ()


def _loads(text: str, as_written: bool) -> Any:
    """JSON; with ``as_written``, numbers stay the text they were written as (``1.10``, ``1e3``)."""
    if as_written:
        return json.loads(text, parse_int=Written, parse_float=Written, parse_constant=Written)
    return json.loads(text)


def _json_lines(text: str, path: str, as_written: bool = False) -> List[Row]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = _loads(line, as_written)
        except ValueError as exc:
            raise InstructionsError(f"{path}, line {number}: not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise InstructionsError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _csv(text: str, path: str) -> List[Row]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise InstructionsError(f"{path}: a CSV instruction file needs a header line naming the keys")
    rows = []
    for number, record in enumerate(reader, 2):
        if None in record or None in record.values():
            raise InstructionsError(f"{path}, line {number}: not as many cells as header names")
        rows.append({k.strip(): v for k, v in record.items()})
    return rows


def _yaml(text: str, path: str, as_written: bool = False) -> Any:
    try:
        import yaml  # optional: PyYAML is no dependency of taylor
    except ImportError:
        raise InstructionsError(f"{path} is YAML, and reading YAML needs PyYAML: pip install pyyaml") from None
    loader = yaml.SafeLoader
    if as_written:  # numbers as written; booleans and nulls keep their type (shown as JSON's true, null)
        class AsWritten(yaml.SafeLoader):
            pass
        for tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
            AsWritten.add_constructor(tag, lambda loader, node: Written(loader.construct_scalar(node)))
        loader = AsWritten
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise InstructionsError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None


def read_lines(path: str, key: str = "1") -> List[Row]:
    """One row per line of a file (``-`` is stdin), the line as written under ``key`` (GNU parallel's ``::::``)."""
    text = _read_text(path)
    return [{key: line} for line in text.split("\n")[:-1 if text.endswith("\n") else None]] if text else []


def read_rows(path: str, fmt: Optional[str] = None, as_written: bool = False) -> List[Row]:
    """Instruction rows from a file (``-`` is stdin).

    The format is ``fmt`` if given, else the file's extension (``.json``,
    ``.jsonl``/``.ndjson``, ``.yaml``/``.yml``, ``.csv``), else one value per
    line (key ``1``), as GNU parallel reads its input.  ``as_written`` keeps
    JSON and YAML numbers as the text written (for commands).
    """
    if fmt is None:
        ext = os.path.splitext(path)[1].lower()
        fmt = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".yaml": "yaml", ".yml": "yaml",
               ".csv": "csv"}.get(ext, "lines")
    if fmt == "lines":
        return read_lines(path)
    text = _read_text(path)
    if not text.strip():
        return []
    if fmt == "json":
        try:
            return _from_document(_loads(text, as_written), path)
        except ValueError as exc:
            if isinstance(exc, InstructionsError):
                raise
            raise InstructionsError(f"{path}: not valid JSON: {exc}") from None
    if fmt == "jsonl":
        return _json_lines(text, path, as_written)
    if fmt == "yaml":
        return _from_document(_yaml(text, path, as_written), path)
    return _csv(text, path)


def build_rows(common: Mapping[str, Any], individual: Mapping[str, Sequence[Any]],
               file_rows: Optional[List[Row]]) -> List[Row]:
    """Rows from ``-c``, ``-i`` and ``--from``: each row is common, then the file's row, then ``-i``'s.

    With both a file and ``-i``, the ``-i`` lists must have one value per file row.
    """
    lengths = {key: len(values) for key, values in individual.items()}
    if file_rows is not None:
        lengths["--from"] = len(file_rows)
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise InstructionsError(f"individual instructions must all have the same length; got {detail}")
    count = next(iter(lengths.values()), 0)
    rows = []
    for index in range(count):
        row = dict(common)
        if file_rows is not None:
            row.update(file_rows[index])
        for key, values in individual.items():
            row[key] = values[index]
        rows.append(row)
    return rows
