"""A long-lived server: start work, ask how it goes, give it more, then wait for the end.

Run it with:  python examples/server.py
"""

import time

from taylor import run_as_server
from taylor.examples import Sleeper  # noqa: F401 - importing the class makes footprints know it
from taylor.schedulers import MaxThreadsScheduler

if __name__ == "__main__":
    # Worker classes must be imported before the Boss is created: the boss is a fork of this process.
    boss = run_as_server(common_instructions=dict(wakeup_sentence="first wave"),
                         individual_instructions=dict(sleeping_time=[0.2, 0.4, 0.6], name=["a", "b", "c"]),
                         scheduler=MaxThreadsScheduler(max_threads=2))  # two workers at a time
    try:
        time.sleep(0.3)
        interim = boss.get_report()  # the run goes on; this is what has happened so far
        print(f"after 0.3 s: {len(interim.done)} done, running: {interim['running']}")

        # More instructions, to the same boss, while it works.
        names = boss.set_instructions(dict(wakeup_sentence="second wave"),
                                      dict(sleeping_time=[0.1, 0.1], name=["late-1", "late-2"]))
        print("queued:", names)

        report = boss.wait_till_finished()  # no more instructions: finish everything, then end
    finally:
        boss.close()  # a no-op after a normal end; stops the workers if something went wrong
    print(report.summary())
    for entry in sorted(report.done, key=lambda e: e["end_time"]):
        print(f"  {entry['name']}: {entry['report']['sentence']} after {entry['report']['slept']:.1f} s")
