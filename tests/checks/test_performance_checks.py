"""The performance checks pass on a healthy seeded database and fail, for the right reason,
when an index is dropped, a plan avoids its index, a query is slow or the cache is cold."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from helpers import assert_status, run_statements, server_age_s

from hokm_profile import hot_queries as hokm_hot
from pytest_hokmdb.checks import performance
from pytest_hokmdb.checks.base import CheckContext
from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase, drop_database

HOT = {q.name: q for q in hokm_hot.HOT_QUERIES}
MOVES_INDEX = "uq_moves_game_id_sequence_number"

ContextFactory = Callable[..., Awaitable[CheckContext]]  # tests/conftest.py: check_context_factory


def only(name: str, **changes: Any) -> list[dict[str, Any]]:
    """A ``smoke.hot_queries`` override holding one default hot query, changed as given."""
    return [HOT[name].model_copy(update=changes).model_dump()]


async def count_moves(db: ThrowawayDatabase) -> int:
    conn = await asyncpg.connect(db.dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM moves"))
    finally:
        await conn.close()


# -- performance.hot_queries --------------------------------------------------------------


async def test_hot_queries_pass_on_healthy_database(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db)
    result = await performance.hot_queries(ctx)
    assert_status(result, "passed")
    assert set(result.measured) == set(HOT)
    assert all(ms is not None and ms < HOT[name].max_ms for name, ms in result.measured.items())
    assert "plan: game_moves_in_order" in result.evidence
    assert f"Index Scan using {MOVES_INDEX} on moves" in result.evidence["plan: game_moves_in_order"]


async def test_hot_queries_fail_when_expected_index_is_dropped(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    await run_statements(seeded_db, f"ALTER TABLE moves DROP CONSTRAINT {MOVES_INDEX}")
    ctx = await check_context_factory(seeded_db)
    result = await performance.hot_queries(ctx)
    assert_status(result, "failed")
    assert f"game_moves_in_order does not use {MOVES_INDEX}, which does not exist: Seq Scan on moves" in result.message
    # Only the query that lost its index is named.
    for healthy in ("game_with_participants", "player_recent_games", "leaderboard_top_n"):
        assert healthy not in result.message


async def test_hot_queries_fail_when_plan_avoids_index_on_large_table(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    # 60 players: the planner rightly sorts them instead of walking ix_players_rating_desc. That is
    # fine for a small table (default large_table_rows) and a regression once the table counts as large.
    small = await check_context_factory(seeded_db, smoke={"hot_queries": only("leaderboard_top_n")})
    passed = await performance.hot_queries(small)
    assert_status(passed, "passed")
    assert "does not use ix_players_rating_desc, but players has only ~60 rows" in passed.message

    large = await check_context_factory(seeded_db, smoke={"hot_queries": only("leaderboard_top_n"), "large_table_rows": 0})
    failed = await performance.hot_queries(large)
    assert_status(failed, "failed")
    assert "leaderboard_top_n does not use ix_players_rating_desc: Seq Scan on players" in failed.message


async def test_hot_queries_fail_when_slower_than_limit(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db, smoke={"hot_queries": only("game_moves_in_order", max_ms=0.001)})
    result = await performance.hot_queries(ctx)
    assert_status(result, "failed")
    assert "game_moves_in_order took " in result.message
    assert "(limit 0.001 ms)" in result.message
    assert "does not use" not in result.message  # the plan is fine; only the timing fails
    assert result.measured["game_moves_in_order"] > 0.001


async def test_hot_queries_fail_on_invalid_index_from_failed_concurrent_build(
    seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory
) -> None:
    # Revision 0008 builds an index CONCURRENTLY; when such a build fails it leaves an INVALID
    # index behind that the planner never uses. Provoke one for real: a unique build on duplicates.
    conn = await asyncpg.connect(seeded_db.dsn)
    try:
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("CREATE UNIQUE INDEX CONCURRENTLY ix_moves_game_id_broken ON moves (game_id)")
    finally:
        await conn.close()
    ctx = await check_context_factory(
        seeded_db, smoke={"hot_queries": only("game_moves_in_order", expected_index="ix_moves_game_id_broken")}
    )
    result = await performance.hot_queries(ctx)
    assert_status(result, "failed")
    assert "game_moves_in_order: index ix_moves_game_id_broken on moves is INVALID" in result.message
    assert "DROP INDEX CONCURRENTLY" in result.message


async def test_hot_queries_without_games_still_check_their_indexes(hokmdb_fresh_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(hokmdb_fresh_db)
    result = await performance.hot_queries(ctx)
    assert_status(result, "passed")
    assert "no games yet" in result.message and "expected index(es) exist and are valid" in result.message
    await run_statements(hokmdb_fresh_db, "DROP INDEX ix_players_rating_desc")
    result = await performance.hot_queries(await check_context_factory(hokmdb_fresh_db))
    assert_status(result, "failed")
    assert "leaderboard_top_n: its index ix_players_rating_desc does not exist" in result.message


async def test_hot_queries_judge_the_revision_the_database_is_held_to(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    """After a rollback to 0007, 0008's index is not expected; at head its absence fails."""
    await run_statements(seeded_db, "DROP INDEX ix_game_participants_player_id")
    held = await performance.hot_queries(await check_context_factory(seeded_db, target_revision="0007"))
    assert_status(held, "passed")
    assert "ix_game_participants_player_id arrives with revision 0008, after 0007" in held.message
    at_head = await performance.hot_queries(await check_context_factory(seeded_db))
    assert_status(at_head, "failed")
    assert "player_recent_games does not use ix_game_participants_player_id, which does not exist" in at_head.message
    # Held to 0007, an index that 0007 does have is still required.
    await run_statements(seeded_db, "DROP INDEX ix_players_rating_desc")
    broken = await performance.hot_queries(await check_context_factory(seeded_db, target_revision="0007"))
    assert_status(broken, "failed")
    assert "leaderboard_top_n does not use ix_players_rating_desc, which does not exist" in broken.message


