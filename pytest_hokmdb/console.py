"""Console output shared by every layer: whether a human is watching, and progress for long
operations (a bar on a terminal, a few plain lines in CI logs)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("hokmdb.progress")

Advance = Callable[[int], None]


def interactive() -> bool:
    """A human at a terminal (progress bars) rather than a CI log (plain lines)."""
    return sys.stderr.isatty() and not os.environ.get("CI")


@contextmanager
def progress(description: str, total: int | None, *, enabled: bool | None = None) -> Iterator[Advance]:
    """Yield ``advance(n)``. On a TTY a rich bar; otherwise a log line at each quarter."""
    show_bar = interactive() if enabled is None else enabled
    if show_bar:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)
        return

    done = 0
    next_mark = 0.25
    started = time.monotonic()

    def advance(n: int) -> None:
        nonlocal done, next_mark
        done += n
        if total and done / total >= next_mark:
            log.info("%s: %d/%d (%.0f%%) after %.1fs", description, done, total, 100 * done / total, time.monotonic() - started)
            while next_mark <= done / total:
                next_mark += 0.25

    yield advance
    log.info("%s: done (%d) in %.1fs", description, done, time.monotonic() - started)
