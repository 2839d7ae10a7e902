"""Connection pool checks: the game server's pool can be filled, survives a killed backend,
and the server keeps spare connection slots.

The checks open their own asyncpg pool against ``ctx.target`` (read-only on staging and
production, which is all they need: they only ``SELECT``). The pool runs under its own
``application_name`` (``<name>-smoke-pool``) so an operator can tell it apart in
``pg_stat_activity``, and the dropped-connection check only ever terminates a backend of
that pool, found by pid *and* application name.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, replace

import asyncpg

from pytest_hokmdb.checks.base import Category, CheckContext, CheckFunction, CheckResult, check
from pytest_hokmdb.db import create_pool
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.errors import ConnectionFailed

# The pool must serve a query again within this many acquires after its backend was ended.
_RECOVERY_ATTEMPTS = 3
_RECOVERY_PAUSE_S = 0.05
FEATURE = "Connection pool"
CATEGORY: Category = "infrastructure"
POOL_SUFFIX = "-smoke-pool"
_TERMINATE_WAIT_MS = 5_000


def pool_target(ctx: CheckContext) -> Target:
    """The check's own target: same server, role and guards, a recognisable application name."""
    return replace(ctx.target, application_name=f"{ctx.target.application_name}{POOL_SUFFIX}"[:63])


def _open_timeout(target: Target) -> float:
    # asyncpg connects the first connection, then the rest concurrently: two rounds at most.
    return 2 * target.connect_timeout_s + 5


async def _close(pool: asyncpg.Pool) -> None:
    """Close gracefully (the server logs a clean disconnect); terminate if that hangs."""
    try:
        await asyncio.wait_for(pool.close(), 10)
    except TimeoutError:
        pool.terminate()


@dataclass(frozen=True)
class ConnectionLimits:
    """Every limit that can refuse a new connection, with what is in use against each."""

    max_connections: int
    superuser_reserved: int
    reserved: int  # reserved_connections (PostgreSQL 16+), 0 before
    is_superuser: bool
    role: str
    role_limit: int  # -1: none
    database: str
    database_limit: int  # -1: none
    in_use: int
    role_in_use: int
    database_in_use: int

    @property
    def usable(self) -> int:
        """Slots an ordinary login may take (superusers may also use the reserved ones)."""
        return self.max_connections - (0 if self.is_superuser else self.superuser_reserved + self.reserved)

    def binding(self, wanted: int, error: str = "") -> str:
        """Name the limit that refuses ``wanted`` more connections, preferring the server's own words."""
        lowered = error.lower()
        role_short = self.role_limit >= 0 and self.role_in_use + wanted > self.role_limit
        db_short = self.database_limit >= 0 and self.database_in_use + wanted > self.database_limit
        if "for role" in lowered or (role_short and not lowered):
            return (
                f"role {self.role} has CONNECTION LIMIT {self.role_limit} and already uses {self.role_in_use}: "
                f"raise it (ALTER ROLE {self.role} CONNECTION LIMIT n) or lower pool.max_size"
            )
        if "for database" in lowered or (db_short and not lowered):
            return (
                f"database {self.database} has CONNECTION LIMIT {self.database_limit} and already has "
                f"{self.database_in_use} connections: raise it (ALTER DATABASE {self.database} CONNECTION LIMIT n) "
                "or lower pool.max_size"
            )
        reserved = self.superuser_reserved + self.reserved
        return (
            f"max_connections is {self.max_connections} ({reserved} reserved for superusers/replication), "
            f"{self.in_use} already in use: raise max_connections (restart needed), put a pooler such as "
            "PgBouncer in front, or lower pool.max_size"
        )


async def connection_limits(conn: asyncpg.Connection) -> ConnectionLimits:
    row = await conn.fetchrow(
        """
        SELECT current_setting('max_connections')::int AS max_connections,
               current_setting('superuser_reserved_connections')::int AS superuser_reserved,
               coalesce(current_setting('reserved_connections', true), '0')::int AS reserved,
               r.rolsuper AS is_superuser, r.rolname AS role, r.rolconnlimit AS role_limit,
               d.datname AS database, d.datconnlimit AS database_limit,
               (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS in_use,
               (SELECT count(*) FROM pg_stat_activity
                 WHERE backend_type = 'client backend' AND usename = current_user) AS role_in_use,
               (SELECT count(*) FROM pg_stat_activity
                 WHERE backend_type = 'client backend' AND datname = current_database()) AS database_in_use
        FROM pg_roles r, pg_database d
        WHERE r.rolname = current_user AND d.datname = current_database()
        """
    )
    return ConnectionLimits(**dict(row))


