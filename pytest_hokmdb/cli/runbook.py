"""``hokmdb runbook daily|weekly``: the operators' runbooks over every environment, as commands.

``daily`` is the morning checklist; ``weekly`` the maintenance the documentation leaves as
"add your maintenance queries here": ANALYZE where statistics are stale (on production only
with ``--approve``; without, it prints what it would do), and reports of bloat, duplicate
and unused indexes.

For each environment (the named ones, else every one whose config loads): the smoke suite
through pytest (the gate the scripts use, read-only), the newest backup (its age against
``backup.max_age_h`` and whether its verification passed), and the last deploy recorded in
``hokmdb_deploy_history``. One table, a JSON result, and exit 1 when something needs a
person; exit 0 only when every step that looked found nothing. A step that could not look
(a config that does not load, a server that cannot be reached) needs a person too.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pytest_hokmdb.config import ENVIRONMENTS, LoadedConfig, load_config
from pytest_hokmdb.errors import ExitCode, HokmdbError
from pytest_hokmdb.redaction import redact

Status = Literal["ok", "attention", "skipped"]


@dataclass
class Row:
    environment: str
    step: str
    status: Status
    detail: str


def _smoke(loaded: LoadedConfig) -> Row:
    from pytest_hokmdb.gate import run_gate

    env = loaded.config.environment
    result = run_gate(loaded, "smoke")
    if not result.document:
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        return Row(env, "smoke", "attention", f"the suite could not run: {lines[-1] if lines else 'no output'}")
    failed = [t.get("check") or t["nodeid"] for t in result.tests if t["outcome"] in ("failed", "error")]
    summary = ", ".join(f"{v} {k}" for k, v in sorted(result.summary.items()))
    if failed:
        return Row(env, "smoke", "attention", f"{len(failed)} failed: {', '.join(failed[:5])} ({summary}); "
                   f"details: python database/smoke_tests.py --environment {env}")
    return Row(env, "smoke", "ok", summary)


def _backup(loaded: LoadedConfig) -> Row:
    from pytest_hokmdb.backup import list_backups

    env = loaded.config.environment
    limit = loaded.config.backup.max_age_h
    if limit is None:
        return Row(env, "backup", "skipped", "backup.max_age_h is not set: no backup is expected here")
    records = list_backups(loaded)
    if not records:
        return Row(env, "backup", "attention", f"no backup at all (backup.max_age_h = {limit:g}); "
                   f"take one: python database/backup.py --environment {env} --verify quick")
    newest = records[0]
    age_h = (datetime.now(UTC) - newest.created_at).total_seconds() / 3600
    problems = []
    if age_h > limit:
        problems.append(f"the newest is {age_h:.1f} h old, over backup.max_age_h = {limit:g}")
    if not newest.verified:
        problems.append(f"its verification: {newest.verified_label()} "
                        f"(python database/backup.py --environment {env} --verify-existing {newest.id})")
    if problems:
        return Row(env, "backup", "attention", f"{newest.id}: {'; '.join(problems)}")
    return Row(env, "backup", "ok", f"{newest.id}, {age_h:.1f} h old, verified ({newest.verified_label()})")


async def _last_deploy(loaded: LoadedConfig) -> Row:
    from pytest_hokmdb.db import connect, resolve_target

    env = loaded.config.environment
    conn = await connect(await resolve_target(loaded))
    try:
        if not await conn.fetchval("SELECT to_regclass('hokmdb_deploy_history') IS NOT NULL"):
            return Row(env, "last deploy", "skipped", "no deploy recorded (hokmdb_deploy_history does not exist)")
        row = await conn.fetchrow("SELECT id, result, exit_code, final_revision, finished_at, actor "
                                  "FROM hokmdb_deploy_history ORDER BY id DESC LIMIT 1")
    finally:
        await conn.close()
    if row is None:
        return Row(env, "last deploy", "skipped", "no deploy recorded")
    when = f"{row['finished_at']:%Y-%m-%d %H:%M %Z}" if row["finished_at"] else "never finished"
    detail = f"#{row['id']} {row['result']} (exit {row['exit_code']}) by {row['actor']}, {when}, at {row['final_revision']}"
    return Row(env, "last deploy", "ok" if row["result"] == "succeeded" else "attention", detail)


async def daily(environments: list[str], config_path: str | None) -> list[Row]:
    rows: list[Row] = []
    for env in environments:
        try:
            loaded = load_config(env, config_path)
        except HokmdbError as exc:
            rows.append(Row(env, "config", "attention", exc.message))
            continue
        for step in (_smoke, _backup):
            try:
                rows.append(step(loaded))
            except HokmdbError as exc:
                rows.append(Row(env, step.__name__.strip("_"), "attention", exc.message))
        try:
            rows.append(await _last_deploy(loaded))
        except HokmdbError as exc:
            rows.append(Row(env, "last deploy", "attention", exc.message))
    return rows


_STALE = """
SELECT s.schemaname, s.relname, s.n_mod_since_analyze,
       pg_has_role(current_user, c.relowner, 'USAGE')
         OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS may_analyze
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.n_mod_since_analyze > current_setting('autovacuum_analyze_threshold')::float8
        + current_setting('autovacuum_analyze_scale_factor')::float8 * greatest(c.reltuples, 0)
