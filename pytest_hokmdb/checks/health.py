"""Health checks: the conditions that quietly turn into an outage if nobody looks.

All of them read ``pg_stat_*`` views and catalogs only, so they are cheap on a live
production server (no table is scanned, nothing is locked beyond the lock manager's
own brief latches that ``pg_locks`` needs). Session checks are scoped to the current
database, because a long transaction elsewhere in the cluster neither blocks this
database's vacuum nor holds its locks, and they never count the gate's own session.

A role without ``pg_read_all_stats`` sees other roles' sessions with most columns NULL, so
the session checks read ``pg_stat_activity`` over the monitoring connection
(``database.monitor_user``, pg_monitor); a check that still cannot see every session reports
"not verified" instead of passing as if it had looked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from pytest_hokmdb.checks.base import (
    Category,
    CheckContext,
    CheckFunction,
    CheckResult,
    check,
    sample,
    session_override,
)
from pytest_hokmdb.checks.schema import app_schema, qualified, quote_ident
from pytest_hokmdb.db.advisory import NAMESPACE as HOKMDB_LOCK_NAMESPACE
from pytest_hokmdb.redaction import redact

FEATURE = "Health"
CATEGORY: Category = "infrastructure"

_LITERAL = re.compile(r"'(?:[^']|'')*'")
_OPEN_LITERAL = re.compile(r"'[^']*$")
_SHOWN = 10


def snippet(query: str | None, limit: int = 120) -> str:
    """A query for a message: one line, string literals masked (they may hold e-mails or
    passwords), known secrets redacted, truncated."""
    if not query:
        return "(no query text)"
    if query.startswith("<"):  # "<insufficient privilege>", "<command string not enabled>"
        return query
    text = " ".join(query.split())
    text = _LITERAL.sub("'…'", text)
    if text.count("'") % 2:  # pg_stat_activity cut the query (track_activity_query_size) inside a literal
        text = _OPEN_LITERAL.sub("'…", text)
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


async def sees_all_sessions(conn: asyncpg.Connection) -> bool:
    """Superusers and members of pg_read_all_stats see every session's details."""
    return bool(
        await conn.fetchval(
            "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') "
            "FROM pg_roles WHERE rolname = current_user"
        )
    )


async def _blind_spot(ctx: CheckContext) -> str | None:
    """Why the session checks cannot see every session's details, or None when they can."""
    if await sees_all_sessions(ctx.observer):
        return None
    role = await ctx.observer.fetchval("SELECT current_user")
    return (f"role {role} sees the details of its own sessions only (it is not a member of pg_read_all_stats), "
            f"so other roles' sessions were not checked; {ctx.monitor_hint()}")


def _unseen(ctx: CheckContext, what: str, blind: str, limit: float) -> CheckResult:
    return CheckResult.skipped(f"{what}: none among the sessions visible, but {blind}", measured=0, threshold=limit)


def _who(row: Mapping[str, Any]) -> str:
    user = row["usename"] or "?"
    app = row["application_name"] or "no application_name"
    client = f", from {row['client_addr']}" if row.get("client_addr") else ""
    return f"pid {row['pid']} ({user}, {app}{client})"


