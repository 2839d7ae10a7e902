"""``hokmdb runbook incident``: the first five minutes of an incident, read-only.

Per environment: can the server be reached (and how fast, which role it plays), who is
connected and what the oldest work is, the live checks an incident turns on (connection,
health and topology groups: blocked locks, long and idle transactions, wraparound, standbys,
pooler, Patroni), whether a deploy is running or left maintenance mode on, how the last
deploy ended, and the newest backup with the command that restores it. Nothing is changed:
the commands that would change something are printed for a person to choose.
"""

from __future__ import annotations

import re
import time

from pytest_hokmdb.cli.runbook_steps import (
    Row,
    attempt,
    deploy_state,
    last_deploy,
    over_environments,
    restore_point,
)
from pytest_hokmdb.config import LoadedConfig

# The groups whose checks describe a server in trouble; the pool group opens a full pool of
# connections, which an incident must not add to a server short of them.
GROUPS = ("connection", "health", "topology")

_SERVER = """
SELECT current_setting('server_version') AS version, pg_is_in_recovery() AS standby,
       pg_postmaster_start_time() AS started, current_setting('max_connections')::int AS max_connections
"""

_SESSIONS = """
SELECT count(*) AS total,
       count(*) FILTER (WHERE state = 'active') AS active,
       count(*) FILTER (WHERE state LIKE 'idle in transaction%') AS idle_in_transaction,
       count(*) FILTER (WHERE wait_event_type = 'Lock') AS waiting_on_locks
FROM pg_stat_activity WHERE backend_type = 'client backend'
"""

_OLDEST = """
SELECT pid, coalesce(usename::text, '?') AS role, coalesce(nullif(application_name, ''), '-') AS application, state,
       extract(epoch FROM now() - coalesce(xact_start, query_start))::float8 AS age_s,
       coalesce(wait_event_type || ':' || wait_event, '') AS waiting, pg_blocking_pids(pid) AS blocked_by,
       left(query, 200) AS query
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND state IS DISTINCT FROM 'idle'
ORDER BY coalesce(xact_start, query_start) NULLS LAST
LIMIT 3
"""

_LITERAL = re.compile(r"'(?:[^']|'')*'")


def _excerpt(query: str | None) -> str:
    """A query's text with every string literal masked: it may carry a password or a player's data."""
    text = " ".join(_LITERAL.sub("'?'", query or "").split())
    return text[:100] + ("…" if len(text) > 100 else "")


async def _server(loaded: LoadedConfig) -> list[Row]:
    from pytest_hokmdb.db import connect, resolve_monitor_target, resolve_target

    env = loaded.config.environment
    target = await resolve_target(loaded)
    t0 = time.monotonic()
    conn = await connect(await resolve_monitor_target(loaded, target) or target)
    try:
        connect_ms = (time.monotonic() - t0) * 1000
        server = await conn.fetchrow(_SERVER)
        sessions = await conn.fetchrow(_SESSIONS)
        oldest = await conn.fetch(_OLDEST)
    finally:
        await conn.close()
    rows = [Row(env, "server", "ok", f"PostgreSQL {server['version']}, {'a STANDBY' if server['standby'] else 'primary'}"
                f", up since {server['started']:%Y-%m-%d %H:%M %Z}, connected in {connect_ms:.0f} ms ({target.dsn()})")]
    detail = (f"{sessions['total']} of max_connections {server['max_connections']} ({sessions['active']} active, "
              f"{sessions['idle_in_transaction']} idle in transaction, {sessions['waiting_on_locks']} waiting on a lock)")
    for r in oldest:
        blocked = f", blocked by pid {', '.join(map(str, r['blocked_by']))}" if r["blocked_by"] else ""
        waiting = f", waiting on {r['waiting']}" if r["waiting"] else ""
        detail += (f"; pid {r['pid']} ({r['application']}, role {r['role']}) {r['state']} for {r['age_s']:.0f} s"
                   f"{waiting}{blocked}: {_excerpt(r['query'])}")
    if oldest:
        detail += " (to end one: SELECT pg_cancel_backend(pid), then pg_terminate_backend(pid))"
    rows.append(Row(env, "sessions", "ok", detail))
    return rows


async def _checks(loaded: LoadedConfig) -> list[Row]:
    from pytest_hokmdb.checks.catalog import groups
    from pytest_hokmdb.checks.direct import run_checks
    from pytest_hokmdb.db import resolve_target

    env = loaded.config.environment
    known = groups(loaded.project_root)
    checks = [c for name in GROUPS for c in known[name]]
    results = await run_checks(loaded, await resolve_target(loaded), checks)
    rows = [Row(env, f"check {r.check}", "attention", r.message) for r in results if r.status == "failed"]
    passed = sum(r.status == "passed" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    rows.insert(0, Row(env, "checks", "attention" if rows else "ok",
                       f"{passed} passed, {len(rows)} failed, {skipped} skipped ({', '.join(GROUPS)} groups)"))
    return rows


async def _incident(loaded: LoadedConfig) -> list[Row]:
    rows = await attempt(loaded, "server", _server)
    if rows[0].status == "ok":
        for name, step in (("checks", _checks), ("deploy lock", deploy_state), ("last deploy", last_deploy)):
            rows += await attempt(loaded, name, step)
    # Backups live outside the server: worth knowing even when it is down.
    return rows + await attempt(loaded, "restore point", restore_point)


async def incident(environments: list[str], config_path: str | None) -> list[Row]:
    return await over_environments(environments, config_path, _incident)
