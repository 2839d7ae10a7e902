"""Step through the history on one connection, fast, and prove each step undoes itself.

Why not ``alembic.command.upgrade``: every call builds a new ``ScriptDirectory`` and so
re-imports every revision file, and opens its own connection through env.py. Here the
``Stepper`` drives alembic's ``EnvironmentContext`` with the history's cached
``ScriptDirectory`` (see ``history.py``) and hands env.py *our* connection through
``config.attributes["connection"]``, the hook alembic's cookbook recommends for sharing
a connection. Only env.py itself is executed per command, which is the program that
configures the migration context and cannot be skipped.

Async env.py files (the ``run_async_migrations`` pattern) work: the suite opens an
``AsyncConnection`` and calls ``run_sync``; env.py gets the resulting sync
``Connection`` and must use it when present::

    def run_migrations_online() -> None:
        connection = config.attributes.get("connection")
        if connection is not None:
            do_run_migrations(connection)       # the suite's connection, already open
        else:
            asyncio.run(run_async_migrations())

An env.py that ignores the attribute is detected (the migration context it configures
is not on our connection) and reported, rather than silently migrating another database.

``StepperSession`` keeps one such connection open across calls (its own event loop on a
thread), so a walker database (``walker.py``) pays for connecting once, not once per test.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationStep
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.migrate import url_for_env
from pytest_hokmdb.migration.envpy import no_file_config, run_env_py
from pytest_hokmdb.migration.history import BASE, History, MigrationFailure, Revision, single_upgrade_step
from pytest_hokmdb.migration.snapshot import CatalogSnapshot, take_snapshot

T = TypeVar("T")

_MAX_ERROR_CHARS = 1500


class StepFailed(MigrationFailure):
    """An upgrade or downgrade raised; ``revision`` is the step that was running."""

    def __init__(self, message: str, revision: str | None) -> None:
        super().__init__(message)
        self.revision = revision


def _describe_error(exc: BaseException) -> str:
    """The database's own message (without SQLAlchemy's parameter dump), shortened."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        text = f"{type(exc.orig).__name__}: {exc.orig}"
        statement = (exc.statement or "").strip()
        if statement:
            text += f"\n  while running: {statement[:300]}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + " ..."


@dataclass
class _Progress:
    step: Any = None
    env_ran: bool = False


# The version table env.py configures (``version_table``, ``version_table_schema``), per
# script directory, as learnt from the first env.py run of this process: a Stepper that has
# not run env.py yet (a snapshot of a template) must leave the same table out of its catalog.
_VERSION_TABLES: dict[str, str] = {}


# Rows to insert just before a revision whenever the suite upgrades through it (the data
# fixtures' UPGRADE_PATH_DATA), per script directory: {revision: insert(connection)}.
_PATH_DATA: dict[str, dict[str, Callable[[Connection], None]]] = {}


def set_upgrade_path_data(history: History, inserts: dict[str, Callable[[Connection], None]]) -> None:
    """Every upgrade through a revision of ``inserts`` stops at its parent and inserts
    there first (pytest-alembic's ``before_revision_data``): a data migration that expects
    rows can be round-tripped, walked and built like any other revision."""
    _PATH_DATA[history.script.dir] = dict(inserts)


# Script directories whose env.py runs its own event loop (asyncio.run): run on a thread.
_THREADED_ENVS: set[str] = set()

# Script directories whose env.py wants an *engine* in config.attributes["connection"]
# (pytest-alembic's setup: ``connectable = config.attributes.get("connection")`` and then
# ``with connectable.connect() as connection``): given one for the throwaway database.
_ENGINE_ENVS: set[str] = set()


def _wants_an_engine(exc: AttributeError, connection: Connection) -> bool:
    """env.py called ``connect()`` on the Connection the suite handed over."""
    return exc.name == "connect" and exc.obj is connection


def _database_of(connection: Connection) -> tuple[Any, ...]:
    """Which database a connection reaches, from its engine's URL (host, port, database):
    env.py's own connection is accepted when it reaches the throwaway database under test.
    Read from the URL, not asked of the server: this runs on every env.py run."""
    url = connection.engine.url
    return (url.host, url.port or 5432, url.database)


