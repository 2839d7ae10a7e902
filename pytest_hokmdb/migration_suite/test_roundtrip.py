"""Every revision undoes itself without a trace: upgrade r, downgrade to r's parent,
upgrade r again, comparing full ``pg_catalog`` snapshots (see snapshot.py).

One test per revision (the id is the revision), so pytest-xdist spreads them and a
failure names r. Each worker walks one database up the history (see walker.py); a
branched history gets a clean clone of the template at r's parent per test instead.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase
from pytest_hokmdb.migration.history import History, Revision
from pytest_hokmdb.migration.runner import round_trip, state_before, with_stepper
from pytest_hokmdb.migration.walker import Walker


def test_revision_round_trips(
    revision: Revision,
    migration_history: History,
    migration_database: Callable[[tuple[str, ...]], ThrowawayDatabase],
    migration_walker: Walker | None,
) -> None:
    exemption = migration_history.downgrade_exemption(revision.id)
    if exemption:
        pytest.skip(exemption)
    if migration_walker is not None:
        migration_walker.round_trip(revision)
        return
    db = migration_database(state_before(revision))
    with_stepper(migration_history, db.url, lambda stepper: round_trip(stepper, revision))
