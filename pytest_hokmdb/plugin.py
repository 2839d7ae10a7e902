"""The hokmdb pytest plugin: environment selection, safety guards, redaction, fixtures.

Registered through the ``pytest11`` entry point, so any suite run with hokmdb installed
gets ``--environment``, the markers and the fixtures.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from typing import Any

import pytest
from pytest_asyncio import is_async_test

from pytest_hokmdb import version_line
from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.config import ENVIRONMENTS, load_config
from pytest_hokmdb.errors import ConfigError, ExitCode, HokmdbError
from pytest_hokmdb.fixtures.state import (
    DATABASE_OVERRIDE_KEY,
    NO_ENVIRONMENT,
    PORT_OVERRIDE_KEY,
    RESTORED_KEY,
    STATE_KEY,
    STOP_KEY,
    SessionState,
    register_module,
    session_state,
    xdist_controller,
)
from pytest_hokmdb.redaction import redact
from pytest_hokmdb.report.json_result import JsonResult

JSON_RESULT_KEY = pytest.StashKey[JsonResult]()
METRICS_KEY = pytest.StashKey[Any]()  # the LoadedConfig whose metrics section says where smoke metrics go

# The fixtures, registered as plugins by pytest_configure in every process that runs tests.
FIXTURE_MODULES = ("pytest_hokmdb.fixtures.live", "pytest_hokmdb.fixtures.checks", "pytest_hokmdb.fixtures.throwaway")

MARKERS = (
    "smoke: a post-deploy check of a live database (read-only)",
    "destructive: writes to or breaks the target; refused on production, needs --allow-destructive on staging",
    "environments(*names): run only when --environment is one of names",
    "slow: takes more than a few seconds",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hokmdb", "hokmdb: PostgreSQL deploy verification")
    group.addoption(
        "--environment",
        dest="hokmdb_environment",
        default=None,
        choices=ENVIRONMENTS,
        help="environment to verify (default: $HOKMDB_ENVIRONMENT, else ini hokmdb_environment)",
    )
    group.addoption(
        "--db-config",
        dest="hokmdb_config",
        default=None,
        metavar="PATH",
        help="config directory or file (default: database/config/<environment>.json)",
    )
    group.addoption(
        "--allow-destructive",
        action="store_true",
        default=False,
        help="let tests marked destructive run on staging (never on production)",
    )
    group.addoption(
        "--target-revision",
        dest="hokmdb_target_revision",
        default=None,
        metavar="REV",
        help="revision the database must be at (default: the code's alembic head)",
    )
    group.addoption(
        "--full-scan",
        dest="hokmdb_full_scan",
        action="store_true",
        default=False,
        help="run data-integrity checks over all data instead of the recent window",
    )
    group.addoption(
        "--hokmdb-json",
        dest="hokmdb_json",
        default=None,
        metavar="PATH",
        help="write a machine-readable result (per check: status, duration, measured, threshold, message)",
    )
    group.addoption(
        "--database-name",
        dest="hokmdb_database_name",
        default=None,
        metavar="NAME",
        help="connect to this database on the environment's server instead of database.name (e.g. a restored copy)",
    )
    group.addoption(
        "--database-port",
        dest="hokmdb_database_port",
        type=int,
        default=None,
        metavar="PORT",
        help="connect to this port of the environment's server instead of database.port (e.g. a physical "
        "restore started on a spare port before it is swapped in)",
    )
    group.addoption(
        "--restore-from-backup",
        dest="hokmdb_restore_from",
        default=None,
        metavar="PATH|s3://...|latest",
        help="restore this backup into a scratch database and point the session's database fixtures at it "
        "(development/testing only); the scratch database is dropped afterwards",
    )
    group.addoption(
        "--keep-restored",
        dest="hokmdb_keep_restored",
        action="store_true",
        default=False,
        help="keep the scratch database of --restore-from-backup after the run (rollback.py cleanup drops it "
        "after backup.retention_days)",
    )
    parser.addini("hokmdb_environment", "default environment for --environment", default=None)
    parser.addini("hokmdb_config", "default config directory or file for --db-config", default=None)


ASYNCIO_FIXTURE_LOOP_SCOPE = "asyncio_default_fixture_loop_scope"


def _choose_environment(config: pytest.Config) -> str | None:
    return (
        config.getoption("hokmdb_environment")
        or os.environ.get("HOKMDB_ENVIRONMENT")
        or config.getini("hokmdb_environment")
        or None
    )


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Where the user's project leaves ``asyncio_default_fixture_loop_scope`` unset, say
    ``fixture-scope``: exactly what pytest-asyncio does when it is unset (each async fixture
    runs in a loop of its own scope), without the deprecation warning it then prints in every
    run. Installing hokmdb must not make a user's suite noisier, nor change how it runs; a
    value the user set is left alone. Runs before pytest-asyncio's own ``pytest_configure``,
    which reads the value; pytest has no public setter for an ini value, hence the cache."""
    if not config.getini(ASYNCIO_FIXTURE_LOOP_SCOPE):
        config._inicache[ASYNCIO_FIXTURE_LOOP_SCOPE] = "fixture-scope"


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    if not xdist_controller(config):
        for module in FIXTURE_MODULES:
            register_module(config, module)
    environment = _choose_environment(config)
    loaded = None
    if environment:
        config_path = config.getoption("hokmdb_config") or config.getini("hokmdb_config") or None
        try:
            loaded = load_config(environment, config_path)
        except ConfigError as exc:
            pytest.exit(f"hokmdb: {exc}", returncode=int(exc.exit_code))
        from pytest_hokmdb.checks.catalog import waiver_problems

        problems = waiver_problems(loaded.config.smoke, loaded.project_root)
        if problems:
            pytest.exit(f"hokmdb: {loaded.path}: " + "; ".join(problems), returncode=int(ExitCode.CONFIG_ERROR))
        if (revision := config.getoption("hokmdb_target_revision")) and not hasattr(config, "workerinput"):
            from pytest_hokmdb.migrate import check_revision

            try:  # before any check runs: a revision the code does not have is bad input, not a failed check
                check_revision(revision, project_root=loaded.project_root)
            except ConfigError as exc:
                pytest.exit(f"hokmdb: --target-revision: {exc}", returncode=int(exc.exit_code))
    config.stash[STATE_KEY] = SessionState(environment, loaded, bool(config.getoption("allow_destructive")))
    if config.getoption("hokmdb_database_name"):
        config.stash[DATABASE_OVERRIDE_KEY] = config.getoption("hokmdb_database_name")
    if config.getoption("hokmdb_database_port"):
        config.stash[PORT_OVERRIDE_KEY] = config.getoption("hokmdb_database_port")
    if config.getoption("hokmdb_restore_from"):
        _restore_from_backup(config, loaded)
    json_path = config.getoption("hokmdb_json")
    metrics = loaded.config.metrics if loaded is not None else None
    wants_metrics = metrics is not None and (metrics.textfile_dir is not None or metrics.pushgateway_url)
    if (json_path or wants_metrics) and not hasattr(config, "workerinput"):  # only the xdist controller (or a plain run)
        from pathlib import Path

        target = None
        if loaded is not None:
            db = loaded.config.database
            target = f"{db.user}@{db.host or 'embedded'}:{db.port}/{db.name}"
        config.stash[JSON_RESULT_KEY] = JsonResult(Path(json_path).resolve() if json_path else None, environment, target)
        if wants_metrics:
            config.stash[METRICS_KEY] = loaded


