"""Autovacuum switched off (server-wide, per database, per table or its TOAST table) and
prepared transactions left behind: the health checks pass on a healthy database and fail,
naming the table or transaction and the fix, on one broken that way."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from helpers import assert_status, run_statements

from pytest_hokmdb.checks import health
from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.cluster.embedded import THROWAWAY_SETTINGS
from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase, create_database


async def test_autovacuum_on_everywhere_passes(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(hokmdb_fresh_db, "ALTER TABLE moves SET (autovacuum_vacuum_scale_factor = 0.05)")  # tuned, not off
    assert_status(await health.autovacuum_enabled(await check_context_factory(hokmdb_fresh_db)), "passed")


async def test_autovacuum_off_for_a_table_and_its_toast_fails_naming_both(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(hokmdb_fresh_db, "ALTER TABLE moves SET (autovacuum_enabled = false)",
                         "ALTER TABLE game_sessions SET (toast.autovacuum_enabled = off)")
    result = await health.autovacuum_enabled(await check_context_factory(hokmdb_fresh_db))
    assert_status(result, "failed")
    assert "autovacuum is off for public.moves: table (autovacuum_enabled=false)" in result.message
    assert "autovacuum is off for public.game_sessions: its TOAST table (autovacuum_enabled=off)" in result.message
    assert "ALTER TABLE public.moves RESET (autovacuum_enabled)" in result.message
    assert "ALTER TABLE public.game_sessions RESET (toast.autovacuum_enabled)" in result.message


async def test_track_counts_off_for_the_database_fails(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    db = hokmdb_fresh_db
    await run_statements(db, f'ALTER DATABASE "{db.name}" SET track_counts = off')
    result = await health.autovacuum_enabled(await check_context_factory(db))
    assert_status(result, "failed")
    assert "track_counts is off on the server (source: database)" in result.message
    assert "ALTER SYSTEM SET track_counts = on" in result.message


@pytest.fixture(scope="module")
def two_phase_db() -> Iterator[ThrowawayDatabase]:
    """A cluster of its own that allows prepared transactions (max_prepared_transactions is 0
    by default, and changing it needs a restart)."""
    cluster = EmbeddedCluster(Path(tempfile.gettempdir()) / f"hokmdb-2pc-{uuid.uuid4().hex[:10]}",
                              settings={**THROWAWAY_SETTINGS, "max_prepared_transactions": "4"})
    cluster.start()
    try:
        yield create_database(cluster, "two_phase")
    finally:
        cluster.destroy()


async def _prepare(db: ThrowawayDatabase, gid: str) -> None:
    conn = await asyncpg.connect(db.dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS ledger (id int)")
        await conn.execute(f"BEGIN; INSERT INTO ledger VALUES (1); PREPARE TRANSACTION '{gid}'")
    finally:
        await conn.close()


async def test_a_prepared_transaction_left_behind_fails_and_a_fresh_one_does_not(two_phase_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await _prepare(two_phase_db, "payout-42")
    try:
        fresh = await health.prepared_transactions(await check_context_factory(two_phase_db))
        assert_status(fresh, "passed")
        assert "1 younger, in flight" in fresh.message
        result = await health.prepared_transactions(
            await check_context_factory(two_phase_db, smoke={"long_transaction_s": 0.001}))
        assert_status(result, "failed")
        assert "1 prepared transaction(s) older than" in result.message
        assert "'payout-42' in database two_phase by postgres" in result.message
        assert "ROLLBACK PREPARED 'payout-42'" in result.message
    finally:
        await run_statements(two_phase_db, "ROLLBACK PREPARED 'payout-42'")
    assert_status(await health.prepared_transactions(await check_context_factory(two_phase_db)), "passed")


# -- settings that trade crash safety --------------------------------------------------------------


async def test_crash_unsafe_settings_fail_where_safety_is_required(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    """hokmdb's throwaway clusters run with fsync, full_page_writes and synchronous_commit off."""
    result = await health.crash_safe_settings(await check_context_factory(hokmdb_fresh_db, environment="staging"))
    assert_status(result, "failed")
    assert "fsync = off (source: configuration file): an operating-system crash or power loss can corrupt" in result.message
    assert "full_page_writes = off" in result.message and "synchronous_commit = off" in result.message
    assert "ALTER SYSTEM SET fsync = on; ALTER SYSTEM SET full_page_writes = on; ALTER SYSTEM SET synchronous_commit = on" \
        in result.message


async def test_crash_unsafe_settings_pass_where_the_environment_allows_them(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await health.crash_safe_settings(
        await check_context_factory(hokmdb_fresh_db, smoke={"require_crash_safety": False}))
    assert_status(result, "passed")
    assert "fsync, full_page_writes, synchronous_commit off, allowed here (smoke.require_crash_safety = false" \
        in result.message


async def test_a_crash_safe_server_passes(check_context_factory) -> None:  # type: ignore[no-untyped-def]
    """A cluster started with PostgreSQL's own defaults (not the throwaway settings)."""
    cluster = EmbeddedCluster(Path(tempfile.gettempdir()) / f"hokmdb-safe-{uuid.uuid4().hex[:10]}",
                              settings={"max_connections": "20"})
    cluster.start()
    try:
        db = create_database(cluster, "safe")
        result = await health.crash_safe_settings(await check_context_factory(db, environment="production"))
        assert_status(result, "passed")
        assert "keep commits crash-safe" in result.message
    finally:
        cluster.destroy()
