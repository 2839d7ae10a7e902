"""The models describe the schema the migrations build (see drift.py for the three views)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from pytest_hokmdb.errors import ConfigError
from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase
from pytest_hokmdb.migration.drift import (
    autogenerate_drift,
    check_constraint_drift,
    enum_drift,
    model_module_problems,
)
from pytest_hokmdb.migration.history import History, MigrationFailure
from pytest_hokmdb.migration.runner import with_stepper
from pytest_hokmdb.migration.settings import MigrationSuiteSettings
from pytest_hokmdb.migration.templates import TemplateCache


@pytest.fixture(scope="module")
def metadata(migration_settings: MigrationSuiteSettings) -> sa.MetaData:
    try:
        loaded = migration_settings.load_metadata()
    except ConfigError as exc:
        raise MigrationFailure(str(exc)) from None
    if loaded is None:
        pytest.skip("the project declares no models ([tool.hokmdb.migrations] metadata = false)")
    if not isinstance(loaded, sa.MetaData):
        raise MigrationFailure(f"[tool.hokmdb.migrations] metadata = {migration_settings.metadata!r} is not a MetaData")
    return loaded


@pytest.fixture
def head_database(migration_history: History, migration_templates: TemplateCache) -> ThrowawayDatabase:
    """The worker's template at head, read in place: these checks only read the catalog."""
    return migration_templates.read_only(migration_history.head_state)


def test_models_match_the_migrations_at_head(
    migration_history: History, head_database: ThrowawayDatabase, metadata: sa.MetaData
) -> None:
    head, db = ", ".join(migration_history.head_state), head_database
    operations = with_stepper(migration_history, db.url, lambda stepper: autogenerate_drift(stepper, metadata))
    if operations:
        raise MigrationFailure(
            f"the models and the schema at head ({head}) differ; alembic autogenerate would generate:\n{operations}"
        )


def test_every_model_module_contributes_to_the_metadata(migration_settings: MigrationSuiteSettings, metadata: sa.MetaData) -> None:
    problems = model_module_problems(migration_settings)
    if problems:
        raise MigrationFailure("\n".join(problems))


def test_check_constraints_match_the_models(
    migration_history: History, head_database: ThrowawayDatabase, metadata: sa.MetaData
) -> None:
    head, db = ", ".join(migration_history.head_state), head_database
    problems = with_stepper(migration_history, db.url, lambda s: check_constraint_drift(s.connection, metadata))
    if problems:
        raise MigrationFailure(f"CHECK constraints at head ({head}) differ from the models:\n" + "\n".join(problems))


def test_enum_labels_match_the_models(
    migration_history: History, head_database: ThrowawayDatabase, metadata: sa.MetaData
) -> None:
    head, db = ", ".join(migration_history.head_state), head_database
    problems = with_stepper(migration_history, db.url, lambda s: enum_drift(s.connection, metadata))
    if problems:
        raise MigrationFailure(f"enum types at head ({head}) differ from the models:\n" + "\n".join(problems))