async def test_hot_query_that_writes_is_refused_and_writes_nothing(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    before = await count_moves(seeded_db)
    writer = {"name": "sneaky_delete", "sql": "WITH d AS (DELETE FROM moves RETURNING 1) SELECT count(*) FROM d"}
    ctx = await check_context_factory(seeded_db, smoke={"hot_queries": [writer]})
    result = await performance.hot_queries(ctx)
    assert_status(result, "failed")
    assert "hot query sneaky_delete writes" in result.message
    assert await count_moves(seeded_db) == before


async def test_run_hot_query_helper_times_and_explains_one_query(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db)
    samples = await hokm_hot.pick_samples(ctx.conn)
    assert samples is not None and samples.values[hokm_hot.PLAYER_PLACEHOLDER] is not None
    run = await performance.run_hot_query(ctx.conn, HOT["game_moves_in_order"], samples)
    assert run.error is None
    assert run.args == [samples.values[hokm_hot.GAME_PLACEHOLDER]]
    assert len(run.timings_ms) == 3 and run.best_ms == round(min(run.timings_ms), 3)
    assert run.uses_expected_index
    assert performance.judge(run, large_table_rows=10_000) == []

    await run_statements(seeded_db, f"ALTER TABLE moves DROP CONSTRAINT {MOVES_INDEX}")
    broken = await performance.run_hot_query(ctx.conn, HOT["game_moves_in_order"], samples, timed=False)
    assert not broken.uses_expected_index
    assert [n.node_type for n in broken.nodes if n.relation == "moves"] == ["Seq Scan"]
    assert broken.timings_ms == []


async def test_hot_query_with_bad_literal_param_names_the_problem(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    query = {"name": "by_rating", "sql": "SELECT id FROM players WHERE rating > $1 LIMIT 5", "params": ["high"]}
    ctx = await check_context_factory(seeded_db, smoke={"hot_queries": [query]})
    result = await performance.hot_queries(ctx)
    assert_status(result, "failed")
    assert "hot query by_rating: parameter $1 'high' is not a valid int4" in result.message


# -- performance.no_seq_scan_on_indexed_lookup ------------------------------------------------


async def test_no_seq_scan_passes_on_healthy_database(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db)
    result = await performance.no_seq_scan_on_indexed_lookup(ctx)
    assert_status(result, "passed")
    assert "no hot query scans a table over 10000 rows sequentially" in result.message


async def test_no_seq_scan_fails_when_index_is_dropped(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    await run_statements(seeded_db, f"ALTER TABLE moves DROP CONSTRAINT {MOVES_INDEX}")
    ctx = await check_context_factory(seeded_db)
    result = await performance.no_seq_scan_on_indexed_lookup(ctx)
    assert_status(result, "failed")
    assert "game_moves_in_order: Seq Scan on moves (~" in result.message
    assert "smoke.large_table_rows" in result.message


async def test_no_seq_scan_counts_small_tables_only_above_threshold(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db, smoke={"hot_queries": only("leaderboard_top_n")})
    assert_status(await performance.no_seq_scan_on_indexed_lookup(ctx), "passed")
    strict = await check_context_factory(seeded_db, smoke={"hot_queries": only("leaderboard_top_n"), "large_table_rows": 0})
    result = await performance.no_seq_scan_on_indexed_lookup(strict)
    assert_status(result, "failed")
    assert "leaderboard_top_n: Seq Scan on players (~60 rows)" in result.message


# -- performance.cache_hit_ratio ----------------------------------------------------------------


async def _read_tables(conn: asyncpg.Connection, times: int) -> None:
    for _ in range(times):
        for table in ("moves", "game_participants", "game_sessions", "players", "player_game_stats"):
            await conn.fetchval(f"SELECT count(*) FROM {table}")
    # Stats reach pg_stat_database when the backend goes idle; make it happen now.
    await conn.execute("SELECT pg_stat_force_next_flush()")


@pytest.fixture
async def cold_db(hokmdb_cluster: EmbeddedCluster, seeded_template: str) -> AsyncIterator[ThrowawayDatabase]:
    """A copy of the seeded database made with STRATEGY FILE_COPY: its files are copied on disk,
    so none of its pages are in shared_buffers and the first read of each comes from the OS."""
    name = f"t_cold_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(**hokmdb_cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{seeded_template}" STRATEGY FILE_COPY')
    finally:
        await admin.close()
    try:
        yield ThrowawayDatabase(name, hokmdb_cluster)
    finally:
        drop_database(hokmdb_cluster, name)


async def test_cache_hit_ratio_passes_when_reads_hit_the_cache(seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(seeded_db, smoke={"cache_hit_min_reads": 1000, "cache_hit_min_age_s": 0})
    await _read_tables(ctx.conn, times=5)
    result = await performance.cache_hit_ratio(ctx)
    assert_status(result, "passed")
    assert result.measured >= 0.9


async def test_cache_hit_ratio_does_not_judge_a_cold_cache(cold_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    """A freshly restored or restarted copy reads everything from disk once (87.7% failed a
    point-in-time copy, and the next try passed): statistics that young are no evidence."""
    ctx = await check_context_factory(cold_db, smoke={"cache_hit_min_reads": 100})
    await ctx.conn.execute("SELECT pg_stat_reset()")  # count from here: only the cold reads below
    await _read_tables(ctx.conn, times=1)
    result = await performance.cache_hit_ratio(ctx)
    assert_status(result, "skipped")
    assert "statistics were reset" in result.message and "a cold cache is no evidence" in result.message
    assert "smoke.cache_hit_min_age_s (600 s)" in result.message


@pytest.fixture(scope="module")
def small_buffers_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """A cluster whose shared_buffers (128kB) cannot hold the table read below: every scan misses."""
    from pytest_hokmdb.cluster.embedded import THROWAWAY_SETTINGS

    cluster = EmbeddedCluster(tmp_path_factory.mktemp("small-buffers"), settings={**THROWAWAY_SETTINGS, "shared_buffers": "128kB"})
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


async def test_cache_hit_ratio_fails_on_a_warm_server_that_really_misses(small_buffers_cluster: EmbeddedCluster, check_context_factory: ContextFactory) -> None:
    from pytest_hokmdb.fixtures.throwaway import create_database

    db = create_database(small_buffers_cluster, f"t_small_{os.getpid()}", None)
    conn = await asyncpg.connect(db.dsn)
    try:
        await conn.execute("CREATE TABLE big AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g")
    finally:
        await conn.close()
    ctx = await check_context_factory(db, smoke={"cache_hit_min_reads": 100, "cache_hit_min_age_s": 1})
    await ctx.conn.execute("SELECT pg_stat_reset()")
    for _ in range(10):  # the same table again and again: a warm server would serve it from memory
        await ctx.conn.fetchval("SELECT count(*) FROM big")
    await ctx.conn.execute("SELECT pg_stat_force_next_flush()")
    await asyncio.sleep(1.1)  # statistics older than cache_hit_min_age_s
    result = await performance.cache_hit_ratio(ctx)
    assert_status(result, "failed")
    assert f"cache hit ratio of database {db.name} is " in result.message
    assert "under the 90% minimum (smoke.min_cache_hit_ratio)" in result.message and "shared_buffers (128kB)" in result.message
    assert result.measured < 0.9


async def _read_big_table(db: ThrowawayDatabase, times: int) -> None:
    conn = await asyncpg.connect(db.dsn)
    try:
        for _ in range(times):  # a warm server would serve the same table from memory
            await conn.fetchval("SELECT count(*) FROM big")
        await conn.execute("SELECT pg_stat_force_next_flush()")
    finally:
        await conn.close()


async def test_cache_hit_ratio_does_not_judge_a_fresh_copy_on_a_server_that_ran_long_enough(
    small_buffers_cluster: EmbeddedCluster, check_context_factory: ContextFactory
) -> None:
    """Issue 32, item 4: a copy made on a server that has run for longer than
    smoke.cache_hit_min_age_s has statistics as young as the copy (pg_stat_database.stats_reset is
    empty for a new database), and they hold nothing but its first, cold reads. They were judged
    against the server's age, and a good restore failed. The age that counts is the copy's."""
    from pytest_hokmdb.fixtures.throwaway import create_database

    source = create_database(small_buffers_cluster, f"t_source_{os.getpid()}", None)
    conn = await asyncpg.connect(source.dsn)
    try:
        await conn.execute("CREATE TABLE big AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g")
    finally:
        await conn.close()
    # The copy is made once the server is older than the age the check requires, so only the
    # copy's own age can spare it (and the copy is read and judged long before it is that old).
    server_age = await server_age_s(source.dsn, at_least=10)
    copy = create_database(small_buffers_cluster, f"t_copy_{os.getpid()}", source.name)
    try:
        await _read_big_table(copy, times=10)
        fresh = await performance.cache_hit_ratio(
            await check_context_factory(copy, smoke={"cache_hit_min_reads": 100, "cache_hit_min_age_s": server_age})
        )
        assert_status(fresh, "skipped")
        assert f"database {copy.name} was created " in fresh.message
        assert f" s ago, under smoke.cache_hit_min_age_s ({server_age:g} s): a cold cache is no evidence" in fresh.message
        assert f"the ratio is judged once the statistics are {server_age:g} s old" in fresh.message
        assert fresh.measured < server_age and fresh.threshold == server_age
        # The very same statistics, judged: they really miss, so it is the copy's age that spared them.
        judged = await performance.cache_hit_ratio(
            await check_context_factory(copy, smoke={"cache_hit_min_reads": 100, "cache_hit_min_age_s": 0})
        )
        assert_status(judged, "failed")
        assert f"cache hit ratio of database {copy.name} is " in judged.message
        assert "under the 90% minimum (smoke.min_cache_hit_ratio)" in judged.message
    finally:
        drop_database(small_buffers_cluster, copy.name)
        drop_database(small_buffers_cluster, source.name)


async def test_cache_hit_ratio_skips_with_too_few_reads(hokmdb_fresh_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(hokmdb_fresh_db, smoke={"cache_hit_min_age_s": 0})
    await ctx.conn.execute("SELECT pg_stat_reset()")
    result = await performance.cache_hit_ratio(ctx)
    assert_status(result, "skipped")
    assert "too few reads for the ratio to mean anything" in result.message


async def test_cache_hit_ratio_does_not_judge_a_server_started_moments_ago(
    small_buffers_cluster: EmbeddedCluster, check_context_factory: ContextFactory
) -> None:
    """The same misses that fail a warm server are no evidence on a server that started
    seconds ago (a restored copy, a restart): not judged, and the message says why. With the
    age requirement off, the very same statistics fail, so it is the age that spared them.

    Judged as an application role, as in production: it may not read the database's files, so
    of the database's creation it knows nothing, and the server's start is what it sees."""
    from pytest_hokmdb.fixtures.throwaway import create_database

    db = create_database(small_buffers_cluster, f"t_young_{os.getpid()}", None)  # never reset: counts since start
    role, password = f"app_young_{os.getpid()}", f"pw-{uuid.uuid4().hex}"
    conn = await asyncpg.connect(db.dsn)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await conn.execute("CREATE TABLE big AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g")
        for _ in range(10):
            await conn.fetchval("SELECT count(*) FROM big")
        await conn.execute("SELECT pg_stat_force_next_flush()")
    finally:
        await conn.close()
    young = await performance.cache_hit_ratio(
        await check_context_factory(db, smoke={"cache_hit_min_reads": 100}, user=role, password=password)
    )
    assert_status(young, "skipped")
    assert "the server started" in young.message and "under smoke.cache_hit_min_age_s (600 s)" in young.message
    assert "a cold cache is no evidence" in young.message and "block reads" in young.message
    judged = await performance.cache_hit_ratio(
        await check_context_factory(db, smoke={"cache_hit_min_reads": 100, "cache_hit_min_age_s": 0}, user=role, password=password)
    )
    assert_status(judged, "failed")
    assert f"cache hit ratio of database {db.name} is " in judged.message
    assert performance.cache_hit_ratio.spec.severity == "normal"  # type: ignore[attr-defined]
