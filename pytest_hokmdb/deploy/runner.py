"""Apply (or revert) revisions one at a time under lock discipline.

Each revision runs on a fresh session with ``lock_timeout`` (short: ``database.lock_timeout_ms``)
and ``statement_timeout`` (``deploy.migration_statement_timeout_ms``) set, in its own
transaction (``transaction_per_migration``), so a failure leaves the database at a revision
boundary. Why the short ``lock_timeout``: an ``ALTER TABLE`` queued behind a long game
transaction blocks every game query queued behind *it*; giving up after a second and trying
again later (exponential backoff with jitter, ``tenacity``) keeps the game responsive.

Budgets:

* ``deploy.lock_retry_budget_s``: all time spent in attempts that lost to ``lock_timeout``
  (or a deadlock) plus the backoff sleeps between them; the next retry is only started when
  it fits entirely inside what is left, so the game is never blocked longer than the budget.
* ``--max-downtime`` / ``deploy.max_downtime_s``: the total time the deploy's session may
  hold, or wait for, a lock that blocks the game's writes (``deploy.locks``: sampled from
  ``pg_locks``; a batched backfill holds none). Each attempt's ``lock_timeout`` is clipped to
  what remains, and a watchdog cancels the running revision (``pg_cancel_backend``) when the
  bound is reached. The summary names the longest such hold per table.

Before each attempt the deploy looks for long transactions holding the tables the revision
touches (from its offline SQL) and waits for them instead of queueing behind them (which
would queue every game query behind the deploy), within the retry budget; blockers are
named with pid, role, application, age and query (through the monitoring connection when
configured, since the deploy role cannot read others' queries). Online backfills get their
batch size and pause from ``deploy.backfill_batch_size`` / ``deploy.backfill_pause_ms``.

Revisions that run outside a transaction (``CREATE INDEX CONCURRENTLY`` in an
``autocommit_block``) are supported; when one fails, any index it left INVALID is dropped
(``DROP INDEX CONCURRENTLY``) before a retry or the rollback. A revision that blocks none of
the game's reads or writes (only concurrent index builds and drops, validations, reads: its
offline SQL says so) waits under ``deploy.concurrent_wait_s`` instead of ``lock_timeout``: a
concurrent build must wait for every older snapshot, and cutting that wait short only made it
start again (0008 took 7 attempts and 43 s at 100k games). Its waits do not spend the retry
budget, which protects the game from waits that do block it.

An autovacuum holding a revision's table makes that attempt wait ``deadlock_timeout`` plus a
margin, so that PostgreSQL cancels the worker (``deploy.locks``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential, wait_random

from pytest_hokmdb.db.connect import connect
from pytest_hokmdb.db.engine import create_engine
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.deploy.lock import MIGRATION_KEY, NAMESPACE, Actor, DeployLock
from pytest_hokmdb.deploy.locks import (
    SAMPLE_INTERVAL_S,
    Holder,
    LockWatch,
    autovacuum_lock_timeout_ms,
    holders,
)
from pytest_hokmdb.migrate import alembic_config, run_alembic
from pytest_hokmdb.migration.online import ATTRIBUTE as BACKFILL_ATTRIBUTE
from pytest_hokmdb.migration.online import BackfillSettings
from pytest_hokmdb.redaction import redact

log = logging.getLogger("hokmdb.deploy.migrate")

LOCK_CONFLICT_STATES = frozenset({"55P03", "40P01"})  # lock_not_available, deadlock_detected
MONITOR_INTERVAL_S = SAMPLE_INTERVAL_S
HOLDER_POLL_S = 0.25


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE behind an exception, through SQLAlchemy's and alembic's wrapping."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        for attr in ("sqlstate", "pgcode"):
            value = getattr(current, attr, None)
            if isinstance(value, str) and len(value) == 5:
                return value
        stack += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return None


def is_lock_conflict(exc: BaseException) -> bool:
    return sqlstate_of(exc) in LOCK_CONFLICT_STATES


def short_error(exc: BaseException) -> str:
    """One line: the database's message without SQLAlchemy's SQL echo and background links."""
    text = str(getattr(exc, "orig", None) or exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return redact(first.split("[SQL:")[0].strip())


@dataclass
class Budget:
    retry_budget_s: float
    max_downtime_s: float | None = None
    retry_spent_s: float = 0.0
    in_database_s: float = 0.0  # time revisions spent inside the database (backfills included)
    lock_timeouts: int = 0
    waited_for_holders_s: float = 0.0
    replay_wait_s: float = 0.0  # waiting for standbys to replay applied revisions
    replay_peak_bytes: int = 0  # the most WAL a standby had left to replay when a revision committed
    watch: LockWatch = field(default_factory=LockWatch)  # write-blocking locks: the downtime

    def downtime_s(self) -> float:
        return self.watch.current_s(time.monotonic())

    def downtime_left(self) -> float | None:
        return None if self.max_downtime_s is None else self.max_downtime_s - self.downtime_s()


@dataclass(frozen=True)
class ReplicaPolicy:
    """After each revision, wait until ``expected`` standbys (and every other streaming one)
    have replayed it, for at most ``timeout_s``: a revision the standbys have not replayed is
    not deployed where the game reads, and the next one would pile more WAL on a lagging one."""

    expected: int
    timeout_s: float


_REPLAY = """
SELECT coalesce(application_name, '') AS name, coalesce(client_addr::text, 'local') AS client, state,
       replay_lsn IS NOT NULL AS visible,
       coalesce(replay_lsn >= $1::text::pg_lsn, false) AS replayed,
       greatest(pg_wal_lsn_diff($1::text::pg_lsn, replay_lsn), 0)::bigint AS behind
