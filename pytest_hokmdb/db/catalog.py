"""Facts about a live database's catalog that several layers need (read-only queries)."""

from __future__ import annotations

import asyncpg


async def app_schema(conn: asyncpg.Connection) -> str:
    """The schema the application's tables live in.

    Where alembic keeps ``alembic_version`` (it sits beside the tables it migrated), else
    the session's ``current_schema()``: the schema unqualified table names resolve to,
    which is where a model without an explicit schema is created.
    """
    schema = await conn.fetchval(
        "SELECT coalesce("
        " (SELECT c.relnamespace::regnamespace::text FROM pg_class c WHERE c.oid = to_regclass('alembic_version')),"
        " current_schema())"
    )
    return str(schema) if schema is not None else "public"
