"""The alembic history against a real PostgreSQL: it deploys, undoes itself without a
trace, carries move data across the online card split (0005-0007) both ways, survives a
failed concurrent index build in 0008, and ends exactly where the models say the schema is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa

from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase
from pytest_hokmdb.migrate import adowngrade, aupgrade, current_revision

REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008")

HEAD_TABLES = {
    "players",
    "user_preferences",
    "game_sessions",
    "game_participants",
    "moves",
    "player_game_stats",
    "websocket_connections",
    "performance_metrics",
}
HEAD_ENUMS = {
    "game_status": ["waiting", "active", "completed", "abandoned"],
    "card_suit": ["hearts", "diamonds", "clubs", "spades"],
    "move_type": ["trump_selection", "card_play"],
}
PARTICIPANTS_INDEX = "ix_game_participants_player_id"

# Everything a revision can leave behind in the public schema, one query per kind of
# object. alembic_version is excluded: it is alembic's bookkeeping, not the schema
# (to_regclass rather than ::regclass keeps the queries valid before it exists).
SNAPSHOT_QUERIES: dict[str, str] = {
    "relations": """
        SELECT c.relname, c.relkind::text
        FROM pg_class AS c
        WHERE c.relnamespace = 'public'::regnamespace
          AND c.relname NOT IN ('alembic_version', 'alembic_version_pkc')
    """,
    # Column order is not compared: 0007's downgrade re-adds ``card`` as the last column.
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity::text
        FROM pg_attribute AS a
        JOIN pg_class AS c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
          AND c.relname <> 'alembic_version' AND a.attnum > 0 AND NOT a.attisdropped
    """,
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace
          AND conrelid IS DISTINCT FROM to_regclass('public.alembic_version')
    """,
    "indexes": """
        SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid
        FROM pg_index AS i
        JOIN pg_class AS c ON c.oid = i.indexrelid
        WHERE c.relnamespace = 'public'::regnamespace
          AND i.indrelid IS DISTINCT FROM to_regclass('public.alembic_version')
    """,
    # Row types of tables and array types come and go with their table or element type.
    "types": """
        SELECT t.typname, t.typtype::text,
               array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FILTER (WHERE e.enumlabel IS NOT NULL)
        FROM pg_type AS t
        LEFT JOIN pg_enum AS e ON e.enumtypid = t.oid
        WHERE t.typnamespace = 'public'::regnamespace AND t.typrelid = 0 AND t.typcategory <> 'A'
        GROUP BY t.typname, t.typtype
    """,
    "routines": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid)
        FROM pg_proc AS p
        WHERE p.pronamespace = 'public'::regnamespace
    """,
}


