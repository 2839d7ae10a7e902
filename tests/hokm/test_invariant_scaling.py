"""The windowed integrity checks read a bounded amount of data, whatever the history's size.

Why: the smoke suite runs these checks on production databases of 10^8 moves, under a 5 s
statement timeout. Their docstrings claim a smoke run examines only the newest
``integrity_max_games`` games of the window, through indexes. Timings cannot prove that on
a test-sized database; the pages a query touches can. Each check runs under
``EXPLAIN (ANALYZE, BUFFERS)`` on two databases with the same games per player, one four
times the other: a windowed check must touch about as many pages on both, while the full
scan (``window=None``) grows with the history, which shows the measure can see growth.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from hokm_profile.invariants import INVARIANTS, Invariant
from hokm_profile.invariants.sql import FIRST_GAME_SQL
from hokm_profile.seed import seed
from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase

WINDOW = timedelta(days=365)  # every seeded game is in it: the bound must come from max_games
MAX_GAMES = 40
SMALL, LARGE = (300, 150), (1200, 600)  # (games, players): four times the history, same games per player


async def _pages(conn: asyncpg.Connection, invariant: Invariant, window: timedelta | None) -> int:
    """Shared buffers (hit + read) the check's statement touches, as the runner runs it."""
    sql = invariant.query(window is not None)
    args: list[Any] = [10]
    if window is not None:
        args += [window, MAX_GAMES]
        if "$4" in sql:
            args.append(await conn.fetchval(FIRST_GAME_SQL, window, MAX_GAMES))
    async with conn.transaction():
        # Tables of a few hundred rows are cheapest read whole, and the planner rightly does
        # so here; at production sizes it probes indexes. Counting pages needs that plan.
        for plan_type in ("seqscan", "hashjoin", "mergejoin"):
            await conn.execute(f"SET LOCAL enable_{plan_type} = off")
        plan = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args))[0]
    root = plan["Plan"]
    # Planning reads catalog pages too; only the execution's are about the data.
    return int(root["Shared Hit Blocks"]) + int(root["Shared Read Blocks"])


async def _measure(db: ThrowawayDatabase, games: int, players: int) -> dict[int, tuple[int, int]]:
    """Per invariant: (windowed pages, full-scan pages) on a database seeded to this size."""
    conn = await asyncpg.connect(db.dsn)
    try:
        await seed(conn, players=players, games=games, random_seed=5, clear=True)
        await conn.execute("VACUUM ANALYZE")
        return {inv.number: (await _pages(conn, inv, WINDOW), await _pages(conn, inv, None)) for inv in INVARIANTS}
    finally:
        await conn.close()


@pytest.fixture
async def pages(hokmdb_fresh_db: ThrowawayDatabase) -> AsyncIterator[tuple[dict[int, tuple[int, int]], ...]]:
    yield (await _measure(hokmdb_fresh_db, *SMALL), await _measure(hokmdb_fresh_db, *LARGE))


async def test_windowed_checks_touch_as_many_pages_at_four_times_the_history(
    pages: tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]],
) -> None:
    small, large = pages
    table = "\n".join(f"  invariant {n:2d}: windowed {small[n][0]:6d} -> {large[n][0]:6d} pages,"
                      f" full scan {small[n][1]:6d} -> {large[n][1]:6d}" for n in sorted(small))
    # Four times the history: what grows with it reads about four times the pages, what is
    # bounded about as many (index depth may add a level). Twice is the line between the two.
    # The measure sees growth: every full scan touches at least twice the pages.
    grown = [n for n in small if large[n][1] < 2 * small[n][1]]
    assert not grown, f"full scans of invariants {grown} did not grow with the history; the measure is blind:\n{table}"
    # The claim: a windowed check is bounded by max_games, not by the history.
    unbounded = [n for n in small if large[n][0] > 2 * small[n][0]]
    assert not unbounded, (f"windowed checks of invariants {unbounded} read more as the history grows four times"
                           f" (newest {MAX_GAMES} games of the window in both):\n{table}")
