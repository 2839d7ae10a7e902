"""The game server's traffic, for rehearsals and the benchmark: what a deploy must not disturb.

Reads from the hot path (a game with its seats, a player's recent games, the leaderboard, a
game's moves in order) and the two writes every running game makes (a rating update, a
websocket connect with its first heartbeat), against ids of rows that exist.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import asyncpg

from pytest_hokmdb.deploy.load import Workload

READS: dict[str, tuple[str, str | None]] = {
    "game_with_participants": (
        "SELECT g.id, g.status, p.seat, p.player_id FROM game_sessions g JOIN game_participants p ON p.game_id = g.id "
        "WHERE g.id = $1", "game"),
    "player_recent_games": (
        "SELECT g.id, g.created_at FROM game_participants p JOIN game_sessions g ON g.id = p.game_id "
        "WHERE p.player_id = $1 ORDER BY g.created_at DESC LIMIT 20", "player"),
    "leaderboard": ("SELECT id, username, rating FROM players WHERE is_active ORDER BY rating DESC LIMIT 100", None),
    "game_moves_in_order": (
        "SELECT id, sequence_number, player_id, move_type FROM moves WHERE game_id = $1 ORDER BY sequence_number", "game"),
}


async def prepare(conn: asyncpg.Connection) -> dict[str, list[int]]:
    """Up to 2000 random games and players the transactions pick from."""
    games = [r[0] for r in await conn.fetch("SELECT id FROM game_sessions ORDER BY random() LIMIT 2000")]
    players = [r[0] for r in await conn.fetch("SELECT id FROM players ORDER BY random() LIMIT 2000")]
    if not games or not players:
        raise ValueError("the database has no games or no players to play with")
    return {"game": games, "player": players}


def _read(sql: str, param: str | None) -> Any:
    async def run(conn: asyncpg.Connection, rng: random.Random, ids: dict[str, list[int]]) -> None:
        await conn.fetch(sql, *([rng.choice(ids[param])] if param else []))

    return run


async def rating_update(conn: asyncpg.Connection, rng: random.Random, ids: dict[str, list[int]]) -> None:
    await conn.execute("UPDATE players SET rating = least(rating + 1, 3000), last_seen_at = now() WHERE id = $1",
                       rng.choice(ids["player"]))


async def websocket_connect(conn: asyncpg.Connection, rng: random.Random, ids: dict[str, list[int]]) -> None:
    row = await conn.fetchval(
        "INSERT INTO websocket_connections (connection_id, player_id) VALUES ($1, $2) RETURNING id",
        uuid.uuid4(), rng.choice(ids["player"]))
    await conn.execute("UPDATE websocket_connections SET last_heartbeat_at = now() WHERE id = $1", row)


WORKLOAD = Workload(
    prepare=prepare,
    transactions={
        **{name: _read(sql, param) for name, (sql, param) in READS.items()},
        "rating_update": rating_update,
        "websocket_connect": websocket_connect,
    },
)
