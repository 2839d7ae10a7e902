"""The steps the runbooks share: one row per step and environment, saying what was found and,
when something needs a person, what to do. Each step either looks and judges, or says it
could not look (which needs a person too: a runbook that could not look has not passed)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pytest_hokmdb.config import LoadedConfig, load_config
from pytest_hokmdb.errors import HokmdbError

Status = Literal["ok", "attention", "skipped"]


@dataclass
class Row:
    environment: str
    step: str
    status: Status
    detail: str


def failed(env: str, step: str, exc: HokmdbError) -> Row:
    """An expected error as the row of the step that met it, with its hint."""
    return Row(env, step, "attention", exc.message + (f" (hint: {exc.hint})" if exc.hint else ""))


async def attempt(loaded: LoadedConfig, name: str, step: Callable[[LoadedConfig], Any]) -> list[Row]:
    """One step (sync or async, one row or several); an expected error becomes its row."""
    try:
        result = step(loaded)
        if inspect.isawaitable(result):
            result = await result
    except HokmdbError as exc:
        return [failed(loaded.config.environment, name, exc)]
    return result if isinstance(result, list) else [result]


async def over_environments(environments: list[str], config_path: str | None,
                            runbook: Callable[[LoadedConfig], Awaitable[list[Row]]]) -> list[Row]:
    """A runbook's rows for each environment in turn; a config that does not load is its row."""
    rows: list[Row] = []
    for env in environments:
        try:
            loaded = load_config(env, config_path)
        except HokmdbError as exc:
            rows.append(failed(env, "config", exc))
            continue
        rows.extend(await runbook(loaded))
    return rows


def smoke(loaded: LoadedConfig, target_revision: str | None = None) -> Row:
    """The smoke suite through pytest, the gate the scripts use (read-only)."""
    from pytest_hokmdb.gate import run_gate

    env = loaded.config.environment
    result = run_gate(loaded, "smoke", extra_args=[f"--target-revision={target_revision}"] if target_revision else None)
    if not result.document:
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        return Row(env, "smoke", "attention", f"the suite could not run: {lines[-1] if lines else 'no output'}")
    failed = [t.get("check") or t["nodeid"] for t in result.tests if t["outcome"] in ("failed", "error")]
    summary = ", ".join(f"{v} {k}" for k, v in sorted(result.summary.items()))
    if failed:
        return Row(env, "smoke", "attention", f"{len(failed)} failed: {', '.join(failed[:5])} ({summary}); "
                   f"details: python database/smoke_tests.py --environment {env}")
    return Row(env, "smoke", "ok", summary)


def _age_h(created_at: datetime) -> float:
    return (datetime.now(UTC) - created_at).total_seconds() / 3600


def backup(loaded: LoadedConfig) -> Row:
    """The newest backup judged against ``backup.max_age_h``: young enough and verified."""
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
    age_h = _age_h(newest.created_at)
    problems = []
    if age_h > limit:
        problems.append(f"the newest is {age_h:.1f} h old, over backup.max_age_h = {limit:g}")
    if not newest.verified:
        problems.append(f"its verification: {newest.verified_label()} "
                        f"(python database/backup.py --environment {env} --verify-existing {newest.id})")
    if problems:
        return Row(env, "backup", "attention", f"{newest.id}: {'; '.join(problems)}")
    return Row(env, "backup", "ok", f"{newest.id}, {age_h:.1f} h old, verified ({newest.verified_label()})")


def restore_point(loaded: LoadedConfig) -> Row:
    """The newest backup an incident could restore, with the command that restores it; none at
    all needs a person (a failed deploy could then only be rolled back by downgrading)."""
    from pytest_hokmdb.backup import list_backups

    env = loaded.config.environment
    records = list_backups(loaded)
    if not records and loaded.config.backup.max_age_h is None:
        return Row(env, "restore point", "skipped", "no backup, and none is expected here (backup.max_age_h is not set)")
    if not records:
        return Row(env, "restore point", "attention", "no backup to restore from; take one now if the database "
                   f"still serves: python database/backup.py --environment {env} --verify quick")
    newest = records[0]
    return Row(env, "restore point", "ok" if newest.verified else "attention",
               f"{newest.id}, {_age_h(newest.created_at):.1f} h old, verification: {newest.verified_label()}; "
               f"restore: python database/rollback.py restore --environment {env} {newest.id}")


async def last_deploy(loaded: LoadedConfig) -> Row:
    """The last run recorded in ``hokmdb_deploy_history``; one that did not succeed needs a person."""
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
    if row["result"] == "succeeded":
        return Row(env, "last deploy", "ok", detail)
    return Row(env, "last deploy", "attention", f"{detail}; its log: {loaded.config.deploy.log_dir}; to roll back: "
               f"python database/rollback.py emergency {env} \"reason\"")


async def deploy_state(loaded: LoadedConfig) -> list[Row]:
    """Whether a deploy holds the deploy lock now, and whether maintenance mode is on (a deploy
    killed mid-way leaves it on, and the game then refuses its players)."""
    from pytest_hokmdb.db import connect, resolve_target
    from pytest_hokmdb.deploy import maintenance
    from pytest_hokmdb.deploy.lock import lock_holders

    env = loaded.config.environment
    conn = await connect(await resolve_target(loaded))
    try:
        holders = await lock_holders(conn)
        mode = await maintenance.state(conn)
    finally:
        await conn.close()
    rows = [Row(env, "deploy lock", "attention", f"a deploy is running now: {holders[0].describe()}; wait for it, "
                "or ask its owner") if holders else Row(env, "deploy lock", "ok", "free: no deploy is running")]
    if mode is not None and mode.enabled:
        rows.append(Row(env, "maintenance mode", "attention", f"on, since deploy #{mode.deploy_id} by {mode.actor}"
                        + ("" if holders else "; no deploy is running, so it was left on: switch it off with "
                           f"python database/rollback.py maintenance-off --environment {env}")))
    else:
        rows.append(Row(env, "maintenance mode", "ok", "off"))
    return rows