async def _open_failure(
    ctx: CheckContext,
    target: Target,
    size: int,
    exc: ConnectionFailed | TimeoutError,
    purpose: str,
    before: ConnectionLimits | None = None,
) -> CheckResult:
    """Say which limit refused the pool (or that the server was too slow), with what to change.

    ``before`` is the picture taken before the attempt: afterwards the failed pool's own
    backends may still be exiting and would inflate the counts."""
    noun = "connection" if size == 1 else "connections"
    if isinstance(exc, TimeoutError):
        return CheckResult.failed(
            f"opening a pool of {size} {noun} {purpose} to {target.dsn()} did not finish within "
            f"{_open_timeout(target):g}s: the server is slow to accept connections (overloaded, or "
            "authentication is slow); check the server's load and pg_hba.conf",
            threshold=size,
        )
    limits = before or await connection_limits(ctx.conn)
    server_said = exc.message.rsplit(": ", 1)[-1]
    return CheckResult.failed(
        f"could not open a pool of {size} {noun} {purpose} to {target.dsn()}: {server_said}; "
        f"{limits.binding(size, exc.message)}",
        measured=limits.in_use,
        threshold=size,
        evidence={"connection limits": repr(limits)},
    )


@check("pool.full_size", title="A pool of pool.max_size connections opens", feature=FEATURE, category=CATEGORY, severity="critical")
async def full_size(ctx: CheckContext) -> CheckResult:
    """Open ``pool.max_size`` connections at once, as the game server does under load, and make sure
    they are distinct backends: a limit that only bites at peak is found now, not during a tournament."""
    size = ctx.config.pool.max_size
    target = pool_target(ctx)
    limits = await connection_limits(ctx.conn)
    try:
        pool = await asyncio.wait_for(create_pool(target, min_size=size, max_size=size), _open_timeout(target))
    except (TimeoutError, ConnectionFailed) as exc:
        return await _open_failure(ctx, target, size, exc, "(pool.max_size)", before=limits)
    try:
        held = [await pool.acquire() for _ in range(size)]
        pids = [await conn.fetchval("SELECT pg_backend_pid()") for conn in held]
        for conn in held:
            await pool.release(conn)
    except BaseException:
        pool.terminate()  # close() would wait for connections that may never be released
        raise
    await _close(pool)
    distinct = len(set(pids))
    if distinct != size:
        return CheckResult.failed(
            f"a pool of {size} connections held at once reached only {distinct} distinct backends "
            f"(pids {sorted(pids)}): connections are shared, which corrupts transactions; "
            "is a transaction-mode pooler in front without statement_cache_size=0?",
            measured=distinct,
            threshold=size,
        )
    return CheckResult.passed(
        f"opened and held {size} connections at once (pool.max_size), {distinct} distinct backends; "
        f"{limits.in_use} connection(s) were in use before, max_connections {limits.max_connections}",
        measured=distinct,
        threshold=size,
    )


