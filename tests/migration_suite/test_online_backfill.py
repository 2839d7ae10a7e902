"""The online backfill (pytest_hokmdb.migration.online) on Hokm's card split: killed with
SIGKILL at several points it resumes where it stopped and ends with exactly the data a
single run gives; rolled back, the data is exactly as before; rows written while it runs
are kept right by the expand phase's trigger; a backfill that cannot finish says why."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import asyncpg
import pytest
from helpers import PROJECT_ROOT

from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase
from pytest_hokmdb.migrate import adowngrade, aupgrade

RUNNER = textwrap.dedent("""
    import logging, os, sys
    from alembic import command
    from pytest_hokmdb.migrate import alembic_config
    from pytest_hokmdb.migration.online import ATTRIBUTE, BackfillSettings
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    cfg = alembic_config(os.environ["BACKFILL_TEST_URL"])
    cfg.attributes[ATTRIBUTE] = BackfillSettings(batch_size=int(sys.argv[3]), pause_ms=int(sys.argv[4]))
    getattr(command, sys.argv[2])(cfg, sys.argv[5])
""")


def _start(db: ThrowawayDatabase, direction: str, revision: str, batch: int = 200, pause_ms: int = 15) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, "-", direction, str(batch), str(pause_ms), revision],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # The URL (with its password) goes through the environment, never the process listing.
        env={**os.environ, "PYTHONUNBUFFERED": "1", "BACKFILL_TEST_URL": db.url.render_as_string(hide_password=False)},
    )


async def _count(db: ThrowawayDatabase, sql: str) -> int:
    """``sql``'s number; 0 while what it reads does not exist yet (a column being added)."""
    conn = await asyncpg.connect(db.dsn)
    try:
        return int(await conn.fetchval(sql))
    except asyncpg.UndefinedColumnError:
        return 0
    finally:
        await conn.close()