@asynccontextmanager
async def connected(db: ThrowawayDatabase) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db.dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def schema_snapshot(db: ThrowawayDatabase) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the migrations own, as sorted rows per kind, so that a failed comparison
    shows exactly which object differs."""
    snapshot: dict[str, list[tuple[Any, ...]]] = {}
    async with connected(db) as conn:
        for kind, query in SNAPSHOT_QUERIES.items():
            rows = await conn.fetch(query)
            snapshot[kind] = sorted(tuple(row) for row in rows)
    return snapshot


async def revision_of(db: ThrowawayDatabase) -> str | None:
    async with connected(db) as conn:
        return await current_revision(conn)


async def column_names(db: ThrowawayDatabase, table: str) -> set[str]:
    async with connected(db) as conn:
        rows = await conn.fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = $1",
            table,
        )
    return {row["column_name"] for row in rows}


async def insert_moves_at_0004(db: ThrowawayDatabase, cards: list[tuple[str, str]]) -> dict[int, str]:
    """Insert one game whose moves carry ``cards`` (move_type, card) in the pre-0007 format;
    returns {move id: card}."""
    async with connected(db) as conn:
        player_id = await conn.fetchval(
            "INSERT INTO players (username, display_name) VALUES ('hakem', 'Hakem') RETURNING id"
        )
        game_id = await conn.fetchval(
            "INSERT INTO game_sessions (room_code, hakem_player_id) VALUES ('ROOM1', $1) RETURNING id",
            player_id,
        )
        inserted: dict[int, str] = {}
        for sequence, (move_type, card) in enumerate(cards, start=1):
            move_id = await conn.fetchval(
                """
                INSERT INTO moves
                    (game_id, player_id, sequence_number, hand_number, trick_number, move_type, card)
                VALUES ($1, $2, $3, 1, $4, $5, $6) RETURNING id
                """,
                game_id,
                player_id,
                sequence,
                0 if move_type == "trump_selection" else 1,
                move_type,
                card,
            )
            inserted[move_id] = card
    return inserted


async def test_upgrade_to_head_then_downgrade_to_base_leaves_an_empty_schema(
    hokmdb_empty_db: ThrowawayDatabase,
) -> None:
    db = hokmdb_empty_db
    await aupgrade(db.url, "head")
    at_head = await schema_snapshot(db)
    assert {name for name, kind in at_head["relations"] if kind == "r"} == HEAD_TABLES
    assert {name: labels for name, _, labels in at_head["types"]} == HEAD_ENUMS
    assert await revision_of(db) == REVISIONS[-1]

    await adowngrade(db.url, "base")
    assert await schema_snapshot(db) == {kind: [] for kind in SNAPSHOT_QUERIES}
    assert await revision_of(db) is None


async def test_0005_to_0007_split_cards_and_their_downgrades_restore_them_exactly(
    hokmdb_empty_db: ThrowawayDatabase,
) -> None:
    db = hokmdb_empty_db
    await aupgrade(db.url, "0004")
    original = await insert_moves_at_0004(
        db,
        [
            ("trump_selection", "S"),
            ("card_play", "10H"),
            ("card_play", "AS"),
            ("card_play", "2C"),
            ("card_play", "QD"),
        ],
    )
    expected_split = {
        "S": ("spades", None),
        "10H": ("hearts", 10),
        "AS": ("spades", 14),
        "2C": ("clubs", 2),
        "QD": ("diamonds", 12),
    }

    await aupgrade(db.url, "0007")
    assert "card" not in await column_names(db, "moves")
    async with connected(db) as conn:
        rows = await conn.fetch("SELECT id, card_suit::text AS suit, card_rank AS rank FROM moves")
    assert {row["id"]: (row["suit"], row["rank"]) for row in rows} == {
        move_id: expected_split[card] for move_id, card in original.items()
    }

    await adowngrade(db.url, "0004")
    assert {"card_suit", "card_rank"}.isdisjoint(await column_names(db, "moves"))
    async with connected(db) as conn:
        rows = await conn.fetch("SELECT id, card FROM moves")
    assert {row["id"]: row["card"] for row in rows} == original


async def test_0006_refuses_cards_it_cannot_parse_and_changes_nothing(
    hokmdb_empty_db: ThrowawayDatabase,
) -> None:
    db = hokmdb_empty_db
    await aupgrade(db.url, "0004")
    moves = await insert_moves_at_0004(
        db,
        [
            ("trump_selection", "H"),
            ("card_play", "ZZ"),  # no such card
            ("card_play", "1H"),  # no such rank
            ("card_play", "D"),  # a card play without a rank
            ("trump_selection", "KC"),  # a trump selection with a rank
        ],
    )
    bad_ids = [move_id for move_id, card in moves.items() if card != "H"]

    refusal = r"revision 0006 cannot split moves\.card, 4 move\(s\)"
    with pytest.raises(sa.exc.DBAPIError, match=refusal) as failure:
        await aupgrade(db.url, "0006")
    for move_id in bad_ids:
        assert f"{move_id} (" in str(failure.value)

    assert await revision_of(db) == "0005"  # the expand applied; the backfill was refused
    async with connected(db) as conn:
        rows = await conn.fetch("SELECT id, card FROM moves")
    assert {row["id"]: row["card"] for row in rows} == moves


async def test_0008_retries_after_a_failed_concurrent_build(hokmdb_empty_db: ThrowawayDatabase) -> None:
    """A CREATE INDEX CONCURRENTLY that fails leaves an INVALID index behind under the
    same name; IF NOT EXISTS alone would then keep the broken index forever."""
    db = hokmdb_empty_db
    await aupgrade(db.url, "0007")
    async with connected(db) as conn:
        player_id = await conn.fetchval(
            "INSERT INTO players (username, display_name) VALUES ('p', 'P') RETURNING id"
        )
        for room in ("R1", "R2"):
            game_id = await conn.fetchval(
                "INSERT INTO game_sessions (room_code) VALUES ($1) RETURNING id", room
            )
            await conn.execute(
                "INSERT INTO game_participants (game_id, player_id, seat, team) VALUES ($1, $2, 0, 1)",
                game_id,
                player_id,
            )
        # Unique on purpose, so the build fails on the player who sits in two games.
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                f"CREATE UNIQUE INDEX CONCURRENTLY {PARTICIPANTS_INDEX} ON game_participants (player_id)"
            )
    indexes = {name: (ddl, valid) for name, ddl, valid in (await schema_snapshot(db))["indexes"]}
    assert indexes[PARTICIPANTS_INDEX][1] is False

    await aupgrade(db.url, "0008")
    indexes = {name: (ddl, valid) for name, ddl, valid in (await schema_snapshot(db))["indexes"]}
    assert indexes[PARTICIPANTS_INDEX] == (
        f"CREATE INDEX {PARTICIPANTS_INDEX} ON public.game_participants USING btree (player_id)",
        True,
    )


async def test_0008_gives_up_quickly_when_the_table_is_locked(hokmdb_empty_db: ThrowawayDatabase) -> None:
    """Under the deploy's lock_timeout (the revision sets none of its own, so it cannot raise
    it) the build gives up instead of queueing behind the lock indefinitely."""
    from dataclasses import replace

    db = hokmdb_empty_db
    deploying = replace(db.target, lock_timeout_ms=1000)
    await aupgrade(db.url, "0007")
    async with connected(db) as blocker:
        transaction = blocker.transaction()
        await transaction.start()
        try:
            await blocker.execute("LOCK TABLE game_participants IN SHARE MODE")
            with pytest.raises(sa.exc.DBAPIError, match="lock timeout"):
                try:
                    await asyncio.wait_for(aupgrade(deploying, "0008"), timeout=15)
                except TimeoutError:
                    pytest.fail("revision 0008 was still waiting for the table lock after 15s")
        finally:
            await transaction.rollback()
    assert await revision_of(db) == "0007"

    await aupgrade(deploying, "0008")
    assert await revision_of(db) == "0008"


def test_the_alembic_command_line_says_what_is_wrong_once_with_hokmdbs_exit_codes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``alembic -x environment=...`` (env.py's command-line path): a wrong environment or none
    is exit 2 and a refused connection exit 3, each one message and a hint; it used to be exit
    1, and a 142-line traceback for the connection."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from helpers import PROJECT_ROOT

    alembic = Path(sys.executable).parent / "alembic"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOKMDB_ENVIRONMENT", "DB_"))}
    env["HOKMDB_ENV_FILE"] = str(tmp_path / "none.env")
    cases = (
        (["-x", "environment=prod"], {}, 2, "error: unknown environment 'prod'"),
        ([], {}, 2, "error: no database selected\n  hint: pass -x environment=NAME or set HOKMDB_ENVIRONMENT"),
        (["-x", "environment=staging"], {"DB_HOST_STAGING": "127.0.0.1", "DB_PORT": "1", "DB_PASSWORD_STAGING": "st4ging-secret"},
         3, "(from $DB_HOST_STAGING, $DB_PORT)"),
    )
    for args, extra, code, expected in cases:
        proc = subprocess.run([str(alembic), *args, "current"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              env={**env, **extra}, timeout=60, check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode == code, output
        assert expected in output, output
        assert "Traceback" not in output and "st4ging-secret" not in output, output
        assert len(output.strip().splitlines()) <= 3, output
