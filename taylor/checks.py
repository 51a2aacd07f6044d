"""Checks of the numbers a user gives: seconds the boss can wait for, MiB it can count.

They run in the caller, before anything is sent, because a bad number found in
the boss is found too late: a NaN deadline makes its wait return at once,
forever (a busy loop); an infinite one, or one past what ``epoll``/``poll``
take (a C ``int`` of milliseconds, about 24.8 days), makes the wait raise
``OverflowError`` and ends the run; a negative memory lets a memory scheduler
start more work than its cap.

Depends on nothing of taylor: the Boss, the instructions and the command line all use it.
"""

from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["MAX_SECONDS", "seconds", "amount"]

#: The longest wait the boss's poller takes: 2**31 - 1 milliseconds (about 24.8 days).
MAX_SECONDS = (2 ** 31 - 1) // 1000


def _number(value: Any) -> Optional[float]:
    """``value`` as a float, or None when it is no real number (bools are refused too)."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def seconds(value: Any, what: str, *, zero: bool = False) -> Optional[str]:
    """Why ``value`` cannot be a duration in seconds (None when it can).

    A duration is a finite number, more than 0 (or 0 when ``zero``), at most
    :data:`MAX_SECONDS`.  ``what`` names it in the answer.
    """
    number = _number(value)
    least = "0 or more" if zero else "more than 0"
    if number is None or math.isnan(number) or not (number >= 0 if zero else number > 0) \
            or number > MAX_SECONDS:
        return (f"{what} must be a number of seconds, {least} and at most {MAX_SECONDS} (about 24.8 days), "
                f"got {value!r}")
    return None


def amount(value: Any, what: str, unit: str) -> Optional[str]:
    """Why ``value`` cannot be an amount in ``unit`` (a finite number, 0 or more); None when it can."""
    number = _number(value)
    if number is None or not math.isfinite(number) or number < 0:
        return f"{what} must be a finite number of {unit}, 0 or more, got {value!r}"
    return None