def _url_for_env(connection: Connection, configured: str | None) -> str:
    """``sqlalchemy.url`` for an env.py that connects by itself: the throwaway database
    (``pytest_hokmdb.migrate.url_for_env``, the one definition)."""
    return url_for_env(connection.engine.url, configured)


def _run_env_on_a_thread(script: Any) -> None:
    """env.py on a thread without an event loop (it runs its own); ours waits, idle."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            run_env_py(script)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="hokmdb-env.py")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


@dataclass
class Stepper:
    """Runs alembic commands, snapshots and queries on one open sync ``Connection``."""

    history: History
    connection: Connection
    version_table: str = ""

    def __post_init__(self) -> None:
        if not self.version_table:
            self.version_table = _VERSION_TABLES.get(self.history.script.dir, "alembic_version")

    # --- alembic -------------------------------------------------------------------------

    def run_env(self, fn: Callable[[Any, MigrationContext], Any], *, destination: str | None = None) -> None:
        """Execute env.py with ``fn`` as the migration function, on our connection.

        ``fn(current_heads, context)`` returns the steps to run (or ``[]`` to only inspect
        the configured ``context``, as the drift check does).

        A stock env.py needs no edit: it gets our connection in ``config.attributes`` and,
        for the env.py that opens a connection of its own, ``sqlalchemy.url`` pointing at the
        same throwaway database (``_url_for_env``). An async env.py of that kind calls
        ``asyncio.run``, which cannot run inside our event loop: it runs on a thread of its
        own (remembered per script directory, so it is tried once). ``fileConfig`` is a no-op
        while env.py runs: pytest's log capture must survive the ini's logging sections.
        """
        config, script = self.history.config, self.history.script
        progress = _Progress()
        ours = _database_of(self.connection)

        def checked(heads: Any, context: MigrationContext) -> Any:
            progress.env_ran = True
            if context.connection is not self.connection and _database_of(context.connection) != ours:
                raise MigrationFailure(
                    f"{script.env_py_location} configured alembic on a connection to another database than the "
                    "throwaway one under test; use config.attributes['connection'] when present, or build the "
                    "engine from config's sqlalchemy.url (see docs/migration-suite.md)"
                )
            schema = context.opts.get("version_table_schema")
            self.version_table = f"{schema}.{context.version_table}" if schema else context.version_table
            _VERSION_TABLES[script.dir] = self.version_table
            return fn(heads, context)

        self.connection.rollback()  # alembic must not find an open transaction (it would not commit); no locks held
        previous = config.attributes.get("connection")
        previous_url = config.get_main_option("sqlalchemy.url")
        config.attributes["connection"] = self.connection
        config.set_main_option("sqlalchemy.url", _url_for_env(self.connection, previous_url).replace("%", "%%"))
        try:
            with EnvironmentContext(config, script, fn=checked, as_sql=False, destination_rev=destination), \
                    no_file_config():
                while True:  # at most three tries: as it is, on a thread, with an engine
                    config.attributes["connection"] = self._handover(script.dir)
                    try:
                        if script.dir in _THREADED_ENVS:
                            _run_env_on_a_thread(script)
                        else:
                            run_env_py(script)
                        break
                    except RuntimeError as exc:
                        if progress.env_ran or script.dir in _THREADED_ENVS or "running event loop" not in str(exc):
                            raise
                        _THREADED_ENVS.add(script.dir)  # an async env.py of its own: asyncio.run
                    except AttributeError as exc:
                        if progress.env_ran or script.dir in _ENGINE_ENVS or not _wants_an_engine(exc, self.connection):
                            raise
                        _ENGINE_ENVS.add(script.dir)  # pytest-alembic's env.py: connectable.connect()
        finally:
            if previous is None:
                config.attributes.pop("connection", None)
            else:
                config.attributes["connection"] = previous
            config.set_main_option("sqlalchemy.url", (previous_url or "").replace("%", "%%"))
        if not progress.env_ran:
            raise MigrationFailure(
                f"{script.env_py_location} never called context.run_migrations(), so nothing was migrated"
            )

    def _handover(self, script_dir: str) -> Any:
        """What env.py finds in ``config.attributes["connection"]``: our connection, or, for
        an env.py that calls ``connect()`` on it as pytest-alembic's setup does, an engine for
        the same database (an AsyncEngine for one that runs its own event loop on a thread; else
        the sync face of one, usable on this greenlet). Its connections are env.py's own, which
        the checks accept because they reach the database under test."""
        if script_dir not in _ENGINE_ENVS:
            return self.connection
        engine = create_async_engine(self.connection.engine.url, poolclass=NullPool, hide_parameters=True)
        return engine if script_dir in _THREADED_ENVS else engine.sync_engine

    def _step(self, direction: str, target: str) -> None:
        progress = _Progress()

        def steps(heads: Any, context: MigrationContext) -> Iterator[Any]:
            # A generator, so that when a step raises we know which one was running.
            planned = self.plan(direction, target, tuple(heads))
            for step in planned:
                progress.step = step
                yield step
            progress.step = None

        try:
            self.run_env(steps, destination=target)
        except MigrationFailure:
            raise
        except Exception as exc:
            self._recover()
            step = progress.step
            if step is None:
                message = f"{direction} to {target} failed outside any revision's {direction}(): {_describe_error(exc)}"
                raise StepFailed(message, None) from exc
            revision_id = step.revision.revision
            message = f"{self._label(revision_id)}: its {direction}() failed ({direction} to {target}): "
            raise StepFailed(message + _describe_error(exc), revision_id) from exc

    def plan(self, direction: str, target: str, heads: tuple[str, ...]) -> list[Any]:
        """alembic's migration steps from ``heads`` to ``target``.

        One revision up (``single_upgrade_step``), or one down a chain (``History.is_chain``),
        is one step, built here: alembic's planner walks the whole history to find it.
        Anything else (several revisions, branches, ``depends_on``, symbolic targets) is
        alembic's to plan.
        """
        script, history = self.history.script, self.history
        if direction == "upgrade":
            if target in history.by_id:
                single = single_upgrade_step(script, script.get_revision(target), heads)
                if single is not None:
                    return single
            return list(script._upgrade_revs(target, heads))
        if history.is_chain and len(heads) == 1:
            current = history.by_id.get(heads[0])
            if current is not None and current.parent_target == target:
                return [MigrationStep.downgrade_from_script(script.revision_map, script.get_revision(current.id))]
        return list(script._downgrade_revs(target, heads))

    def upgrade(self, target: str) -> None:
        inserts = _PATH_DATA.get(self.history.script.dir)
        if inserts:
            self._upgrade_through(target, inserts)
        self._step("upgrade", target)

    def _upgrade_through(self, target: str, inserts: dict[str, Callable[[Connection], None]]) -> None:
        """Stop at the parent of each revision with upgrade-path rows on the way to ``target``."""
        script = self.history.script
        heads = self.heads()
        self.connection.rollback()
        for revision_id in [step.revision.revision for step in script._upgrade_revs(target, heads)]:  # oldest first
            if revision_id not in inserts:
                continue
            parent = self.history.by_id[revision_id].parent_target
            if parent != BASE and parent not in self.heads():
                self._step("upgrade", parent)
            inserts[revision_id](self.connection)

    def downgrade(self, target: str) -> None:
        self._step("downgrade", target)

    def _recover(self) -> None:
        """After a failed step the connection may hold an aborted transaction."""
        try:
            self.connection.rollback()
        except sa_exc.SQLAlchemyError:
            pass  # the connection is gone; the next command reports that with its own error

    def _label(self, revision_id: str) -> str:
        revision = self.history.by_id.get(revision_id)
        return revision.label if revision else f"revision {revision_id}"

    # --- state ---------------------------------------------------------------------------

    def heads(self) -> tuple[str, ...]:
        """The revisions alembic's version table records (empty before the first upgrade)."""
        schema, _, table = self.version_table.rpartition(".")
        context = MigrationContext.configure(
            self.connection, opts={"version_table": table, "version_table_schema": schema or None}
        )
        try:
            return tuple(sorted(context.get_current_heads()))
        finally:
            self.connection.rollback()

    def snapshot(self) -> CatalogSnapshot:
        return take_snapshot(self.connection, version_table=self.version_table)

    def snapshot_at(self, expected: tuple[str, ...], after: str) -> CatalogSnapshot:
        """The catalog after a step, and ``expect_heads`` read in the same statement."""
        quoted = ".".join('"' + part.replace('"', '""') + '"' for part in self.version_table.split("."))
        snapshot = take_snapshot(self.connection, version_table=self.version_table, heads_of=quoted)
        self.expect_heads(expected, after, actual=snapshot.heads)
        return snapshot

    def expect_heads(self, expected: tuple[str, ...], after: str, *, actual: tuple[str, ...] | None = None) -> None:
        if actual is None:
            actual = self.heads()
        if actual != tuple(sorted(expected)):
            raise MigrationFailure(
                f"after {after}, {self.version_table} records {', '.join(actual) or 'no revision'}; "
                f"expected {', '.join(sorted(expected)) or 'no revision (base)'}"
            )