_SESSION_COLUMNS = """
    pid, usename, application_name, host(client_addr) AS client_addr, state, query,
    extract(epoch FROM now() - xact_start)::float8 AS xact_age_s,
    extract(epoch FROM now() - state_change)::float8 AS state_age_s,
    count(*) OVER () AS total
"""
_OWN_DATABASE_CLIENTS = """
    datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


@check("health.long_transactions", title="No long-running transactions", feature=FEATURE, category=CATEGORY, severity="critical")
async def long_transactions(ctx: CheckContext) -> CheckResult:
    """A long transaction holds back vacuum (dead rows pile up) and usually holds locks;
    autovacuum workers are excluded because their long runs are expected."""
    limit = ctx.settings.long_transaction_s
    rows = await ctx.observer.fetch(
        f"""
        SELECT {_SESSION_COLUMNS} FROM pg_stat_activity
        WHERE {_OWN_DATABASE_CLIENTS} AND xact_start IS NOT NULL AND now() - xact_start > make_interval(secs => $1)
        ORDER BY xact_start LIMIT {_SHOWN}
        """,
        limit,
    )
    if rows:
        total = int(rows[0]["total"])
        described = [
            f"{_who(r)} in a transaction for {duration(r['xact_age_s'])}, {r['state']}: {snippet(r['query'])}"
            for r in rows
        ]
        more = f" (and {total - len(rows)} more)" if total > len(rows) else ""
        return CheckResult.failed(
            f"{total} transaction(s) in database {ctx.target.dbname} have been open longer than {limit:g} s "
            f"(smoke.long_transaction_s): {'; '.join(described)}{more}. They block vacuum and may hold locks: "
            "find the client by pid/application and end the transaction there, or "
            "SELECT pg_terminate_backend(pid) if it is stuck",
            measured=round(max(r["xact_age_s"] for r in rows), 1),
            threshold=limit,
            evidence={"sessions": "\n".join(described)},
        )
    if blind := await _blind_spot(ctx):
        return _unseen(ctx, f"no transaction open longer than {limit:g} s", blind, limit)
    return CheckResult.passed(f"no transaction open longer than {limit:g} s", measured=0, threshold=limit)


@check("health.idle_in_transaction", title="No sessions idle in a transaction", feature=FEATURE, category=CATEGORY)
async def idle_in_transaction(ctx: CheckContext) -> CheckResult:
    """An application that opened a transaction and went away holds its locks and snapshot
    until it returns: the classic cause of mysteriously blocked migrations."""
    limit = ctx.settings.idle_in_transaction_s
    rows = await ctx.observer.fetch(
        f"""
        SELECT {_SESSION_COLUMNS} FROM pg_stat_activity
        WHERE {_OWN_DATABASE_CLIENTS}
          AND state IN ('idle in transaction', 'idle in transaction (aborted)')
          AND now() - state_change > make_interval(secs => $1)
        ORDER BY state_change LIMIT {_SHOWN}
        """,
        limit,
    )
    if rows:
        total = int(rows[0]["total"])
        described = [
            f"{_who(r)} {r['state']} for {duration(r['state_age_s'])} (transaction open {duration(r['xact_age_s'])}), "
            f"last query: {snippet(r['query'])}"
            for r in rows
        ]
        more = f" (and {total - len(rows)} more)" if total > len(rows) else ""
        return CheckResult.failed(
            f"{total} session(s) in database {ctx.target.dbname} have been idle in a transaction for longer than "
            f"{limit:g} s (smoke.idle_in_transaction_s): {'; '.join(described)}{more}. Fix the client that "
            "forgets to COMMIT/ROLLBACK; set idle_in_transaction_session_timeout for its role; end it now with "
            "SELECT pg_terminate_backend(pid)",
            measured=round(max(r["state_age_s"] for r in rows), 1),
            threshold=limit,
            evidence={"sessions": "\n".join(described)},
        )
    if blind := await _blind_spot(ctx):
        return _unseen(ctx, f"no session idle in a transaction longer than {limit:g} s", blind, limit)
    return CheckResult.passed(f"no session idle in a transaction longer than {limit:g} s", measured=0, threshold=limit)


@check("health.blocked_locks", title="No session waits long on a lock", feature=FEATURE, category=CATEGORY, severity="critical")
async def blocked_locks(ctx: CheckContext) -> CheckResult:
    """Lock waits are how a stuck session or a careless migration turns into a game outage.

    ``pg_blocking_pids`` is only evaluated for sessions already waiting longer than the limit."""
    limit = ctx.settings.blocked_lock_s
    rows = await ctx.observer.fetch(
        f"""
        WITH waiting AS (
            SELECT l.pid, min(l.waitstart) AS waitstart,
                   string_agg(DISTINCT CASE
                       WHEN l.locktype = 'relation' THEN l.mode || ' on ' || l.relation::regclass::text
                       WHEN l.locktype = 'transactionid' THEN 'a row lock (' || l.mode || ' on the blocker''s transaction)'
                       ELSE l.mode || ' on ' || l.locktype
                   END, ', ') AS wants
            FROM pg_locks l
            WHERE NOT l.granted
            GROUP BY l.pid
        )
        SELECT a.pid, a.usename, a.application_name, host(a.client_addr) AS client_addr, a.query, w.wants,
               extract(epoch FROM now() - coalesce(w.waitstart, a.query_start))::float8 AS waited_s,
               pg_blocking_pids(a.pid) AS blockers,
               count(*) OVER () AS total
        FROM waiting w
        JOIN pg_stat_activity a ON a.pid = w.pid
        WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
          AND now() - coalesce(w.waitstart, a.query_start) > make_interval(secs => $1)
        ORDER BY waited_s DESC
        LIMIT {_SHOWN}
        """,
        limit,
    )
    if not rows:
        if blind := await _blind_spot(ctx):
            return _unseen(ctx, f"no session has waited on a lock longer than {limit:g} s", blind, limit)
        return CheckResult.passed(f"no session has waited on a lock longer than {limit:g} s", measured=0, threshold=limit)
    blocker_pids = sorted({pid for r in rows for pid in (r["blockers"] or [])})
    blockers = {
        b["pid"]: b
        for b in await ctx.observer.fetch(
            """
            SELECT pid, usename, application_name, host(client_addr) AS client_addr, state, query,
                   extract(epoch FROM now() - xact_start)::float8 AS xact_age_s
            FROM pg_stat_activity WHERE pid = ANY($1::int[])
            """,
            blocker_pids,
        )
    }

    def blocker(pid: int) -> str:
        b = blockers.get(pid)
        if b is None:
            return f"pid {pid} (gone, or a prepared transaction)"
        age = f", transaction open {duration(b['xact_age_s'])}" if b["xact_age_s"] is not None else ""
        return f"{_who(b)} {b['state']}{age}: {snippet(b['query'])}"

    chains = [
        f"{' + '.join(blocker(pid) for pid in (r['blockers'] or [])) or 'an unknown session'} → blocks "
        f"{_who(r)} waiting {duration(r['waited_s'])} for {r['wants']}: {snippet(r['query'])}"
        for r in rows
    ]
    total = int(rows[0]["total"])
    return CheckResult.failed(
        f"{total} session(s) in database {ctx.target.dbname} have waited on a lock for longer than {limit:g} s "
        f"(smoke.blocked_lock_s): {'; '.join(chains)}. Find out why the blocker holds its lock (idle in a "
        "transaction? a long migration?) and end it if safe: SELECT pg_terminate_backend(<blocker pid>)",
        measured=round(max(r["waited_s"] for r in rows), 2),
        threshold=limit,
        evidence={"blocker → blocked": "\n".join(chains)},
    )


@check("health.xid_age", title="Transaction-ID wraparound is far away", feature=FEATURE, category=CATEGORY, severity="blocker")
async def xid_age(ctx: CheckContext) -> CheckResult:
    """At ~2^31 the server stops accepting writes to prevent wraparound: the age of the
    database's oldest unfrozen xid must stay far below it, which only (auto)vacuum can ensure."""
    limit = ctx.settings.max_xid_age
    row = await ctx.conn.fetchrow(
        "SELECT datname, age(datfrozenxid) AS xid_age, mxid_age(datminmxid) AS mxid_age "
        "FROM pg_database WHERE datname = current_database()"
    )
    if row is None:
        return CheckResult.skipped("xid age: pg_database has no row for the current database (dropped while checking?)")
    age = int(row["xid_age"])
    oldest = await ctx.conn.fetch(
        """
        SELECT n.nspname || '.' || c.relname AS name, age(c.relfrozenxid) AS age
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'm', 't') AND c.relfrozenxid <> '0'
        ORDER BY age(c.relfrozenxid) DESC LIMIT 5
        """
    )
    tables = ", ".join(f"{r['name']} {r['age']}" for r in oldest)
    evidence = {"oldest tables (age of relfrozenxid)": tables, "multixact age": str(row["mxid_age"])}
    share = age / 2**31
    if age > limit:
        return CheckResult.failed(
            f"database {row['datname']}: the oldest unfrozen transaction ID is {age} transactions old "
            f"({share:.1%} of the way to wraparound), over the limit {limit} (smoke.max_xid_age). Oldest tables: "
            f"{tables}. Run VACUUM (FREEZE) on them, and find what keeps autovacuum from freezing "
            "(long transactions, stale replication slots, autovacuum disabled or too slow)",
            measured=age,
            threshold=limit,
            evidence=evidence,
        )
    return CheckResult.passed(
        f"database {row['datname']}: oldest unfrozen xid is {age} transactions old ({share:.2%} of the way to wraparound)",
        measured=age,
        threshold=limit,
        evidence=evidence,
    )


