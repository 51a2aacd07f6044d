"""The ``taylor`` command line."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings=dict(help_option_names=["-h", "--help"]))
@click.version_option(__version__, prog_name="taylor")
def main() -> None:
    """Run batches of tasks in processes, scheduled by CPUs and memory."""


@main.command()
@click.option("-n", "--tasks", default=8, show_default=True, help="How many example workers to run.")
def demo(tasks: int) -> None:
    """Run a demo batch of example Sleeper workers and print their report.

    Example: taylor demo -n 4
    """
    from . import batch_main
    from .examples import Sleeper  # noqa: F401 - registers the example worker

    times = [round(0.1 + 0.05 * (i % 4), 2) for i in range(tasks)]
    batch_main(dict(wakeup_sentence="Hello from a worker"), dict(sleeping_time=times))
