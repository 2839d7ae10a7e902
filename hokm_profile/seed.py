"""Bulk-load a deterministic, rule-abiding data set for development and testing.

Why COPY and one transaction: a seed of 10^5..10^6 moves must load in seconds, and a
failed or interrupted seed must leave the previous data untouched. Rows come from the
simulator (``hokm_profile.simulator``) so the data satisfies every invariant the
smoke suite checks.

The seed set is recognisable (usernames ``seed_``, room codes ``seed-``, metrics tagged
``{"source": "seed"}``) and is replaced on every run, so running the same command twice
leaves the same data. Time-stamps are computed back from an anchor, by default the start
of the current UTC day, so that they are recent for "last N days" checks yet identical
for two runs on the same day.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from hokm_profile import rules
from hokm_profile.simulator import (
    GAME_COLUMNS,
    MOVE_COLUMNS,
    PARTICIPANT_COLUMNS,
    STATS_COLUMNS,
    SimulatedGame,
    generate_games,
)

#: ``progress(phase, done, total)``: called after each loaded batch.
ProgressCallback = Callable[[str, int, int], None]

USERNAME_PREFIX = "seed_"
ROOM_CODE_PREFIX = "seed-"
METRIC_TAG = {"source": "seed"}
#: Games simulated and copied per round trip: big enough for COPY to pay off, small
#: enough to keep memory flat (a game is ~400 move rows).
GAME_BATCH = 500
#: Every table of the game, in an order that TRUNCATE ... CASCADE accepts in one statement.
GAME_TABLES: tuple[str, ...] = (
    "moves", "player_game_stats", "game_participants", "websocket_connections",
    "game_sessions", "user_preferences", "performance_metrics", "players",
)
#: Tables in the order the seed fills them (and reports them).
LOAD_ORDER: tuple[str, ...] = (
    "players", "user_preferences", "game_sessions", "game_participants", "moves", "player_game_stats",
    "websocket_connections", "performance_metrics",
)
PLAYER_COLUMNS: tuple[str, ...] = (
    "id", "username", "email", "display_name", "rating", "total_games", "wins", "losses",
    "is_active", "created_at", "last_seen_at",
)
PREFERENCE_COLUMNS: tuple[str, ...] = ("player_id", "language", "sound_enabled", "card_style", "settings", "updated_at")
CONNECTION_COLUMNS: tuple[str, ...] = (
    "connection_id", "player_id", "game_id", "client_ip", "connected_at", "last_heartbeat_at", "disconnected_at",
)
METRIC_COLUMNS: tuple[str, ...] = ("metric_name", "value", "unit", "tags", "recorded_at")
#: Rating change per completed game (a flat step: the seed needs plausible, bounded values).
RATING_STEP = 16

_FIRST_NAMES = ("Ali", "Sara", "Reza", "Maryam", "Omid", "Neda", "Kian", "Leila", "Dara", "Shirin", "Arash", "Yasmin")
_LANGUAGES = ("en", "fa", "de", "fr", "tr")
_CARD_STYLES = ("classic", "persian", "minimal", "large-print")
_METRICS = (("ws_latency_ms", "ms", 40.0), ("db_query_ms", "ms", 3.0), ("active_games", None, 120.0),
            ("moves_per_second", "1/s", 900.0))


@dataclass
class SeedReport:
    """What a seed run did: rows per table, time, throughput."""

    rows: dict[str, int]
    seconds: float
    reused_seed_players: int = 0
    cleared: bool = False
    anchor: datetime | None = None
    generation_seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def rows_per_second(self) -> float:
        return self.total_rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def moves_per_second(self) -> float:
        return self.rows.get("moves", 0) / self.seconds if self.seconds > 0 else 0.0

    def headline(self) -> str:
        """The one figure that says how much game was generated (the demo's seed line)."""
        return f"{self.rows.get('moves', 0)} moves"

    def summary_lines(self) -> list[str]:
        lines = [f"{table:<22} {count:>10,}" for table, count in self.rows.items()]
        lines.append(f"{'total':<22} {self.total_rows:>10,}")
        lines.append(
            f"{self.seconds:.2f}s: {self.rows_per_second:,.0f} rows/s, {self.moves_per_second:,.0f} moves/s"
            f" (generation {self.generation_seconds:.2f}s)"
        )
        return lines


def default_anchor(now: datetime | None = None) -> datetime:
    """The start of the current UTC day: recent, and the same for every run that day."""
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def _reserve_ids(conn: asyncpg.Connection, table: str, count: int) -> list[int]:
    """Take ``count`` ids from ``table``'s identity sequence (ascending)."""
    if count == 0:
        return []
    rows = await conn.fetch(
        f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) AS id FROM generate_series(1, $1)", count
    )
    return sorted(r["id"] for r in rows)


