"""Example workers, used by the demo, the documentation and the tests.

Importing this module registers them with footprints, so that instructions
such as ``sleeping_time=0.5`` find :class:`Sleeper`.
"""

from __future__ import annotations

import time
from typing import Any, Dict

from .worker import Worker

__all__ = ["Sleeper"]


class Sleeper(Worker):
    """Sleeps ``sleeping_time`` seconds, then reports what it did and where it ran."""

    _footprint = dict(
        info="Sleep for a while",
        attr=dict(
            sleeping_time=dict(
                info="Seconds to sleep.",
                type=float,
            ),
            wakeup_sentence=dict(
                info="What to say when waking up.",
                optional=True,
                default="Hello, world!",
            ),
        ),
    )

    def _task(self) -> Dict[str, Any]:
        start = time.monotonic()
        time.sleep(self.sleeping_time)
        return dict(sentence=self.wakeup_sentence, slept=time.monotonic() - start, binding=self.binding())
