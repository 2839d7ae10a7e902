"""The migration verification suite's fixtures: which project, its history, and clean
databases at any revision.

Which project: ``--migrations-project PATH`` (default: pytest's rootdir), whose
``pyproject.toml`` ``[tool.hokmdb.migrations]`` section names the alembic ini, the
metadata and the data fixtures. So the suite verifies another alembic project with::

    pytest /path/to/hokmdb/migration_tests --migrations-project /path/to/project -n auto

Databases: each pytest-xdist worker has its own throwaway cluster (the plugin's
``hokmdb_cluster``), one walking database for the round trips (``walker.py``), and
template databases at the states other tests ask for (``templates.py``); such a test
gets a clean database at any revision with one ``CREATE DATABASE ... TEMPLATE``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.errors import ConfigError
from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase, create_database, drop_database
from pytest_hokmdb.migration.fixtures import DataFixtures, load_data_fixtures
from pytest_hokmdb.migration.history import History, MigrationFailure, load_history
from pytest_hokmdb.migration.settings import MigrationSuiteSettings, load_settings
from pytest_hokmdb.migration.templates import TemplateCache
from pytest_hokmdb.migration.walker import Walker

SETTINGS_KEY = pytest.StashKey[MigrationSuiteSettings]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("hokmdb-migrations", "hokmdb migration suite").addoption(
        "--migrations-project",
        dest="hokmdb_migrations_project",
        default=None,
        metavar="PATH",
        help="root of the alembic project to verify (its pyproject.toml [tool.hokmdb.migrations]); default: rootdir",
    )


def pytest_configure(config: pytest.Config) -> None:
    root = Path(config.getoption("hokmdb_migrations_project") or config.rootpath).resolve()
    try:
        settings = load_settings(root)
    except ConfigError as exc:
        raise pytest.UsageError(f"migration suite: {exc}") from None
    # Like alembic's prepend_sys_path: the project's models and env.py imports resolve from its root.
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    config.stash[SETTINGS_KEY] = settings


def pytest_report_header(config: pytest.Config) -> str:
    settings = config.stash[SETTINGS_KEY]
    return f"hokmdb migration suite: project {settings.root}, alembic {settings.resolve(settings.alembic_ini)}"


def _history(config: pytest.Config) -> History:
    return load_history(config.stash[SETTINGS_KEY])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Per-revision tests get one item per revision, with the revision id as the test id,
    so pytest-xdist spreads them over the workers."""
    config = metafunc.config
    if "revision" in metafunc.fixturenames:
        revisions = _history(config).revisions
        metafunc.parametrize("revision", revisions, ids=[r.id for r in revisions])
    if "revision_data" in metafunc.fixturenames:
        data = load_data_fixtures(config.stash[SETTINGS_KEY]).revision_data
        metafunc.parametrize("revision_data", data or [_nothing_declared("REVISION_DATA")],
                             ids=[d.revision for d in data] or None)
    if "seeded_data" in metafunc.fixturenames:
        seeded = load_data_fixtures(config.stash[SETTINGS_KEY]).seeded
        metafunc.parametrize("seeded_data", seeded or [_nothing_declared("SEEDED_DATA")],
                             ids=[s.name for s in seeded] or None)


def _nothing_declared(name: str) -> object:
    return pytest.param(
        None, id="none", marks=pytest.mark.skip(reason=f"the project's data fixtures declare no {name} "
                                                "([tool.hokmdb.migrations] data_fixtures)"),
    )


@pytest.fixture(scope="session")
def migration_settings(pytestconfig: pytest.Config) -> MigrationSuiteSettings:
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def migration_history(pytestconfig: pytest.Config) -> History:
    """The project's history (its script directory loaded once per process)."""
    return _history(pytestconfig)


@pytest.fixture(scope="session")
def migration_data_fixtures(migration_settings: MigrationSuiteSettings) -> DataFixtures:
    return load_data_fixtures(migration_settings)


@pytest.fixture(scope="session")
def migration_templates(migration_history: History, hokmdb_cluster: EmbeddedCluster) -> TemplateCache:
    """This worker's template databases, built when first needed."""
    return TemplateCache(
        migration_history,
        lambda name, template: create_database(hokmdb_cluster, name, template),
        prefix=f"mig_tpl_{os.getpid()}",
    )


@pytest.fixture(scope="session")
def migration_walker(migration_history: History, hokmdb_cluster: EmbeddedCluster) -> Iterator[Walker | None]:
    """This worker's walking database for round trips; None for a branched history."""
    if not migration_history.is_linear:
        yield None
        return
    walker = Walker(
        migration_history,
        lambda name: create_database(hokmdb_cluster, name),
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


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> object:
    """A broken migration rule is reported by its message alone (it names the revision
    and carries the diff); the suite's own stack frames would only bury it."""
    try:
        return (yield)
    except MigrationFailure as exc:
        failure = str(exc)
    # Raised outside the except block, so no "during handling of the above exception" chain.
    pytest.fail(failure, pytrace=False)
