"""Maintenance mode: a flag the game server can observe, plus a cap on new connections.

Switching it on (one transaction):

1. the row of ``hokmdb_maintenance`` (a one-row table) gets ``enabled = true``, the reason,
   the deploy id and who runs it: the game server polls it (``SELECT enabled, reason FROM
   hokmdb_maintenance``) or listens (``LISTEN hokmdb_maintenance``: payload ``on``/``off``),
   and stops starting new games;
2. the application role's ``CONNECTION LIMIT`` (``ALTER ROLE``; needs CREATEROLE) or, when
   the deploy's role may not do that, the database's (``ALTER DATABASE``; the owner may) is
   set to the sessions open now plus what the deploy and its gate need, so no new game
   servers pile on while the schema changes. Existing sessions are never killed. The
   previous limit is saved in the row.

3. with ``deploy.maintenance_pause_pooler``, the game's database is PAUSEd in PgBouncer
   (``topology.pgbouncer`` or the local one) for the migration itself: new game transactions
   wait in PgBouncer's queue instead of meeting a lock, and are served on RESUME. The pause
   is recorded in the row (``paused_pool``) and RESUMEd right after the migration, failure or
   not; a deploy killed while paused leaves the row saying so, and the next deploy, or
   ``hokmdb topology resume``, resumes it.

Switching it off restores the saved limit and clears the flag. The deploy always switches
it off at the end, failure or not; a deploy killed while it was on leaves the row enabled,
and the next deploy (or ``rollback.py migration``) switches it off first and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from pytest_hokmdb.errors import DeployLocked

log = logging.getLogger("hokmdb.deploy.maintenance")

TABLE = "hokmdb_maintenance"
CHANNEL = "hokmdb_maintenance"

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    enabled boolean NOT NULL DEFAULT false,
    reason text,
    actor text,
    deploy_id bigint,
    started_at timestamptz,
    ended_at timestamptz,
    limited text,
    saved_connection_limit integer
);
ALTER TABLE hokmdb_maintenance ADD COLUMN IF NOT EXISTS paused_pool text
"""


@dataclass(frozen=True)
class MaintenanceState:
    enabled: bool
    limited: str | None
    saved_connection_limit: int | None
    actor: str | None
    deploy_id: int | None


async def state(conn: asyncpg.Connection) -> MaintenanceState | None:
    if not await conn.fetchval(f"SELECT to_regclass('{TABLE}') IS NOT NULL"):
        return None
    row = await conn.fetchrow(f"SELECT enabled, limited, saved_connection_limit, actor, deploy_id FROM {TABLE}")
    if row is None:
        return None
    return MaintenanceState(row["enabled"], row["limited"], row["saved_connection_limit"], row["actor"], row["deploy_id"])


async def _limit_role(conn: asyncpg.Connection, reserve: int, role: str | None) -> tuple[str, int]:
    role = role or await conn.fetchval("SELECT current_user")
    saved = await conn.fetchval("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1", role)
    if saved is None:
        raise asyncpg.InsufficientPrivilegeError(f"role {role} is not visible")
    open_now = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role)
    limit = int(open_now) + reserve
    await conn.execute(await conn.fetchval("SELECT format('ALTER ROLE %I CONNECTION LIMIT %s', $1::text, $2::int)", role, limit))
    return f"role:{role}", int(saved)


async def _limit_database(conn: asyncpg.Connection, reserve: int) -> tuple[str, int]:
    db = await conn.fetchval("SELECT current_database()")
    saved = await conn.fetchval("SELECT datconnlimit FROM pg_database WHERE datname = current_database()")
    open_now = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
    limit = int(open_now) + reserve
    await conn.execute(await conn.fetchval("SELECT format('ALTER DATABASE %I CONNECTION LIMIT %s', $1::text, $2::int)", db, limit))
    return f"database:{db}", int(saved)