@dataclass(frozen=True)
class Replica:
    name: str
    client: str | None
    state: str | None
    sync_state: str | None
    replay_lag_s: float | None
    behind_bytes: int | None

    def describe(self) -> str:
        where = f" at {self.client}" if self.client else ""
        return f"{self.name or '(no application_name)'}{where}"


def judge_replicas(replicas: Sequence[Replica], max_lag_s: float, *, expected: int = 0, max_lag_bytes: int | None = None,
                   hint: str = "grant the role pg_read_all_stats (or pg_monitor)") -> CheckResult:
    """The verdict on ``pg_stat_replication`` rows (kept apart from the query so each rule is
    easy to read). ``expected`` is how many replicas the environment must have attached."""
    if not replicas:
        if expected:
            return CheckResult.failed(
                f"replication: no replica is attached, {expected} expected (smoke.expected_replicas): the standby is down "
                "or cannot reach the primary; check the standby's log, primary_conninfo and pg_hba.conf replication lines",
                measured=0, threshold=expected,
            )
        return CheckResult.passed("replication: no replicas attached, none expected (smoke.expected_replicas = 0)",
                                  measured=0, threshold=0)
    if all(r.state is None for r in replicas):
        return CheckResult.skipped(
            f"replication: {len(replicas)} replica(s) are attached but this role cannot see their state; {hint}"
        )
    problems: list[str] = []
    described: list[str] = []
    streaming = [r for r in replicas if r.state == "streaming"]
    if len(streaming) < expected:
        problems.append(f"only {len(streaming)} of {expected} expected replica(s) are streaming (smoke.expected_replicas)")
    for r in replicas:
        lag = r.replay_lag_s
        behind = f", {r.behind_bytes} bytes of WAL not replayed" if r.behind_bytes else ""
        lag_text = f"replay lag {lag:.1f} s" if lag is not None else "no replay lag measured (caught up and idle)"
        described.append(f"{r.describe()}: {r.state}, {r.sync_state}, {lag_text}{behind}")
        if r.state != "streaming":
            problems.append(
                f"replica {r.describe()} is in state {r.state!r}, not 'streaming'{behind}: it is catching up or "
                "stuck; check the standby's log and its connection to the primary"
            )
        if lag is not None and lag > max_lag_s:
            problems.append(
                f"replica {r.describe()} replays {lag:.1f} s behind, over {max_lag_s:g} s "
                f"(smoke.max_replication_lag_s){behind}: reads from it are stale; check its I/O, network, "
                "and long queries on the standby (hot_standby_feedback/max_standby_streaming_delay)"
            )
        elif max_lag_bytes is not None and (r.behind_bytes or 0) > max_lag_bytes:
            # replay_lag stays NULL or stale while replay is paused or stuck: bytes still tell.
            problems.append(
                f"replica {r.describe()} has {r.behind_bytes} bytes of WAL not replayed, over {max_lag_bytes} "
                "(smoke.max_replication_lag_bytes): replay is paused or stuck; check pg_is_wal_replay_paused() and "
                "the standby's log"
            )
    worst = max((r.replay_lag_s or 0.0 for r in replicas), default=0.0)
    evidence = {"pg_stat_replication": "\n".join(described)}
    if problems:
        return CheckResult.failed("; ".join(problems), measured=round(worst, 2), threshold=max_lag_s, evidence=evidence)
    return CheckResult.passed(
        f"{len(replicas)} replica(s) streaming ({'; '.join(described)}), worst replay lag {worst:.1f} s",
        measured=round(worst, 2), threshold=max_lag_s, evidence=evidence,
    )


