"""Expand and contract as two moments: evidence of which release still uses which columns.

A contract revision (``[[tool.hokmdb.migrations.transitions]]``) removes what only the old
game release uses; undoing an expand removes what the new one needs. Neither is safe on hope.
Before either, the deploy watches the database for ``deploy.transition_window_s``:

* ``pg_stat_statements``: every statement that ran in the window (calls counted at both ends),
  the exact evidence. It must be loaded (``shared_preload_libraries``) and created in the
  application's database or in ``deploy.statement_stats_database`` (``postgres``: the view
  shows every database's statements, and the application's schema stays what its migrations
  build); hokmdb's embedded clusters and Patroni nodes do both;
* ``pg_stat_activity``, sampled several times a second: a session running such a statement
  now, or idle with one as its last (a connection pool of the release, connected and quiet).

hokmdb's own sessions (``application_name`` ``hokmdb`` or ``hokmdb-...``) are not evidence. When no other
client is connected to the database at all, nobody can be using anything, and no window is
needed. A look that could not be made (no ``pg_stat_statements``, a role that reads
``<insufficient privilege>``) is not "nothing uses it": the deploy treats it as "in use"
(fail closed) and says what to install or grant.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field, replace

import asyncpg

from pytest_hokmdb.db import connect
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.errors import HokmdbError
from pytest_hokmdb.redaction import redact

HIDDEN = "<insufficient privilege>"
SAMPLE_EVERY_S = 0.2

_OTHER_SESSIONS = """
SELECT pid, coalesce(application_name, '') AS app, coalesce(usename::text, '') AS role, coalesce(state, '') AS state,
       coalesce(query, '') AS query
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND coalesce(application_name, '') <> 'hokmdb' AND coalesce(application_name, '') NOT LIKE 'hokmdb-%'
"""


def _word(name: str) -> str:
    # An identifier as a word of SQL: bare, quoted or qualified (m.card, public."moves").
    return rf'(?<![\w$]){re.escape(name)}(?![\w$])'


def uses(query: str, table: str, column: str) -> bool:
    """Whether the SQL text names ``column`` and ``table``. Text matching, deliberately wide:
    a false "uses" only makes the deploy wait; a false "does not use" would break a release."""
    lowered = query.lower()
    return bool(re.search(_word(table.lower()), lowered) and re.search(_word(column.lower()), lowered))


def _shorten(query: str, limit: int = 110) -> str:
    """A statement as evidence in a message: redacted (pg_stat_activity shows literals), one line."""
    flat = " ".join(redact(query).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass
class ColumnUse:
    """What the window showed about ``columns``: ``looked`` False means the look itself failed."""

    columns: list[str]
    looked: bool = True
    unseen: list[str] = field(default_factory=list)  # why a part could not be looked at
    statements: list[str] = field(default_factory=list)  # "N call(s) of <query>"
    sessions: list[str] = field(default_factory=list)  # "pid P (app, role) idle: <query>"
    window_s: float = 0.0
    clients: int = 0

    @property
    def in_use(self) -> bool:
        """Used, or not provably unused."""
        return bool(self.statements or self.sessions or self.unseen)

    def describe(self) -> str:
        what = ", ".join(self.columns)
        if not self.in_use:
            if not self.clients:
                return f"no client but hokmdb is connected, so nothing uses {what}"
            return f"nothing used {what} in {self.window_s:.0f}s ({self.clients} client session(s) watched)"
        parts = [f"{len(self.statements)} statement(s) using {what} ran in {self.window_s:.0f}s: "
                 + "; ".join(self.statements[:3])] if self.statements else []
        if self.sessions:
            parts.append(f"{len(self.sessions)} session(s) use(d) {what}: " + "; ".join(self.sessions[:3]))
        if self.unseen:
            parts.append("could not look: " + "; ".join(self.unseen))
        return ". ".join(parts)


_EXTENSION_SCHEMA = ("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                     "WHERE e.extname = 'pg_stat_statements'")


class StatementStats:
    """``pg_stat_statements`` of the application's database: created in it, or in
    ``stats_database`` (the view shows every database's statements, filtered here by oid)."""

    def __init__(self, app: asyncpg.Connection, target: Target, stats_database: str) -> None:
        self.app, self.target, self.stats_database = app, target, stats_database
        self.conn: asyncpg.Connection | None = None
        self.relation: str | None = None
        self.dbid: int | None = None
        self.problem: str | None = None
        self._own: asyncpg.Connection | None = None

    async def open(self) -> None:
        self.dbid = await self.app.fetchval("SELECT oid FROM pg_database WHERE datname = current_database()")
        schema = await self.app.fetchval(_EXTENSION_SCHEMA)
        where = self.target.dbname
        if schema is not None:
            self.conn = self.app
        elif self.stats_database != self.target.dbname:
            where = f"{self.target.dbname} nor in {self.stats_database}"
            try:
                self._own = await connect(replace(self.target, dbname=self.stats_database, read_only=True))
            except HokmdbError as exc:
                self.problem = f"cannot connect to {self.stats_database} to read pg_stat_statements ({exc.message})"
                return
            schema = await self._own.fetchval(_EXTENSION_SCHEMA)
            self.conn = self._own
        if schema is None:
            self.problem = (f"pg_stat_statements is not installed in {where}: add it to shared_preload_libraries, "
                            f"restart, and CREATE EXTENSION pg_stat_statements in {self.stats_database} (as a superuser)")
            return
        assert self.conn is not None
        self.relation = await self.conn.fetchval("SELECT format('%I.pg_stat_statements', $1::text)", schema)

    async def close(self) -> None:
        if self._own is not None:
            await self._own.close()

    async def read(self) -> dict[tuple[int, int], tuple[int, str]] | None:
        """(queryid, userid) -> (calls, query) of the application's database; None and
        ``problem`` set when it cannot be read."""
        if self.relation is None or self.conn is None:
            return None
        try:
            rows = await self.conn.fetch(
                f"SELECT queryid, userid::bigint AS userid, calls, coalesce(query, '') AS query FROM {self.relation} "
                "WHERE dbid = $1 AND queryid IS NOT NULL", self.dbid)
        except asyncpg.PostgresError as exc:
            self.problem = f"pg_stat_statements cannot be read ({exc}); it must be in shared_preload_libraries"
            return None
        return {(r["queryid"], r["userid"]): (r["calls"], r["query"]) for r in rows}


async def observe(target: Target, refs: list[str], window_s: float, *, stats_database: str = "postgres") -> ColumnUse:
    """Watch the database for ``window_s`` (see the module's docstring) for use of ``refs``."""
    columns = [tuple(r.split(".", 1)) for r in refs]
    use = ColumnUse(refs)

    def matches(query: str) -> bool:
        return any(uses(query, table, column) for table, column in columns)

    conn = await connect(target)
    stats = StatementStats(conn, target, stats_database)
    try:
        sessions = await conn.fetch(_OTHER_SESSIONS)
        use.clients = len(sessions)
        if not sessions:
            return use
        await stats.open()
        before = await stats.read()
        if before is None:
            use.unseen.append(stats.problem or "pg_stat_statements cannot be read")
        seen: dict[int, str] = {}
        hidden_sessions = False
        started = time.monotonic()
        while True:
            for row in sessions:
                if row["query"] == HIDDEN:
                    hidden_sessions = True
                elif matches(row["query"]) and row["pid"] not in seen:
                    seen[row["pid"]] = (f"pid {row['pid']} ({row['app'] or 'no application_name'}, {row['role']}) "
                                        f"{row['state'] or 'active'}: {_shorten(row['query'])}")
            if time.monotonic() - started >= window_s:
                break
            await asyncio.sleep(min(SAMPLE_EVERY_S, max(0.0, window_s - (time.monotonic() - started))))
            sessions = await conn.fetch(_OTHER_SESSIONS)
            use.clients = max(use.clients, len(sessions))
        use.window_s = time.monotonic() - started
        use.sessions = list(seen.values())
        if hidden_sessions:
            use.unseen.append(f"{target.user} reads other roles' statements as {HIDDEN} (grant it pg_read_all_stats, "
                              "or pg_monitor, or configure the monitoring role)")
        if before is not None:
            after = await stats.read()
            if after is None:
                use.unseen.append(stats.problem or "pg_stat_statements vanished")
            else:
                for key, (calls, query) in after.items():
                    ran = calls - before.get(key, (0, ""))[0]
                    if ran <= 0:
                        continue
                    if query == HIDDEN:
                        use.unseen.append(f"{target.user} reads other roles' statements as {HIDDEN} "
                                          "(grant it pg_read_all_stats, or pg_monitor)")
                        break
                    if matches(query):
                        use.statements.append(f"{ran} call(s) of {_shorten(query)}")
    finally:
        await stats.close()
        await conn.close()
    return use