def _username(index: int) -> str:
    return f"{USERNAME_PREFIX}{index:06d}"


async def _only_seed_data(conn: asyncpg.Connection) -> bool:
    """True when every player, game and metric belongs to the seed set (the usual
    development database), so emptying the tables removes exactly the seed set."""
    foreign = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM players WHERE username NOT LIKE $1)
               OR EXISTS (SELECT 1 FROM game_sessions WHERE room_code NOT LIKE $2)
               OR EXISTS (SELECT 1 FROM performance_metrics WHERE NOT tags @> $3::jsonb)""",
        USERNAME_PREFIX.replace("_", r"\_") + "%", ROOM_CODE_PREFIX + "%", json.dumps(METRIC_TAG),
    )
    return not foreign


async def _remove_previous_seed(conn: asyncpg.Connection, players: int) -> dict[str, int]:
    """Remove the previous seed set, except the player rows that will be reused.

    When the database holds nothing but the seed set, the tables are emptied with
    TRUNCATE (identities keep counting). Otherwise the seed rows are deleted and seed
    players are kept and rewritten rather than deleted: ``moves.player_id`` has no index,
    so deleting a player makes PostgreSQL scan ``moves`` once per player (minutes for a
    few thousand players). Their games go (moves, participants and stats cascade), as do
    their preferences, connections and the seed metrics. Returns the kept
    ``username -> id`` map; seed players beyond the requested count are deleted.
    """
    if await _only_seed_data(conn):
        await conn.execute(f"TRUNCATE {', '.join(GAME_TABLES)}")
        return {}
    existing = {r["username"]: r["id"] for r in await conn.fetch(
        "SELECT id, username FROM players WHERE username LIKE $1", USERNAME_PREFIX.replace("_", r"\_") + "%"
    )}
    ids = list(existing.values())
    await conn.execute(
        """DELETE FROM game_sessions
           WHERE room_code LIKE $1
              OR hakem_player_id = ANY($2::bigint[])
              OR id IN (SELECT game_id FROM game_participants WHERE player_id = ANY($2::bigint[]))""",
        ROOM_CODE_PREFIX + "%", ids,
    )
    await conn.execute("DELETE FROM performance_metrics WHERE tags @> $1::jsonb", json.dumps(METRIC_TAG))
    await conn.execute("DELETE FROM websocket_connections WHERE player_id = ANY($1::bigint[])", ids)
    await conn.execute("DELETE FROM user_preferences WHERE player_id = ANY($1::bigint[])", ids)
    wanted = {_username(i) for i in range(players)}
    surplus = [pid for name, pid in existing.items() if name not in wanted]
    if surplus:
        await conn.execute("DELETE FROM players WHERE id = ANY($1::bigint[])", surplus)
    return {name: pid for name, pid in existing.items() if name in wanted}


async def _player_ids(conn: asyncpg.Connection, players: int, kept: dict[str, int]) -> list[int]:
    """Ids in player-index order: a kept seed player keeps his id, the others get new ones."""
    fresh = iter(await _reserve_ids(conn, "players", sum(1 for i in range(players) if _username(i) not in kept)))
    return [kept[_username(i)] if _username(i) in kept else next(fresh) for i in range(players)]


async def _upsert_players(conn: asyncpg.Connection, records: list[tuple[Any, ...]], rows: dict[str, int]) -> None:
    """COPY into a scratch table, then one INSERT ... ON CONFLICT rewrites kept players
    and adds new ones (COPY itself cannot update)."""
    await conn.execute("DROP TABLE IF EXISTS pg_temp.hokmdb_seed_players")
    await conn.execute(
        "CREATE TEMP TABLE hokmdb_seed_players AS SELECT " + ", ".join(PLAYER_COLUMNS) + " FROM players WITH NO DATA"
    )
    await conn.copy_records_to_table("hokmdb_seed_players", records=records, columns=list(PLAYER_COLUMNS))
    columns = ", ".join(PLAYER_COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in PLAYER_COLUMNS if c != "id")
    await conn.execute(
        f"INSERT INTO players ({columns}) SELECT {columns} FROM hokmdb_seed_players "
        f"ON CONFLICT (id) DO UPDATE SET {updates}"
    )
    await conn.execute("DROP TABLE hokmdb_seed_players")
    rows["players"] = rows.get("players", 0) + len(records)


def _player_rows(rng: random.Random, ids: Sequence[int], ratings: dict[int, int],
                 anchor: datetime) -> list[tuple[Any, ...]]:
    """Players with zero counters and their starting rating; counters follow the games."""
    rows = []
    joined_before = anchor - timedelta(days=31)
    for i, pid in enumerate(ids):
        name = f"{rng.choice(_FIRST_NAMES)} {i}"
        created = joined_before - timedelta(seconds=round(rng.uniform(0, 60 * 86400), 3))
        rows.append((pid, _username(i), f"{_username(i)}@example.test", name,
                     ratings[pid], 0, 0, 0, rng.random() > 0.03, created, None))
    return rows


def _preference_rows(rng: random.Random, players: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    rows = []
    for p in players:
        settings = {"animations": rng.random() > 0.2, "auto_play_last_card": rng.random() > 0.5}
        rows.append((p[0], rng.choice(_LANGUAGES), rng.random() > 0.25, rng.choice(_CARD_STYLES),
                     json.dumps(settings, sort_keys=True), p[9] + timedelta(hours=1)))
    return rows


@dataclass
class _Counters:
    """Per-player history accumulated while games stream past."""

    base_rating: dict[int, int]
    total: dict[int, int] = field(default_factory=dict)
    wins: dict[int, int] = field(default_factory=dict)
    rating: dict[int, int] = field(default_factory=dict)
    last_seen: dict[int, datetime] = field(default_factory=dict)

    def add(self, game: SimulatedGame) -> None:
        for _game_id, pid, _seat, team, joined in game.participants:
            seen = game.completed_at or (game.moves[-1][8] if game.moves else joined)
            previous = self.last_seen.get(pid)
            if previous is None or seen > previous:
                self.last_seen[pid] = seen
            if game.status != "completed":
                continue
            won = team == game.winning_team
            self.total[pid] = self.total.get(pid, 0) + 1
            self.wins[pid] = self.wins.get(pid, 0) + int(won)
            rating = self.rating.get(pid, self.base_rating[pid])
            self.rating[pid] = rules.clamp_rating(rating + (RATING_STEP if won else -RATING_STEP))

    def rows(self) -> list[tuple[Any, ...]]:
        rows = []
        for pid in sorted(self.last_seen):
            total, wins = self.total.get(pid, 0), self.wins.get(pid, 0)
            rows.append((pid, self.rating.get(pid, self.base_rating[pid]), total, wins, total - wins,
                         self.last_seen[pid]))
        return rows


async def _apply_counters(conn: asyncpg.Connection, counters: _Counters) -> None:
    """Set the counters of the players who played, in one set-based UPDATE."""
    rows = counters.rows()
    if not rows:
        return
    await conn.execute(
        """UPDATE players p SET rating = c.rating, total_games = c.total_games, wins = c.wins,
                  losses = c.losses, last_seen_at = c.last_seen_at
           FROM unnest($1::bigint[], $2::int[], $3::int[], $4::int[], $5::int[], $6::timestamptz[])
                AS c(id, rating, total_games, wins, losses, last_seen_at)
           WHERE p.id = c.id""",
        *(list(column) for column in zip(*rows)),
    )


def _connection_rows(rng: random.Random, games: list[SimulatedGame], player_ids: Sequence[int],
                     anchor: datetime) -> list[tuple[Any, ...]]:
    """Open connections for players in running games, plus a few closed ones from the past."""
    rows = []
    for game in games:
        for _g, pid, _seat, _team, joined in game.participants:
            rows.append((uuid.UUID(int=rng.getrandbits(128), version=4), pid, game.id,
                         f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                         joined, anchor - timedelta(seconds=rng.randrange(5, 60)), None))
    for pid in rng.sample(list(player_ids), min(len(player_ids), max(4, len(player_ids) // 20))):
        connected = anchor - timedelta(seconds=round(rng.uniform(3600, 20 * 86400), 3))
        rows.append((uuid.UUID(int=rng.getrandbits(128), version=4), pid, None,
                     f"192.168.{rng.randrange(256)}.{rng.randrange(1, 255)}", connected,
                     connected + timedelta(minutes=20), connected + timedelta(minutes=21)))
    return rows


def _metric_rows(rng: random.Random, anchor: datetime) -> list[tuple[Any, ...]]:
    rows = []
    for name, unit, typical in _METRICS:
        for hour in range(24):
            tags = {**METRIC_TAG, "host": f"game-{hour % 3 + 1}"}
            rows.append((name, round(typical * rng.uniform(0.5, 1.5), 3), unit, json.dumps(tags, sort_keys=True),
                         anchor - timedelta(hours=hour + 1)))
    return rows


def _take(stream: Iterator[SimulatedGame], count: int) -> list[SimulatedGame]:
    """The next ``count`` games of the stream (fewer at its end)."""
    return list(itertools.islice(stream, count))


class _Timer:
    """Adds up the time spent in the functions it runs (generation time for the report)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def measure(self, fn: Callable[..., list[SimulatedGame]], *args: Any) -> list[SimulatedGame]:
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds += time.perf_counter() - started