async def enable(conn: asyncpg.Connection, *, reason: str, actor: str, deploy_id: int | None, reserve: int,
                 app_role: str | None = None) -> MaintenanceState:
    """Switch maintenance on; ``reserve`` is how many new sessions the deploy and its gate may
    still open. ``app_role``: the game's role, when the deploy runs as the owner role."""
    await conn.execute(DDL)
    leftover = await state(conn)
    if leftover is not None and leftover.enabled:
        log.warning("maintenance mode was left on by deploy #%s of %s (killed?): switching it off first", leftover.deploy_id, leftover.actor)
        await disable(conn)
    async with conn.transaction():
        # Try the application role first; fall back to the database when the role may not alter itself.
        try:
            async with conn.transaction():
                limited, saved = await _limit_role(conn, reserve, app_role)
        except asyncpg.InsufficientPrivilegeError:
            limited, saved = await _limit_database(conn, reserve)
        await conn.execute(
            f"INSERT INTO {TABLE} (id, enabled, reason, actor, deploy_id, started_at, ended_at, limited, saved_connection_limit) "
            "VALUES (true, true, $1, $2, $3, now(), NULL, $4, $5) "
            "ON CONFLICT (id) DO UPDATE SET enabled = true, reason = $1, actor = $2, deploy_id = $3, started_at = now(), "
            "ended_at = NULL, limited = $4, saved_connection_limit = $5",
            reason, actor, deploy_id, limited, saved,
        )
        await conn.execute(f"SELECT pg_notify('{CHANNEL}', 'on')")
    log.info("maintenance mode on: flag row %s set, connection limit on %s (was %s)", TABLE, limited, saved)
    return MaintenanceState(True, limited, saved, actor, deploy_id)


async def record_pause(conn: asyncpg.Connection, where: str | None) -> None:
    """Remember (``where``: host:port/db) or forget that the deploy paused the game's pool."""
    await conn.execute(f"UPDATE {TABLE} SET paused_pool = $1", where)


async def paused_pool(conn: asyncpg.Connection) -> str | None:
    """The pool a deploy paused and did not resume (killed?), if any."""
    if not await conn.fetchval(f"SELECT to_regclass('{TABLE}') IS NOT NULL"):
        return None
    if not await conn.fetchval(
        "SELECT 1 FROM information_schema.columns WHERE table_name = $1 AND column_name = 'paused_pool'", TABLE
    ):
        return None
    value = await conn.fetchval(f"SELECT paused_pool FROM {TABLE}")
    return str(value) if value else None


async def disable(conn: asyncpg.Connection) -> bool:
    """Switch maintenance off and restore the saved connection limit; False when it was not on."""
    current = await state(conn)
    if current is None or not current.enabled:
        return False
    async with conn.transaction():
        if current.limited and current.saved_connection_limit is not None:
            kind, _, name = current.limited.partition(":")
            verb = "ROLE" if kind == "role" else "DATABASE"
            statement = await conn.fetchval(
                f"SELECT format('ALTER {verb} %I CONNECTION LIMIT %s', $1::text, $2::int)", name, current.saved_connection_limit
            )
            await conn.execute(statement)
        await conn.execute(f"UPDATE {TABLE} SET enabled = false, ended_at = now()")
        await conn.execute(f"SELECT pg_notify('{CHANNEL}', 'off')")
    log.info("maintenance mode off: connection limit on %s restored to %s", current.limited, current.saved_connection_limit)
    return True


async def switch_off_left_on(conn: asyncpg.Connection, *, deploy_running: str | None) -> str:
    """After a deploy was killed with maintenance mode on: switch it off (flag row, NOTIFY,
    connection limit) and say what else it left (a PAUSEd pool). Refused while a deploy runs:
    that deploy switches it off itself when it ends."""
    if deploy_running is not None:
        raise DeployLocked(f"a deploy is running now: {deploy_running}; it switches maintenance mode off when it ends",
                           hint="wait for it; if it hangs, stop that deploy first")
    current = await state(conn)
    if current is None or not current.enabled:
        return "maintenance mode is off already; nothing changed"
    await disable(conn)
    done = (f"maintenance mode switched off (left on by deploy #{current.deploy_id} of {current.actor}); "
            + (f"connection limit on {current.limited} restored to {current.saved_connection_limit}" if current.limited
               else "no connection limit was set"))
    if pool := await paused_pool(conn):
        done += f"; the game's pool {pool} is still PAUSEd: hokmdb topology resume --environment <env>"
    return done
