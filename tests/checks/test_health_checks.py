"""The health checks pass on a healthy seeded database and fail, for the right reason, on a
database the test breaks on purpose: sessions held open, a lock held, xids consumed, rows
deleted, a hot table changed after its analyze, a sequence pushed near its end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from helpers import assert_status

from pytest_hokmdb.checks import health
from pytest_hokmdb.checks.base import CheckContext
from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase

SECRET_LITERAL = "hunter2-Zq9-literal"

ContextFactory = Callable[..., Awaitable[CheckContext]]  # tests/conftest.py: check_context_factory


async def flush_stats(conn: asyncpg.Connection) -> None:
    """Make this backend's pending table statistics visible to others right away."""
    await conn.execute("SELECT pg_stat_force_next_flush()")


async def fresh_stats(ctx: CheckContext) -> None:
    await ctx.conn.execute("SELECT pg_stat_clear_snapshot()")


# -- sessions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "check",
    [health.long_transactions, health.idle_in_transaction, health.blocked_locks],
    ids=lambda c: c.spec.name,
)
async def test_session_checks_pass_on_quiet_database(check: Any, seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db, read_only=True, smoke={
        "long_transaction_s": 0.2, "idle_in_transaction_s": 0.2, "blocked_lock_s": 0.1,
    })
    result = await check(ctx)
    assert_status(result, "passed")


async def test_idle_in_transaction_fails_and_masks_literals(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db, read_only=True, smoke={"idle_in_transaction_s": 0.2})
    idler = await asyncpg.connect(seeded_db.dsn, server_settings={"application_name": "forgetful-client"})
    try:
        pid = await idler.fetchval("SELECT pg_backend_pid()")
        await idler.execute(f"BEGIN; SELECT '{SECRET_LITERAL}' AS pw")
        await asyncio.sleep(0.35)
        result = await health.idle_in_transaction(ctx)
    finally:
        await idler.close()
    assert_status(result, "failed")
    assert f"pid {pid} (postgres, forgetful-client, from 127.0.0.1) idle in transaction for 0." in result.message
    assert "smoke.idle_in_transaction_s" in result.message
    assert "last query: BEGIN; SELECT '…' AS pw" in result.message
    assert SECRET_LITERAL not in result.message and SECRET_LITERAL not in str(result.evidence)


async def test_long_transaction_fails_while_idle_check_passes(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db, read_only=True, smoke={"long_transaction_s": 0.2, "idle_in_transaction_s": 0.2})
    worker = await asyncpg.connect(seeded_db.dsn, server_settings={"application_name": "slow-report"})
    pid = await worker.fetchval("SELECT pg_backend_pid()")
    await worker.execute("BEGIN")
    sleeping = asyncio.ensure_future(worker.execute("SELECT pg_sleep(10)"))  # active, not idle
    try:
        await asyncio.sleep(0.35)
        long_result = await health.long_transactions(ctx)
        idle_result = await health.idle_in_transaction(ctx)
    finally:
        await ctx.conn.fetchval("SELECT pg_cancel_backend($1)", pid)
        with pytest.raises(asyncpg.QueryCanceledError):
            await sleeping
        await worker.close()
    assert_status(long_result, "failed")
    assert f"pid {pid} (postgres, slow-report, from 127.0.0.1) in a transaction for 0." in long_result.message
    assert "active: SELECT pg_sleep(10)" in long_result.message
    assert "smoke.long_transaction_s" in long_result.message
    assert_status(idle_result, "passed")


async def test_blocked_lock_fails_naming_blocker_and_blocked(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db, read_only=True, smoke={"blocked_lock_s": 0.1})
    holder = await asyncpg.connect(seeded_db.dsn, server_settings={"application_name": "migration-holder"})
    waiter = await asyncpg.connect(seeded_db.dsn, server_settings={"application_name": "game-server"})
    holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
    waiter_pid = await waiter.fetchval("SELECT pg_backend_pid()")
    await holder.execute("BEGIN; LOCK TABLE players IN ACCESS EXCLUSIVE MODE")
    waiting = asyncio.ensure_future(waiter.fetchval("SELECT count(*) FROM players"))
    try:
        await asyncio.sleep(0.3)
        result = await health.blocked_locks(ctx)
    finally:
        await holder.execute("ROLLBACK")
        assert await waiting == 60  # the waiter got through once the lock was gone
        await holder.close()
        await waiter.close()
    assert_status(result, "failed")
    assert f"pid {holder_pid} (postgres, migration-holder, from 127.0.0.1) idle in transaction" in result.message
    assert f"→ blocks pid {waiter_pid} (postgres, game-server, from 127.0.0.1) waiting 0." in result.message
    assert "AccessShareLock on players" in result.message
    assert "smoke.blocked_lock_s" in result.message
    assert "pg_terminate_backend" in result.message