@check("health.replication", title="Replicas stream and keep up", feature=FEATURE, category=CATEGORY, severity="critical")
async def replication(ctx: CheckContext) -> CheckResult:
    """State and lag of every streaming replica, from the primary's pg_stat_replication
    (over the monitoring connection: other roles' walsender rows hide their state)."""
    conn = ctx.observer
    rows = await conn.fetch(
        """
        SELECT application_name, client_addr::text AS client, state, sync_state,
               extract(epoch FROM replay_lag)::float8 AS replay_lag_s,
               pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS behind_bytes
        FROM pg_stat_replication
        """
    ) if not await conn.fetchval("SELECT pg_is_in_recovery()") else None
    if rows is None:
        return CheckResult.skipped(
            "replication: this server is itself a standby, so its replicas cannot be judged here; "
            "point the gate at the primary to check replication"
        )
    replicas = [
        Replica(r["application_name"], r["client"], r["state"], r["sync_state"], r["replay_lag_s"], r["behind_bytes"])
        for r in rows
    ]
    expected = max(ctx.settings.expected_replicas, ctx.topology.expected_standbys)
    return judge_replicas(replicas, ctx.settings.max_replication_lag_s, expected=expected,
                          max_lag_bytes=ctx.settings.max_replication_lag_bytes, hint=ctx.monitor_hint())


@check("health.dead_tuples", title="Tables are not bloated with dead rows", feature=FEATURE, category=CATEGORY)
async def dead_tuples(ctx: CheckContext) -> CheckResult:
    """Dead rows slow every scan and index lookup until vacuum reclaims them; a high share
    means autovacuum cannot keep up or is held back. Small tables are ignored: a few dead
    rows there are noise."""
    minimum = ctx.settings.dead_tuple_min_rows
    limit = ctx.settings.max_dead_tuple_ratio
    rows = await ctx.conn.fetch(
        """
        SELECT schemaname || '.' || relname AS name, n_live_tup, n_dead_tup,
               greatest(last_vacuum, last_autovacuum) AS last_vacuumed
        FROM pg_stat_user_tables
        WHERE n_live_tup + n_dead_tup >= $1 AND n_live_tup + n_dead_tup > 0
        ORDER BY n_dead_tup::float8 / (n_live_tup + n_dead_tup) DESC
        """,
        minimum,
    )
    ratios = [(r, r["n_dead_tup"] / (r["n_live_tup"] + r["n_dead_tup"])) for r in rows]

    def describe(r: Mapping[str, Any], ratio: float) -> str:
        vacuumed = f"last vacuumed {r['last_vacuumed']:%Y-%m-%d %H:%M %Z}" if r["last_vacuumed"] else "never vacuumed"
        return f"{r['name']} {ratio:.0%} dead ({r['n_dead_tup']} dead, {r['n_live_tup']} live; {vacuumed})"

    offenders = [describe(r, ratio) for r, ratio in ratios if ratio > limit]
    worst = round(ratios[0][1], 4) if ratios else 0.0
    if offenders:
        return CheckResult.failed(
            f"{len(offenders)} table(s) hold more than {limit:.0%} dead rows (smoke.max_dead_tuple_ratio; tables "
            f"with at least {minimum} rows): {sample(offenders)}. Run VACUUM (ANALYZE) on them and find why "
            "autovacuum falls behind: long transactions, an inactive replication slot that pins xmin "
            "(SELECT slot_name, xmin FROM pg_replication_slots WHERE NOT active), autovacuum disabled for the "
            "table, or too low autovacuum_vacuum_cost_limit",
            measured=worst,
            threshold=limit,
            evidence={"dead tuples": "\n".join(f"{r['name']} {ratio:.2%}" for r, ratio in ratios)},
        )
    if not ratios:
        return CheckResult.passed(
            f"no table has {minimum} rows or more yet (smoke.dead_tuple_min_rows), so no table can be bloated",
            measured=0.0,
            threshold=limit,
        )
    name, ratio = ratios[0][0]["name"], ratios[0][1]
    return CheckResult.passed(
        f"{len(ratios)} table(s) checked, worst is {name} with {ratio:.1%} dead rows (limit {limit:.0%})",
        measured=worst,
        threshold=limit,
    )


