"""The migration suite's fixtures: the project's settings and history, the data fixtures,
and this worker's databases (the base with the project's prerequisites, the templates at
any revision, the walking database of the round trips). Registered as a plugin by
``plugin.pytest_configure`` in every process that runs tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase, create_database, drop_database
from pytest_hokmdb.migration.fixtures import DataFixtures, load_data_fixtures
from pytest_hokmdb.migration.history import History
from pytest_hokmdb.migration.prerequisites import run_prerequisites
from pytest_hokmdb.migration.runner import set_upgrade_path_data
from pytest_hokmdb.migration.settings import MigrationSuiteSettings
from pytest_hokmdb.migration.templates import TemplateCache
from pytest_hokmdb.migration.walker import Walker
from pytest_hokmdb.migration_suite.plugin import suite_history, suite_settings


@pytest.fixture(scope="session")
def migration_settings(pytestconfig: pytest.Config) -> MigrationSuiteSettings:
    return suite_settings(pytestconfig)


@pytest.fixture(scope="session")
def migration_history(pytestconfig: pytest.Config) -> History:
    """The project's history (its script directory loaded once per process), with the data
    fixtures' UPGRADE_PATH_DATA inserted on every upgrade through their revisions."""
    history = suite_history(pytestconfig)
    set_upgrade_path_data(history, load_data_fixtures(history.settings).path_inserts())
    return history


@pytest.fixture(scope="session")
def migration_data_fixtures(migration_settings: MigrationSuiteSettings) -> DataFixtures:
    return load_data_fixtures(migration_settings)


@pytest.fixture(scope="session")
def migration_base(migration_history: History, hokmdb_cluster: EmbeddedCluster) -> str | None:
    """The template every database "at base" is copied from: empty, plus the project's
    prerequisites (None without any: a new database is empty already)."""
    if not migration_history.settings.prerequisites:
        return None
    db = create_database(hokmdb_cluster, f"mig_base_{os.getpid()}")
    run_prerequisites(migration_history, db.url, db.dsn)
    return db.name


@pytest.fixture(scope="session")
def migration_templates(migration_history: History, hokmdb_cluster: EmbeddedCluster,
                        migration_base: str | None) -> TemplateCache:
    """This worker's template databases, built when first needed."""
    return TemplateCache(
        migration_history,
        lambda name, template: create_database(hokmdb_cluster, name, template),
        prefix=f"mig_tpl_{os.getpid()}",
        base=migration_base,
    )


@pytest.fixture(scope="session")
def migration_walker(migration_history: History, hokmdb_cluster: EmbeddedCluster,
                     migration_base: str | None) -> Iterator[Walker | None]:
    """This worker's walking database for round trips; None for a branched history."""
    if not migration_history.is_linear:
        yield None
        return
    walker = Walker(
        migration_history,
        lambda name: create_database(hokmdb_cluster, name, migration_base),
        lambda name: drop_database(hokmdb_cluster, name),
        prefix=f"mig_walk_{os.getpid()}",
    )
    try:
        yield walker
    finally:
        walker.close()


@pytest.fixture
def migration_database(
    migration_templates: TemplateCache, hokmdb_database_factory: Callable[..., ThrowawayDatabase]
) -> Callable[[tuple[str, ...]], ThrowawayDatabase]:
    """``migration_database(state)``: a fresh database whose alembic heads are ``state``
    (``()`` for an empty database), dropped after the test."""

    def at(state: tuple[str, ...]) -> ThrowawayDatabase:
        return hokmdb_database_factory(migration_templates.template(state))

    return at
