"""Alembic environment for the Hokm schema (async, asyncpg).

Where the database comes from, in order: a connection handed over by the caller
(``config.attributes["connection"]``), a hokmdb ``Target`` or SQLAlchemy URL set in
memory by ``pytest_hokmdb.migrate`` (so no password is ever written to alembic.ini), or
``-x environment=NAME`` / ``HOKMDB_ENVIRONMENT`` for the plain alembic command line.
"""

from __future__ import annotations

import os
import sys
from logging.config import fileConfig
from typing import Any, NoReturn

from alembic import context
from sqlalchemy.engine import Connection

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.errors import ConfigError, HokmdbError

config = context.config
if config.config_file_name and not config.attributes.get("hokmdb_programmatic"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _target_metadata() -> Any:
    metadata = config.attributes.get("target_metadata")
    if metadata is not None:
        return metadata
    from hokm_profile.models import metadata as hokm_metadata

    return hokm_metadata


def _resolve_target() -> Any:
    target = config.attributes.get("hokmdb_target")
    if target is not None:
        return target
    url = config.attributes.get("hokmdb_url")
    if url is not None:
        return url
    from pytest_hokmdb.config import load_config
    from pytest_hokmdb.db import resolve_target
    from pytest_hokmdb.db.resolve import resolve_owner_target

    x_args = context.get_x_argument(as_dictionary=True)
    environment = x_args.get("environment") or os.environ.get("HOKMDB_ENVIRONMENT")
    if not environment:
        _exit(ConfigError("no database selected", hint="pass -x environment=NAME or set HOKMDB_ENVIRONMENT"))
    try:
        loaded = load_config(environment, x_args.get("config"))
        # Migrations run as the owner role (database.owner_user; hokm_owner on an embedded cluster).
        target = run_sync(resolve_owner_target(loaded, run_sync(resolve_target(loaded))))
        run_sync(_reachable(target))  # one clear line (exit 3), not SQLAlchemy's traceback
    except HokmdbError as exc:
        _exit(exc)
    return target


async def _reachable(target: Any) -> None:
    from pytest_hokmdb.db import connect

    conn = await connect(target)
    await conn.close()


def _exit(exc: HokmdbError) -> NoReturn:
    """The command line's error: one message on stderr and hokmdb's documented exit code
    (2 for configuration and usage, 3 for a connection), as the scripts give."""
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(int(exc.exit_code))


def _configure_options() -> dict[str, Any]:
    return {
        "target_metadata": _target_metadata(),
        # One transaction per revision: a failure leaves the database at a revision boundary.
        "transaction_per_migration": True,
        "compare_type": True,
        "compare_server_default": True,
    }


def run_migrations_offline() -> None:
    url = config.attributes.get("hokmdb_url") or "postgresql://"
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **_configure_options())
    with context.begin_transaction():
        context.run_migrations()


def _do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, **_configure_options())
    with context.begin_transaction():
        context.run_migrations()


async def _run_async_migrations() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from pytest_hokmdb.db import Target, create_engine

    target = _resolve_target()
    if isinstance(target, Target):
        engine = create_engine(target)
    else:
        engine = create_async_engine(target, poolclass=NullPool, hide_parameters=True)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _do_run_migrations(connection)
        return
    run_sync(_run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
