"""One SQL check per data invariant of hokm-domain.md (numbers 1..11): the list, and the
smoke suite's view of it (one registered check per invariant, the ``integrity`` group).

``sql`` holds the statements, ``runner`` runs one and words its result.

Why SQL and not Python: the checks run against databases with 10^8 moves, so the
database does the work and only a handful of offending ids come back. Every check
takes a ``window``: only games created within it are examined (an index range on
``game_sessions (status, created_at)``, then the per-game indexes of the child tables),
so a smoke run stays cheap; ``window=None`` scans everything. Queries are read-only and
run in a READ ONLY transaction when the caller has none open.

Each check selects ``bad(id, reason)`` rows; the runner aggregates them per id, keeps
``sample_limit`` ids (smallest first) and the total, and writes a message that says what
is wrong and where.

Rule values (seats and teams, trick and point targets, kot scoring, rating bounds) come
from ``hokm_profile.rules`` so that a variant changes in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import asyncpg

from hokm_profile import rules
from hokm_profile.invariants.runner import Invariant, InvariantResult
from hokm_profile.invariants.sql import (
    DEFAULT_MAX_GAMES,
    DEFAULT_SAMPLE_LIMIT,
    SEVEN,
    SQL_1,
    SQL_2,
    SQL_3,
    SQL_4,
    SQL_5,
    SQL_6,
    SQL_7,
    SQL_8,
    SQL_9,
    TARGET,
    sql_10,
    sql_11,
)
from pytest_hokmdb.checks.base import CheckContext, CheckFunction, CheckResult, check
from pytest_hokmdb.checks.performance import revision_includes

__all__ = ["CHECKS", "INVARIANTS", "INVARIANTS_BY_NUMBER", "Invariant", "InvariantResult", "run_all"]


def _static(sql: str) -> Callable[[bool], str]:
    return lambda _windowed: sql


# Invariants 5-7 read moves.card_suit/card_rank: added by 0005, filled for every row by 0006.
CARDS_SINCE = "0006"

INVARIANTS: list[Invariant] = [
    Invariant(
        1, "participants", "Participants, seats and teams",
        f"A game has at most {rules.PLAYERS_PER_GAME} participants; seats are {min(rules.SEATS)}.."
        f"{max(rules.SEATS)} and unique per game; a player sits at most once per game; team is "
        "1 for seats 0 and 2, 2 for seats 1 and 3.",
        "game", "has invalid participants", _static(SQL_1),
    ),
    Invariant(
        2, "full-table", "Running and finished games have four players",
        f"A game whose status is active or completed has exactly {rules.PLAYERS_PER_GAME} participants.",
        "game", "has the wrong number of participants", _static(SQL_2),
    ),
    Invariant(
        3, "status-lifecycle", "Status and time-stamps agree",
        "Status moves waiting -> active -> completed, or to abandoned from waiting or active: a waiting game "
        "has not started, only a completed game has a winner; created_at <= started_at <= completed_at where "
        f"set; a completed game has completed_at and a winning team with at least {TARGET} points "
        "(and the other team fewer).",
        "game", "has a status inconsistent with its time-stamps or result", _static(SQL_3),
    ),
    Invariant(
        4, "move-sequence", "Move sequence numbers",
        "The moves of a game are numbered 1..n by sequence_number with no gap or duplicate.",
        "game", "has gaps or duplicates in sequence_number", _static(SQL_4),
    ),
    Invariant(
        5, "cards-and-tricks", "Cards and tricks",
        f"In one hand each of the {rules.DECK_SIZE} cards is played at most once; each trick has exactly "
        f"{rules.PLAYERS_PER_GAME} cards from {rules.PLAYERS_PER_GAME} different players and tricks are "
        "numbered 1..n; only the last trick of an active or abandoned game may be unfinished.",
        "game", "has an invalid hand", _static(SQL_5), since=CARDS_SINCE,
    ),
    Invariant(
        6, "trump-choice", "One trump choice per hand, by its hakem",
        "Exactly one trump_selection (trick 0) per hand, before the hand's first card, made by the hand's "
        "hakem: the game's hakem in hand 1, then the same hakem if his team won the previous hand, else the "
        "next seat; the hakem leads trick 1. Hands are numbered 1..n.",
        "game", "has a wrong trump choice", _static(SQL_6), since=CARDS_SINCE,
    ),
    Invariant(
        7, "hand-result", "Hands end at seven tricks",
        f"No team takes more than {SEVEN} tricks in a hand and play stops when a team reaches {SEVEN}; every "
        f"hand but the current one of an active or abandoned game ends with a team at {SEVEN}; the game's "
        f"scores are the points of those hands ({rules.POINTS_HAND_WIN}, kot {rules.POINTS_KOT}, kot against "
        f"the hakem's team {rules.POINTS_KOT_AGAINST_HAKEM}), each credited to the team that reached {SEVEN}.",
        "game", "has a wrong hand result", _static(SQL_7), since=CARDS_SINCE,
    ),
    Invariant(
        8, "hakem-participant", "The hakem sits in the game",
        "The hakem of a game (game_sessions.hakem_player_id) is one of its participants.",
        "game", "has a hakem who is not a participant", _static(SQL_8),
    ),
    Invariant(
        9, "game-statistics", "Statistics of completed games",
        "A completed game has one player_game_stats row per participant, with the participant's team and "
        "is_winner true exactly for the winning team.",
        "game", "has wrong player statistics", _static(SQL_9),
    ),
    Invariant(
        10, "player-counters", "Player counters agree with history",
        "total_games equals the completed games the player sat in, wins the ones his team won, "
        f"wins + losses = total_games, and the rating lies within {rules.RATING_MIN}..{rules.RATING_MAX}. "
        "Windowed: the players of the window's games, against their whole history.",
        "player", "has counters that disagree with the games played", sql_10,
    ),
    Invariant(
        11, "no-orphans", "No orphans",
        "Every reference is honoured: moves, participants, statistics, connections, preferences and hakems "
        "point at existing games and players (checked even where a foreign key was dropped).",
        "row", "points at a missing game or player", sql_11,
    ),
]

INVARIANTS_BY_NUMBER: dict[int, Invariant] = {inv.number: inv for inv in INVARIANTS}


async def run_all(
    conn: asyncpg.Connection, *, window: timedelta | None, sample_limit: int = DEFAULT_SAMPLE_LIMIT,
    max_games: int = DEFAULT_MAX_GAMES,
) -> list[tuple[Invariant, InvariantResult]]:
    """Run every check in order (one connection, one query each)."""
    return [(inv, await inv.run(conn, window=window, sample_limit=sample_limit, max_games=max_games)) for inv in INVARIANTS]


# --- the smoke suite's view: one registered check per invariant ---------------------------


def _as_check(invariant: Invariant) -> CheckFunction:
    """Wrap an invariant as a smoke check reading its window and sample size from the context."""

    async def run_invariant(ctx: CheckContext) -> CheckResult:
        if invariant.since is not None:
            held = ctx.target_revision
            included = revision_includes(ctx.project_root, held, invariant.since)
            if included is None:
                return CheckResult.failed(f"invariant {invariant.number} ({invariant.name}): since {invariant.since!r} is "
                                          "not a revision of this code's migration history")
            if not included:
                return CheckResult.passed(
                    f"invariant {invariant.number} ({invariant.name}) does not apply: the database is held to {held}, "
                    f"before revision {invariant.since} fills what it reads")
        result = await invariant.run(
            ctx.conn, window=ctx.window, sample_limit=ctx.settings.integrity_sample, max_games=ctx.settings.integrity_max_games
        )
        evidence = {"query": invariant.query(ctx.window is not None)}
        if result.ok:
            return CheckResult.passed(result.message, measured=0, threshold=0, evidence=evidence)
        evidence["offending ids"] = ", ".join(str(i) for i in result.offending_ids)
        return CheckResult.failed(result.message, measured=result.count, threshold=0, evidence=evidence)

    run_invariant.__name__ = f"invariant_{invariant.number}_{invariant.name.replace('-', '_')}"
    run_invariant.__doc__ = invariant.description
    return check(
        f"integrity.{invariant.number:02d}_{invariant.name}",
        title=f"Invariant {invariant.number}: {invariant.title}",
        feature="Data integrity",
        category="data integrity",
        severity="critical",
    )(run_invariant)


#: The checks ``pytest_hokmdb.checks.catalog`` lists under "integrity", in invariant order.
CHECKS: list[CheckFunction] = [_as_check(inv) for inv in INVARIANTS]
