"""GNU parallel's habits on taylor's command line: ``:::`` input groups, ``-j`` forms and ``--halt`` rules.

Pure parsing, no running: ``taylor run`` turns what a GNU parallel user
types into taylor's rows, thread count and halting rule.

Depends only on :mod:`taylor.errors`: no process, no Boss.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .errors import InstructionsError

__all__ = ["split_command_line", "group_rows", "parse_jobs", "Halt", "parse_halt", "SEPARATORS"]

#: ``:::`` values follow, ``:::+`` values paired with the previous group, ``::::`` files of lines.
SEPARATORS = (":::", ":::+", "::::", "::::+")


def split_command_line(args: Sequence[str]) -> Tuple[List[str], List[Tuple[str, List[str]]]]:
    """``COMMAND WORDS ::: a b :::+ x y :::: FILE`` as the command's words and the ``(separator, words)`` groups."""
    words: List[str] = []
    groups: List[Tuple[str, List[str]]] = []
    for arg in args:
        if arg in SEPARATORS:
            groups.append((arg, []))
        elif groups:
            groups[-1][1].append(arg)
        else:
            words.append(arg)
    return words, groups


def group_rows(groups: Sequence[Tuple[str, List[str]]], read_lines: Callable[[str], List[str]]) -> List[Dict[str, Any]]:
    """Rows of the ``:::`` groups: their cross product, ``:::+`` groups paired with the one before.

    The first group varies slowest, as in GNU parallel; each group is a key,
    ``1``, ``2``... in the order given.  Paired groups of unequal lengths stop
    with the shorter, as GNU parallel's ``:::+`` does.
    """
    columns: List[List[str]] = []
    linked: List[bool] = []
    for separator, words in groups:
        if separator.startswith("::::"):
            if not words:
                raise InstructionsError(f"{separator} needs a file name (or - for stdin)")
            values = [line for path in words for line in read_lines(path)]
        else:
            values = list(words)
        columns.append(values)
        linked.append(separator.endswith("+"))
    if linked and linked[0]:
        raise InstructionsError(f"{groups[0][0]} pairs values with the group before it: start with ::: or ::::")
    # Blocks of linked columns: each block is a list of tuples (one per pairing), then the cross product.
    blocks: List[List[Tuple[Tuple[int, str], ...]]] = []
    for index, (values, link) in enumerate(zip(columns, linked)):
        if not link:
            blocks.append([((index, v),) for v in values])
            continue
        previous = blocks[-1]
        blocks[-1] = [pair + ((index, value),) for pair, value in zip(previous, values)]
    rows = []
    for combination in itertools.product(*blocks):
        row: Dict[str, Any] = {}
        for pairs in combination:
            for index, value in pairs:
                row[str(index + 1)] = value
        rows.append(dict(sorted(row.items(), key=lambda item: int(item[0]))))
    return rows


def parse_jobs(text: Optional[str], cpus: Callable[[], int]) -> Optional[int]:
    """``-j``: ``N`` tasks, ``N%`` of the usable CPUs, ``-N`` CPUs minus N, ``+N`` CPUs plus N (at least 1).

    None when not given; 0 means the usable CPUs (taylor's default).
    """
    if text is None:
        return None
    spec = text.strip()
    try:
        if spec.endswith("%"):
            percent = float(spec[:-1])
            if percent <= 0:
                raise ValueError
            return max(1, int(cpus() * percent / 100))
        if spec.startswith(("+", "-")):
            return max(1, cpus() + int(spec))
        number = int(spec)
        if number < 0:
            raise ValueError
        return number
    except ValueError:
        raise InstructionsError(f"-j {text!r}: expected N, N% (of the usable CPUs), -N or +N (CPUs minus or "
                                "plus N)") from None


class Halt(NamedTuple):
    """When to stop a run: ``when`` is ``now`` (stop running tasks) or ``soon`` (let them finish);
    ``why`` is ``fail``, ``success`` or ``done``; ``count`` tasks, or ``percent`` of all of them."""

    when: str
    why: str
    count: int = 0
    percent: Optional[float] = None

    def reached(self, done: int, failed: int, total: int) -> bool:
        seen = {"fail": failed, "success": done, "done": done + failed}[self.why]
        if self.percent is not None:
            # GNU parallel waits for 3 tasks before judging by a percentage (unless fewer are left to run).
            return done + failed >= min(3, total) and seen * 100 >= self.percent * max(total, 1)
        return seen >= self.count


#: GNU parallel's old numeric forms.
_LEGACY = {"1": "soon,fail=1", "2": "now,fail=1", "-1": "soon,success=1", "-2": "now,success=1"}


def parse_halt(text: Optional[str]) -> Optional[Halt]:
    """``--halt never|now|soon,fail=N|fail=P%|success=N|success=P%|done=N|done=P%`` (GNU parallel's forms,
    the old ``0``, ``1``, ``2``, ``-1``, ``-2`` too); None is never."""
    if text is None:
        return None
    spec = text.strip().lower()
    if spec in ("never", "0"):
        return None
    spec = _LEGACY.get(spec, spec)
    if spec.endswith("%") and "," not in spec:
        spec = "soon,fail=" + spec
    when, _, why = spec.partition(",")
    kind, _, amount = why.partition("=")
    try:
        if when not in ("now", "soon") or kind not in ("fail", "success", "done") or not amount:
            raise ValueError
        if amount.endswith("%"):
            percent = float(amount[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            return Halt(when, kind, 0, percent)
        count = int(amount)
        if count < 1:
            raise ValueError
        return Halt(when, kind, count)
    except ValueError:
        raise InstructionsError(f"--halt {text!r}: expected never, or now|soon,fail=N|fail=P%|success=N|"
                                "success=P%|done=N|done=P% (as GNU parallel)") from None