async def _copy(conn: asyncpg.Connection, table: str, columns: Sequence[str], records: list[tuple[Any, ...]],
                rows: dict[str, int]) -> None:
    if records:
        try:
            await conn.copy_records_to_table(table, records=records, columns=list(columns))
        except asyncpg.PostgresError as exc:
            exc.add_note(f"COPY of {len(records)} rows into {table}")  # the seed script names the statement
            raise
    rows[table] = rows.get(table, 0) + len(records)


async def _load_games(
    conn: asyncpg.Connection, *, games: int, player_ids: list[int], game_ids: list[int], random_seed: int,
    anchor: datetime, counters: _Counters, rows: dict[str, int], progress: ProgressCallback | None,
) -> tuple[list[SimulatedGame], float]:
    """Simulate and COPY the games batch by batch; returns the games still running (for
    their connections) and the time spent simulating."""
    running: list[SimulatedGame] = []
    stream = generate_games(games, player_pool=player_ids, game_ids=game_ids, random_seed=random_seed, anchor=anchor)
    timer = _Timer()
    loop = asyncio.get_running_loop()
    # Simulate the next batch in a worker thread while the server digests the current
    # COPY (foreign-key checks dominate the load, and the GIL is free while we wait).
    done = 0
    pending = loop.run_in_executor(None, timer.measure, _take, stream, GAME_BATCH) if games else None
    try:
        while pending is not None:
            batch = await pending
            done += len(batch)
            pending = loop.run_in_executor(None, timer.measure, _take, stream, GAME_BATCH) if done < games else None
            for game in batch:
                counters.add(game)
                if game.status in ("active", "waiting"):
                    running.append(game)
            await _copy(conn, "game_sessions", GAME_COLUMNS, [g.game_row() for g in batch], rows)
            await _copy(conn, "game_participants", PARTICIPANT_COLUMNS, [p for g in batch for p in g.participants], rows)
            await _copy(conn, "moves", MOVE_COLUMNS, [m for g in batch for m in g.moves], rows)
            await _copy(conn, "player_game_stats", STATS_COLUMNS, [s for g in batch for s in g.stats], rows)
            if progress:
                progress("games", done, games)
    finally:
        if pending is not None:
            pending.cancel()
    return running, timer.seconds


