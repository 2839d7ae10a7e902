"""After the migration, before the gate: vacuum and analyze exactly the tables it churned.

A backfill or a rewrite leaves dead row versions and stale statistics behind. Autovacuum
gets there eventually, but the gate runs now: judged on the migration's debris, a
correct deploy fails (``health.dead_tuples``) and the planner picks plans from statistics
of a table that no longer looks like that. So the deploy compares ``pg_stat_user_tables``
before and after migrating (or rolling back) and, for each table the migration changed:

* ``VACUUM (ANALYZE, SKIP_LOCKED)`` when it left at least ``VACUUM_MIN_DEAD`` dead rows and
  at least ``VACUUM_MIN_SHARE`` of the table's live rows: the dead rows are the cost;
* ``ANALYZE`` when only the statistics are stale (changed rows above ``ANALYZE_MIN_SHARE``);
* nothing for small changes, which autovacuum's own thresholds cover.

Both take SHARE UPDATE EXCLUSIVE, which blocks neither reads nor writes; ``SKIP_LOCKED``
skips a table that autovacuum is already vacuuming (it is doing the same job), and
``lock_timeout`` keeps it from queueing. A cleanup that fails is reported, never fatal: the
gate then shows what is left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace

import asyncpg

from pytest_hokmdb.db.connect import connect
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.redaction import redact

log = logging.getLogger("hokmdb.deploy.cleanup")

VACUUM_MIN_DEAD = 1000
VACUUM_MIN_SHARE = 0.05
ANALYZE_MIN_SHARE = 0.10
# Statistics reach pg_stat_user_tables when a backend reports them (at most once a second).
_STATS_SETTLE_S = 1.1

_STATS = """
SELECT s.relid::bigint AS relid, format('%I.%I', s.schemaname, s.relname) AS name, s.n_live_tup, s.n_dead_tup,
       s.n_tup_ins + s.n_tup_upd + s.n_tup_del AS changed, c.relfilenode::bigint AS filenode
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname NOT IN ('pg_catalog', 'information_schema')
"""


@dataclass(frozen=True)
class TableStats:
    name: str
    live: int
    dead: int
    changed: int
    filenode: int


async def table_stats(target: Target) -> dict[int, TableStats]:
    conn = await connect(replace(target, read_only=True))
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = await conn.fetch(_STATS)
    finally:
        await conn.close()
    return {r["relid"]: TableStats(r["name"], r["n_live_tup"], r["n_dead_tup"], r["changed"], r["filenode"]) for r in rows}


def plan(before: dict[int, TableStats], after: dict[int, TableStats]) -> list[tuple[str, str, str]]:
    """(table, command, why) for every table the migration churned enough to matter."""
    todo: list[tuple[str, str, str]] = []
    for relid, now in sorted(after.items(), key=lambda kv: kv[1].name):
        then = before.get(relid)
        changed = now.changed - (then.changed if then else 0)
        new_dead = now.dead - (then.dead if then else 0)
        rewritten = then is not None and then.filenode != now.filenode
        size = max(now.live, 1)
        if new_dead >= VACUUM_MIN_DEAD and new_dead >= VACUUM_MIN_SHARE * size:
            todo.append((now.name, "VACUUM (ANALYZE, SKIP_LOCKED)", f"{new_dead} dead rows left by the migration"))
        elif rewritten or changed >= ANALYZE_MIN_SHARE * size and changed >= VACUUM_MIN_DEAD:
            todo.append((now.name, "ANALYZE (SKIP_LOCKED)", "rewritten" if rewritten else f"{changed} rows changed"))
    return todo


async def tidy(target: Target, before: dict[int, TableStats], *, lock_timeout_ms: int) -> str:
    """Vacuum/analyze what the migration churned since ``before``; a one-line summary."""
    await asyncio.sleep(_STATS_SETTLE_S)
    try:
        todo = plan(before, await table_stats(target))
    except (asyncpg.PostgresError, OSError) as exc:
        log.warning("could not read table statistics after migrating: %s", redact(str(exc)))
        return f"not done: {redact(str(exc))}"
    if not todo:
        return "no table churned enough to need it"
    done: list[str] = []
    conn = await connect(replace(target, read_only=False, statement_timeout_ms=0, lock_timeout_ms=lock_timeout_ms))
    try:
        for table, command, why in todo:
            t0 = time.monotonic()
            try:
                await conn.execute(f"{command} {table}")
                done.append(f"{command.split(' ')[0]} {table} ({why}, {time.monotonic() - t0:.1f}s)")
                log.info("%s %s: %s, %.1fs", command, table, why, time.monotonic() - t0)
            except asyncpg.PostgresError as exc:
                log.warning("%s %s failed: %s (the gate shows what is left)", command, table, redact(str(exc)))
                done.append(f"{command.split(' ')[0]} {table} FAILED: {redact(str(exc))}")
    finally:
        await conn.close()
    return "; ".join(done)
