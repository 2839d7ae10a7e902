"""The migration verification suite's pytest plugin: which project, its history, and clean
databases at any revision.

Enabled by ``pytest --hokmdb-migrations`` (or ``hokmdb_migrations = true`` in the project's
pytest configuration), it adds the suite's test modules (this package) to the run. Which
project: ``--hokmdb-migrations-project PATH`` (default: pytest's rootdir), whose
``pyproject.toml`` ``[tool.hokmdb.migrations]`` names the alembic ini, the metadata and the
data fixtures; a stock alembic project needs no section at all. ``-m hokmdb_migrations``
runs the suite alone.

Databases: each pytest-xdist worker has its own throwaway cluster (the plugin's
``hokmdb_cluster``), one walking database for the round trips (``walker.py``), and
template databases at the states other tests ask for (``templates.py``); such a test
gets a clean database at any revision with one ``CREATE DATABASE ... TEMPLATE``.

Everything here applies to the suite's own tests only (its functions are defined in this
package; a module that imports them is theirs too): a project's other tests keep their
``revision`` parameters, failures and markers as if hokmdb were not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_hokmdb.errors import ConfigError
from pytest_hokmdb.fixtures.state import register_module, xdist_controller

if TYPE_CHECKING:
    from pytest_hokmdb.migration.history import History
    from pytest_hokmdb.migration.settings import MigrationSuiteSettings

# The suite's fixtures, registered by pytest_configure in every process that runs tests; the
# rest of the machinery is imported where a hook first needs it, so that xdist's controller
# (which runs none) starts its workers sooner.
FIXTURES = "pytest_hokmdb.migration_suite.fixtures"

SETTINGS_KEY = pytest.StashKey["MigrationSuiteSettings"]()
SUITE_DIR = Path(__file__).resolve().parent
# Round trips before the one-command tests: the walker ends at head with its catalog in hand,
# which is the stepwise catalog test_upgrade compares with (walking there again would repeat
# every step the round trips just made).
SUITE_MODULES = ("test_history", "test_lint", "test_roundtrip", "test_upgrade", "test_drift", "test_data")
MARKER = "hokmdb_migrations"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hokmdb-migrations", "hokmdb migration suite")
    group.addoption(
        "--hokmdb-migrations",
        dest="hokmdb_migrations",
        action="store_true",
        default=None,
        help="run hokmdb's migration suite on the alembic project at the rootdir (-m hokmdb_migrations: only it)",
    )
    group.addoption(
        "--hokmdb-migrations-project",
        "--migrations-project",
        dest="hokmdb_migrations_project",
        default=None,
        metavar="PATH",
        help="root of the alembic project to verify (its pyproject.toml [tool.hokmdb.migrations]); default: rootdir",
    )
    parser.addini("hokmdb_migrations", "run hokmdb's migration suite (like --hokmdb-migrations)", type="bool",
                  default=False)


def _enabled(config: pytest.Config) -> bool:
    option = config.getoption("hokmdb_migrations")
    return bool(option) if option is not None else bool(config.getini("hokmdb_migrations"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: a test of hokmdb's migration suite (pytest --hokmdb-migrations)")
    if not xdist_controller(config):
        register_module(config, FIXTURES)
    if not _enabled(config):
        return
    suite_settings(config)  # a bad [tool.hokmdb.migrations] is a usage error before anything runs
    # A test id from a report (hokmdb-migrations/test_x.py::test_y[r]) runs that test alone.
    prefix = "hokmdb-migrations/"
    named = [i for i, arg in enumerate(config.args) if arg.startswith(prefix)]
    for i in named:
        config.args[i] = str(SUITE_DIR / config.args[i].removeprefix(prefix))
    if named or any(arg.startswith(str(SUITE_DIR)) for arg in config.args):
        return
    # Explicit paths: collected whatever the project's python_files says, once even when
    # xdist hands the controller's arguments (these included) to its workers.
    for name in SUITE_MODULES:
        config.args.append(str(SUITE_DIR / f"{name}.py"))


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """The suite's modules live in the installed package, outside the project's rootdir,
    where pytest would give their tests ids without a file (``::test_x``): name them
    ``hokmdb-migrations/<module>.py::test_x`` instead."""
    if module_path.parent != SUITE_DIR or module_path.stem not in SUITE_MODULES:
        return None
    return pytest.Module.from_parent(parent, path=module_path, nodeid=f"hokmdb-migrations/{module_path.name}")


def suite_settings(config: pytest.Config) -> MigrationSuiteSettings:
    """The project's settings, read once per process on first use."""
    if SETTINGS_KEY not in config.stash:
        from pytest_hokmdb.migration.settings import load_settings

        root = Path(config.getoption("hokmdb_migrations_project") or config.rootpath).resolve()
        try:
            settings = load_settings(root)
        except ConfigError as exc:
            raise pytest.UsageError(f"migration suite: {exc}") from None
        # Like alembic's prepend_sys_path: the project's models and env.py imports resolve from its root.
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        config.stash[SETTINGS_KEY] = settings
    return config.stash[SETTINGS_KEY]


