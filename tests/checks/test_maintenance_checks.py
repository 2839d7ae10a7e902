"""Maintenance stopped and state that outlives its session: autovacuum switched off (server-wide,
per database, per table or its TOAST table), prepared transactions, advisory locks and logical
subscriptions left behind, crash-unsafe settings, synchronous replication that cannot be met.
The checks pass on a healthy database and fail, naming the object and the fix, on one broken
that way."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace

import asyncpg
import pytest
from helpers import assert_status, cluster_of_its_own, run_statements

from pytest_hokmdb.checks import health, topology
from pytest_hokmdb.cluster.embedded import THROWAWAY_SETTINGS
from pytest_hokmdb.db.advisory import NAMESPACE as HOKMDB_LOCK_NAMESPACE
from pytest_hokmdb.db.topology import Topology
from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase


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
    with cluster_of_its_own("2pc", "two_phase", {**THROWAWAY_SETTINGS, "max_prepared_transactions": "4"}) as db:
        yield db


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
    with cluster_of_its_own("safe", "safe", {"max_connections": "20"}) as db:
        result = await health.crash_safe_settings(await check_context_factory(db, environment="production"))
    assert_status(result, "passed")
    assert "keep commits crash-safe" in result.message


async def test_synchronous_commit_off_on_a_role_names_the_role_and_its_reset(check_context_factory) -> None:  # type: ignore[no-untyped-def]
    """Issue 32 item 13: a role-level override was told to run ALTER SYSTEM, which changes
    nothing for that role (its own setting wins over the server's)."""
    with cluster_of_its_own("rolesync", "rolesync", {"max_connections": "20"}) as db:
        await run_statements(db, "CREATE ROLE game_fast LOGIN PASSWORD 'pw-game-fast'",
                             "ALTER ROLE game_fast SET synchronous_commit = off")
        role = await health.crash_safe_settings(
            await check_context_factory(db, environment="production", user="game_fast", password="pw-game-fast"))
        await run_statements(db, "ALTER ROLE game_fast RESET synchronous_commit",
                             "ALTER DATABASE rolesync SET synchronous_commit = off")
        database = await health.crash_safe_settings(
            await check_context_factory(db, environment="production", user="game_fast", password="pw-game-fast"))
    assert_status(role, "failed")
    assert "synchronous_commit = off, set on role game_fast (ALTER ROLE ... SET): commits the game server was told " \
           "succeeded can be lost in a crash" in role.message
    assert "Run ALTER ROLE game_fast RESET synchronous_commit (as a superuser or a role with CREATEROLE)" in role.message
    assert "ALTER SYSTEM" not in role.message
    assert_status(database, "failed")
    assert "synchronous_commit = off, set on database rolesync (ALTER DATABASE ... SET)" in database.message
    assert "Run ALTER DATABASE rolesync RESET synchronous_commit" in database.message
    assert "ALTER SYSTEM" not in database.message


# -- advisory locks left behind ------------------------------------------------------------------


async def test_an_advisory_lock_held_by_an_idle_session_fails_naming_it(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    db = hokmdb_fresh_db
    job = await asyncpg.connect(db.dsn, server_settings={"application_name": "nightly-payout"})
    deploy = await asyncpg.connect(db.dsn, server_settings={"application_name": "hokmdb deploy by ops"})
    try:
        await job.execute("SELECT pg_advisory_lock(42)")
        await deploy.execute("SELECT pg_advisory_lock($1, 1)", HOKMDB_LOCK_NAMESPACE)  # a deploy in progress
        fresh = await health.advisory_locks(await check_context_factory(db))
        assert_status(fresh, "passed")
        assert "2 advisory lock(s) held, none by a session idle for longer than 1.0 h" in fresh.message
        await asyncio.sleep(0.3)
        result = await health.advisory_locks(await check_context_factory(db, smoke={"advisory_lock_idle_s": 0.1}))
        assert_status(result, "failed")
        job_pid = job.get_server_pid()
        assert f"1 advisory lock(s) in database {db.name} held by sessions idle for longer than" in result.message
        assert f"key 42 held by pid {job_pid} (postgres, nightly-payout, from 127.0.0.1), idle for" in result.message
        assert "last query: SELECT pg_advisory_lock(42)" in result.message
        assert f"SELECT pg_terminate_backend(pid) for {job_pid}" in result.message
        assert "hokmdb deploy" not in result.message  # hokmdb's own deploy lock is listed, not failed
        allowed = await health.advisory_locks(await check_context_factory(
            db, smoke={"advisory_lock_idle_s": 0.1, "advisory_lock_holders": ["nightly-payout"]}))
        assert_status(allowed, "passed")
    finally:
        await job.close()
        await deploy.close()
    none = await health.advisory_locks(await check_context_factory(db))
    assert_status(none, "passed")
    assert none.message == "no advisory lock is held in this database"


# -- logical subscriptions that stopped ----------------------------------------------------------


@pytest.fixture(scope="module")
def replication_settings_db() -> Iterator[ThrowawayDatabase]:
    """A cluster of its own for server-wide replication settings (synchronous_standby_names makes
    every commit of the cluster wait) and subscriptions whose apply worker is not restarted for
    an hour after it fails (wal_retrieve_retry_interval), so "not running" is a steady state."""
    with cluster_of_its_own("repl", "subscriber", {**THROWAWAY_SETTINGS, "wal_retrieve_retry_interval": "1h"}) as db:
        yield db


async def test_no_subscription_passes(replication_settings_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await health.subscriptions_running(await check_context_factory(replication_settings_db))
    assert_status(result, "passed")
    assert result.message == "no logical subscription in this database"


async def test_a_disabled_subscription_and_one_whose_worker_died_fail(replication_settings_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    db = replication_settings_db
    nowhere = "host=127.0.0.1 port=1 dbname=hokm connect_timeout=1"
    await run_statements(
        db,
        f"CREATE SUBSCRIPTION paused_feed CONNECTION '{nowhere}' PUBLICATION stats WITH (connect = false)",
        f"CREATE SUBSCRIPTION dead_feed CONNECTION '{nowhere}' PUBLICATION games "
        "WITH (connect = false, slot_name = 'dead_feed')",
        "ALTER SUBSCRIPTION dead_feed ENABLE",
    )
    try:
        # The apply worker starts, cannot reach the publisher and exits within milliseconds; it
        # is not restarted for an hour. Wait for the server to log its exit.
        log = db.cluster.base_dir / "postgres.log"
        for _ in range(50):
            if 'worker "logical replication worker"' in log.read_text(errors="replace"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the apply worker of dead_feed never exited; see {log}")
        result = await health.subscriptions_running(await check_context_factory(db))
        assert_status(result, "failed")
        assert f"2 of 2 subscription(s) in database {db.name} copy nothing" in result.message
        assert "paused_feed (publications stats) is disabled" in result.message
        assert "dead_feed (publications games) is enabled but its apply worker is not running" in result.message
        assert "ALTER SUBSCRIPTION paused_feed ENABLE" in result.message
        assert "read the server log for dead_feed's error" in result.message
    finally:
        for name in ("dead_feed", "paused_feed"):  # without a slot to drop on the (absent) publisher
            await run_statements(db, f"ALTER SUBSCRIPTION {name} DISABLE", f"ALTER SUBSCRIPTION {name} SET (slot_name = NONE)",
                                 f"DROP SUBSCRIPTION {name}")


# -- synchronous replication ---------------------------------------------------------------------


async def test_synchronous_standby_names_without_a_standby_fails_because_commits_hang(replication_settings_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    db = replication_settings_db
    await run_statements(db, "ALTER SYSTEM SET synchronous_standby_names = 'ANY 2 (game_replica_a, game_replica_b)'",
                         "SELECT pg_reload_conf()")
    try:
        result = await topology.synchronous_standbys(await check_context_factory(db))
    finally:
        await run_statements(db, "ALTER SYSTEM RESET synchronous_standby_names", "SELECT pg_reload_conf()")
    assert_status(result, "failed")
    assert ("synchronous_standby_names = 'ANY 2 (game_replica_a, game_replica_b)' makes every commit wait for 2 "
            "quorum standby(s), but 0 are attached as synchronous (attached: none)") in result.message
    assert "every write of the game hangs" in result.message
    assert "ALTER SYSTEM SET synchronous_standby_names = ''" in result.message


async def test_a_promise_of_synchronous_replication_with_none_configured_fails(replication_settings_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    ctx = await check_context_factory(replication_settings_db)
    assert_status(await topology.synchronous_standbys(ctx), "passed")  # asynchronous, as configured
    promised = await topology.synchronous_standbys(replace(ctx, topology=Topology(synchronous_replication=True)))
    assert_status(promised, "failed")
    assert "the topology promises synchronous replication (topology.synchronous_replication), but " \
           "synchronous_standby_names is empty" in promised.message


def test_the_number_of_synchronous_standbys_is_read_as_postgresql_reads_it() -> None:
    assert topology.required_sync_standbys("replica_a") == (1, "priority")
    assert topology.required_sync_standbys("a, b") == (1, "priority")
    assert topology.required_sync_standbys("FIRST 2 (a, b, c)") == (2, "priority")
    assert topology.required_sync_standbys("2 (a, b)") == (2, "priority")
    assert topology.required_sync_standbys("any 3 (a, b, c)") == (3, "quorum")
    assert topology.required_sync_standbys("*") == (1, "priority")


async def test_hokmdbs_clusters_have_data_checksums(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await health.data_checksums(await check_context_factory(hokmdb_fresh_db, environment="production"))
    assert_status(result, "passed")
    assert "data checksums are on: a corrupted page fails the read that meets it" in result.message


async def test_a_cluster_without_data_checksums_fails_where_data_matters(check_context_factory) -> None:  # type: ignore[no-untyped-def]
    """Checksums switched off with PostgreSQL's own pg_checksums on a stopped cluster."""
    with cluster_of_its_own("nosum", "nosum", {"max_connections": "20"}) as db:
        cluster = db.cluster
        cluster.stop()
        cluster._run([str(cluster.bin_dir / "pg_checksums"), "--disable", "-D", str(cluster.data_dir)])  # noqa: SLF001
        cluster.start()
        required = await health.data_checksums(await check_context_factory(db, environment="production"))
        allowed = await health.data_checksums(await check_context_factory(db, environment="testing"))
    assert_status(required, "failed")
    assert "data checksums are off: a page corrupted on disk is read as data" in required.message
    assert "pg_checksums --enable -D <data directory>" in required.message
    assert_status(allowed, "passed")
    assert "data checksums are off, allowed in the testing environment (smoke.require_data_checksums)" in allowed.message