FROM pg_stat_replication
"""


class RevisionFailed(Exception):
    """A revision did not apply; ``kind`` says why (error, lock-budget, downtime, replica)."""

    def __init__(self, revision: str, direction: str, kind: str, message: str, *, attempts: int, sqlstate: str | None) -> None:
        self.revision = revision
        self.direction = direction
        self.kind = kind
        self.attempts = attempts
        self.sqlstate = sqlstate
        self.message = message
        super().__init__(message)


@dataclass
class StepReport:
    revision: str
    direction: str
    seconds: float
    attempts: int
    lock_timeouts: int


@dataclass
class _AttemptState:
    pid: int | None = None
    blockers: list[str] = field(default_factory=list)
    cancelled_for_downtime: bool = False
    lock_timeout_ms: int = 0  # the effective lock_timeout of this attempt
    # An autovacuum holds one of the revision's tables: wait long enough for PostgreSQL to cancel it.
    min_lock_timeout_ms: int = 0
    # This attempt was blocked by an autovacuum that a lock request cancels (seen by the monitor).
    blocked_by_autovacuum: str | None = None
    # The revision blocks no game writes: its waits do not count against the retry budget.
    never_blocks_writes: bool = False
    # The deploy cancelled its own statement: it and a session it waited for waited for each other.
    yielded_to: str | None = None


class YieldedToGame(Exception):
    """The deploy's statement waited for a session that waited for it (a deadlock in the
    making): the deploy cancelled itself, so that the game is never the victim. Retried like a
    lock timeout (its sqlstate is deadlock_detected's)."""

    sqlstate = "40P01"


# Statements that may take a lock the game waits for, and whether the migration already holds one.
_DDL = re.compile(r"^\s*(ALTER|CREATE|DROP|COMMENT|LOCK|TRUNCATE|REINDEX|CLUSTER)\b", re.IGNORECASE)
_HOLDS_WRITE_BLOCKING = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND locktype = 'relation' AND granted AND mode IN "
    "('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'))"
)

