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

``TemplateChain`` keeps, per pytest-xdist worker, one template database per revision,
each built from its parent's template with one step, so any test starts from a clean
database at any revision with one ``CREATE DATABASE ... TEMPLATE``: the whole suite
costs a number of steps linear in the number of revisions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.migration.history import History, MigrationFailure, Revision
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


@dataclass
class Stepper:
    """Runs alembic commands, snapshots and queries on one open sync ``Connection``."""

    history: History
    connection: Connection
    version_table: str = "alembic_version"

    # --- alembic -------------------------------------------------------------------------

    def run_env(self, fn: Callable[[Any, MigrationContext], Any], *, destination: str | None = None) -> None:
        """Execute env.py with ``fn`` as the migration function, on our connection.

        ``fn(current_heads, context)`` returns the steps to run (or ``[]`` to only inspect
        the configured ``context``, as the drift check does).
        """
        config, script = self.history.config, self.history.script
        progress = _Progress()

        def checked(heads: Any, context: MigrationContext) -> Any:
            progress.env_ran = True
            if context.connection is not self.connection:
                raise MigrationFailure(
                    f"{script.env_py_location} configured alembic on a connection of its own instead of "
                    "config.attributes['connection']; the suite hands env.py the connection of the throwaway "
                    "database under test: use it when present (see docs/migration-suite.md)"
                )
            schema = context.opts.get("version_table_schema")
            self.version_table = f"{schema}.{context.version_table}" if schema else context.version_table
            return fn(heads, context)

        self.connection.rollback()  # alembic must not find an open transaction (it would not commit)
        previous = config.attributes.get("connection")
        config.attributes["connection"] = self.connection
        try:
            with EnvironmentContext(config, script, fn=checked, as_sql=False, destination_rev=destination):
                script.run_env()
        finally:
            if previous is None:
                config.attributes.pop("connection", None)
            else:
                config.attributes["connection"] = previous
        if not progress.env_ran:
            raise MigrationFailure(
                f"{script.env_py_location} never called context.run_migrations(), so nothing was migrated"
            )

    def _step(self, direction: str, target: str) -> None:
        script = self.history.script
        progress = _Progress()

        def steps(heads: Any, context: MigrationContext) -> Iterator[Any]:
            # A generator, so that when a step raises we know which one was running.
            planned = (
                script._upgrade_revs(target, heads) if direction == "upgrade" else script._downgrade_revs(target, heads)
            )
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

    def upgrade(self, target: str) -> None:
        self._step("upgrade", target)

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

    def expect_heads(self, expected: tuple[str, ...], after: str) -> None:
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


# --- what the tests prove -------------------------------------------------------------------


def state_after(revision: Revision) -> tuple[str, ...]:
    return (revision.id,)


def state_before(revision: Revision) -> tuple[str, ...]:
    """The heads alembic records just before ``revision`` runs (empty: base)."""
    return tuple(sorted(revision.parents))


def round_trip(stepper: Stepper, revision: Revision) -> None:
    """Upgrade to ``revision``, downgrade to its parent, upgrade again, on a database that
    is at the parent: the downgrade must restore the parent's catalog exactly, and the
    second upgrade must rebuild what the first one built."""
    parent = revision.parent_target
    before = stepper.snapshot()

    stepper.upgrade(revision.id)
    stepper.expect_heads(state_after(revision), f"upgrading {revision.label}")
    after_upgrade = stepper.snapshot()

    stepper.downgrade(parent)
    stepper.expect_heads(state_before(revision), f"downgrading {revision.label} to {parent}")
    after_downgrade = stepper.snapshot()
    if after_downgrade != before:
        raise MigrationFailure(
            f"{revision.label}: its downgrade (to {parent}) leaves a trace; the catalog before the upgrade (-) "
            f"and after the downgrade (+) differ:\n{before.diff(after_downgrade, before=f'at {parent}', after=f'after downgrade of {revision.id}')}"
        )

    stepper.upgrade(revision.id)
    stepper.expect_heads(state_after(revision), f"upgrading {revision.label} again")
    again = stepper.snapshot()
    if again != after_upgrade:
        raise MigrationFailure(
            f"{revision.label}: upgrading again after its downgrade builds a different schema than the first "
            f"upgrade (first -, second +):\n{after_upgrade.diff(again, before='first upgrade', after='second upgrade')}"
        )


# --- template databases ------------------------------------------------------------------------


class TemplateChain:
    """One template database per revision state, built lazily, each from its parent's.

    ``create_database(name, template)`` and the cluster come from the caller (the
    throwaway fixtures), so this works on any cluster of the suite's own. A failure while
    building a template is remembered and raised again (naming the revision) to every
    test that needs that state, without trying the failed step once per test.
    """

    def __init__(self, history: History, create_database: Callable[[str, str | None], Any], prefix: str) -> None:
        self.history = history
        self._create = create_database
        self._prefix = prefix
        self._names: dict[tuple[str, ...], str] = {}
        self._snapshots: dict[tuple[str, ...], CatalogSnapshot] = {}
        self._failures: dict[tuple[str, ...], MigrationFailure] = {}
        self._counter = itertools.count(1)

    def _order(self, revision_id: str) -> int:
        return self.history.ids.index(revision_id)

    def template(self, state: tuple[str, ...]) -> str | None:
        """Name of a template at ``state`` (the recorded heads); None for base (a new database
        is already empty)."""
        state = tuple(sorted(state))
        if not state:
            return None
        if state in self._names:
            return self._names[state]
        if state in self._failures:
            failure = self._failures[state]
            raise MigrationFailure(f"the database at {', '.join(state)} cannot be built: {failure}")
        if len(state) == 1:
            revision = self.history.revision(state[0])
            start, targets = state_before(revision), [revision.id]
        else:  # several heads (a merge's parents): the first one's template, then the others
            ordered = sorted(state, key=self._order)
            start, targets = (ordered[0],), ordered[1:]
        parent_template = self.template(start)
        name = f"{self._prefix}_{next(self._counter)}"
        db = self._create(name, parent_template)

        def build(stepper: Stepper) -> CatalogSnapshot:
            for target in targets:
                stepper.upgrade(target)
            return stepper.snapshot()

        try:
            self._snapshots[state] = with_stepper(self.history, db.url, build)
        except MigrationFailure as failure:
            self._failures[state] = failure
            raise
        self._names[state] = name
        return name

    def snapshot(self, state: tuple[str, ...]) -> CatalogSnapshot | None:
        """The catalog of the template at ``state`` (None for base: build and compare an empty one)."""
        state = tuple(sorted(state))
        if not state:
            return None
        self.template(state)
        return self._snapshots[state]
