"""Simulated game traffic, and what a migration costs it.

A rehearsal (``deploy.py --rehearse``) and the benchmark run an application's workload while
they migrate, and measure what the players would have felt: failed transactions, the longest
stall, the latency percentiles, the longest write-blocking lock per table, the standby's
replay lag and PgBouncer's longest client wait. The workload itself is the application's
(a profile's ``workload``, e.g. Hokm's game transactions); this module only runs and measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from pytest_hokmdb.db.topology import PoolerEndpoint, PoolerError, pooler_show
from pytest_hokmdb.deploy.locks import STRONG_MODES

Transaction = Callable[[asyncpg.Connection, random.Random, Any], Awaitable[None]]

# The load's own sessions, never counted as the migration's locks.
GAME_APP = "game-server"
SAMPLER_APP = "hokmdb-load-sampler"
SAMPLE_INTERVAL_S = 0.05

_FOREIGN_STRONG_LOCKS = """
SELECT DISTINCT c.relname AS table
FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.granted AND l.mode = ANY($1::text[]) AND c.relkind IN ('r', 'p')
  AND a.datname = current_database() AND NOT (coalesce(a.application_name, '') = ANY($2::text[]))
"""

_REPLAY_LAG = """
SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0)::float8 AS bytes,
       coalesce(max(extract(epoch FROM replay_lag)), 0)::float8 AS seconds, count(*) AS standbys
FROM pg_stat_replication
"""


@dataclass(frozen=True)
class Workload:
    """An application's traffic. ``prepare`` runs once and returns what the transactions need
    (ids of existing rows); each transaction runs inside its own database transaction."""

    prepare: Callable[[asyncpg.Connection], Awaitable[Any]]
    transactions: Mapping[str, Transaction]


@dataclass
class Traffic:
    """What the simulated players saw."""

    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    # The first error message of each kind of failure, so a report can say what went wrong.
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def by_class(self) -> Counter[str]:
        """Failures by error class (``DeadlockDetectedError``, ...), whatever the transaction."""
        classes: Counter[str] = Counter()
        for kind, count in self.failures.items():
            classes[kind.rsplit(": ", 1)[-1]] += count
        return classes

    @property
    def stall_s(self) -> float:
        return max(self.latencies, default=0.0)

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else 0.0


@dataclass
class LockTimes:
    """Longest continuous write-blocking lock per table held by anyone but the load (sampled
    every 50 ms, so shorter holds may go unseen)."""

    longest: dict[str, float] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)

    def observe(self, tables: set[str], now: float) -> None:
        for table in tables:
            self.since.setdefault(table, now)
        for table in list(self.since):
            if table not in tables:
                held = now - self.since.pop(table)
                self.longest[table] = max(self.longest.get(table, 0.0), held)

    def text(self, limit: int = 3) -> str:
        if not self.longest:
            return "none seen"
        ranked = sorted(self.longest.items(), key=lambda kv: -kv[1])[:limit]
        return ", ".join(f"{t} {s:.2f}s" for t, s in ranked)


@dataclass
class Peaks:
    """The topology's worst moments during the run: the standby's replay lag and the longest
    a client waited in PgBouncer's queue. ``None``: not measured (no standby, no PgBouncer)."""

    lag_bytes: float | None = None
    lag_s: float | None = None
    pool_wait_s: float | None = None
    problems: list[str] = field(default_factory=list)

    def lag_text(self) -> str:
        if self.lag_bytes is None:
            return "no standby"
        return f"{self.lag_bytes / 1024 / 1024:.1f} MiB / {self.lag_s or 0.0:.2f} s"

    def pool_text(self) -> str:
        return "no PgBouncer" if self.pool_wait_s is None else f"{self.pool_wait_s * 1000:.0f} ms"