async def _server_side_gone(db: ThrowawayDatabase) -> None:
    """Wait until the killed runner's server session has ended: PostgreSQL finishes (and, in
    autocommit, commits) the batch that was running when its client died, so what is counted
    before that is not yet what the next run finds."""
    conn = await asyncpg.connect(db.dsn)
    try:
        deadline = time.monotonic() + 30
        while await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                  "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"):
            assert time.monotonic() < deadline, "the killed runner's session did not end within 30 s"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def _kill_when(db: ThrowawayDatabase, proc: subprocess.Popen[str], sql: str, at_least: int) -> int:
    """SIGKILL the runner once ``sql`` counts ``at_least``; the count it was killed at."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = await _count(db, sql)
        if done >= at_least:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            await _server_side_gone(db)
            return done
        if proc.poll() is not None:
            pytest.fail(f"the backfill finished before it could be killed at {at_least}:\n{proc.stdout.read() if proc.stdout else ''}")
        await asyncio.sleep(0.02)
    proc.kill()
    pytest.fail(f"the backfill never reached {at_least} rows")


async def _cards(db: ThrowawayDatabase, columns: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(db.dsn)
    try:
        return [tuple(r) for r in await conn.fetch(f"SELECT id, {columns} FROM moves ORDER BY id")]
    finally:
        await conn.close()


FILLED = "SELECT count(*) FROM moves WHERE card_suit IS NOT NULL"
CARDS_BACK = "SELECT count(*) FROM moves WHERE card IS NOT NULL"


async def test_a_backfill_killed_three_times_resumes_and_ends_with_the_data_of_one_run(seeded_db: ThrowawayDatabase) -> None:
    db = seeded_db
    at_head = await _cards(db, "card_suit::text, card_rank")
    await adowngrade(db.url, "0004")
    original = await _cards(db, "card")
    await aupgrade(db.url, "0005")
    total = len(original)
    assert total > 10_000 and await _count(db, FILLED) == 0

    starts: list[int] = []
    for share in (0.2, 0.5, 0.8):
        before = await _count(db, FILLED)
        proc = _start(db, "upgrade", "0006")
        await _kill_when(db, proc, FILLED, int(total * share))
        output = proc.stdout.read() if proc.stdout else ""
        # It continued where the previous run stopped: only what was left needed it, from
        # further along the key each time.
        assert f"backfill moves: {total - before} rows need it" in output, output
        starts.append(int(output.split("rows need it, starting at id ")[1].split()[0]))
        assert await _count(db, "SELECT version_num FROM alembic_version") == 5
    assert starts == sorted(starts) and len(set(starts)) == 3, starts

    before = await _count(db, FILLED)
    assert before < total
    proc = _start(db, "upgrade", "0006")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert f"backfill moves: {total - before} rows need it" in output
    await aupgrade(db.url, "head")
    assert await _cards(db, "card_suit::text, card_rank") == at_head

    # The deploy's rollback goes back through 0007's downgrade (card rebuilt in batches) and
    # 0006's and 0005's: the data is exactly what it was at 0004.
    await adowngrade(db.url, "0004")
    assert await _cards(db, "card") == original


async def test_the_contract_downgrade_killed_half_way_runs_again_and_rebuilds_every_card(seeded_db: ThrowawayDatabase) -> None:
    """0007's downgrade has the backfill's shape backwards, and is as safe to kill."""
    db = seeded_db
    at_head = await _cards(db, "card_suit::text, card_rank")
    await adowngrade(db.url, "0007")
    proc = _start(db, "downgrade", "0006")
    await _kill_when(db, proc, CARDS_BACK, len(at_head) // 2)
    assert await _count(db, "SELECT version_num FROM alembic_version") == 7  # not recorded: runs again
    proc = _start(db, "downgrade", "0006")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert await _count(db, "SELECT count(*) FROM moves WHERE card IS NULL") == 0
    await aupgrade(db.url, "head")
    assert await _cards(db, "card_suit::text, card_rank") == at_head


async def test_rows_written_during_the_backfill_are_kept_right_by_the_trigger(seeded_db: ThrowawayDatabase) -> None:
    """The old release writes ``card`` only, the new one suit and rank only: both work at 0006."""
    db = seeded_db
    await adowngrade(db.url, "0004")
    await aupgrade(db.url, "0006")
    async with _conn(db) as conn:
        game, player = await conn.fetchrow("SELECT game_id, player_id FROM moves LIMIT 1")
        top = await conn.fetchval("SELECT max(sequence_number) FROM moves WHERE game_id = $1", game)
        old = await conn.fetchrow(
            "INSERT INTO moves (game_id, player_id, sequence_number, hand_number, trick_number, move_type, card) "
            "VALUES ($1, $2, $3, 99, 1, 'card_play', 'QD') RETURNING card_suit::text, card_rank", game, player, top + 1)
        new = await conn.fetchrow(
            "INSERT INTO moves (game_id, player_id, sequence_number, hand_number, trick_number, move_type, card_suit, "
            "card_rank) VALUES ($1, $2, $3, 99, 1, 'card_play', 'clubs', 10) RETURNING card", game, player, top + 2)
        with pytest.raises(asyncpg.CheckViolationError, match="ck_moves_rank_matches_type"):
            await conn.execute(
                "INSERT INTO moves (game_id, player_id, sequence_number, hand_number, trick_number, move_type, card_suit) "
                "VALUES ($1, $2, $3, 99, 1, 'card_play', 'clubs')", game, player, top + 3)
    assert tuple(old) == ("diamonds", 12) and new["card"] == "10C"


async def test_a_backfill_that_cannot_finish_names_the_table_and_what_is_left(hokmdb_empty_db: ThrowawayDatabase) -> None:
    """A ``set_`` that leaves its rows matching ``where`` can never finish: three passes, then
    a message saying how many rows are left and what the expand phase must do."""
    from pytest_hokmdb.migration.online import BackfillError, BackfillSettings

    async with _conn(hokmdb_empty_db) as conn:
        await conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, v int); INSERT INTO t SELECT g, NULL FROM generate_series(1, 500) g")
    with pytest.raises(BackfillError) as failure:
        await _run_backfill(hokmdb_empty_db, table="t", set_="v = NULL", where="v IS NULL",
                            settings=BackfillSettings(batch_size=100, pause_ms=0))
    assert "backfill of t left 500 row(s) matching 'v IS NULL' after 3 passes" in str(failure.value)
    assert "the expand revision must keep new writes right" in str(failure.value)


async def test_a_batch_never_waits_for_a_row_the_game_holds(hokmdb_empty_db: ThrowawayDatabase) -> None:
    """A game transaction holds row 250 (it updated it and has not committed) for 1.5 s while
    the backfill runs with the deploy's short lock_timeout. The batches take only rows no one
    holds: none waits (a wait would hit the 200 ms lock_timeout, and a batch waiting while it
    holds rows the game wants is how the game became a deadlock victim); row 250 is done by a
    later pass, once the game committed, and the game's own change is kept."""
    from pytest_hokmdb.migration.online import BackfillSettings

    async with _conn(hokmdb_empty_db) as conn:
        await conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, v int, w int); "
                           "INSERT INTO t SELECT g, NULL, 0 FROM generate_series(1, 500) g")
    game = await asyncpg.connect(hokmdb_empty_db.dsn)
    await game.execute("BEGIN; UPDATE t SET w = 1 WHERE id = 250")

    async def commit_later() -> None:
        await asyncio.sleep(1.5)
        await game.execute("COMMIT")

    committer = asyncio.create_task(commit_later())
    try:
        report = await _run_backfill(hokmdb_empty_db, replace(hokmdb_empty_db.target, lock_timeout_ms=200), table="t",
                                     set_="v = id * 2", where="v IS NULL", settings=BackfillSettings(batch_size=100, pause_ms=0))
    finally:
        await committer
        await game.close()
    assert report.rows == 500
    async with _conn(hokmdb_empty_db) as conn:
        assert await conn.fetchval("SELECT count(*) FROM t WHERE v IS DISTINCT FROM id * 2") == 0
        assert await conn.fetchval("SELECT w FROM t WHERE id = 250") == 1


