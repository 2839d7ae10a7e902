"""The seed on a real database at head: rule-abiding, idempotent, one transaction, and a
command line that refuses production and reports configuration errors without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest
from helpers import PROJECT_ROOT, write_config_dir

from hokm_profile import rules
from hokm_profile.invariants import run_all
from hokm_profile.seed import GAME_TABLES, default_anchor, seed
from pytest_hokmdb.cluster.embedded import SUPERUSER
from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase

SCRIPT = PROJECT_ROOT / "database" / "seed_data.py"
SIZE = {"players": 40, "games": 60}

#: Each table's content with surrogate ids replaced by natural keys (usernames, room
#: codes), so two seed runs compare equal even though they hand out new ids.
CONTENT_QUERIES: dict[str, str] = {
    "players": """SELECT username, email, display_name, rating, total_games, wins, losses, is_active,
                         created_at, last_seen_at FROM players""",
    "user_preferences": """SELECT p.username, u.language, u.sound_enabled, u.card_style, u.settings, u.updated_at
                             FROM user_preferences u JOIN players p ON p.id = u.player_id""",
    "game_sessions": """SELECT g.room_code, g.status, h.username, g.trump_suit, g.current_round, g.game_state,
                               g.team1_score, g.team2_score, g.winning_team, g.created_at, g.started_at,
                               g.completed_at
                          FROM game_sessions g LEFT JOIN players h ON h.id = g.hakem_player_id""",
    "game_participants": """SELECT g.room_code, p.username, gp.seat, gp.team, gp.joined_at FROM game_participants gp
                              JOIN game_sessions g ON g.id = gp.game_id JOIN players p ON p.id = gp.player_id""",
    "moves": """SELECT g.room_code, m.sequence_number, m.hand_number, m.trick_number, m.move_type, m.card_suit,
                       m.card_rank, p.username, m.created_at
                  FROM moves m JOIN game_sessions g ON g.id = m.game_id JOIN players p ON p.id = m.player_id""",
    "player_game_stats": """SELECT g.room_code, p.username, s.team, s.tricks_won, s.hands_won, s.hands_as_hakem,
                                   s.points_scored, s.is_winner, s.created_at
                              FROM player_game_stats s JOIN game_sessions g ON g.id = s.game_id
                              JOIN players p ON p.id = s.player_id""",
    "websocket_connections": """SELECT w.connection_id, p.username, g.room_code, w.client_ip, w.connected_at,
                                       w.last_heartbeat_at, w.disconnected_at
                                  FROM websocket_connections w JOIN players p ON p.id = w.player_id
                                  LEFT JOIN game_sessions g ON g.id = w.game_id""",
    "performance_metrics": "SELECT metric_name, value, unit, tags, recorded_at FROM performance_metrics",
}


@pytest.fixture
async def conn(hokmdb_fresh_db: ThrowawayDatabase) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(hokmdb_fresh_db.dsn)
    try:
        yield connection
    finally:
        await connection.close()


async def _counts(conn: asyncpg.Connection) -> dict[str, int]:
    return {table: await conn.fetchval(f"SELECT count(*) FROM {table}") for table in GAME_TABLES}


async def _content(conn: asyncpg.Connection) -> dict[str, str]:
    return {
        table: await conn.fetchval(f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM ({sql}) t")
        for table, sql in CONTENT_QUERIES.items()
    }


async def _add_foreign_rows(conn: asyncpg.Connection) -> tuple[int, int]:
    """A player and a game that do not belong to the seed set (a developer's own)."""
    player = await conn.fetchval("INSERT INTO players (username, display_name) VALUES ('alice', 'Alice') RETURNING id")
    game = await conn.fetchval("INSERT INTO game_sessions (room_code) VALUES ('ALICE1') RETURNING id")
    await conn.execute("INSERT INTO game_participants (game_id, player_id, seat, team) VALUES ($1, $2, 0, 1)", game, player)
    return player, game


async def test_seed_satisfies_every_invariant(conn: asyncpg.Connection) -> None:
    report = await seed(conn, **SIZE, random_seed=3, clear=False)
    counts = await _counts(conn)
    assert {t: counts[t] for t in report.rows} == report.rows
    assert counts["players"] == SIZE["players"] and counts["game_sessions"] == SIZE["games"]
    assert counts["moves"] > 100 * SIZE["games"] * 0.6, "most games should be played to the end"
    for window in (None, timedelta(days=7)):
        failures = [r.message for _inv, r in await run_all(conn, window=window) if not r.ok]
        assert failures == [], "\n".join(failures)
    statuses = dict(await conn.fetch("SELECT status::text, count(*) FROM game_sessions GROUP BY status"))
    assert statuses["completed"] > SIZE["games"] // 2 and statuses.get("active", 0) > 0
    recent = await conn.fetchval(
        "SELECT count(*) FROM game_sessions WHERE created_at BETWEEN now() - interval '31 days' AND now()"
    )
    assert recent == SIZE["games"], "every seeded game should be recent"
    assert report.rows_per_second > 0 and report.moves_per_second > 0


async def test_player_counters_follow_the_games(conn: asyncpg.Connection) -> None:
    await seed(conn, **SIZE, random_seed=3, clear=False)
    finished_seats = await conn.fetchval(
        "SELECT count(*) FROM game_participants gp JOIN game_sessions g ON g.id = gp.game_id WHERE g.status = 'completed'"
    )
    row = await conn.fetchrow("SELECT sum(total_games) AS total, sum(wins) AS wins, min(rating) AS lo, max(rating) AS hi FROM players")
    assert row["total"] == finished_seats and row["wins"] * 2 == finished_seats
    assert rules.RATING_MIN <= row["lo"] <= row["hi"] <= rules.RATING_MAX


@pytest.mark.parametrize("foreign_data", [False, True], ids=["seed-only", "with-other-data"])
async def test_rerun_leaves_identical_data(conn: asyncpg.Connection, foreign_data: bool) -> None:
    anchor = default_anchor()
    foreign = await _add_foreign_rows(conn) if foreign_data else None
    await seed(conn, **SIZE, random_seed=5, clear=False, anchor=anchor)
    counts, content = await _counts(conn), await _content(conn)
    player_ids = await conn.fetch("SELECT username, id FROM players ORDER BY username")

    second = await seed(conn, **SIZE, random_seed=5, clear=False, anchor=anchor)
    assert await _counts(conn) == counts
    assert await _content(conn) == content
    assert second.rows["moves"] == counts["moves"]
    if foreign is not None:
        player, game = foreign
        assert await conn.fetchval("SELECT username FROM players WHERE id = $1", player) == "alice"
        assert await conn.fetchval("SELECT count(*) FROM game_participants WHERE game_id = $1", game) == 1
        # Seed players keep their ids when other data forbids emptying the tables.
        assert await conn.fetch("SELECT username, id FROM players ORDER BY username") == player_ids

    other = await seed(conn, **SIZE, random_seed=6, clear=False, anchor=anchor)
    assert other.rows["players"] == SIZE["players"]
    assert await _content(conn) != content, "a different random seed must give different data"


async def test_rerun_with_fewer_players_removes_the_surplus(conn: asyncpg.Connection) -> None:
    await _add_foreign_rows(conn)
    await seed(conn, players=30, games=20, random_seed=5, clear=False)
    await seed(conn, players=12, games=10, random_seed=5, clear=False)
    assert await conn.fetchval("SELECT count(*) FROM players WHERE username LIKE 'seed%'") == 12
    assert await conn.fetchval("SELECT count(*) FROM game_sessions WHERE room_code LIKE 'seed-%'") == 10
    failures = [r.message for _inv, r in await run_all(conn, window=None) if not r.ok]
    assert failures == [], "\n".join(failures)


async def test_clear_empties_every_game_table(conn: asyncpg.Connection) -> None:
    await _add_foreign_rows(conn)
    await seed(conn, **SIZE, random_seed=5, clear=False)
    report = await seed(conn, players=10, games=8, random_seed=5, clear=True)
    assert report.cleared
    assert await conn.fetchval("SELECT count(*) FROM players WHERE username = 'alice'") == 0
    assert await conn.fetchval("SELECT count(*) FROM game_sessions WHERE room_code = 'ALICE1'") == 0
    assert await conn.fetchval("SELECT min(id) FROM players") == 1, "identities restart"
    assert await conn.fetchval("SELECT count(*) FROM players") == 10
    assert await conn.fetchval("SELECT count(*) FROM game_sessions") == 8


async def test_a_failed_seed_changes_nothing(conn: asyncpg.Connection) -> None:
    await seed(conn, **SIZE, random_seed=5, clear=False)
    before = await _content(conn)

    def explode(phase: str, done: int, total: int) -> None:
        if phase == "games":
            raise RuntimeError("interrupted mid-load")

    with pytest.raises(RuntimeError, match="interrupted mid-load"):
        await seed(conn, players=50, games=70, random_seed=9, clear=True, progress=explode)
    assert await _content(conn) == before


def test_default_anchor_is_the_start_of_the_utc_day() -> None:
    now = datetime(2026, 11, 24, 17, 5, 3, tzinfo=timezone(timedelta(hours=3, minutes=30)))
    assert default_anchor(now) == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)


