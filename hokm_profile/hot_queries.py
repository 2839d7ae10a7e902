"""Hokm's hot path: the queries a game server runs on every move or page, with the indexes
they must use, and how the smoke suite picks realistic parameters for them."""

from __future__ import annotations

import asyncpg

from pytest_hokmdb.config.model import HotQuery
from pytest_hokmdb.config.profile import Samples

GAME_PLACEHOLDER = "$sample_game_id"
PLAYER_PLACEHOLDER = "$sample_player_id"
PLACEHOLDERS = (GAME_PLACEHOLDER, PLAYER_PLACEHOLDER)

# How many of the newest games to look at for one that has a participant (waiting games may have none).
SAMPLE_GAMES = 50
SAMPLE_TIMEOUT_MS = 2_000

HOT_QUERIES: tuple[HotQuery, ...] = (
    HotQuery(
        name="game_with_participants",
        sql=(
            "SELECT g.id, g.status, g.trump_suit, g.team1_score, g.team2_score, p.seat, p.team, p.player_id "
            "FROM game_sessions g JOIN game_participants p ON p.game_id = g.id WHERE g.id = $1"
        ),
        params=["$sample_game_id"],
        max_ms=50,
        # Both unique indexes lead with game_id; the planner may rightly pick either.
        expected_index=["uq_game_participants_game_id_seat", "uq_game_participants_game_id_player_id"],
        since="0002",
    ),
    HotQuery(
        name="player_recent_games",
        sql=(
            "SELECT g.id, g.status, g.created_at FROM game_participants p JOIN game_sessions g ON g.id = p.game_id "
            "WHERE p.player_id = $1 ORDER BY g.created_at DESC LIMIT 20"
        ),
        params=["$sample_player_id"],
        max_ms=50,
        expected_index="ix_game_participants_player_id",
        index_since="0008",
        since="0002",
    ),
    HotQuery(
        name="leaderboard_top_n",
        sql="SELECT id, username, rating FROM players WHERE is_active ORDER BY rating DESC LIMIT 100",
        max_ms=50,
        expected_index="ix_players_rating_desc",
    ),
    HotQuery(
        name="game_moves_in_order",
        sql=(
            "SELECT sequence_number, player_id, move_type, card_suit, card_rank FROM moves "
            "WHERE game_id = $1 ORDER BY sequence_number"
        ),
        params=["$sample_game_id"],
        max_ms=50,
        expected_index="uq_moves_game_id_sequence_number",
        since="0005",  # card_suit and card_rank
    ),
)


async def pick_samples(conn: asyncpg.Connection) -> Samples | None:
    """The newest game that has a participant, and its first participant (by seat).

    Bounded: walks at most the newest ``SAMPLE_GAMES`` games by primary key, each probed
    through the (game_id, ...) index of game_participants; ``None`` when there are no games.
    Falls back to the newest game and newest player when none of those games has players.
    """
    async with conn.transaction(readonly=True):
        await conn.execute(f"SET LOCAL statement_timeout = {SAMPLE_TIMEOUT_MS}")
        newest = await conn.fetchval("SELECT id FROM game_sessions ORDER BY id DESC LIMIT 1")
        if newest is None:
            return None
        row = await conn.fetchrow(
            f"""
            SELECT g.id AS game_id, p.player_id
            FROM (SELECT id FROM game_sessions ORDER BY id DESC LIMIT {SAMPLE_GAMES}) g
            CROSS JOIN LATERAL (
                SELECT player_id FROM game_participants WHERE game_id = g.id ORDER BY seat LIMIT 1
            ) p
            ORDER BY g.id DESC
            LIMIT 1
            """
        )
        if row is not None:
            return samples(int(row["game_id"]), int(row["player_id"]), "newest game with participants, first seat")
        player = await conn.fetchval("SELECT id FROM players ORDER BY id DESC LIMIT 1")
        return samples(
            int(newest),
            int(player) if player is not None else None,
            f"newest game (none of the newest {SAMPLE_GAMES} has participants) and newest player",
        )


def samples(game_id: int | None, player_id: int | None, source: str) -> Samples:
    return Samples({GAME_PLACEHOLDER: game_id, PLAYER_PLACEHOLDER: player_id}, source)