async def seed(
    conn: asyncpg.Connection,
    *,
    players: int,
    games: int,
    random_seed: int,
    clear: bool = False,
    progress: ProgressCallback | None = None,
    anchor: datetime | None = None,
) -> SeedReport:
    """Replace the seed set with ``players`` players and ``games`` simulated games.

    One transaction: the previous seed set (or, with ``clear``, every game table) goes
    and the new one arrives together, or nothing changes. ``anchor`` is "now" for the
    generated time-stamps (default: start of the current UTC day).
    """
    if players < rules.PLAYERS_PER_GAME and games > 0:
        raise ValueError(f"games need at least {rules.PLAYERS_PER_GAME} players; got players={players}")
    if players < 0 or games < 0:
        raise ValueError("players and games must not be negative")
    anchor = anchor or default_anchor()
    started = time.perf_counter()
    rows: dict[str, int] = dict.fromkeys(LOAD_ORDER, 0)
    phases: dict[str, float] = {}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of short tuples: the cycle collector only costs time here
    try:
        async with conn.transaction():
            t = time.perf_counter()
            kept: dict[str, int] = {}
            if clear:
                await conn.execute(f"TRUNCATE {', '.join(GAME_TABLES)} RESTART IDENTITY CASCADE")
            else:
                kept = await _remove_previous_seed(conn, players)
            phases["delete"] = time.perf_counter() - t

            t = time.perf_counter()
            rng = random.Random(random_seed)
            player_ids = await _player_ids(conn, players, kept)
            game_ids = await _reserve_ids(conn, "game_sessions", games)
            base_rating = {pid: rules.clamp_rating(rules.RATING_DEFAULT + rng.randint(-150, 150)) for pid in player_ids}
            player_rows = _player_rows(rng, player_ids, base_rating, anchor)
            await _upsert_players(conn, player_rows, rows)
            await _copy(conn, "user_preferences", PREFERENCE_COLUMNS, _preference_rows(rng, player_rows), rows)
            phases["players"] = time.perf_counter() - t
            if progress:
                progress("players", players, players)

            t = time.perf_counter()
            counters = _Counters(base_rating=base_rating)
            running, generation = await _load_games(
                conn, games=games, player_ids=player_ids, game_ids=game_ids, random_seed=rng.getrandbits(63),
                anchor=anchor, counters=counters, rows=rows, progress=progress,
            )
            phases["games"] = time.perf_counter() - t

            t = time.perf_counter()
            await _apply_counters(conn, counters)
            await _copy(conn, "websocket_connections", CONNECTION_COLUMNS,
                        _connection_rows(rng, running, player_ids, anchor), rows)
            await _copy(conn, "performance_metrics", METRIC_COLUMNS, _metric_rows(rng, anchor), rows)
            # Fresh statistics, so the integrity checks right after a seed get sane plans.
            await conn.execute(f"ANALYZE {', '.join(GAME_TABLES)}")
            phases["finish"] = time.perf_counter() - t
    finally:
        if gc_was_enabled:
            gc.enable()
    return SeedReport(
        rows=rows, seconds=time.perf_counter() - started, reused_seed_players=len(kept), cleared=clear,
        anchor=anchor, generation_seconds=generation, phases=phases,
    )
