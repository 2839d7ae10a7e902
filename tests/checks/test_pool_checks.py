"""The pool checks pass on a healthy server and fail, for the right reason, when the pool cannot
be filled (max_connections, a role's CONNECTION LIMIT) or the server has no spare slots."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import asyncpg
import pytest
from helpers import assert_status

from pytest_hokmdb.checks import pool
from pytest_hokmdb.checks.base import CheckContext
from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.config.model import PoolSettings
from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase

ROLE_PASSWORD = "pool-test-Pw-81x"

ContextFactory = Callable[..., Awaitable[CheckContext]]  # tests/conftest.py: check_context_factory


def with_pool(ctx: CheckContext, max_size: int) -> CheckContext:
    config = ctx.config.model_copy(update={"pool": PoolSettings(min_size=1, max_size=max_size)})
    return replace(ctx, config=config)


async def client_backends(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"))


@pytest.fixture
async def limited_role(hokmdb_cluster: EmbeddedCluster) -> AsyncIterator[str]:
    """A login role with CONNECTION LIMIT 3, dropped (with its sessions) afterwards."""
    name = f"pool_limited_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(**hokmdb_cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        await admin.execute(f"CREATE ROLE {name} LOGIN CONNECTION LIMIT 3 PASSWORD '{ROLE_PASSWORD}'")
        yield name
        await admin.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = $1", name)
        await admin.execute(f"DROP ROLE {name}")
    finally:
        await admin.close()


# -- pool.full_size ---------------------------------------------------------------------------


async def test_full_size_passes_and_leaves_no_connection_behind(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db, read_only=True)
    before = await client_backends(ctx.conn)
    result = await pool.full_size(ctx)
    assert_status(result, "passed")
    assert "opened and held 10 connections at once (pool.max_size), 10 distinct backends" in result.message
    assert result.measured == 10
    await asyncio.sleep(0.2)  # backends of a closed pool take a moment to exit
    assert await client_backends(ctx.conn) == before


async def test_full_size_fails_naming_max_connections(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = with_pool(await check_context_factory(seeded_db), max_size=250)  # the test cluster allows 200
    result = await pool.full_size(ctx)
    assert_status(result, "failed")
    assert "could not open a pool of 250 connections (pool.max_size)" in result.message
    assert "too many clients" in result.message
    assert "max_connections is 200" in result.message
    await asyncio.sleep(0.3)
    assert await client_backends(ctx.conn) < 10, "the failed pool left connections open"


async def test_full_size_fails_naming_role_connection_limit(
    limited_role: str, seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory
) -> None:
    ctx = with_pool(await check_context_factory(seeded_db, user=limited_role, password=ROLE_PASSWORD), max_size=5)
    result = await pool.full_size(ctx)
    assert_status(result, "failed")
    assert f"role {limited_role} has CONNECTION LIMIT 3" in result.message
    assert f"ALTER ROLE {limited_role} CONNECTION LIMIT" in result.message
    assert ROLE_PASSWORD not in result.message


# -- pool.survives_dropped_connection -----------------------------------------------------------


async def test_survives_dropped_connection_on_read_only_session(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    # Read-only like staging/production: pg_terminate_backend is a function call, not a write.
    ctx = await check_context_factory(seeded_db, read_only=True)
    result = await pool.survives_dropped_connection(ctx)
    assert_status(result, "passed")
    assert "terminated the pool's backend pid" in result.message
    old_pid = int(result.message.split("backend pid ")[1].split(";")[0])
    assert result.measured != old_pid
    gone = await ctx.conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", old_pid)
    assert gone == 0


async def test_dropped_connection_fails_when_no_slot_is_left(
    limited_role: str, seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory
) -> None:
    ctx = await check_context_factory(seeded_db, user=limited_role, password=ROLE_PASSWORD)
    holders = [await asyncpg.connect(**ctx.target.asyncpg_kwargs()) for _ in range(2)]  # role limit 3: all used
    try:
        result = await pool.survives_dropped_connection(ctx)
    finally:
        for conn in holders:
            await conn.close()
    assert_status(result, "failed")
    assert "could not open a pool of 1 connection" in result.message
    assert f"role {limited_role} has CONNECTION LIMIT 3" in result.message


async def test_dropped_connection_skips_without_right_to_terminate(
    limited_role: str, seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory
) -> None:
    # The pool connects as the superuser; the checking session acts as a plain role, which may
    # not signal a superuser's backend.
    ctx = await check_context_factory(seeded_db)
    await ctx.conn.execute(f"SET ROLE {limited_role}")
    result = await pool.survives_dropped_connection(ctx)
    # A critical check that could not look is not a pass (fail closed).
    assert_status(result, "failed")
    assert result.message.startswith("not verified: ") and result.verified is False
    assert "may not terminate backends" in result.message
    assert "pg_signal_backend" in result.message


# -- pool.headroom ------------------------------------------------------------------------------


async def test_headroom_passes_on_idle_server(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db, read_only=True)
    result = await pool.headroom(ctx)
    assert_status(result, "passed")
    assert "of 197 usable connections free" in result.message


async def test_headroom_fails_when_connections_are_held(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db, smoke={"pool_headroom": 0.75})
    assert_status(await pool.headroom(ctx), "passed")  # same threshold, before the load
    held = await asyncio.gather(*(asyncpg.connect(seeded_db.dsn) for _ in range(60)))
    try:
        result = await pool.headroom(ctx)
    finally:
        await asyncio.gather(*(conn.close() for conn in held))
    assert_status(result, "failed")
    assert "usable connections are in use (max_connections 200 minus 3 reserved)" in result.message
    assert "smoke.pool_headroom" in result.message
    assert "postgres/(no application_name) 60" in result.message  # names the biggest holder
    assert result.measured < 0.75
