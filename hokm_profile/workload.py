"""The game server's traffic, for rehearsals and the benchmark: what a deploy must not disturb.

Reads from the hot path (a game with its seats, a player's recent games, the leaderboard, a
game's moves in order) and the writes every running game makes (a rating update, a websocket
connect with its first heartbeat, and a move: the game and its seats read, its first 60
moves read, the player touched, one of those moves updated, a latency metric written),
against ids of rows that exist.

The move is written by the game server release that is live: the old one writes ``card``,
the new one ``card_suit``/``card_rank``. As a real rollout goes, the old release plays until
the expand phase is complete (0006's trigger keeps both forms right; or ``card`` is gone), then
the new release takes over and never goes back: a deploy that undoes the expand after that
breaks the new release's writes, as it would break the game. The update keeps every value
(data stays valid for the gate); ``MOVE_WRITING_WORKLOAD`` also inserts new moves, at
sequence numbers no real game reaches, for the benchmark and the tests (its rows are not
valid games: not for a rehearsal, whose gate checks the game's rules).
"""

from __future__ import annotations

import random
import time
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


# The new release can play once the expand phase is complete: moves.card is gone, or 0006's
# trigger derives whichever form a write leaves out.
NEW_RELEASE_POSSIBLE = """
SELECT NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'moves'::regclass AND attname = 'card'
                   AND NOT attisdropped)
       OR EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'moves'::regclass AND tgname = 'moves_sync_card_insert')
"""
RELEASE_CHECK_S = 0.5


async def prepare(conn: asyncpg.Connection) -> dict[str, Any]:
    """Up to 2000 random games and players the transactions pick from, and the live release."""
    games = [r[0] for r in await conn.fetch("SELECT id FROM game_sessions ORDER BY random() LIMIT 2000")]
    players = [r[0] for r in await conn.fetch("SELECT id FROM players ORDER BY random() LIMIT 2000")]
    if not games or not players:
        raise ValueError("the database has no games or no players to play with")
    card = await conn.fetchval("SELECT count(*) FROM pg_attribute WHERE attrelid = 'moves'::regclass "
                               "AND attname = 'card' AND NOT attisdropped")
    release = {"form": "old" if card else "new", "checked": time.monotonic(), "switched_at": None}
    return {"game": games, "player": players, "release": release}


# The old release can play again once the contract is undone: moves.card is back, with the
# trigger that derives it from suit and rank.
OLD_RELEASE_POSSIBLE = """
SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'moves'::regclass AND attname = 'card' AND NOT attisdropped)
       AND (EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'moves'::regclass AND tgname = 'moves_sync_card_insert')
            OR NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'moves'::regclass AND attname = 'card_suit'
                           AND NOT attisdropped))
"""


async def live_release(conn: asyncpg.Connection, ids: dict[str, Any]) -> str:
    """``old`` or ``new``: the rollout (see the module's docstring), looked at twice a second.
    With ``ids["release"]["direction"] = "back"`` (a release rolled back before its schema),
    the new release plays until the old one can again. With ``ids["release"]["manual"]`` set,
    the release is whatever ``ids["release"]["form"]`` says: rolled out by whoever runs the
    load, between the expand and the contract deploy, as an operator does it."""
    release = ids["release"]
    if release.get("manual"):
        return str(release["form"])  # the operator rolls the release out (and back) between deploys
    back = release.get("direction") == "back"
    waiting_for = "old" if back else "new"
    if release["form"] != waiting_for and time.monotonic() - release["checked"] > RELEASE_CHECK_S:
        release["checked"] = time.monotonic()
        if await conn.fetchval(OLD_RELEASE_POSSIBLE if back else NEW_RELEASE_POSSIBLE):
            release["form"], release["switched_at"] = waiting_for, time.time()
    return str(release["form"])


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


async def play_move(conn: asyncpg.Connection, rng: random.Random, ids: dict[str, Any]) -> None:
    """A turn: the game and its seats, its first 60 moves, the player touched, one of those
    moves updated (every value kept, in the live release's form), a latency metric."""
    game = rng.choice(ids["game"])
    seats = await conn.fetch("SELECT g.status, p.seat, p.player_id FROM game_sessions g JOIN game_participants p "
                             "ON p.game_id = g.id WHERE g.id = $1", game)
    moves = await conn.fetch("SELECT id, sequence_number FROM moves WHERE game_id = $1 ORDER BY sequence_number LIMIT 60",
                             game)
    if seats:
        await conn.execute("UPDATE players SET last_seen_at = now() WHERE id = $1", rng.choice(seats)["player_id"])
    if moves:
        form = await live_release(conn, ids)
        column = "card" if form == "old" else "card_rank"
        await conn.execute(f"UPDATE moves SET {column} = {column} WHERE id = $1", rng.choice(moves)["id"])
    await conn.execute("INSERT INTO performance_metrics (metric_name, value, unit) VALUES ('move_latency_ms', $1, 'ms')",
                       rng.uniform(1, 50))


async def insert_move(conn: asyncpg.Connection, rng: random.Random, ids: dict[str, Any]) -> None:
    """A new card play in the live release's form, at a sequence number no real game reaches."""
    game = rng.choice(ids["game"])
    player = await conn.fetchval("SELECT player_id FROM game_participants WHERE game_id = $1 LIMIT 1", game)
    if player is None:
        return
    values = (game, player, rng.randrange(1_000_000, 2_000_000_000))
    if await live_release(conn, ids) == "old":
        await conn.execute("INSERT INTO moves (game_id, player_id, sequence_number, hand_number, trick_number, move_type, "
                           "card) VALUES ($1, $2, $3, 1, 1, 'card_play', '10H') ON CONFLICT DO NOTHING", *values)
    else:
        await conn.execute("INSERT INTO moves (game_id, player_id, sequence_number, hand_number, trick_number, move_type, "
                           "card_suit, card_rank) VALUES ($1, $2, $3, 1, 1, 'card_play', 'hearts', 10) "
                           "ON CONFLICT DO NOTHING", *values)


WORKLOAD = Workload(
    prepare=prepare,
    transactions={
        **{name: _read(sql, param) for name, (sql, param) in READS.items()},
        "rating_update": rating_update,
        "websocket_connect": websocket_connect,
        "play_move": play_move,
    },
)

MOVE_WRITING_WORKLOAD = Workload(prepare=prepare, transactions={**WORKLOAD.transactions, "insert_move": insert_move})
