"""Base to head in one command, and back down in one command.

A deployment runs ``alembic upgrade head`` in one go; a developer (and the round trips)
go one revision per command. Both must end at the same catalog (a revision that depends
on state left by an earlier command, or an env.py that batches differently, shows up
here), and one ``downgrade`` from head must reach the bottom without a trace.
"""

from __future__ import annotations

from collections.abc import Callable

from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase
from pytest_hokmdb.migration.history import BASE, History, MigrationFailure
from pytest_hokmdb.migration.runner import Stepper, with_stepper
from pytest_hokmdb.migration.snapshot import CatalogSnapshot
from pytest_hokmdb.migration.templates import TemplateCache
from pytest_hokmdb.migration.walker import Walker

DatabaseAt = Callable[[tuple[str, ...]], ThrowawayDatabase]


def test_upgrade_from_base_to_head_in_one_go(
    migration_history: History,
    migration_database: DatabaseAt,
    migration_templates: TemplateCache,
    migration_walker: Walker | None,
) -> None:
    state = migration_history.head_state
    head = ", ".join(state)
    # The head template is built from empty by one `upgrade head`, its recorded heads checked.
    in_one_go = migration_templates.snapshot(state)
    assert in_one_go is not None

    def upgrade_each(stepper: Stepper) -> CatalogSnapshot:
        for revision_id in migration_history.ids:
            stepper.upgrade(revision_id)
        return stepper.snapshot()

    if migration_walker is not None:
        stepwise = migration_walker.walk_to_head()
    else:
        stepwise = with_stepper(migration_history, migration_database(()).url, upgrade_each)
    if in_one_go != stepwise:
        raise MigrationFailure(
            f"upgrading base -> {head} in one command builds a different schema than upgrading one revision at "
            f"a time (one command -, stepwise +):\n{in_one_go.diff(stepwise, before='one command', after='stepwise')}"
        )


def test_downgrade_from_head_in_one_go(
    migration_history: History, migration_database: DatabaseAt, migration_templates: TemplateCache,
    migration_walker: Walker | None,
) -> None:
    state, floor = migration_history.head_state, migration_history.downgrade_floor
    head = ", ".join(state)
    floor_state: tuple[str, ...] = () if floor == BASE else (floor,)

    # The walker is at head after the round trips (and test_upgrade_from_base_to_head_in_one_go)
    # and saw the floor's catalog on its way up: downgrade it, not a clone of the head template.
    walked = migration_walker.downgrade_from_head() if migration_walker is not None else None
    if walked is not None:
        expected, after = walked
    else:
        def downgrade_all(stepper: Stepper) -> CatalogSnapshot:
            stepper.downgrade(floor)
            stepper.expect_heads(floor_state, f"downgrade {head} -> {floor}")
            return stepper.snapshot()

        after = with_stepper(migration_history, migration_database(state).url, downgrade_all)
        expected = migration_templates.snapshot(floor_state) or with_stepper(
            migration_history, migration_database(()).url, lambda stepper: stepper.snapshot()
        )
    if after != expected:
        raise MigrationFailure(
            f"downgrading {head} -> {floor} in one command leaves a trace (the catalog at {floor} -, after the "
            f"downgrade +):\n{expected.diff(after, before=f'at {floor}', after='after downgrade')}"
        )
