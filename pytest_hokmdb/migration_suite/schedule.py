"""How pytest-xdist spreads the suite over its workers: contiguous round trips per worker.

A round trip of revision r needs a database at r's parent, and each worker walks one
database up the history (``migration/walker.py``). Spread one test at a time (xdist's
``load``), each worker's walker climbs the whole history anyway, applying the revisions
the other worker took, and reads a fresh "before" catalog after each of them; on two
workers that cost more than the second core saved (``bench/migration_suite.py``: ``-n 2``
was slower than serial at 50 revisions). Here every worker gets one contiguous run of
round trips as a unit, and the last run, which ends at head, also takes the tests that
need head (the one-command upgrade and downgrade, the drift checks), so the head template
is built once. The later runs are shorter: their walker first climbs to where they start.
Every other test is spread one at a time, as with ``load``, and fills the gaps.

The units are made here, on the controller, from the node ids the workers collected:
pytest-xdist's own ``xdist_group`` mark relies on rewriting node ids on the workers, which
pytest 9.2 no longer honours (pytest-xdist issue #1386), so ``loadgroup`` silently groups
nothing there. A project's own ``xdist_group`` marks keep whatever ``loadgroup`` gives them.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from xdist.scheduler import LoadGroupScheduling

from pytest_hokmdb.migration.history import History

ROUND_TRIP = re.compile(r"^hokmdb-migrations/test_roundtrip\.py::test_revision_round_trips\[(?P<revision>[^\]]+)\]$")
AT_HEAD = (
    "hokmdb-migrations/test_upgrade.py::test_upgrade_from_base_to_head_in_one_go",
    "hokmdb-migrations/test_upgrade.py::test_downgrade_from_head_in_one_go",
    "hokmdb-migrations/test_drift.py::",
)
# The last run's share of round trips relative to the others': it also runs the tests at
# head, which on the bench histories cost about 0.6 of a run of round trips.
LAST_RUN_WEIGHT = 0.4


def walk_runs(revisions: list[str], workers: int) -> list[list[str]]:
    """The revisions of each worker's run, in upgrade order; fewer runs than workers when
    there are fewer revisions."""
    workers = max(1, min(workers, len(revisions)))
    if workers == 1:
        return [list(revisions)] if revisions else []
    weights = [1.0] * (workers - 1) + [LAST_RUN_WEIGHT]
    total, running, start, runs = sum(weights), 0.0, 0, []
    for weight in weights:
        running += weight
        end = max(start + 1, round(len(revisions) * running / total))
        runs.append(revisions[start:end])
        start = end
    runs[-1].extend(revisions[start:])
    return [run for run in runs if run]


class WalkScheduling(LoadGroupScheduling):  # type: ignore[misc]
    """``loadgroup`` whose units for the suite's own tests are the walk runs."""

    def __init__(self, config: pytest.Config, log: Any, history: History) -> None:
        super().__init__(config, log)
        self._history = history
        self._unit_of: dict[str, str] = {}

    def schedule(self) -> None:
        if self.collection is None and self.collection_is_completed:
            self._plan(next(iter(self.registered_collections.values()), []))
        super().schedule()

    def _plan(self, collected: list[str]) -> None:
        trips = {m.group("revision"): nodeid for nodeid in collected if (m := ROUND_TRIP.match(nodeid))}
        revisions = [r for r in self._history.ids if r in trips]
        runs = walk_runs(revisions, len(self.nodes))
        for number, run in enumerate(runs):
            for revision in run:
                self._unit_of[trips[revision]] = f"hokmdb-walk-{number}"
        if runs:
            last = f"hokmdb-walk-{len(runs) - 1}"
            for nodeid in collected:
                if nodeid.startswith(AT_HEAD):
                    self._unit_of[nodeid] = last

    def _split_scope(self, nodeid: str) -> str:
        unit = self._unit_of.get(nodeid)
        return unit if unit is not None else super()._split_scope(nodeid)  # type: ignore[no-any-return]


def walk_scheduler(config: pytest.Config, log: Any, history: History) -> WalkScheduling | None:
    """The walk scheduling for a linear history; None (xdist's own) for a branched one,
    whose round trips clone templates instead of walking."""
    return WalkScheduling(config, log, history) if history.is_linear else None