@check("health.vacuum_age", title="Hot tables with changes are analyzed regularly", feature=FEATURE, category=CATEGORY)
async def vacuum_age(ctx: CheckContext) -> CheckResult:
    """Stale statistics make the planner pick bad plans for the hot tables. A table is only
    overdue once its changes exceed autovacuum's own analyze threshold
    (``autovacuum_analyze_threshold + autovacuum_analyze_scale_factor * reltuples``): below
    it autovacuum is right to wait, and a low-churn table must not raise a morning alarm."""
    limit_h = ctx.settings.max_vacuum_age_h
    hot = list(ctx.profile.hot_tables)
    rows = await ctx.conn.fetch(
        """
        SELECT s.relname, s.n_mod_since_analyze, s.n_live_tup,
               current_setting('autovacuum_analyze_threshold')::float8
                 + current_setting('autovacuum_analyze_scale_factor')::float8 * greatest(c.reltuples, 0) AS due_after,
               greatest(last_analyze, last_autoanalyze) AS last_analyzed,
               greatest(last_vacuum, last_autovacuum) AS last_vacuumed,
               extract(epoch FROM now() - greatest(last_analyze, last_autoanalyze))::float8 AS analyze_age_s
        FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
        WHERE (cardinality($1::text[]) = 0 OR s.relname = ANY($1::text[]))
          AND s.schemaname = ANY(current_schemas(false))
        ORDER BY s.relname
        """,
        hot,  # the profile's hot tables; without a profile, every table in the search path
    )
    offenders: list[str] = []
    changed: list[str] = []
    for r in rows:
        mods = int(r["n_mod_since_analyze"])
        if mods <= 0:
            continue
        if mods <= r["due_after"]:
            changed.append(f"{r['relname']} has {mods} changes, below autovacuum's analyze threshold {r['due_after']:.0f}")
            continue
        vacuumed = f"{r['last_vacuumed']:%Y-%m-%d %H:%M %Z}" if r["last_vacuumed"] else "never"
        if r["analyze_age_s"] is None:
            offenders.append(f"{r['relname']}: {mods} rows changed and never analyzed (last vacuum: {vacuumed})")
            continue
        age_h = r["analyze_age_s"] / 3600
        changed.append(f"{r['relname']} analyzed {duration(r['analyze_age_s'])} ago")
        if age_h > limit_h:
            offenders.append(
                f"{r['relname']}: {mods} rows changed since it was last analyzed {duration(r['analyze_age_s'])} ago "
                f"(last vacuum: {vacuumed})"
            )
    missing = sorted(set(hot) - {r["relname"] for r in rows})
    worst = max((r["analyze_age_s"] or 0.0 for r in rows if int(r["n_mod_since_analyze"]) > 0), default=0.0)
    if offenders:
        return CheckResult.failed(
            f"hot tables with changes have not been analyzed within {limit_h:g} h (smoke.max_vacuum_age_h): "
            f"{'; '.join(offenders)}. Run VACUUM (ANALYZE) on them, then find why autovacuum skips them "
            "(autovacuum off, autovacuum_enabled=false on the table, or workers busy elsewhere)",
            measured=round(worst / 3600, 4),
            threshold=limit_h,
        )
    detail = f": {', '.join(changed)}" if changed else ": none changed since its last analyze, nothing to do"
    gone = f"; not found in the search path: {', '.join(missing)}" if missing else ""
    return CheckResult.passed(
        f"hot tables with changes were analyzed within {limit_h:g} h{detail}{gone}",
        measured=round(worst / 3600, 4),
        threshold=limit_h,
    )


@check("health.sequences", title="No sequence is near exhaustion", feature=FEATURE, category=CATEGORY, severity="critical")
async def sequences(ctx: CheckContext) -> CheckResult:
    """When a sequence reaches its limit every INSERT into its table fails: the game stops
    creating games or recording moves. Found early, it is a routine migration."""
    limit = ctx.settings.max_sequence_usage
    rows = await ctx.conn.fetch(
        """
        SELECT schemaname || '.' || sequencename AS name, data_type::text AS data_type,
               last_value, min_value, max_value, increment_by
        FROM pg_sequences
        """
    )
    used: list[tuple[str, float, Mapping[str, Any]]] = []
    unread: list[str] = []
    for r in rows:
        if r["last_value"] is None:
            unread.append(r["name"])  # never used yet, or no USAGE/SELECT privilege on it
            continue
        end = r["max_value"] if r["increment_by"] > 0 else r["min_value"]
        usage = float(r["last_value"]) / float(end) if end else 0.0
        used.append((r["name"], usage, r))
    used.sort(key=lambda item: item[1], reverse=True)
    offenders = [
        f"{name} is {usage:.1%} used ({r['last_value']} of {r['max_value'] if r['increment_by'] > 0 else r['min_value']}, {r['data_type']})"
        for name, usage, r in used
        if usage > limit
    ]
    worst = round(used[0][1], 6) if used else 0.0
    if offenders:
        return CheckResult.failed(
            f"{len(offenders)} sequence(s) past {limit:.0%} of their range (smoke.max_sequence_usage): "
            f"{sample(offenders)}. When one runs out, every INSERT into its table fails: widen it now "
            "(ALTER SEQUENCE <name> AS bigint MAXVALUE 9223372036854775807, and the column to bigint) in a migration",
            measured=worst,
            threshold=limit,
        )
    top = f", fullest {used[0][0]} at {used[0][1]:.4%}" if used else ""
    skipped = f"; {len(unread)} not used yet or not readable by this role ({sample(unread, 5)})" if unread else ""
    return CheckResult.passed(f"{len(used)} sequence(s) checked{top}{skipped}", measured=worst, threshold=limit)


_AUTOVACUUM_OFF = """
SELECT c.relname AS table_name,
       array_to_string(ARRAY(SELECT o FROM unnest(c.reloptions) AS o
                             WHERE o ~* '^autovacuum_enabled=(false|off|no|0)$'), ', ') AS table_option,
       array_to_string(ARRAY(SELECT o FROM unnest(t.reloptions) AS o
                             WHERE o ~* '^autovacuum_enabled=(false|off|no|0)$'), ', ') AS toast_option
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
WHERE n.nspname = $1 AND c.relkind IN ('r', 'm')
  AND (EXISTS (SELECT 1 FROM unnest(c.reloptions) AS o WHERE o ~* '^autovacuum_enabled=(false|off|no|0)$')
       OR EXISTS (SELECT 1 FROM unnest(t.reloptions) AS o WHERE o ~* '^autovacuum_enabled=(false|off|no|0)$'))
ORDER BY c.relname
"""


