"""Data fixtures of the Hokm history (format: ``pytest_hokmdb.migration.fixtures``).

Revisions 0005-0007 are the project's data migration, made online: ``moves.card`` ('10H',
or the suit letter alone for a trump selection) becomes ``card_suit`` + ``card_rank``.
0005 (expand) leaves the rows alone; 0006 (backfill) fills the new columns, for old rows in
batches and for new writes through its trigger; 0007 (contract) drops ``card``, and its
downgrade must rebuild the text exactly. Revision 0008 only adds an index; its fixture
proves that the rows it builds the index over are left alone.

The seeded round trip covers realistic data: a rule-abiding simulated data set at head
goes down to 0004 (before the card split) and back, must come back row for row, and
must still satisfy every invariant of hokm-domain.md.
"""

from __future__ import annotations

import asyncpg

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.migration.fixtures import RevisionData, SeededData

_PLAYERS = [
    {"id": 1, "username": "hakem", "display_name": "Hakem"},
    {"id": 2, "username": "partner", "display_name": "Partner"},
]
_GAMES = [{"id": 1, "room_code": "ROOM1", "hakem_player_id": 1}]

# (move id, move_type, card up to 0006, suit and rank from 0006 on)
_CARDS = [
    (1, "trump_selection", "S", "spades", None),
    (2, "card_play", "10H", "hearts", 10),
    (3, "card_play", "AS", "spades", 14),
    (4, "card_play", "2C", "clubs", 2),
    (5, "card_play", "QD", "diamonds", 12),
    (6, "card_play", "JH", "hearts", 11),
    (7, "card_play", "KC", "clubs", 13),
]


def _move(move_id: int, move_type: str) -> dict[str, object]:
    return {
        "id": move_id,
        "game_id": 1,
        "player_id": 1,
        "sequence_number": move_id,
        "hand_number": 1,
        "trick_number": 0 if move_type == "trump_selection" else 1,
        "move_type": move_type,
    }


_OLD_MOVES = [{**_move(i, kind), "card": card} for i, kind, card, _, _ in _CARDS]

REVISION_DATA = [
    RevisionData(  # expand: the columns arrive empty, the card is untouched
        "0005",
        before={"players": _PLAYERS, "game_sessions": _GAMES, "moves": _OLD_MOVES},
        after={"moves": [{"id": i, "card": card, "card_suit": None, "card_rank": None} for i, _, card, _, _ in _CARDS]},
    ),
    RevisionData(  # backfill: rows written at 0005 (no trigger yet) are converted in batches
        "0006",
        before={"players": _PLAYERS, "game_sessions": _GAMES, "moves": _OLD_MOVES},
        after={"moves": [{"id": i, "card": card, "card_suit": suit, "card_rank": rank} for i, _, card, suit, rank in _CARDS]},
    ),
    RevisionData(  # contract: card goes; its downgrade rebuilds it exactly
        "0007",
        before={"players": _PLAYERS, "game_sessions": _GAMES, "moves": _OLD_MOVES},
        after={
            "moves": [{"id": i, "move_type": kind, "card_suit": suit, "card_rank": rank} for i, kind, _, suit, rank in _CARDS],
        },
    ),
    RevisionData(
        "0008",
        before={
            "players": _PLAYERS,
            "game_sessions": _GAMES,
            "game_participants": [
                {"id": 1, "game_id": 1, "player_id": 1, "seat": 0, "team": 1},
                {"id": 2, "game_id": 1, "player_id": 2, "seat": 2, "team": 1},
            ],
        },
        after={
            "game_participants": [
                {"id": 1, "game_id": 1, "player_id": 1, "seat": 0, "team": 1},
                {"id": 2, "game_id": 1, "player_id": 2, "seat": 2, "team": 1},
            ],
        },
    ),
]


def seed_games(dsn: str) -> None:
    """A small rule-abiding data set: enough hands to hold every card, suit and move type."""
    from hokm_profile.seed import seed

    async def fill() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await seed(conn, players=16, games=12, random_seed=11, clear=True)
        finally:
            await conn.close()

    run_sync(fill())


def broken_invariants(dsn: str) -> list[str]:
    """hokm-domain.md's invariants over all data (no time window)."""
    from hokm_profile.invariants import run_all

    async def check() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            results = await run_all(conn, window=None)
        finally:
            await conn.close()
        return [f"invariant {inv.number} ({inv.title}): {result.message}" for inv, result in results if not result.ok]

    return run_sync(check())


SEEDED_DATA = [
    SeededData("seeded Hokm games", from_revision="0004", seed=seed_games, check=broken_invariants),
]
