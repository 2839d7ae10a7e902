"""``hokmdb runbook daily``: the operators' morning checklist over every environment, as one command.

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


def add_runbook_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    runbook = sub.add_parser("runbook", help="the operators' runbooks as commands: daily (the morning checklist)")
    runbook.add_argument("name", choices=("daily",))
    runbook.add_argument("--environment", action="append", choices=ENVIRONMENTS, dest="environments",
                         help="repeat for several; default: every environment whose config is present")
    runbook.add_argument("--config", "--db-config", dest="config_path", default=None, metavar="PATH")
    runbook.add_argument("--json", dest="json_path", type=Path, default=None, metavar="PATH",
                         help="write the result here (default: database/logs/runbook_daily_<time>.json)")


async def run_runbook(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pytest_hokmdb.config.loader import config_path_for, find_project_root

    root = find_project_root()
    environments = args.environments or [e for e in ENVIRONMENTS
                                         if config_path_for(e, args.config_path, root).is_file()]
    started = time.time()
    rows = await daily(environments, args.config_path)
    needs_person = [r for r in rows if r.status == "attention"]
    table = Table(title=f"hokmdb runbook daily: {'NEEDS A PERSON' if needs_person else 'all clear'}")
    for column in ("environment", "step", "status", "detail"):
        table.add_column(column, overflow="fold")
    style = {"ok": "green", "attention": "red", "skipped": "yellow"}
    for r in rows:
        table.add_row(r.environment, r.step, f"[{style[r.status]}]{r.status}[/]", redact(r.detail))
    Console(width=160).print(table)
    path = args.json_path or root / "database" / "logs" / f"runbook_daily_{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runbook": "daily", "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
                                "duration_s": round(time.time() - started, 3), "needs_person": bool(needs_person),
                                "rows": [{**asdict(r), "detail": redact(r.detail)} for r in rows]}, indent=2))
    print(f"result: {path}")
    return int(ExitCode.CHECKS_FAILED) if needs_person else int(ExitCode.OK)