@check("health.autovacuum_enabled", title="Autovacuum runs, for the server and every table", feature=FEATURE,
       category=CATEGORY, severity="critical")
async def autovacuum_enabled(ctx: CheckContext) -> CheckResult:
    """With autovacuum off (server-wide, or per table with ``autovacuum_enabled = false``,
    often left by a bulk load) dead rows pile up, statistics go stale and, on that table,
    the transaction-ID age grows until PostgreSQL forces a wraparound vacuum or stops
    accepting writes. ``track_counts`` off blinds autovacuum the same way. Nothing fails
    at the moment it is switched off, which is why it is checked after every deploy."""
    settings = {r["name"]: r for r in await ctx.conn.fetch(
        "SELECT name, setting, source FROM pg_settings WHERE name IN ('autovacuum', 'track_counts')")}
    schema = await app_schema(ctx.conn)
    rows = await ctx.conn.fetch(_AUTOVACUUM_OFF, schema)
    problems, fixes = [], []
    for name in ("autovacuum", "track_counts"):
        row = settings.get(name)
        if row is not None and row["setting"] != "on":
            problems.append(f"{name} is {row['setting']} on the server (source: {row['source']})")
            fixes.append(f"ALTER SYSTEM SET {name} = on (or fix postgresql.conf); SELECT pg_reload_conf()")
    for r in rows:
        where = " and ".join(part for part in (
            f"table ({r['table_option']})" if r["table_option"] else "",
            f"its TOAST table ({r['toast_option']})" if r["toast_option"] else "") if part)
        problems.append(f"autovacuum is off for {qualified(schema, r['table_name'])}: {where}")
        resets = ["autovacuum_enabled"] * bool(r["table_option"]) + ["toast.autovacuum_enabled"] * bool(r["toast_option"])
        fixes.append(f"ALTER TABLE {qualified(schema, r['table_name'])} RESET ({', '.join(resets)})")
    if not problems:
        return CheckResult.passed(f"autovacuum and track_counts are on, and no table in schema {schema} opts out",
                                  measured=0, threshold=0)
    return CheckResult.failed(
        f"{'; '.join(problems[:_SHOWN])}{f' (and {len(problems) - _SHOWN} more)' if len(problems) > _SHOWN else ''}: "
        "dead rows and transaction-ID age grow unchecked there. Run "
        f"{'; '.join(dict.fromkeys(fixes))}, then VACUUM (ANALYZE) the tables it skipped",
        measured=len(problems),
        threshold=0,
        evidence={"autovacuum off": "\n".join(problems) + "\n"},
    )


@check("health.prepared_transactions", title="No prepared transaction is left behind", feature=FEATURE,
       category=CATEGORY, severity="critical")
async def prepared_transactions(ctx: CheckContext) -> CheckResult:
    """A two-phase transaction that was prepared and never committed or rolled back
    outlives every session and every restart: it keeps its locks (writers to those rows
    wait for ever) and holds back vacuum and the transaction-ID horizon for the whole
    cluster. Older than ``smoke.long_transaction_s`` is left behind by a coordinator that
    died, not in flight."""
    limit = ctx.settings.long_transaction_s
    rows = await ctx.conn.fetch(
        """
        SELECT gid, owner, database, extract(epoch FROM now() - prepared)::float8 AS age_s,
               age(transaction::text::xid) AS xid_age
        FROM pg_prepared_xacts
        ORDER BY prepared
        """
    )
    old = [r for r in rows if r["age_s"] > limit]
    if not old:
        in_flight = f"; {len(rows)} younger, in flight" if rows else ""
        return CheckResult.passed(
            f"no prepared transaction older than {duration(limit)} (smoke.long_transaction_s){in_flight}",
            measured=round(rows[0]["age_s"], 1) if rows else 0.0, threshold=limit)
    names = [f"{r['gid']!r} in database {r['database']} by {r['owner']}, prepared {duration(r['age_s'])} ago" for r in old]
    fixes = "; ".join(f"ROLLBACK PREPARED '{r['gid']}'" for r in old[:_SHOWN])
    return CheckResult.failed(
        f"{len(old)} prepared transaction(s) older than {duration(limit)} (smoke.long_transaction_s): {sample(names)}. "
        "They hold their locks and the cluster's vacuum horizon until resolved. Ask the coordinator that prepared "
        f"them whether they committed; then run COMMIT PREPARED or {fixes} (as a superuser or their owner, "
        "connected to their database)",
        measured=round(old[0]["age_s"], 1),
        threshold=limit,
        evidence={"prepared transactions": "\n".join(
            f"{r['gid']} db={r['database']} owner={r['owner']} age={r['age_s']:.0f}s xid_age={r['xid_age']}" for r in rows) + "\n"},
    )


_ADVISORY = """
SELECT l.pid, a.usename, a.application_name, host(a.client_addr) AS client_addr, a.state, a.query,
       CASE WHEN l.objsubid = 1 THEN ((l.classid::int8 << 32) | l.objid::int8)::text
            ELSE l.classid::text || ', ' || l.objid::text END AS lock_key,
       l.mode, l.classid = $1::oid AND l.objsubid = 2 AS hokmdb,
       extract(epoch FROM now() - a.state_change)::float8 AS state_age_s
FROM pg_locks l
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY a.state_change NULLS FIRST
"""


@check("health.advisory_locks", title="No advisory lock is held by a session that stopped working", feature=FEATURE,
       category=CATEGORY)