async def run_traffic(
    connect_kwargs: dict[str, Any],
    workload: Workload,
    stop: asyncio.Event,
    traffic: Traffic,
    *,
    clients: int,
    statement_timeout_ms: int,
    pause_s: tuple[float, float] = (0.002, 0.01),
    on_prepared: Callable[[Any], None] | None = None,
) -> None:
    """``clients`` sessions run random transactions of ``workload`` until ``stop``; a failure
    is counted by transaction and error, and a lost session reconnects. ``on_prepared`` sees
    what ``workload.prepare`` returned before the first transaction.

    Made to work through a transaction-mode PgBouncer: asyncpg's statement cache is off
    (prepared statements do not survive a server-connection switch), and the game's
    ``statement_timeout`` is set per transaction (PgBouncer refuses it as a startup parameter)."""
    probe = await asyncpg.connect(**connect_kwargs, statement_cache_size=0)
    try:
        context = await workload.prepare(probe)
    finally:
        await probe.close()
    if on_prepared is not None:
        on_prepared(context)  # e.g. the benchmark steering the workload's release
    settings = {"application_name": GAME_APP}
    timeout = f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}"
    names = list(workload.transactions)

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(**connect_kwargs, server_settings=settings, statement_cache_size=0)

    async def client(n: int) -> None:
        rng = random.Random(n)
        conn: asyncpg.Connection | None = None
        try:
            while not stop.is_set():
                name = rng.choice(names)
                t0 = time.monotonic()
                try:
                    if conn is None or conn.is_closed():
                        conn = await connect()
                    async with conn.transaction():
                        await conn.execute(timeout)
                        await workload.transactions[name](conn, rng, context)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                    kind = f"{name}: {type(exc).__name__}"
                    traffic.failures[kind] += 1
                    traffic.examples.setdefault(kind, str(exc).splitlines()[0][:200] if str(exc) else "")
                traffic.latencies.append(time.monotonic() - t0)
                await asyncio.sleep(rng.uniform(*pause_s))
        finally:
            if conn is not None and not conn.is_closed():
                await conn.close()

    await asyncio.gather(*(client(i) for i in range(clients)))


async def sample_locks(connect_kwargs: dict[str, Any], stop: asyncio.Event, locks: LockTimes,
                       ignore_apps: tuple[str, ...] = ()) -> None:
    """Record how long anyone but the load and ``ignore_apps`` held write-blocking locks."""
    conn = await asyncpg.connect(**connect_kwargs, server_settings={"application_name": SAMPLER_APP})
    ours = [GAME_APP, SAMPLER_APP, *ignore_apps]
    try:
        while not stop.is_set():
            rows = await conn.fetch(_FOREIGN_STRONG_LOCKS, list(STRONG_MODES), ours)
            locks.observe({r["table"] for r in rows}, time.monotonic())
            await asyncio.sleep(SAMPLE_INTERVAL_S)
        locks.observe(set(), time.monotonic())
    finally:
        await conn.close()


async def sample_topology(primary_kwargs: dict[str, Any] | None, pooler: PoolerEndpoint | None,
                          stop: asyncio.Event, peaks: Peaks, interval_s: float = 0.25) -> None:
    """Record the peak replay lag of the primary's standbys and PgBouncer's longest client wait.

    A sampler that cannot look says so in ``peaks.problems`` rather than reporting zero."""
    conn = None
    if primary_kwargs is not None:
        conn = await asyncpg.connect(**primary_kwargs, server_settings={"application_name": SAMPLER_APP})
    try:
        while not stop.is_set():
            if conn is not None:
                row = await conn.fetchrow(_REPLAY_LAG)
                if row["standbys"]:
                    peaks.lag_bytes = max(peaks.lag_bytes or 0.0, row["bytes"])
                    peaks.lag_s = max(peaks.lag_s or 0.0, row["seconds"])
                elif "no standby was streaming" not in peaks.problems:
                    peaks.problems.append("no standby was streaming")
            if pooler is not None:
                try:
                    pools = await pooler_show(pooler, "POOLS", timeout_s=5.0)
                except PoolerError as exc:
                    peaks.problems.append(f"PgBouncer's console: {exc.message}")
                    pooler = None
                else:
                    waits = [float(p.get("maxwait", "0") or 0) + float(p.get("maxwait_us", "0") or 0) / 1e6
                             for p in pools if p.get("database") != "pgbouncer"]
                    peaks.pool_wait_s = max([peaks.pool_wait_s or 0.0, *waits])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
    finally:
        if conn is not None:
            await conn.close()
