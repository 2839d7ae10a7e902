"""What the deploy's locks do to the game: how long each table was held under a lock that
stops its writes, and which long transactions a revision would queue behind.

A game notices a migration through locks, not through time: a backfill that runs for ten
minutes in committed batches is invisible, a one-second ACCESS EXCLUSIVE on ``moves`` is
not. So the deploy's downtime is measured as the time its session holds (or waits for) a
*strong* lock on a table, one that blocks the game's writes (SHARE and above; ACCESS
EXCLUSIVE also blocks reads), sampled from ``pg_locks`` while each revision runs.

Before a revision asks for such a lock, the deploy looks for sessions that hold any lock on
the tables the revision touches inside a transaction older than the lock budget: queueing
behind one would make every game query on that table queue behind the deploy. It waits for
them to finish (within the retry budget) instead, and names them when it gives up.

Autovacuum is the exception: PostgreSQL cancels a worker that is not preventing wraparound
when a lock request has waited on it for ``deadlock_timeout`` (the waiter's deadlock check
signals it). So the deploy does not wait for one, it asks for its lock and lets PostgreSQL
cancel the worker; waiting would be forever on a big table (the 100k-game bench's clone spent
the whole retry budget behind a 3-minute autovacuum of ``moves``). But the request must wait
*longer* than ``deadlock_timeout`` to get that help: with the shipped lock_timeout of 1 s and
PostgreSQL's default deadlock_timeout of 1 s, every attempt gave up at the moment the
cancellation was due, nine times in a row, and the deploy ran out of budget. When an
autovacuum holds one of a revision's tables, that attempt's ``lock_timeout`` is therefore
``deadlock_timeout`` plus ``AUTOVACUUM_MARGIN_MS`` (``autovacuum_lock_timeout_ms``): the
game waits behind the deploy at most that long, once, instead of the deploy failing. A
wraparound vacuum (``to prevent wraparound`` in its query) is never cancelled: it is waited
for like any long transaction, and named as such when the budget runs out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_hokmdb.redaction import redact

# How often the migrating session's locks are sampled: holds shorter than this may go unseen.
SAMPLE_INTERVAL_S = 0.05

# How much longer than deadlock_timeout an attempt waits when an autovacuum holds its table:
# PostgreSQL's deadlock check runs once deadlock_timeout has passed, then signals the worker,
# which needs a moment to notice and release its lock.
AUTOVACUUM_MARGIN_MS = 500

# Lock modes that conflict with ROW EXCLUSIVE (the game's INSERT/UPDATE/DELETE).
STRONG_MODES = ("ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")

_OWN_STRONG_LOCKS = """
SELECT c.relname AS table, l.mode, l.granted
FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
WHERE l.pid = $1 AND l.locktype = 'relation' AND l.mode = ANY($2::text[]) AND c.relkind IN ('r', 'p')
"""

_LONG_HOLDERS = """
SELECT DISTINCT a.pid, coalesce(a.usename::text, '?') AS role, coalesce(a.application_name, '') AS app,
       a.state, extract(epoch FROM now() - a.xact_start)::float8 AS age_s, left(coalesce(a.query, ''), 160) AS query,
       c.relname AS table, coalesce(a.backend_type, '') AS backend_type
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.granted AND l.locktype = 'relation' AND c.relname = ANY($1::text[])
  AND a.pid <> pg_backend_pid() AND NOT (a.pid = ANY($3::int[]))
  AND a.xact_start IS NOT NULL AND now() - a.xact_start > make_interval(secs => $2)