# -- the command line ---------------------------------------------------------------------


def _run(args: list[str], env: dict[str, str] | None = None, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "HOKMDB_"))}
    base["HOKMDB_ENV_FILE"] = os.devnull
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_refuses_production() -> None:
    result = _run(["--environment", "production"],
                  env={"DB_HOST_PRODUCTION": "db.example.invalid", "DB_PASSWORD_PRODUCTION": "not-used"})
    assert result.returncode == 4, result.stderr
    assert result.stderr.startswith("error: seeding production is refused"), result.stderr
    assert "Traceback" not in result.stderr


def test_cli_refuses_an_environment_whose_config_forbids_seeding(tmp_path: Path) -> None:
    write_config_dir(tmp_path, "testing", seed__allowed=False)
    result = _run(["--environment", "testing", "--db-config", str(tmp_path)])
    assert result.returncode == 4, result.stderr
    assert "seeding testing is refused: seed.allowed is false" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("problem", ["missing", "invalid-json", "unknown-key"])
def test_cli_config_error_exits_2(tmp_path: Path, problem: str) -> None:
    config = tmp_path / "testing.json"
    if problem == "invalid-json":
        config.write_text("{ not json")
    elif problem == "unknown-key":
        write_config_dir(tmp_path, "testing", seed__playerz=3)
    result = _run(["--environment", "testing", "--db-config", str(config)])
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    assert str(config) in result.stderr and "Traceback" not in result.stderr


