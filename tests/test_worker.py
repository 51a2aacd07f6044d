"""The worker side: how a worker object is built in its process, and what it knows."""

from __future__ import annotations

import footprints
import workers  # noqa: F401 - registers the test workers

from taylor.examples import Sleeper
from taylor.instructions import resolve
from taylor.worker import Worker, instantiate, prepare_class


def test_fast_instantiation_builds_the_same_worker_as_footprints():
    (instructions,) = resolve([dict(sleeping_time=1, name="s-[sleeping_time]")])
    attributes = instructions.attributes({})
    prepare_class(Sleeper)
    fast = instantiate(Sleeper, attributes)
    slow = Sleeper(dict(attributes), checked=True)
    assert type(fast) is Sleeper
    assert fast.footprint_as_dict() == slow.footprint_as_dict()
    assert (fast.name, fast.sleeping_time, fast.wakeup_sentence, fast.timeout) == ("s-1.0", 1.0, "Hello, world!", None)


def test_classes_with_their_own_init_are_built_through_it():
    class Counted(Worker):
        _footprint = dict(attr=dict(counted=dict(type=bool, values=[True])))
        built = 0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            type(self).built += 1

    prepare_class(Counted)
    (instructions,) = resolve([dict(counted=True)])
    worker = instantiate(Counted, instructions.attributes({}))
    assert Counted.built == 1 and worker.counted is True
    footprints.collectors.get(tag="worker").discard(Counted)
