"""What must exist before a project's first revision runs.

Real histories often start on a database that is not empty: a schema for
``version_table_schema``, an extension, or the tables a project creates with
``metadata.create_all`` before it ever ran alembic. ``[tool.hokmdb.migrations]
prerequisites`` names either a SQL file (run as one script) or ``"module:function"``,
called with a SQLAlchemy ``Connection`` to the empty database (the suite commits after
it returns). The suite runs it once per worker into a template; every database the suite
starts "at base" is a copy, so the one-command and stepwise paths, round trips and the
downgrade to base all see the same base.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.errors import ConfigError
from pytest_hokmdb.migration.history import History, MigrationFailure
from pytest_hokmdb.migration.runner import Stepper, with_stepper
from pytest_hokmdb.migration.settings import load_object


def _callable(spec: str) -> Callable[[Any], Any]:
    function = load_object("prerequisites", spec, "a .sql file or 'module:function'")
    if not callable(function):
        raise ConfigError(f"[tool.hokmdb.migrations] prerequisites = {spec!r} is not callable")
    return function  # type: ignore[no-any-return]


def run_prerequisites(history: History, url: Any, dsn: str) -> None:
    """Run the project's prerequisites on the empty database at ``url`` / ``dsn``."""
    settings = history.settings
    spec = settings.prerequisites
    if not spec:
        return
    if spec.endswith(".sql"):
        path = settings.resolve(Path(spec))
        if not path.is_file():
            raise ConfigError(f"[tool.hokmdb.migrations] prerequisites: {path} does not exist")

        async def script() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(path.read_text())  # simple protocol: several statements at once
            finally:
                await conn.close()

        try:
            run_sync(script())
        except asyncpg.PostgresError as exc:
            raise MigrationFailure(f"the prerequisites {path.name} failed on an empty database: "
                                   f"{type(exc).__name__}: {exc}") from None
        return
    function = _callable(spec)

    def call(stepper: Stepper) -> None:
        stepper.connection.rollback()
        function(stepper.connection)
        stepper.connection.commit()

    try:
        with_stepper(history, url, call)
    except (ConfigError, MigrationFailure):
        raise
    except Exception as exc:  # the project's own code: say whose it is
        raise MigrationFailure(f"the prerequisites {spec} failed on an empty database: {type(exc).__name__}: {exc}") from None