async def test_quick_batches_grow(hokmdb_empty_db: ThrowawayDatabase) -> None:
    """The batch size follows the batches' latency: 20,000 rows from batches of 100 that take
    a few milliseconds end in far fewer than 200 batches (each doubles, up to 20 times 100);
    the slow direction is the test below."""
    from pytest_hokmdb.migration.online import MAX_GROWTH, BackfillSettings

    async with _conn(hokmdb_empty_db) as conn:
        await conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, v int); "
                           "INSERT INTO t SELECT g, NULL FROM generate_series(1, 20000) g")
    quick = await _run_backfill(hokmdb_empty_db, table="t", set_="v = 1", where="v IS NULL",
                                settings=BackfillSettings(batch_size=100, pause_ms=0))
    assert quick.rows == 20000 and quick.batches < 200 // 4, quick
    assert 100 * MAX_GROWTH * quick.batches >= 20000  # never more than 20 times the configured size


async def _run_backfill(db: ThrowawayDatabase, target=None, **kwargs):  # type: ignore[no-untyped-def]
    """``run_backfill(bind, **kwargs)`` on an autocommit connection to ``db`` (or ``target``), as a revision runs it."""
    from pytest_hokmdb.db.engine import create_engine
    from pytest_hokmdb.migration.online import run_backfill

    engine = create_engine(target or db.target)
    try:
        async with engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            return await autocommit.run_sync(lambda bind: run_backfill(bind, **kwargs))
    finally:
        await engine.dispose()


def _conn(db: ThrowawayDatabase):  # type: ignore[no-untyped-def]
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def opened():  # type: ignore[no-untyped-def]
        conn = await asyncpg.connect(db.dsn)
        try:
            yield conn
        finally:
            await conn.close()

    return opened()




async def test_a_slow_batch_halves_the_next_and_the_backfill_still_finishes(hokmdb_empty_db: ThrowawayDatabase) -> None:
    """Throttling: with a batch budget no batch can meet, every batch halves the next one down
    to the minimum, and the data ends exactly as one plain UPDATE would leave it."""
    from pytest_hokmdb.migration.online import MIN_BATCH_SIZE, BackfillSettings

    async with _conn(hokmdb_empty_db) as conn:
        await conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, v int, w int); "
                           "INSERT INTO t SELECT g, g, NULL FROM generate_series(1, 3000) g")
    report = await _run_backfill(hokmdb_empty_db, table="t", set_="w = v * 2, v = v", where="w IS NULL",
                                 settings=BackfillSettings(batch_size=800, pause_ms=0, max_batch_ms=0.0001))  # type: ignore[arg-type]
    assert report.rows == 3000 and report.throttled >= 4, report
    assert report.batches > 3000 // 800 + 1  # smaller batches than configured: it throttled
    assert report.batches >= (3000 - 800 - 400 - 200 - 100) // MIN_BATCH_SIZE
    async with _conn(hokmdb_empty_db) as conn:
        assert await conn.fetchval("SELECT count(*) FROM t WHERE w IS DISTINCT FROM v * 2") == 0