_INVALID_INDEXES = """
SELECT i.indexrelid::bigint AS oid, n.nspname AS schema, c.relname AS name,
       EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid) AS building
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
"""

_BLOCKERS = """
SELECT a.pid, coalesce(a.usename::text, '?') AS role, coalesce(a.application_name, '') AS app, a.state,
       extract(epoch FROM now() - a.xact_start)::float8 AS age_s, left(coalesce(a.query, ''), 120) AS query,
       coalesce(a.backend_type, '') AS backend_type,
       $1 = ANY(pg_blocking_pids(a.pid)) AS waits_for_us
FROM pg_stat_activity a
WHERE a.pid = ANY(pg_blocking_pids($1))
"""


def _run_alembic(sync_conn: Any, cfg: Any, direction: str, destination: str) -> None:
    """The revision on the deploy's own connection (its lock_timeout, statement_timeout and the
    monitor watch that session): env.py must use ``config.attributes["connection"]``."""
    cfg.attributes["connection"] = sync_conn
    cfg.attributes["hokmdb_require_handover"] = True
    run_alembic(cfg, direction, destination)


class Migrator:
    """Moves one database revision by revision; shared by deploy.py and rollback.py migration."""

    def __init__(
        self,
        *,
        target: Target,
        lock: DeployLock,
        actor: Actor,
        project_root: Path,
        lock_timeout_ms: int,
        statement_timeout_ms: int,
        base_delay_s: float,
        budget: Budget,
        concurrent_wait_ms: int = 0,
        on_applied: Callable[[Any, str], Any] | None = None,
        monitor_target: Target | None = None,
        backfill: BackfillSettings | None = None,
        replicas: ReplicaPolicy | None = None,
    ) -> None:
        self.target = target
        self.lock = lock
        self.actor = actor
        self.project_root = project_root
        self.lock_timeout_ms = lock_timeout_ms
        # lock_timeout of a revision that never blocks the game's writes (0: the normal one)
        self.concurrent_wait_ms = concurrent_wait_ms
        self.statement_timeout_ms = statement_timeout_ms
        self.base_delay_s = base_delay_s
        self.budget = budget
        self.on_applied = on_applied
        self.monitor_target = monitor_target
        self.backfill = backfill or BackfillSettings()
        self.replicas = replicas
        self.cfg = alembic_config(project_root=project_root)
        self.script = ScriptDirectory.from_config(self.cfg)
        self._tables: dict[str, tuple[list[str], bool]] = {}
        self._observer: Any = None  # asyncpg connection for what the deploy role may not see
        self._deadlock_timeout_ms: int | None = None

    # -- what a revision touches, and who holds it -------------------------------------------------

    def tables_of(self, revision: str, direction: str = "upgrade") -> list[str]:
        """Existing tables ``revision``'s upgrade (or downgrade) locks, read from its offline SQL (cached)."""
        return self._facts(revision, direction)[0]

    def never_blocks_writes(self, revision: str, direction: str = "upgrade") -> bool:
        """Whether ``revision`` only builds or drops indexes concurrently, validates constraints
        and reads (its offline SQL; ``migration.lint.sql.never_blocks_writes``)."""
        return self._facts(revision, direction)[1]

    def _facts(self, revision: str, direction: str) -> tuple[list[str], bool]:
        key = f"{direction}:{revision}"
        if key not in self._tables:
            try:
                from pytest_hokmdb.migration.lint import MigrationLinter
                from pytest_hokmdb.migration.lint.sql import locked_tables, never_blocks_writes
                from pytest_hokmdb.migration.settings import load_settings

                linter = MigrationLinter(load_settings(self.project_root))
                sql = linter.offline_sql(revision) if direction == "upgrade" else linter.offline_downgrade_sql(revision)
                self._tables[key] = (locked_tables(sql), never_blocks_writes(sql))
            except Exception as exc:  # noqa: BLE001 - the pre-flight lint already refused unrenderable revisions
                log.warning("could not tell which tables revision %s (%s) locks (%s); not waiting for long transactions",
                            revision, direction, short_error(exc))
                self._tables[key] = ([], False)
        return self._tables[key]

    async def _observer_conn(self) -> Any:
        """The monitoring connection when configured (it can read every session's query), else the lock's."""
        if self._observer is None and self.monitor_target is not None:
            try:
                self._observer = await connect(replace(self.monitor_target, read_only=True,
                                                       application_name=self.actor.application_name("observe")))
            except Exception as exc:  # noqa: BLE001 - fall back to the deploy role's view
                log.warning("the monitoring connection failed (%s); blockers' queries may read <insufficient privilege>",
                            short_error(exc))
                self.monitor_target = None
        return self._observer

    async def close(self) -> None:
        if self._observer is not None:
            await self._observer.close()
            self._observer = None

    async def _observe(self, sql: str, *args: Any) -> list[Any]:
        observer = await self._observer_conn()
        return await (observer.fetch(sql, *args) if observer is not None else self.lock.fetch(sql, *args))

    async def _wait_for_long_holders(self, revision: str, direction: str) -> list[Holder]:
        """Do not queue behind a transaction that has held the revision's tables for longer than
        the lock budget: wait for it to end, within the retry budget, then give up naming it.
        Returns the autovacuum workers that hold the tables and that a lock request cancels
        (``deploy.locks``): the attempt must wait long enough to get them cancelled."""
        tables = self.tables_of(revision, direction)
        if not tables:
            return []
        budget = self.budget
        older_than = max(self.lock_timeout_ms / 1000, 0.1)
        long: list[Holder] = []
        while True:
            observer = await self._observer_conn()
            try:
                found = await holders(observer.fetch if observer is not None else self.lock.fetch, tables, 0.0)
            except Exception as exc:  # noqa: BLE001 - looking is best effort; lock_timeout still bounds the wait
                log.debug("could not look for long transactions: %s", exc)
                return []
            long = [h for h in found if not h.yields_to_locks and h.age_s > older_than]
            if not long:
                return [h for h in found if h.yields_to_locks]
            if budget.retry_spent_s + HOLDER_POLL_S > budget.retry_budget_s:
                raise RevisionFailed(
                    revision, direction, "lock-budget",
                    f"revision {revision} ({direction}) did not start: {long[0].describe()} and {len(long) - 1} "
                    f"more held its tables longer than the lock budget ({self.lock_timeout_ms} ms) until the retry budget "
                    f"({budget.retry_budget_s:g}s) was spent; queueing behind them would have stalled every query on "
                    f"{', '.join(sorted({h.table for h in long}))}",
                    attempts=0, sqlstate=None,
                )
            if budget.waited_for_holders_s == 0 or int(budget.waited_for_holders_s) != int(budget.waited_for_holders_s + HOLDER_POLL_S):
                log.warning("revision %s waits before taking its locks: %s", revision, long[0].describe())
            await asyncio.sleep(HOLDER_POLL_S)
            budget.retry_spent_s += HOLDER_POLL_S
            budget.waited_for_holders_s += HOLDER_POLL_S

    async def _deadlock_timeout(self) -> int:
        """The server's deadlock_timeout in ms (read once): how long a lock request waits before
        PostgreSQL cancels an autovacuum in its way."""
        if self._deadlock_timeout_ms is None:
            rows = await self.lock.fetch("SELECT setting::int AS ms FROM pg_settings WHERE name = 'deadlock_timeout'")
            self._deadlock_timeout_ms = int(rows[0]["ms"]) if rows else 1000
        return self._deadlock_timeout_ms

    # -- planning ------------------------------------------------------------------------------

    def upgrade_path(self, current: str | None, target: str) -> list[Any]:
        """Scripts to apply, oldest first."""
        return list(reversed(list(self.script.iterate_revisions(target, current or "base"))))

    def downgrade_path(self, current: str | None, target: str | None) -> list[tuple[Any, str]]:
        """(script, destination) pairs to revert, newest first; destination is the revision below it."""
        if current is None or current == target:
            return []
        scripts = list(self.script.iterate_revisions(current, target or "base"))
        pairs: list[tuple[Any, str]] = []
        for i, rev in enumerate(scripts):
            below = scripts[i + 1].revision if i + 1 < len(scripts) else (target or "base")
            pairs.append((rev, below))
        return pairs

    # -- one attempt -----------------------------------------------------------------------------

    async def _invalid_indexes(self) -> dict[int, tuple[str, str, bool]]:
        rows = await self.lock.fetch(_INVALID_INDEXES)
        return {r["oid"]: (r["schema"], r["name"], r["building"]) for r in rows}

    async def _drop_new_invalid_indexes(self, before: set[int], revision: str) -> list[str]:
        """Drop indexes a failed concurrent build of ``revision`` left INVALID."""
        dropped: list[str] = []
        leftovers = {oid: v for oid, v in (await self._invalid_indexes()).items() if oid not in before}
        if not leftovers:
            return dropped
        conn = await connect(replace(self.target, application_name=self.actor.application_name("migrate"), statement_timeout_ms=0))
        try:
            for schema, name, building in leftovers.values():
                if building:
                    log.warning("index %s.%s is invalid but still being built by another session; left alone", schema, name)
                    continue
                qualified = await conn.fetchval("SELECT format('%I.%I', $1::text, $2::text)", schema, name)
                try:
                    await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {qualified}")
                    dropped.append(qualified)
                    log.warning("revision %s failed and left index %s INVALID: dropped it (DROP INDEX CONCURRENTLY)", revision, qualified)
                except Exception as exc:  # noqa: BLE001 - reported, the gate will flag the leftover
                    log.error("could not drop the invalid index %s left by revision %s: %s", qualified, revision, short_error(exc))
        finally:
            await conn.close()
        return dropped

    async def _monitor(self, state: _AttemptState, revision: str) -> None:
        """Watch the revision's session: its write-blocking locks, who blocks it, and cancel
        it at the downtime bound."""
        watch = self.budget.watch
        while True:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            if state.pid is None:
                continue
            try:
                await watch.sample(self.lock.fetch, state.pid, time.monotonic())
                rows = await self._observe(_BLOCKERS, state.pid)
                if rows:
                    for r in rows:
                        if r["backend_type"] == "autovacuum worker" and "to prevent wraparound" not in r["query"]:
                            state.blocked_by_autovacuum = r["query"] or "an autovacuum"
                    cycle = next((r for r in rows if r["waits_for_us"]), None)
                    if cycle is not None and state.yielded_to is None:
                        # PostgreSQL aborts whichever waiter runs its deadlock check first: the
                        # game, which usually waited longer. The deploy yields first, within a
                        # sample interval, and retries.
                        state.yielded_to = (f"pid {cycle['pid']} (application {cycle['app'] or '-'}, query: "
                                            f"{redact(cycle['query'])!r})")
                        log.warning("revision %s waits for %s, which waits for it: the deploy cancels its own statement "
                                    "so that the game is not the deadlock victim, and retries", revision, state.yielded_to)
                        await self.lock.fetch("SELECT pg_cancel_backend($1)", state.pid)
                    state.blockers = [
                        f"pid {r['pid']} (role {r['role']}, application {r['app'] or '-'}, "
                        f"{r['state'] or 'state hidden: no monitoring connection'}"
                        + (f", transaction open {r['age_s']:.1f}s" if r["age_s"] is not None else "")
                        + f", query: {redact(r['query'])!r})"
                        for r in rows
                    ]
                left = self.budget.downtime_left()
                if left is not None and left <= 0 and not state.cancelled_for_downtime:
                    state.cancelled_for_downtime = True
                    log.error("revision %s reached the --max-downtime bound: cancelling it (server pid %d)", revision, state.pid)
                    await self.lock.fetch("SELECT pg_cancel_backend($1)", state.pid)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - monitoring must never break the migration
                log.debug("monitor query failed: %s", exc)

    async def _attempt(self, direction: str, destination: str, revision: str, state: _AttemptState) -> None:
        lock_timeout_ms = self.lock_timeout_ms
        if lock_timeout_ms > 0 and state.min_lock_timeout_ms > lock_timeout_ms:
            lock_timeout_ms = state.min_lock_timeout_ms
        left = self.budget.downtime_left()
        if left is not None:
            if left <= 0:
                raise RevisionFailed(
                    revision, direction, "downtime",
                    f"the --max-downtime bound ({self.budget.max_downtime_s:g}s) is used up before revision {revision}",
                    attempts=0, sqlstate=None,
                )
            clip = max(1, int(left * 1000))
            lock_timeout_ms = min(lock_timeout_ms, clip) if lock_timeout_ms > 0 else clip
        state.lock_timeout_ms = lock_timeout_ms
        target = replace(
            self.target,
            lock_timeout_ms=lock_timeout_ms,
            statement_timeout_ms=self.statement_timeout_ms,
            application_name=self.actor.application_name("migrate"),
            read_only=False,
        )
        engine = create_engine(target)
        monitor: asyncio.Task[None] | None = None
        started = time.monotonic()
        try:
            async with engine.connect() as conn:
                try:
                    # A backend whose client was killed notices within a second instead of at its next write.
                    await conn.exec_driver_sql("SET client_connection_check_interval = '1s'")
                except DBAPIError:
                    await conn.rollback()
                await conn.exec_driver_sql(f"SELECT pg_advisory_lock_shared({NAMESPACE}, {MIGRATION_KEY})")
                state.pid = (await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar()
                await conn.commit()
                monitor = asyncio.create_task(self._monitor(state, revision))
                cfg = alembic_config(self.target, project_root=self.project_root)
                cfg.attributes[BACKFILL_ATTRIBUTE] = self.backfill
                self._wait_before_each_ddl(conn.sync_connection, revision, direction, state)
                started = time.monotonic()
                await conn.run_sync(_run_alembic, cfg, direction, destination)
        finally:
            self.budget.in_database_s += time.monotonic() - started
            self.budget.watch.finish(time.monotonic())
            if monitor is not None:
                monitor.cancel()
                try:
                    await monitor
                except asyncio.CancelledError:
                    pass
            await engine.dispose()

    def _wait_before_each_ddl(self, sync_conn: Any, revision: str, direction: str, state: _AttemptState) -> None:
        """Wait for long holders before every DDL statement of the revision, not only before it
        starts: a revision whose strong lock comes after minutes of backfill (0007's downgrade:
        SET NOT NULL after rebuilding card) would otherwise queue behind whoever took the table
        meanwhile, and fail its lock_timeout again and again behind a report that holds the
        table 4 s of every 5. Only while the migration's transaction holds no lock that blocks
        writes: waiting with one would stall the game."""
        from sqlalchemy import event
        from sqlalchemy.util import await_only

        from pytest_hokmdb.migration.lint.sql import never_blocks_writes

        def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
            if state.pid is None or not _DDL.match(statement) or never_blocks_writes(statement):
                return
            holding = await_only(self.lock.fetch(_HOLDS_WRITE_BLOCKING, state.pid))
            if holding and holding[0][0]:
                return
            await_only(self._wait_for_long_holders(revision, direction))

        event.listen(sync_conn, "before_cursor_execute", before)

    # -- one revision, with retries --------------------------------------------------------------

    async def run_step(self, direction: str, revision: str, destination: str) -> StepReport:
        budget = self.budget
        attempts = 0
        lock_timeouts = 0
        last_blockers: list[str] = []
        autovacuum_seen: str | None = None
        effective_ms = self.lock_timeout_ms
        started = time.monotonic()
        lock_timeout_s = self.lock_timeout_ms / 1000

        def stop(retry_state: RetryCallState) -> bool:
            upcoming = retry_state.upcoming_sleep or 0.0
            fits = budget.retry_spent_s + upcoming + lock_timeout_s <= budget.retry_budget_s
            left = budget.downtime_left()
            if left is not None and left <= 0:
                return True
            return not fits

        def before_sleep(retry_state: RetryCallState) -> None:
            budget.retry_spent_s += retry_state.upcoming_sleep or 0.0
            log.warning(
                "revision %s (%s) could not get its locks within lock_timeout (attempt %d%s); retrying in %.2fs "
                "(retry budget used %.1f of %gs)",
                revision, direction, attempts, f", blocked by {last_blockers[0]}" if last_blockers else "",
                retry_state.upcoming_sleep or 0.0, budget.retry_spent_s, budget.retry_budget_s,
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception(is_lock_conflict),
            wait=wait_exponential(multiplier=self.base_delay_s, max=self.base_delay_s * 16) + wait_random(0, self.base_delay_s),
            stop=stop,
            reraise=True,
            before_sleep=before_sleep,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    vacuums = await self._wait_for_long_holders(revision, direction)
                    before = set(await self._invalid_indexes())
                    state = _AttemptState()
                    # An autovacuum on the revision's tables now, or one that blocked the last
                    # attempt (on a table the offline SQL did not name): wait long enough this time.
                    vacuum = (vacuums[0].query or "an autovacuum") if vacuums else autovacuum_seen
                    if self.concurrent_wait_ms > self.lock_timeout_ms > 0 and self.never_blocks_writes(revision, direction):
                        state.min_lock_timeout_ms = self.concurrent_wait_ms
                        state.never_blocks_writes = True
                        if attempts == 1:
                            log.info("revision %s (%s) blocks none of the game's reads or writes (concurrent index builds, "
                                     "validations): it waits up to %gs for its lock and older transactions "
                                     "(deploy.concurrent_wait_s)", revision, direction, self.concurrent_wait_ms / 1000)
                    elif vacuum and self.lock_timeout_ms > 0:
                        state.min_lock_timeout_ms = autovacuum_lock_timeout_ms(await self._deadlock_timeout(), self.lock_timeout_ms)
                        log.info("revision %s: %s holds its table; this attempt waits up to %d ms (deadlock_timeout + "
                                 "margin) so that PostgreSQL cancels it", revision, vacuum, state.min_lock_timeout_ms)
                    t0 = time.monotonic()
                    try:
                        await self._attempt(direction, destination, revision, state)
                    except BaseException as original:
                        exc = original
                        if state.yielded_to is not None and isinstance(original, Exception):
                            exc = YieldedToGame(f"revision {revision} yielded to {state.yielded_to}")
                        last_blockers = state.blockers or last_blockers
                        autovacuum_seen = state.blocked_by_autovacuum
                        effective_ms = state.lock_timeout_ms or effective_ms
                        await self._drop_new_invalid_indexes(before, revision)
                        if state.cancelled_for_downtime:
                            raise RevisionFailed(
                                revision, direction, "downtime",
                                f"revision {revision} was cancelled at the --max-downtime bound: the deploy held or awaited "
                                f"locks that block the game's writes for {budget.downtime_s():.1f}s of "
                                f"{budget.max_downtime_s:g}s ({budget.watch.summary()})",
                                attempts=attempts, sqlstate=sqlstate_of(exc),
                            ) from exc
                        if is_lock_conflict(exc):
                            lock_timeouts += 1
                            budget.lock_timeouts += 1
                            # Only the lock wait is lost to the conflict, not the work before it (a
                            # backfill of an hour that then meets one lock timeout costs one timeout).
                            # A wait that blocked no game write costs the budget as one normal timeout.
                            waited_ms = self.lock_timeout_ms if state.never_blocks_writes else (state.lock_timeout_ms or self.lock_timeout_ms)
                            budget.retry_spent_s += min(time.monotonic() - t0, waited_ms / 1000)
                        if exc is not original:
                            raise exc from original
                        raise
        except RevisionFailed:
            raise
        except Exception as exc:
            state_code = sqlstate_of(exc)
            if is_lock_conflict(exc):
                who = f"; blocked by {'; '.join(last_blockers)}" if last_blockers else ""
                raise RevisionFailed(
                    revision, direction, "lock-budget",
                    f"revision {revision} ({direction}) could not get its locks: {attempts} attempt(s) hit the "
                    f"deploy's lock_timeout ({effective_ms} ms) and the retry budget ({budget.retry_budget_s:g}s) is "
                    f"spent{who}",
                    attempts=attempts, sqlstate=state_code,
                ) from exc
            raise RevisionFailed(
                revision, direction, "error",
                f"revision {revision} ({direction}) failed: {short_error(exc)}",
                attempts=attempts, sqlstate=state_code,
            ) from exc
        seconds = time.monotonic() - started
        log.info(
            "revision %s %s in %.2fs (%d attempt%s)", revision, "applied" if direction == "upgrade" else "reverted",
            seconds, attempts, "s" if attempts != 1 else "",
        )
        await self.wait_for_replay(revision, direction)
        return StepReport(revision, direction, seconds, attempts, lock_timeouts)

    async def wait_for_replay(self, revision: str, direction: str) -> None:
        """Wait until the standbys have replayed what ``revision`` wrote (see ``ReplicaPolicy``).

        On the way up a standby that does not catch up in time fails the revision (the deploy
        then rolls back, as for any failure); on the way down (a rollback) it is only logged:
        stopping a rollback halfway would leave the database between revisions."""
        policy = self.replicas
        if policy is None:
            return
        lsn = (await self.lock.fetch("SELECT pg_current_wal_lsn()::text AS lsn"))[0]["lsn"]
        started = time.monotonic()
        deadline = started + policy.timeout_s
        rows: list[Any] = []
        first = True
        while True:
            rows = await self._observe(_REPLAY, lsn)
            if first:
                self.budget.replay_peak_bytes = max(self.budget.replay_peak_bytes, *(r["behind"] or 0 for r in rows), 0)
                first = False
            if rows and not all(r["visible"] for r in rows if r["state"] == "streaming"):
                problem = ("this role cannot see the standbys' replay position (pg_stat_replication needs "
                           "pg_read_all_stats): configure the monitoring connection (database.monitor_user)")
                break
            streaming = [r for r in rows if r["state"] == "streaming"]
            if len(streaming) >= policy.expected and all(r["replayed"] for r in streaming):
                waited = time.monotonic() - started
                self.budget.replay_wait_s += waited
                if streaming:
                    log.info("revision %s replayed by %d standby(s) in %.2fs", revision, len(streaming), waited)
                return
            if time.monotonic() >= deadline:
                lagging = [f"{r['name'] or r['client']} ({r['state']}, {r['behind']} bytes behind)"
                           for r in rows if not r["replayed"]]
                missing = policy.expected - len(streaming)
                problem = (f"{', '.join(lagging) or 'no standby'} had not replayed it within {policy.timeout_s:g}s "
                           f"(topology.replay_timeout_s)" + (f"; {missing} expected standby(s) not streaming" if missing > 0 else ""))
                break
            await asyncio.sleep(0.1)
        self.budget.replay_wait_s += time.monotonic() - started
        message = (f"revision {revision} ({direction}) committed on the primary, but {problem}: the game's reads from "
                   "the standbys would not see it. Check the standbys (pytest smoke/ -k topology)")
        if direction != "upgrade":
            log.warning("%s; the rollback goes on", message)
            return
        raise RevisionFailed(revision, direction, "replica", message, attempts=1, sqlstate=None)
