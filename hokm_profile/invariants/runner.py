"""Running one invariant: the statement around its SQL (the window of games, the sample of
offending ids), read-only, and the message that says what is wrong and where."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg

from hokm_profile.invariants.sql import (
    DEFAULT_MAX_GAMES,
    DEFAULT_SAMPLE_LIMIT,
    FIRST_GAME_SQL,
    games_cte,
    moves_of_g,
)


@dataclass(frozen=True)
class InvariantResult:
    """The outcome of one check: ``offending_ids`` is a sample, ``count`` the total."""

    ok: bool
    offending_ids: list[Any]
    count: int
    message: str


@dataclass(frozen=True)
class Invariant:
    """One invariant of hokm-domain.md and the query that finds its violations."""

    number: int
    name: str
    title: str
    description: str
    noun: str  # what the offending ids identify ("game", "player", "row")
    problem: str  # "... <problem>: <noun> ids ..." in the failure message
    sql: Callable[[bool], str]
    # The revision from which what the SQL reads exists and is filled: a database held to an
    # older one (after a rollback or a restore) is not judged by this invariant.
    since: str | None = None

    def query(self, windowed: bool) -> str:
        return self._query(windowed).replace("__MOVES_OF_G__", moves_of_g(windowed))

    def _query(self, windowed: bool) -> str:
        """The full statement: $1 is the sample limit; windowed only: $2 the window, $3 the most games."""
        return (
            f"WITH {games_cte(windowed)},\n{self.sql(windowed)}\n"
            "SELECT id, string_agg(DISTINCT reason, '; ') AS reasons, count(*) OVER () AS total\n"
            "  FROM bad GROUP BY id ORDER BY id LIMIT $1"
        )

    async def run(
        self, conn: asyncpg.Connection, *, window: timedelta | None, sample_limit: int = DEFAULT_SAMPLE_LIMIT,
        max_games: int = DEFAULT_MAX_GAMES,
    ) -> InvariantResult:
        """Check the newest ``max_games`` games created within ``window`` (``None``: all data)."""
        args: list[Any] = [sample_limit]
        if window is not None:
            args += [window, max_games]
        sql = self.query(window is not None)

        async def fetch() -> list[asyncpg.Record]:
            if "$4" in sql:
                # Known before planning, the first game id lets the planner walk the
                # (game_id, ...) indexes for "rows of the window's games and newer".
                args.append(await conn.fetchval(FIRST_GAME_SQL, window, max_games))
            return await conn.fetch(sql, *args)

        if conn.is_in_transaction():
            rows = await fetch()
        else:
            async with conn.transaction(readonly=True):
                rows = await fetch()
        return self._result(rows, window, max_games)

    def _result(self, rows: list[asyncpg.Record], window: timedelta | None, max_games: int) -> InvariantResult:
        scope = "all data" if window is None else f"the newest {max_games} games created in the last {_describe(window)}"
        if not rows:
            return InvariantResult(True, [], 0, f"invariant {self.number} ({self.name}): ok ({scope})")
        count = int(rows[0]["total"])
        ids = [r["id"] for r in rows]
        plural = self.noun if count == 1 else f"{self.noun}s"
        verb = self.problem if count == 1 else _plural_verb(self.problem)
        shown = ", ".join(str(i) for i in ids) + (f" (first {len(ids)} of {count})" if count > len(ids) else "")
        details = "; ".join(f"{self.noun} {r['id']}: {r['reasons']}" for r in rows[:3])
        message = (
            f"invariant {self.number} ({self.name}): {count} {plural} {verb}: {self.noun} ids {shown} "
            f"[{scope}] -- {details}"
        )
        return InvariantResult(False, ids, count, message)


def _plural_verb(problem: str) -> str:
    head, _, rest = problem.partition(" ")
    plural = {"has": "have", "is": "are", "breaks": "break", "does": "do", "points": "point"}.get(head, head)
    return f"{plural} {rest}".strip()


def _describe(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400} days" if seconds != 86400 else "day"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hours" if seconds != 3600 else "hour"
    return f"{seconds} seconds"