def describe_project(config: pytest.Config) -> str:
    """What the suite reads: the project, the script directory alembic loads, the revisions."""
    from pytest_hokmdb.migration.history import load_history

    settings = suite_settings(config)
    try:
        history = load_history(settings)
    except ConfigError as exc:
        return f"hokmdb migration suite: project {settings.root}: {exc.message}"
    ids = history.ids
    span = f"{len(ids)} revision(s), {ids[0]} .. {', '.join(history.heads)}" if ids else "no revisions"
    return (f"hokmdb migration suite: project {settings.root}, alembic {settings.resolve(settings.alembic_ini)}, "
            f"scripts {history.script.dir}, {span}")


def pytest_report_header(config: pytest.Config) -> str | None:
    return describe_project(config) if _enabled(config) else None


def is_suite_function(function: object) -> bool:
    return getattr(function, "__module__", "").startswith(__package__ + ".")


def suite_history(config: pytest.Config) -> History:
    """The history; one that cannot be loaded fails collection with alembic's reason alone."""
    from pytest_hokmdb.migration.history import load_history

    try:
        return load_history(suite_settings(config))
    except ConfigError as exc:
        message = exc.message
    pytest.fail(message, pytrace=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    marker = getattr(pytest.mark, MARKER)
    for item in items:
        if is_suite_function(getattr(item, "function", None)):
            item.add_marker(marker)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist (controller, ``--dist load`` or ``loadgroup``): the walk scheduling of
    ``migration.schedule``, which keeps each worker's round trips contiguous."""
    if not _enabled(config) or getattr(config.option, "dist", None) not in ("load", "loadgroup"):
        return None
    from pytest_hokmdb.migration.history import load_history

    try:
        history = load_history(suite_settings(config))
    except ConfigError:
        return None  # the workers report it, as without xdist
    from pytest_hokmdb.migration_suite.schedule import walk_scheduler

    return walk_scheduler(config, log, history)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Per-revision tests get one item per revision, with the revision id as the test id,
    so pytest-xdist spreads them over the workers."""
    if not is_suite_function(metafunc.function):
        return
    config = metafunc.config
    if "revision" in metafunc.fixturenames:
        history = suite_history(config)
        if history.revisions:
            metafunc.parametrize("revision", [
                pytest.param(r, id=r.id, marks=[pytest.mark.skip(reason=reason)] if (reason := history.skip_reason(r.id))
                             else []) for r in history.revisions])
        else:
            metafunc.parametrize("revision", [pytest.param(None, id="none", marks=pytest.mark.skip(
                reason="the history has no revisions (reported once, by test_history_has_one_head: rule empty-history)"))])
    from pytest_hokmdb.migration.fixtures import load_data_fixtures

    if "revision_data" in metafunc.fixturenames:
        data = load_data_fixtures(suite_settings(config)).revision_data
        history = suite_history(config)
        metafunc.parametrize("revision_data", [
            pytest.param(d, id=d.revision, marks=[pytest.mark.skip(reason=reason)]
                         if (reason := history.skip_reason(d.revision)) else []) for d in data]
            or [_nothing_declared("REVISION_DATA")])
    if "seeded_data" in metafunc.fixturenames:
        seeded = load_data_fixtures(suite_settings(config)).seeded
        metafunc.parametrize("seeded_data", seeded or [_nothing_declared("SEEDED_DATA")],
                             ids=[s.name for s in seeded] or None)


def _nothing_declared(name: str) -> object:
    return pytest.param(
        None, id="none", marks=pytest.mark.skip(reason=f"the project's data fixtures declare no {name} "
                                                "([tool.hokmdb.migrations] data_fixtures)"),
    )


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> object:
    """A broken migration rule is reported by its message alone (it names the revision
    and carries the diff); the suite's own stack frames would only bury it."""
    if not is_suite_function(pyfuncitem.function):
        return (yield)
    from pytest_hokmdb.migration.history import EmptyHistory, MigrationFailure

    try:
        return (yield)
    except EmptyHistory:
        failure = ""
    except MigrationFailure as exc:
        failure = str(exc)
    if not failure:
        pytest.skip("the history has no revisions (reported once, by test_history_has_one_head: rule empty-history)")
    # Raised outside the except block, so no "during handling of the above exception" chain.
    pytest.fail(failure, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """A fixture that needs the head (drift at head, the one-command tests) of an empty
    history skips its test, as the test itself would: the history test reports it once."""
    report: pytest.TestReport = yield
    if call.when != "setup" or call.excinfo is None or not is_suite_function(getattr(item, "function", None)):
        return report
    from pytest_hokmdb.migration.history import EmptyHistory

    if call.excinfo.errisinstance(EmptyHistory):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0,
                           "Skipped: the history has no revisions (reported once, by test_history_has_one_head: "
                           "rule empty-history)")
    return report