async def advisory_locks(ctx: CheckContext) -> CheckResult:
    """Job schedulers and workers serialise with advisory locks (``pg_try_advisory_lock``):
    a worker that hung, or a pooled connection that kept a session lock after its job died,
    makes every next run skip silently; nobody waits, so ``health.blocked_locks`` sees
    nothing. Held by a session idle for longer than ``smoke.advisory_lock_idle_s``, the lock
    outlived its job. Holders in ``smoke.advisory_lock_holders`` (a leader election) and
    hokmdb's own deploy lock (a deploy holds it on an idle session) are listed, not failed."""
    limit = ctx.settings.advisory_lock_idle_s
    allowed = set(ctx.settings.advisory_lock_holders)
    rows = await ctx.observer.fetch(_ADVISORY, HOKMDB_LOCK_NAMESPACE)
    if not rows:
        return CheckResult.passed("no advisory lock is held in this database", measured=0, threshold=limit)
    evidence = {"advisory locks": "\n".join(
        f"key {r['lock_key']} {r['mode']} pid {r['pid']} {r['application_name'] or '?'} {r['state'] or '?'} "
        f"for {duration(r['state_age_s']) if r['state_age_s'] is not None else '?'}" for r in rows) + "\n"}
    own = [r for r in rows if not r["hokmdb"] and r["application_name"] not in allowed]
    stale = [r for r in own if r["state"] in ("idle", "idle in transaction", "idle in transaction (aborted)")
             and r["state_age_s"] is not None and r["state_age_s"] > limit]
    if stale:
        described = [f"key {r['lock_key']} held by {_who(r)}, {r['state']} for {duration(r['state_age_s'])}, last query: "
                     f"{snippet(r['query'])}" for r in stale[:_SHOWN]]
        more = f" (and {len(stale) - _SHOWN} more)" if len(stale) > _SHOWN else ""
        pids = ", ".join(str(r["pid"]) for r in stale[:_SHOWN])
        return CheckResult.failed(
            f"{len(stale)} advisory lock(s) in database {ctx.target.dbname} held by sessions idle for longer than "
            f"{duration(limit)} (smoke.advisory_lock_idle_s): {'; '.join(described)}{more}. The job that took them "
            "is not working; the next run that tries the lock skips. Find the client by pid/application and release "
            f"it there (pg_advisory_unlock), or end the session: SELECT pg_terminate_backend(pid) for {pids}. A lock "
            "held for ever on purpose (a leader election): add its application_name to smoke.advisory_lock_holders",
            measured=round(max(r["state_age_s"] for r in stale), 1), threshold=limit, evidence=evidence)
    unseen = [r for r in own if r["state"] is None]
    if unseen:
        return CheckResult.skipped(
            f"{len(unseen)} advisory lock(s) held by sessions whose state this role cannot see "
            f"(pids {', '.join(str(r['pid']) for r in unseen[:_SHOWN])}); {ctx.monitor_hint()}",
            measured=0, threshold=limit, evidence=evidence)
    return CheckResult.passed(
        f"{len(rows)} advisory lock(s) held, none by a session idle for longer than {duration(limit)} "
        "(smoke.advisory_lock_idle_s)", measured=0, threshold=limit, evidence=evidence)


_SUBSCRIPTIONS = """
SELECT s.subname, s.subenabled, array_to_string(s.subpublications, ', ') AS publications,
       w.pid, extract(epoch FROM now() - w.last_msg_receipt_time)::float8 AS silent_s,
       e.apply_error_count, e.sync_error_count
FROM pg_subscription s
LEFT JOIN pg_stat_subscription w ON w.subid = s.oid AND w.relid IS NULL
LEFT JOIN pg_stat_subscription_stats e ON e.subid = s.oid
WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY s.subname
"""


@check("health.subscriptions_running", title="Logical subscriptions are enabled and their apply workers run",
       feature=FEATURE, category=CATEGORY, severity="critical")
async def subscriptions_running(ctx: CheckContext) -> CheckResult:
    """A subscription that was disabled (by hand, or by ``disable_on_error`` after a
    conflict) or whose apply worker keeps dying (the publisher is gone, a row conflicts)
    stops copying data into this database and says so only in the server log. Its slot on
    the publisher meanwhile keeps WAL there."""
    rows = await ctx.observer.fetch(_SUBSCRIPTIONS)
    if not rows:
        return CheckResult.passed("no logical subscription in this database", measured=0, threshold=0)
    problems, fixes = [], []
    for r in rows:
        name = quote_ident(r["subname"])
        errors = f"; {r['apply_error_count']} apply and {r['sync_error_count']} sync errors so far" if r["apply_error_count"] or r["sync_error_count"] else ""
        if not r["subenabled"]:
            problems.append(f"{r['subname']} (publications {r['publications']}) is disabled{errors}")
            fixes.append(f"ALTER SUBSCRIPTION {name} ENABLE")
        elif r["pid"] is None:
            problems.append(f"{r['subname']} (publications {r['publications']}) is enabled but its apply worker is not "
                            f"running{errors}")
            fixes.append(f"read the server log for {r['subname']}'s error (publisher unreachable, a conflicting row)")
    evidence = {"subscriptions": "\n".join(
        f"{r['subname']} enabled={r['subenabled']} worker_pid={r['pid']} apply_errors={r['apply_error_count']}" for r in rows) + "\n"}
    if problems:
        return CheckResult.failed(
            f"{len(problems)} of {len(rows)} subscription(s) in database {ctx.target.dbname} copy nothing: "
            f"{'; '.join(problems)}. Fix: {'; '.join(fixes)}; a subscription nobody needs: ALTER SUBSCRIPTION ... "
            "DISABLE, then DROP SUBSCRIPTION (as its owner), so its slot on the publisher stops keeping WAL",
            measured=len(problems), threshold=0, evidence=evidence)
    return CheckResult.passed(f"{len(rows)} subscription(s), each enabled with its apply worker running",
                              measured=0, threshold=0, evidence=evidence)


