"""Progress of a run, for whoever shows it (the CLI's progress bars).

The pipeline says where it is (`stage`, `advance`); a front end that wants to show it installs
a reporter with `reporting(...)`. Without one, the calls cost nothing. Flows run in the process
that called them, so a reporter installed by `fpdm run` sees the flow's steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class ProgressReporter(Protocol):
    def stage(self, name: str, total: int) -> None:
        """A stage starts, with `total` units of work (jobs, images)."""

    def advance(self, name: str, amount: int = 1) -> None:
        """`amount` more units of the stage are done."""


_reporter: ProgressReporter | None = None


@contextmanager
def reporting(reporter: ProgressReporter) -> Iterator[None]:
    global _reporter
    previous, _reporter = _reporter, reporter
    try:
        yield
    finally:
        _reporter = previous


def stage(name: str, total: int) -> None:
    if _reporter is not None:
        _reporter.stage(name, total)


def advance(name: str, amount: int = 1) -> None:
    if _reporter is not None:
        _reporter.advance(name, amount)