ORDER BY age_s DESC
"""


@dataclass(frozen=True)
class Holder:
    """A session the deploy would queue behind, as an operator needs to find it."""

    pid: int
    role: str
    application: str
    state: str
    age_s: float
    query: str
    table: str
    backend_type: str = "client backend"

    @property
    def is_autovacuum(self) -> bool:
        return self.backend_type == "autovacuum worker"

    @property
    def yields_to_locks(self) -> bool:
        """An autovacuum worker that a waiting lock request cancels (all but wraparound ones).
        Without pg_read_all_stats its query reads '<insufficient privilege>': treated as
        yielding, so the deploy tries, and a wraparound vacuum then costs one lock timeout."""
        return self.backend_type == "autovacuum worker" and "to prevent wraparound" not in self.query

    def describe(self) -> str:
        if self.is_autovacuum and not self.yields_to_locks:
            return (f"pid {self.pid}, an anti-wraparound autovacuum of {self.table} (PostgreSQL never cancels one; it "
                    f"has run {self.age_s:.1f}s; query: {redact(self.query)!r})")
        return (f"pid {self.pid} (role {self.role}, application {self.application or '-'}, {self.state}, "
                f"transaction open {self.age_s:.1f}s, holding {self.table}; query: {redact(self.query)!r})")


async def holders(fetch: Callable[..., Awaitable[list[Any]]], tables: list[str], older_than_s: float,
                  ignore_pids: list[int] | None = None) -> list[Holder]:
    """Sessions holding a lock on ``tables`` in a transaction older than ``older_than_s``.
    ``fetch(sql, *args)`` should query through the monitoring connection: others' query text
    needs pg_read_all_stats."""
    if not tables:
        return []
    rows = await fetch(_LONG_HOLDERS, tables, older_than_s, ignore_pids or [])
    return [Holder(r["pid"], r["role"], r["app"], r["state"] or "?", r["age_s"], r["query"], r["table"], r["backend_type"])
            for r in rows]


def autovacuum_lock_timeout_ms(deadlock_timeout_ms: int, lock_timeout_ms: int) -> int:
    """The lock_timeout of an attempt whose table an autovacuum holds: long enough for
    PostgreSQL to cancel the worker (see the module's docstring), never shorter than the
    configured one."""
    return max(lock_timeout_ms, deadlock_timeout_ms + AUTOVACUUM_MARGIN_MS)


@dataclass
class LockWatch:
    """Strong locks of one session over time: the longest continuous hold per table and the
    total time any was held or awaited (the deploy's downtime)."""

    longest: dict[str, tuple[float, str]] = field(default_factory=dict)  # table -> (seconds, mode)
    total_s: float = 0.0
    _since: dict[str, tuple[float, str]] = field(default_factory=dict)  # table -> (first seen, strongest mode)
    _any_since: float | None = None

    async def sample(self, fetch: Callable[..., Awaitable[list[Any]]], pid: int, now: float) -> None:
        """``fetch(sql, *args)``: a query on any connection of the same database (pg_locks is public)."""
        rows = await fetch(_OWN_STRONG_LOCKS, pid, list(STRONG_MODES))
        self.observe({r["table"]: r["mode"] for r in rows}, now)

    def observe(self, held: dict[str, str], now: float) -> None:
        for table, mode in held.items():
            started, strongest = self._since.get(table, (now, mode))
            if STRONG_MODES.index(mode) > STRONG_MODES.index(strongest):
                strongest = mode
            self._since[table] = (started, strongest)
        for table in list(self._since):
            if table not in held:
                self._close(table, now)
        if held and self._any_since is None:
            self._any_since = now
        elif not held and self._any_since is not None:
            self.total_s += now - self._any_since
            self._any_since = None

    def current_s(self, now: float) -> float:
        """Downtime so far, the running hold included."""
        return self.total_s + (now - self._any_since if self._any_since is not None else 0.0)

    def finish(self, now: float) -> None:
        self.observe({}, now)

    def _close(self, table: str, now: float) -> None:
        started, mode = self._since.pop(table)
        held = now - started
        if held > self.longest.get(table, (0.0, ""))[0]:
            self.longest[table] = (held, mode)

    def summary(self) -> str:
        if not self.longest:
            return f"no write-blocking lock seen (sampled every {SAMPLE_INTERVAL_S * 1000:.0f} ms)"
        worst = sorted(self.longest.items(), key=lambda kv: -kv[1][0])
        return "longest write-blocking lock: " + ", ".join(
            f"{table} {seconds:.2f}s ({mode.removesuffix('Lock')})" for table, (seconds, mode) in worst[:4])