# Settings that trade crash safety for speed: what each loses, and the value that keeps it.
_CRASH_SAFETY = {
    "fsync": ("on", "an operating-system crash or power loss can corrupt the whole cluster"),
    "full_page_writes": ("on", "a crash during a page write can leave torn pages that recovery cannot repair"),
    "synchronous_commit": ("on", "commits the game server was told succeeded can be lost in a crash"),
}


@check("health.crash_safe_settings", title="The server does not trade crash safety for speed", feature=FEATURE,
       category=CATEGORY, severity="critical")
async def crash_safe_settings(ctx: CheckContext) -> CheckResult:
    """``fsync``, ``full_page_writes`` and ``synchronous_commit`` off make writes faster and
    crashes expensive: corruption for the first two, lost acknowledged moves for the third.
    They are read as the server starts sessions (``reset_val``: a session's own ``SET`` does
    not count; ``synchronous_commit`` of ``remote_write``, ``remote_apply`` or ``local`` keep
    the commit on local disk and pass). Development and testing turn the requirement off
    (``smoke.require_crash_safety``): hokmdb's throwaway clusters run without these."""
    rows = {r["name"]: r for r in await ctx.conn.fetch(
        "SELECT name, reset_val, source, format('%I', session_user) AS role, format('%I', current_database()) AS db "
        "FROM pg_settings WHERE name = ANY($1::text[])", list(_CRASH_SAFETY))}
    off = [(name, rows[name]) for name in _CRASH_SAFETY if name in rows and rows[name]["reset_val"] == "off"]
    if not off:
        return CheckResult.passed("fsync, full_page_writes and synchronous_commit keep commits crash-safe",
                                  measured=0, threshold=0)
    if not ctx.settings.require_crash_safety:
        return CheckResult.passed(
            f"{', '.join(name for name, _ in off)} off, allowed here (smoke.require_crash_safety = false in the "
            f"{ctx.config.environment} environment)", measured=len(off), threshold=None)
    # A value set on the session's role or database (only synchronous_commit can be: the other two
    # are server-wide) wins over the server's: ALTER SYSTEM would not change it for the game.
    described, server_wide, removals = [], [], []
    for name, row in off:
        override = session_override(name, row["source"], role=row["role"], database=row["db"])
        if override is None:
            described.append(f"{name} = off (source: {row['source']}): {_CRASH_SAFETY[name][1]}")
            server_wide.append(f"ALTER SYSTEM SET {name} = on")
        else:
            where, fix, who = override
            described.append(f"{name} = off, {where}: {_CRASH_SAFETY[name][1]}")
            removals.append(f"{fix} ({who})" if who else fix)
    fixes = []
    if removals:
        fixes.append("; ".join(removals) + " (sessions that start afterwards get the server's value)")
    if server_wide:
        fixes.append(f"{'; '.join(server_wide)}; SELECT pg_reload_conf() (as a superuser; remove any per-database or "
                     "per-role override too)")
    return CheckResult.failed(
        f"the server trades crash safety for speed: {'; '.join(described)}. Run {', and '.join(fixes)}, or set "
        "smoke.require_crash_safety = false for an environment whose data may be lost",
        measured=len(off),
        threshold=0,
    )


@check("health.data_checksums", title="Data checksums are on", feature=FEATURE, category=CATEGORY, severity="critical")
async def data_checksums(ctx: CheckContext) -> CheckResult:
    """Without checksums a page the disk or the kernel corrupted is read as data: wrong results,
    or a crash much later, and a backup copies the damage. With them, the read that meets it
    fails with the page named. They are set when the cluster is created (``initdb
    --data-checksums``; hokmdb's clusters are) or enabled offline (``pg_checksums --enable``)."""
    state = await ctx.conn.fetchval("SELECT current_setting('data_checksums')")
    required = ctx.settings.require_data_checksums
    if required is None:
        required = ctx.config.is_protected
    if state == "on":
        return CheckResult.passed("data checksums are on: a corrupted page fails the read that meets it",
                                  measured=1, threshold=1)
    if not required:
        return CheckResult.passed(f"data checksums are off, allowed in the {ctx.config.environment} environment "
                                  "(smoke.require_data_checksums)", measured=0, threshold=None)
    return CheckResult.failed(
        "data checksums are off: a page corrupted on disk is read as data, and every backup copies it. Stop the "
        "server and run pg_checksums --enable -D <data directory> (PostgreSQL 12+; it rewrites every file, so "
        "plan the time, or do it on a standby and switch over), or set smoke.require_data_checksums = false for an "
        "environment whose data may be lost",
        measured=0, threshold=1)


CHECKS: list[CheckFunction] = [
    data_checksums,
    long_transactions,
    idle_in_transaction,
    blocked_locks,
    xid_age,
    replication,
    dead_tuples,
    vacuum_age,
    sequences,
    autovacuum_enabled,
    prepared_transactions,
    crash_safe_settings,
    advisory_locks,
    subscriptions_running,
]