@check(
    "pool.survives_dropped_connection",
    title="The pool replaces a connection the server dropped",
    feature=FEATURE,
    category=CATEGORY,
    severity="critical",
)
async def survives_dropped_connection(ctx: CheckContext) -> CheckResult:
    """Failovers, restarts and idle timeouts kill connections under a running game server; the pool
    must hand out a working connection afterwards instead of the dead one.

    A pool of exactly one connection makes the path deterministic: after its backend is
    terminated, the next acquire can only be served by replacing that connection."""
    target = pool_target(ctx)
    try:
        pool = await asyncio.wait_for(create_pool(target, min_size=1, max_size=1), _open_timeout(target))
    except (TimeoutError, ConnectionFailed) as exc:
        return await _open_failure(ctx, target, 1, exc, "to replace a dropped one with")
    try:
        async with pool.acquire() as conn:
            old_pid = await conn.fetchval("SELECT pg_backend_pid()")
        try:
            ended = await ctx.conn.fetchval(
                "SELECT pg_terminate_backend(pid, $3) FROM pg_stat_activity WHERE pid = $1 AND application_name = $2",
                old_pid,
                target.application_name,
                _TERMINATE_WAIT_MS,
            )
        except asyncpg.InsufficientPrivilegeError as exc:
            return CheckResult.skipped(
                f"dropped-connection check: role {ctx.target.user} may not terminate backends ({exc}); "
                "it needs to be the same role as the pool's or a member of pg_signal_backend"
            )
        if not ended:
            return CheckResult.failed(
                f"terminating the pool's backend (pid {old_pid}) did not finish within {_TERMINATE_WAIT_MS} ms: "
                "the server is too busy to end a backend; check its load",
                measured=old_pid,
            )
        errors: list[str] = []
        new_pid: int | None = None
        await asyncio.sleep(0)  # let the client read the server's goodbye before the next acquire
        for attempt in range(_RECOVERY_ATTEMPTS):
            try:
                async with pool.acquire(timeout=_open_timeout(target)) as conn:
                    new_pid = await conn.fetchval("SELECT pg_backend_pid()")
                break
            except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError) as exc:
                # A dead connection surfaces as AdminShutdownError (57P01), ConnectionDoesNotExistError,
                # a socket error, or (caught mid-close) an InternalClientError, depending on when the
                # client noticed the server hung up. A first request failing after a failover is
                # normal; the pool must recover within a few.
                errors.append(f"{type(exc).__name__}: {exc}")
                if attempt + 1 == _RECOVERY_ATTEMPTS:
                    return CheckResult.failed(
                        f"after its backend (pid {old_pid}) was terminated, the pool could not serve a query "
                        f"in {_RECOVERY_ATTEMPTS} attempts ({'; '.join(errors)}): the game server would fail "
                        "every request after a failover; check the pool's reconnect settings",
                        measured=old_pid,
                    )
                await asyncio.sleep(_RECOVERY_PAUSE_S * (attempt + 1))
            except TimeoutError:
                return CheckResult.failed(
                    f"after its backend (pid {old_pid}) was terminated, the pool could not connect again "
                    f"within {_open_timeout(target):g}s: the server does not accept new connections "
                    "(see pool.full_size and pool.headroom)",
                    measured=old_pid,
                )
    finally:
        await _close(pool)
    if new_pid == old_pid:
        return CheckResult.failed(
            f"the pool still reports backend pid {old_pid} after it was terminated: the connection was not "
            "really dropped, so this check proved nothing; is a pooler between hokmdb and the server?",
            measured=new_pid,
        )
    note = (
        f"; {len(errors)} quer{'y' if len(errors) == 1 else 'ies'} after the drop failed ({'; '.join(errors)}) "
        "before one succeeded, so the game server should retry on a connection error"
        if errors
        else ""
    )
    return CheckResult.passed(
        f"terminated the pool's backend pid {old_pid}; the pool replaced it with pid {new_pid} and served a query{note}",
        measured=new_pid,
    )


@check("pool.headroom", title="The server keeps spare connection slots", feature=FEATURE, category=CATEGORY)
async def headroom(ctx: CheckContext) -> CheckResult:
    """A server near max_connections refuses the next deploy's pool, or a reconnect storm after a
    failover; ``smoke.pool_headroom`` of the slots an ordinary login may use must stay free."""
    limits = await connection_limits(ctx.conn)
    required = ctx.settings.pool_headroom
    usable = limits.max_connections - limits.superuser_reserved - limits.reserved
    free = usable - limits.in_use
    share = free / usable if usable > 0 else 0.0
    needed = math.ceil(required * usable)
    by_client = await ctx.conn.fetch(
        """
        SELECT coalesce(usename, '?') AS usename, coalesce(nullif(application_name, ''), '(no application_name)') AS app,
               coalesce(datname, '?') AS datname, count(*) AS n
        FROM pg_stat_activity WHERE backend_type = 'client backend'
        GROUP BY 1, 2, 3 ORDER BY n DESC LIMIT 20
        """
    )
    evidence = {"connections by role/application/database": "\n".join(
        f"{r['n']:>5}  {r['usename']} / {r['app']} / {r['datname']}" for r in by_client
    )}
    reserved = limits.superuser_reserved + limits.reserved
    if share < required:
        top = ", ".join(f"{r['usename']}/{r['app']} {r['n']}" for r in by_client[:3])
        return CheckResult.failed(
            f"{limits.in_use} of {usable} usable connections are in use (max_connections {limits.max_connections} "
            f"minus {reserved} reserved), leaving {free} ({share:.0%}) free; at least {needed} ({required:.0%}, "
            f"smoke.pool_headroom) must stay free. Biggest holders: {top}. Close idle connections, lower the "
            "pools' max_size, put PgBouncer in front or raise max_connections",
            measured=round(share, 4),
            threshold=required,
            evidence=evidence,
        )
    return CheckResult.passed(
        f"{free} of {usable} usable connections free ({share:.0%}; {limits.in_use} in use, "
        f"max_connections {limits.max_connections} minus {reserved} reserved)",
        measured=round(share, 4),
        threshold=required,
        evidence=evidence,
    )


CHECKS: list[CheckFunction] = [full_size, survives_dropped_connection, headroom]