ORDER BY s.n_mod_since_analyze DESC
"""

_DUPLICATES = """
SELECT n.nspname AS schema, t.relname AS table_name,
       array_agg(i.relname ORDER BY i.relname) AS indexes, pg_size_pretty(sum(pg_relation_size(i.oid))) AS size
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
GROUP BY n.nspname, t.relname, x.indkey::text, x.indclass::text, coalesce(pg_get_expr(x.indexprs, x.indrelid), ''),
         coalesce(pg_get_expr(x.indpred, x.indrelid), '')
HAVING count(*) > 1
"""

_UNUSED = """
SELECT s.schemaname, s.relname AS table_name, s.indexrelname AS index_name,
       pg_size_pretty(pg_relation_size(s.indexrelid)) AS size
FROM pg_stat_user_indexes s JOIN pg_index x ON x.indexrelid = s.indexrelid
WHERE s.idx_scan = 0 AND NOT x.indisunique AND NOT x.indisprimary AND pg_relation_size(s.indexrelid) > $1
ORDER BY pg_relation_size(s.indexrelid) DESC
"""

_BLOATED = """
SELECT schemaname || '.' || relname AS name, n_dead_tup, n_live_tup
FROM pg_stat_user_tables
WHERE n_live_tup + n_dead_tup >= $1 AND n_dead_tup::float8 / (n_live_tup + n_dead_tup) > $2
ORDER BY n_dead_tup DESC
"""

UNUSED_MIN_BYTES = 8 * 1024 * 1024  # smaller indexes cost little; listing them is noise


async def _weekly(loaded: LoadedConfig, approved: bool) -> list[Row]:
    from pytest_hokmdb.db import connect, resolve_target
    from pytest_hokmdb.db.resolve import resolve_owner_target

    env = loaded.config.environment
    smoke = loaded.config.smoke
    target = await resolve_owner_target(loaded, await resolve_target(loaded))  # ANALYZE needs the owner
    conn = await connect(target)
    rows: list[Row] = []
    try:
        found = await conn.fetch(_STALE)
        stale = [r for r in found if r["may_analyze"]]
        names = [f"{r['schemaname']}.{r['relname']}" for r in stale]
        if not_owned := [f"{r['schemaname']}.{r['relname']}" for r in found if not r["may_analyze"]]:
            rows.append(Row(env, "analyze", "attention", f"statistics stale, but role {target.user} does not own "
                            f"{', '.join(not_owned)}: ANALYZE needs the owner (set database.owner_user / DB_OWNER_USER)"))
        if not found:
            rows.append(Row(env, "analyze", "ok", "every table's statistics are within autovacuum's analyze threshold"))
        elif not stale:
            pass
        elif env == "production" and not approved:
            rows.append(Row(env, "analyze", "attention", f"would ANALYZE {', '.join(names)} (statistics stale); "
                            "on production only with --approve"))
        else:
            for name in names:
                schema, table = name.split(".", 1)
                await conn.execute(await conn.fetchval("SELECT format('ANALYZE %I.%I', $1::text, $2::text)", schema, table))
            rows.append(Row(env, "analyze", "ok", f"analyzed {', '.join(names)} (statistics were stale)"))
        duplicates = await conn.fetch(_DUPLICATES)
        if duplicates:
            rows.append(Row(env, "duplicate indexes", "attention", "; ".join(
                f"{d['schema']}.{d['table_name']}: {' = '.join(d['indexes'])} ({d['size']})" for d in duplicates)
                + ": drop all but one with DROP INDEX CONCURRENTLY in a migration"))
        else:
            rows.append(Row(env, "duplicate indexes", "ok", "none"))
        bloated = await conn.fetch(_BLOATED, smoke.dead_tuple_min_rows, smoke.max_dead_tuple_ratio)
        if bloated:
            rows.append(Row(env, "bloat", "attention", "; ".join(
                f"{b['name']}: {b['n_dead_tup']} dead, {b['n_live_tup']} live" for b in bloated)
                + f" (over smoke.max_dead_tuple_ratio = {smoke.max_dead_tuple_ratio:g}): VACUUM them and find why "
                "autovacuum falls behind"))
        else:
            rows.append(Row(env, "bloat", "ok", f"no table over smoke.max_dead_tuple_ratio = {smoke.max_dead_tuple_ratio:g}"))
        unused = await conn.fetch(_UNUSED, UNUSED_MIN_BYTES)
        rows.append(Row(env, "unused indexes", "ok", "; ".join(
            f"{u['schemaname']}.{u['index_name']} on {u['table_name']} ({u['size']})" for u in unused)
            + " never scanned since the statistics were reset: candidates to drop, after checking the standbys' use"
            if unused else "none over 8 MB unscanned"))
    finally:
        await conn.close()
    return rows


async def weekly(environments: list[str], config_path: str | None, *, approved: bool) -> list[Row]:
    rows: list[Row] = []
    for env in environments:
        try:
            rows.extend(await _weekly(load_config(env, config_path), approved))
        except HokmdbError as exc:
            rows.append(Row(env, "weekly", "attention", exc.message))
    return rows


def add_runbook_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    runbook = sub.add_parser("runbook", help="the operators' runbooks as commands: daily (the morning checklist), "
                             "weekly (ANALYZE where stale; bloat, duplicate and unused indexes)")
    runbook.add_argument("name", choices=("daily", "weekly"))
    runbook.add_argument("--approve", action="store_true", help="weekly on production: run the ANALYZE it would run")
    runbook.add_argument("--environment", action="append", choices=ENVIRONMENTS, dest="environments",
                         help="repeat for several; default: every environment whose config is present")
    runbook.add_argument("--config", "--db-config", dest="config_path", default=None, metavar="PATH")
    runbook.add_argument("--json", dest="json_path", type=Path, default=None, metavar="PATH",
                         help="write the result here (default: database/logs/runbook_<name>_<time>.json)")


async def run_runbook(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pytest_hokmdb.config.loader import config_path_for, find_project_root

    root = find_project_root()
    environments = args.environments or [e for e in ENVIRONMENTS
                                         if config_path_for(e, args.config_path, root).is_file()]
    started = time.time()
    if args.name == "daily":
        rows = await daily(environments, args.config_path)
    else:
        rows = await weekly(environments, args.config_path, approved=args.approve)
    needs_person = [r for r in rows if r.status == "attention"]
    table = Table(title=f"hokmdb runbook {args.name}: {'NEEDS A PERSON' if needs_person else 'all clear'}")
    for column in ("environment", "step", "status", "detail"):
        table.add_column(column, overflow="fold")
    style = {"ok": "green", "attention": "red", "skipped": "yellow"}
    for r in rows:
        table.add_row(r.environment, r.step, f"[{style[r.status]}]{r.status}[/]", redact(r.detail))
    Console(width=160).print(table)
    path = args.json_path or root / "database" / "logs" / f"runbook_{args.name}_{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runbook": args.name, "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
                                "duration_s": round(time.time() - started, 3), "needs_person": bool(needs_person),
                                "rows": [{**asdict(r), "detail": redact(r.detail)} for r in rows]}, indent=2))
    print(f"result: {path}")
    return int(ExitCode.CHECKS_FAILED) if needs_person else int(ExitCode.OK)