# -- xid age -----------------------------------------------------------------------------------


async def test_xid_age_passes_with_default_limit(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db, read_only=True)
    result = await health.xid_age(ctx)
    assert_status(result, "passed")
    assert 0 < result.measured < 1_000_000_000


async def test_xid_age_fails_over_limit(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    conn = await asyncpg.connect(seeded_db.dsn)
    try:
        for _ in range(5):
            await conn.fetchval("SELECT pg_current_xact_id()")  # each autocommit statement burns one xid
    finally:
        await conn.close()
    ctx = await check_context_factory(seeded_db, read_only=True, smoke={"max_xid_age": 1})
    result = await health.xid_age(ctx)
    assert_status(result, "failed")
    assert f"database {seeded_db.name}: the oldest unfrozen transaction ID is " in result.message
    assert "over the limit 1 (smoke.max_xid_age)" in result.message
    assert "VACUUM (FREEZE)" in result.message
    assert result.measured >= 5


# -- replication -------------------------------------------------------------------------------


async def test_replication_without_replicas_passes_only_when_none_are_expected(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db, read_only=True)
    result = await health.replication(ctx)
    assert_status(result, "passed")
    assert "no replicas attached, none expected (smoke.expected_replicas = 0)" in result.message
    ctx = await check_context_factory(seeded_db, read_only=True, smoke={"expected_replicas": 1})
    result = await health.replication(ctx)
    assert_status(result, "failed")
    assert "no replica is attached, 1 expected (smoke.expected_replicas)" in result.message


def replica(state: str | None = "streaming", lag: float | None = 0.5, behind: int | None = 0) -> health.Replica:
    return health.Replica("standby-1", "10.0.0.7", state, "async", lag, behind)


def test_replication_verdict_passes_streaming_replica_within_lag() -> None:
    result = health.judge_replicas([replica(), replica(lag=None)], max_lag_s=30)
    assert_status(result, "passed")
    assert "2 replica(s) streaming" in result.message


def test_replication_verdict_fails_on_lag() -> None:
    result = health.judge_replicas([replica(lag=45.0, behind=123456)], max_lag_s=30)
    assert_status(result, "failed")
    assert "replica standby-1 at 10.0.0.7 replays 45.0 s behind, over 30 s (smoke.max_replication_lag_s)" in result.message
    assert "123456 bytes of WAL not replayed" in result.message


def test_replication_verdict_fails_when_not_streaming() -> None:
    result = health.judge_replicas([replica(state="catchup", lag=None)], max_lag_s=30)
    assert_status(result, "failed")
    assert "replica standby-1 at 10.0.0.7 is in state 'catchup', not 'streaming'" in result.message


def test_replication_verdict_skips_when_state_is_hidden() -> None:
    result = health.judge_replicas([replica(state=None, lag=None, behind=None)], max_lag_s=30)
    assert_status(result, "skipped")
    assert "pg_read_all_stats" in result.message


# -- dead tuples -------------------------------------------------------------------------------


async def test_dead_tuples_pass_after_analyze(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db, read_only=True, smoke={"dead_tuple_min_rows": 100})
    conn = await asyncpg.connect(seeded_db.dsn)
    try:
        await conn.execute("VACUUM ANALYZE")  # as autovacuum keeps it; a copied database starts with empty statistics
    finally:
        await conn.close()
    await fresh_stats(ctx)
    result = await health.dead_tuples(ctx)
    assert_status(result, "passed")
    assert "table(s) checked, worst is" in result.message
    assert not result.message.startswith("0 table")


async def test_dead_tuples_fail_after_mass_delete(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    conn = await asyncpg.connect(seeded_db.dsn)
    try:
        # Keep autovacuum from cleaning up before the check looks.
        await conn.execute("ALTER TABLE moves SET (autovacuum_enabled = false); ANALYZE moves")
        await conn.execute("DELETE FROM moves WHERE id % 2 = 0")
        await flush_stats(conn)
    finally:
        await conn.close()
    ctx = await check_context_factory(seeded_db, read_only=True, smoke={"dead_tuple_min_rows": 100})
    await fresh_stats(ctx)
    result = await health.dead_tuples(ctx)
    assert_status(result, "failed")
    assert "public.moves 50% dead" in result.message
    assert "never vacuumed" in result.message
    assert "(smoke.max_dead_tuple_ratio" in result.message
    assert "VACUUM (ANALYZE)" in result.message


# -- vacuum / analyze age ------------------------------------------------------------------------


async def _analyze_then_touch(db: ThrowawayDatabase, *, analyze: bool) -> None:
    conn = await asyncpg.connect(db.dsn)
    try:
        if analyze:
            await conn.execute("ANALYZE players")
        # Every player: more changes than autovacuum's analyze threshold (50 + 10% of 60 rows).
        await conn.execute("UPDATE players SET last_seen_at = now()")
        await flush_stats(conn)
    finally:
        await conn.close()


async def test_vacuum_age_passes_when_changed_table_was_analyzed_recently(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    await _analyze_then_touch(seeded_db, analyze=True)
    ctx = await check_context_factory(seeded_db, read_only=True)
    await fresh_stats(ctx)
    result = await health.vacuum_age(ctx)
    assert_status(result, "passed")
    assert "players analyzed" in result.message


async def test_vacuum_age_fails_when_analyze_is_older_than_limit(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    await _analyze_then_touch(seeded_db, analyze=True)
    await asyncio.sleep(0.3)
    ctx = await check_context_factory(seeded_db, read_only=True, smoke={"max_vacuum_age_h": 0.1 / 3600})  # 0.1 s
    await fresh_stats(ctx)
    result = await health.vacuum_age(ctx)
    assert_status(result, "failed")
    assert "players: 60 rows changed since it was last analyzed 0." in result.message
    assert "(smoke.max_vacuum_age_h)" in result.message
    for untouched in ("moves", "game_sessions", "game_participants"):
        assert f"{untouched}:" not in result.message


async def test_vacuum_age_ignores_changes_below_the_autovacuum_threshold(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    conn = await asyncpg.connect(seeded_db.dsn)
    try:
        await conn.execute("ANALYZE players")
        await conn.execute("UPDATE players SET last_seen_at = now() WHERE id = (SELECT min(id) FROM players)")
        await flush_stats(conn)
    finally:
        await conn.close()
    await asyncio.sleep(0.3)
    ctx = await check_context_factory(seeded_db, read_only=True, smoke={"max_vacuum_age_h": 0.1 / 3600})
    await fresh_stats(ctx)
    result = await health.vacuum_age(ctx)
    assert_status(result, "passed")
    assert "players has 1 changes, below autovacuum's analyze threshold 56" in result.message


async def test_vacuum_age_fails_when_changed_table_was_never_analyzed(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    await _analyze_then_touch(seeded_db, analyze=False)
    ctx = await check_context_factory(seeded_db, read_only=True)
    await fresh_stats(ctx)
    result = await health.vacuum_age(ctx)
    assert_status(result, "failed")
    assert "players: 60 rows changed and never analyzed" in result.message


# -- sequences ---------------------------------------------------------------------------------


async def test_sequences_pass_on_healthy_database(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db, read_only=True)
    result = await health.sequences(ctx)
    assert_status(result, "passed")
    assert "sequence(s) checked" in result.message
    assert result.measured < 0.001


async def test_sequences_fail_near_exhaustion(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    conn = await asyncpg.connect(seeded_db.dsn)
    try:
        await conn.execute("ALTER SEQUENCE players_id_seq MAXVALUE 100")
        await conn.execute("SELECT setval('players_id_seq', 90)")
    finally:
        await conn.close()
    ctx = await check_context_factory(seeded_db, read_only=True)
    result = await health.sequences(ctx)
    assert_status(result, "failed")
    assert "public.players_id_seq is 90.0% used (90 of 100, bigint)" in result.message
    assert "(smoke.max_sequence_usage)" in result.message
    assert "moves_id_seq" not in result.message
    assert result.measured == pytest.approx(0.9)


async def test_blocked_lock_names_a_row_lock_wait(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db, read_only=True, smoke={"blocked_lock_s": 0.1})
    holder = await asyncpg.connect(seeded_db.dsn)
    waiter = await asyncpg.connect(seeded_db.dsn)
    update = "UPDATE players SET rating = rating WHERE id = (SELECT min(id) FROM players)"
    await holder.execute(f"BEGIN; {update}")
    waiting = asyncio.ensure_future(waiter.execute(update))
    try:
        await asyncio.sleep(0.3)
        result = await health.blocked_locks(ctx)
    finally:
        await holder.execute("ROLLBACK")
        await waiting
        await holder.close()
        await waiter.close()
    assert_status(result, "failed")
    assert "for a row lock (ShareLock on the blocker's transaction): UPDATE players SET rating" in result.message