def with_stepper(history: History, url: URL | str, work: Callable[[Stepper], T]) -> T:
    """Open one connection to ``url`` (asyncpg, as the async env.py files use) and run
    ``work`` with a Stepper on its sync face (``AsyncConnection.run_sync``)."""

    async def main() -> T:
        engine = create_async_engine(url, poolclass=NullPool, hide_parameters=True)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(lambda sync: work(Stepper(history, sync)))
        finally:
            await engine.dispose()

    return run_sync(main())


class StepperSession:
    """A ``Stepper`` whose connection stays open between calls.

    asyncpg connections belong to the event loop that opened them, and each
    ``with_stepper`` call runs a loop of its own; so the session owns a loop on a
    thread and submits every call to it. Not thread-safe: one caller at a time.
    """

    def __init__(self, history: History, url: URL | str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hokmdb-stepper", daemon=True)
        self._thread.start()
        self._engine: AsyncEngine | None = None
        self._connection: AsyncConnection | None = None
        try:
            engine = self._engine = create_async_engine(url, poolclass=NullPool, hide_parameters=True)

            async def connect() -> AsyncConnection:
                return await engine.connect()

            self._connection = self._call(connect())
        except BaseException:
            self.close()
            raise
        self.stepper = Stepper(history, self._connection.sync_connection)  # type: ignore[arg-type]

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def run(self, work: Callable[[Stepper], T]) -> T:
        assert self._connection is not None
        return self._call(self._connection.run_sync(lambda _sync: work(self.stepper)))

    def close(self) -> None:
        async def shut() -> None:
            if self._connection is not None:
                await self._connection.close()
            if self._engine is not None:
                await self._engine.dispose()

        if self._loop.is_closed():
            return
        try:
            self._call(shut())
        except Exception:  # noqa: BLE001 - the database may be gone already; closing must not fail the test
            pass
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


# --- what the tests prove -------------------------------------------------------------------


def state_after(revision: Revision) -> tuple[str, ...]:
    return (revision.id,)


def state_before(revision: Revision) -> tuple[str, ...]:
    """The heads alembic records just before ``revision`` runs (empty: base)."""
    return tuple(sorted(revision.parents))


def round_trip(stepper: Stepper, revision: Revision, *, before: CatalogSnapshot | None = None) -> CatalogSnapshot:
    """Upgrade to ``revision``, downgrade to its parent, upgrade again, on a database that
    is at the parent: the downgrade must restore the parent's catalog exactly, and the
    second upgrade must rebuild what the first one built.

    ``before`` is the parent's catalog when the caller already has it (the walker took it
    at the end of the previous round trip). Returns the catalog at ``revision``.
    """
    parent = revision.parent_target
    if before is None:
        before = stepper.snapshot()

    stepper.upgrade(revision.id)
    after_upgrade = stepper.snapshot_at(state_after(revision), f"upgrading {revision.label}")

    stepper.downgrade(parent)
    after_downgrade = stepper.snapshot_at(state_before(revision), f"downgrading {revision.label} to {parent}")
    if after_downgrade != before:
        raise MigrationFailure(
            f"{revision.label}: its downgrade (to {parent}) leaves a trace; the catalog before the upgrade (-) "
            f"and after the downgrade (+) differ:\n{before.diff(after_downgrade, before=f'at {parent}', after=f'after downgrade of {revision.id}')}"
        )

    stepper.upgrade(revision.id)
    again = stepper.snapshot_at(state_after(revision), f"upgrading {revision.label} again")
    if again != after_upgrade:
        raise MigrationFailure(
            f"{revision.label}: upgrading again after its downgrade builds a different schema than the first "
            f"upgrade (first -, second +):\n{after_upgrade.diff(again, before='first upgrade', after='second upgrade')}"
        )
    return again