def pytest_collection_finish(session: pytest.Session) -> None:
    """A run with a test that needs this process's throwaway cluster starts it now, on a
    thread, while the first tests run (see ``prestart_cluster``)."""
    if any("hokmdb_cluster" in getattr(item, "fixturenames", ()) for item in session.items):
        from pytest_hokmdb.fixtures.throwaway import prestart_cluster

        prestart_cluster()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """A prestarted cluster no test took is removed; the scratch clusters of workers that
    were killed (their owner is gone) are stopped and removed before the run ends; only
    hokmdb's own tracked directories are touched. A run a worker stopped because the live
    target cannot be reached ends as a plain run would: the scripts' exit code (3 for a
    connection) instead of xdist's "interrupted"."""
    if (throwaway := sys.modules.get("pytest_hokmdb.fixtures.throwaway")) is not None:
        throwaway.discard_prestarted()
    if hasattr(session.config, "workerinput"):
        return
    stop = session.config.stash.get(_WORKER_STOP, None)
    if stop is not None:
        session.exitstatus = stop["code"]
    from pytest_hokmdb.cluster.embedded import sweep_orphan_clusters

    sweep_orphan_clusters()


_WORKER_STOP = pytest.StashKey[dict[str, Any]]()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: a worker that stopped because the live target cannot be reached
    (``fixtures.live.stop_session``) hands over its message and exit code."""
    stop = getattr(node, "workeroutput", {}).get(STOP_KEY)
    if stop is not None:
        node.config.stash.setdefault(_WORKER_STOP, stop)


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    result = session.config.stash.get(JSON_RESULT_KEY, None)
    if result is not None:
        session.config.pluginmanager.register(_JsonCollector(result, session.config.stash.get(METRICS_KEY, None)),
                                              "hokmdb-json-result")


class _JsonCollector:
    """The run's result: the JSON file (``--hokmdb-json``) and the Prometheus metrics
    (``metrics`` in the environment's config), from one document."""

    def __init__(self, result: JsonResult, metrics_config: Any = None) -> None:
        self.result = result
        self.metrics_config = metrics_config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.result.add(report)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        document = self.result.write(exitstatus)
        if self.metrics_config is None or not self.result.entries:
            return
        from pytest_hokmdb.report.metrics import export, smoke_registry

        loaded = self.metrics_config
        problems = export(smoke_registry(document), loaded.config.metrics, loaded.config.environment, name="hokmdb_smoke")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for problem in problems:  # the verdict stands; a metrics target that failed is said, not hidden
            line = f"hokmdb: metrics not exported: {problem} ({loaded.path})"
            if reporter is not None:
                reporter.write_line(line, yellow=True)
            else:
                print(line, file=sys.stderr)


def _restore_from_backup(config: pytest.Config, loaded: Any) -> None:
    """``--restore-from-backup``: one scratch restore per run (the xdist controller does it
    and hands the database name to its workers); dropped at the end unless ``--keep-restored``."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        restored = workerinput.get("hokmdb_restored")
        if restored:
            config.stash[DATABASE_OVERRIDE_KEY] = restored["dbname"]
            if restored.get("revision") and not config.getoption("hokmdb_target_revision"):
                config.option.hokmdb_target_revision = restored["revision"]
        return
    if loaded is None:
        pytest.exit(f"hokmdb: --restore-from-backup needs an environment; {NO_ENVIRONMENT}", returncode=int(ExitCode.CONFIG_ERROR))
    from pytest_hokmdb.backup import restore_scratch

    try:
        scratch = run_sync(restore_scratch(loaded, config.getoption("hokmdb_restore_from")))
    except HokmdbError as exc:
        pytest.exit(f"hokmdb: {exc}", returncode=int(exc.exit_code))
    config.stash[DATABASE_OVERRIDE_KEY] = scratch.dbname
    config.stash[RESTORED_KEY] = scratch
    if scratch.revision and not config.getoption("hokmdb_target_revision"):
        # The copy is checked against the revision it was dumped at, not the code's head.
        config.option.hokmdb_target_revision = scratch.revision
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_RestoredToWorkers(scratch.dbname, scratch.revision), "hokmdb-restored-to-workers")

    def drop() -> None:
        keep = config.getoption("hokmdb_keep_restored")
        try:
            # Kept: marked so, or ``rollback.py cleanup`` would take it for a killed run's copy.
            run_sync(scratch.keep() if keep else scratch.drop())
        except Exception as exc:  # noqa: BLE001 - teardown must not hide the run's result
            import warnings

            what = "mark scratch database {} as kept" if keep else "drop scratch database {}"
            warnings.warn(f"hokmdb: could not {what.format(scratch.dbname)}: {redact(str(exc))}", stacklevel=1)

    config.add_cleanup(drop)


class _RestoredToWorkers:
    def __init__(self, dbname: str, revision: str | None) -> None:
        self.value = {"dbname": dbname, "revision": revision}

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["hokmdb_restored"] = self.value


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = session_state(config)
    lines = [version_line()]
    if state.loaded is None:
        if config.getoption("hokmdb_migrations", None):
            return lines  # the migration suite needs no environment; its own header says what it reads
        return [*lines, "hokmdb: no environment selected (--environment NAME or HOKMDB_ENVIRONMENT)"]
    cfg = state.loaded.config
    mode = "read-only sessions" if cfg.is_protected else "read-write sessions"
    lines.append(f"hokmdb: environment {cfg.environment} ({mode}), config {state.loaded.path}")
    scratch = config.stash.get(RESTORED_KEY, None)
    if scratch is not None:
        fate = "kept after the run" if config.getoption("hokmdb_keep_restored") else "dropped after the run"
        lines.append(
            f"hokmdb: backup {scratch.record.id} (revision {scratch.revision}) restored into scratch database "
            f"{scratch.dbname}, {fate}"
        )
    from pytest_hokmdb.report.probe import probe_server

    facts = run_sync(probe_server(
            state.loaded,
            database=config.stash.get(DATABASE_OVERRIDE_KEY, None),
            port=config.stash.get(PORT_OVERRIDE_KEY, None),
        ))
    lines.append("hokmdb: " + facts.describe())
    return lines


def _uses_hokmdb(item: pytest.Item) -> bool:
    """A test that asks for one of hokmdb's fixtures (directly or through others)."""
    return any(name.startswith("hokmdb_") for name in getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """hokmdb's async tests share the session event loop, so session-scoped pools can serve
    them. Only hokmdb's: a user's own suite in the same virtualenv keeps its own loop scope,
    as if hokmdb were not installed."""
    session_loop = pytest.mark.asyncio(loop_scope="session")
    for item in items:
        marker = item.get_closest_marker("environments")
        if marker is not None:
            unknown = [name for name in marker.args if name not in ENVIRONMENTS]
            if unknown or not marker.args:
                raise pytest.UsageError(
                    f"{item.nodeid}: @pytest.mark.environments needs names from {', '.join(ENVIRONMENTS)}"
                    + (f", got {', '.join(map(str, unknown))}" if unknown else "")
                )
        if is_async_test(item) and _uses_hokmdb(item):
            existing = item.get_closest_marker("asyncio")
            if existing is None or "loop_scope" not in existing.kwargs:
                item.add_marker(session_loop, append=False)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    state = session_state(item.config)
    environment = state.environment
    marker = item.get_closest_marker("environments")
    if marker is not None and environment not in marker.args:
        where = environment or "no environment selected"
        pytest.skip(f"runs only on {', '.join(marker.args)} (this session: {where})")
    if item.get_closest_marker("destructive") is None or environment is None:
        return
    if environment == "production":
        pytest.fail(
            f"refused: {item.nodeid} is marked destructive and destructive tests never run on production",
            pytrace=False,
        )
    if environment == "staging" and not state.allow_destructive:
        pytest.fail(
            f"refused: {item.nodeid} is marked destructive; on staging it runs only with --allow-destructive",
            pytrace=False,
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Scrub secrets from every report: tracebacks, captured output and logs.

    This is the last line of defence behind the redaction done where DSNs are built: a
    driver error or a test's own print can still carry a password.
    """
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.longrepr is not None:
        text = str(report.longrepr)
        cleaned = redact(text)
        if cleaned != text:
            report.longrepr = cleaned
    report.sections = [(title, redact(content)) for title, content in report.sections]