def test_cli_seeds_the_configured_database(hokmdb_fresh_db: ThrowawayDatabase, tmp_path: Path) -> None:
    cluster = hokmdb_fresh_db.cluster
    write_config_dir(tmp_path, "testing", database__host=cluster.host, database__name=hokmdb_fresh_db.name,
                     database__user=SUPERUSER, seed__players=12, seed__games=9)
    env = {"DB_PORT": str(cluster.port), "DB_PASSWORD_TEST": cluster.superuser_password}
    args = ["--environment", "testing", "--db-config", str(tmp_path), "--games", "15", "--seed", "4"]
    first = _run(args, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "seeded testing" in first.stdout and "rows/s" in first.stdout
    assert "game_sessions" in first.stdout and "moves" in first.stdout
    assert "Traceback" not in first.stderr and cluster.superuser_password not in first.stdout + first.stderr

    async def count() -> tuple[int, int]:
        conn = await asyncpg.connect(hokmdb_fresh_db.dsn)
        try:
            return (await conn.fetchval("SELECT count(*) FROM players"),
                    await conn.fetchval("SELECT count(*) FROM game_sessions"))
        finally:
            await conn.close()

    from pytest_hokmdb.aio import run_sync

    assert run_sync(count()) == (12, 15), "players from the config, games from --games"
    again = _run(args + ["--clear"], env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "after clearing every game table" in again.stdout
    assert run_sync(count()) == (12, 15)


def test_cli_names_the_seeding_timeout_and_where_to_raise_it(hokmdb_fresh_db: ThrowawayDatabase, tmp_path: Path) -> None:
    """Seeding is bulk work with its own statement budget (seed.statement_timeout_ms, default
    none), not the interactive database.statement_timeout_ms; a cancelled statement says which
    limit, its value, the file, and rolls everything back."""
    cluster = hokmdb_fresh_db.cluster
    write_config_dir(tmp_path, "testing", database__host=cluster.host, database__name=hokmdb_fresh_db.name,
                     database__user=SUPERUSER, seed__statement_timeout_ms=1)
    env = {"DB_PORT": str(cluster.port), "DB_PASSWORD_TEST": cluster.superuser_password}
    result = _run(["--environment", "testing", "--db-config", str(tmp_path), "--players", "400", "--games", "600"],
                  env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "error: seeding was cancelled and rolled back: " in result.stderr, result.stderr
    assert f"ran longer than seed.statement_timeout_ms (1 ms, {tmp_path / 'testing.json'})" in result.stderr
    assert "hint: raise seed.statement_timeout_ms (0 = no limit) in that file" in result.stderr
    assert "Traceback" not in result.stderr

    from pytest_hokmdb.aio import run_sync

    async def players() -> int:
        conn = await asyncpg.connect(hokmdb_fresh_db.dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM players"))
        finally:
            await conn.close()

    assert run_sync(players()) == 0
