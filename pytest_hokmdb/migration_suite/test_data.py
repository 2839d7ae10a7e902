"""Data survives the migrations: per-revision fixtures (rows before, rows expected after)
and a seeded data set that goes down and back up (format: pytest_hokmdb.migration.fixtures)."""

from __future__ import annotations

from collections.abc import Callable

from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase
from pytest_hokmdb.migration.fixtures import (
    DataFixtures,
    RevisionData,
    SeededData,
    run_revision_data,
    seeded_round_trip,
)
from pytest_hokmdb.migration.history import History, MigrationFailure
from pytest_hokmdb.migration.runner import state_before, with_stepper

DatabaseAt = Callable[[tuple[str, ...]], ThrowawayDatabase]


def test_data_fixtures_name_revisions_of_the_history(
    migration_history: History, migration_data_fixtures: DataFixtures
) -> None:
    problems = migration_data_fixtures.unknown_revisions(migration_history)
    order = migration_history.ids
    for seeded in migration_data_fixtures.seeded:
        if seeded.from_revision in order:
            later = order[order.index(seeded.from_revision) + 1:]
            problems += [
                f"SEEDED_DATA {seeded.name!r} goes down to {seeded.from_revision}, past revision {r}, whose downgrade "
                f"is not supported: {migration_history.downgrade_exemption(r)}"
                for r in later
                if migration_history.is_irreversible(r)
            ]
    if problems:
        raise MigrationFailure("\n".join(problems))


def test_revision_keeps_its_data(
    revision_data: RevisionData, migration_history: History, migration_database: DatabaseAt
) -> None:
    revision = migration_history.revision(revision_data.revision)
    db = migration_database(state_before(revision))
    reversible = not migration_history.is_irreversible(revision.id)
    with_stepper(
        migration_history, db.url, lambda s: run_revision_data(s, revision, revision_data, reversible=reversible)
    )


def test_seeded_data_survives_a_round_trip(
    seeded_data: SeededData, migration_history: History, migration_database: DatabaseAt
) -> None:
    db = migration_database(migration_history.head_state)
    seeded_data.seed(db.dsn)
    with_stepper(migration_history, db.url, lambda s: seeded_round_trip(s, migration_history, seeded_data))
    if seeded_data.check is not None:
        problems = seeded_data.check(db.dsn)
        if problems:
            raise MigrationFailure(
                f"{seeded_data.name}: after head -> {seeded_data.from_revision} -> head the data breaks its "
                "invariants:\n" + "\n".join(problems)
            )
