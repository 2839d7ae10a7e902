"""``hokmdb runbook daily|weekly|pre-deploy|post-deploy|incident``: the operators' runbooks
over every environment, as commands (pre-deploy and post-deploy: ``runbook_deploy.py``;
incident: ``runbook_incident.py``; the steps they share: ``runbook_steps.py``).

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
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from pytest_hokmdb.cli.runbook_steps import Row, attempt, backup, last_deploy, over_environments, smoke
from pytest_hokmdb.config import ENVIRONMENTS, LoadedConfig
from pytest_hokmdb.errors import ExitCode
from pytest_hokmdb.redaction import redact


async def _daily(loaded: LoadedConfig) -> list[Row]:
    return [row for name, step in (("smoke", smoke), ("backup", backup), ("last deploy", last_deploy))
            for row in await attempt(loaded, name, step)]


async def daily(environments: list[str], config_path: str | None) -> list[Row]:
    return await over_environments(environments, config_path, _daily)


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
    return await over_environments(environments, config_path,
                                   lambda loaded: attempt(loaded, "weekly", lambda it: _weekly(it, approved)))


RUNBOOKS = ("daily", "weekly", "pre-deploy", "post-deploy", "incident")


def add_runbook_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    runbook = sub.add_parser("runbook", help="the operators' runbooks as commands: daily (the morning checklist), "
                             "weekly (ANALYZE where stale; bloat, duplicate and unused indexes), pre-deploy and "
                             "post-deploy (the deployment day's checklists), incident (read-only facts, first)")
    runbook.add_argument("name", choices=RUNBOOKS)
    runbook.add_argument("--approve", action="store_true", help="weekly on production: run the ANALYZE it would run")
    runbook.add_argument("--target-revision", default="head", metavar="REV",
                         help="pre-deploy and post-deploy: the revision being deployed (default: head)")
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
    if args.name in ("pre-deploy", "post-deploy"):
        from pytest_hokmdb.migrate import check_revision

        check_revision(args.target_revision, project_root=root)  # exit 2 before any connection
    environments = args.environments or [e for e in ENVIRONMENTS
                                         if config_path_for(e, args.config_path, root).is_file()]
    started = time.time()
    if args.name == "daily":
        rows = await daily(environments, args.config_path)
    elif args.name == "weekly":
        rows = await weekly(environments, args.config_path, approved=args.approve)
    elif args.name == "incident":
        from pytest_hokmdb.cli.runbook_incident import incident

        rows = await incident(environments, args.config_path)
    else:
        from pytest_hokmdb.cli.runbook_deploy import post_deploy, pre_deploy

        run = pre_deploy if args.name == "pre-deploy" else post_deploy
        rows = await run(environments, args.config_path, args.target_revision)
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
