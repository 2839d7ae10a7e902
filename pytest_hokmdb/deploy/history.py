"""The tool's own tables: deploy history and the checksums of applied revisions.

Both live beside ``alembic_version`` and start with ``hokmdb_``, the prefix the schema
drift check ignores, so they never count as drift.

* ``hokmdb_deploy_history``: one row per deploy or migration rollback (who, from, to,
  result, exit code, duration, log path); written as ``running`` when the deploy takes its
  lock, so a killed deploy leaves a visible ``running`` row behind (the next deploy marks
  it ``abandoned``).
* ``hokmdb_applied_revisions``: the SHA-256 of each applied revision's file, recorded when
  the deploy applied it (or ``adopted`` the first time the tool sees a database migrated
  without it). A deploy refuses to run when the file of an applied revision has changed
  since, as Flyway's ``validate`` and Sqitch's ``check`` do: the database was built from
  different code than the checkout claims.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from alembic.script import ScriptDirectory

log = logging.getLogger("hokmdb.deploy.history")

HISTORY_TABLE = "hokmdb_deploy_history"
REVISIONS_TABLE = "hokmdb_applied_revisions"

DDL = f"""
CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL,
    environment text NOT NULL,
    actor text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    from_revision text,
    to_revision text,
    final_revision text,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    duration_s double precision,
    result text NOT NULL DEFAULT 'running',
    exit_code integer,
    message text,
    log_path text,
    options jsonb NOT NULL DEFAULT '{{}}'
);
CREATE TABLE IF NOT EXISTS {REVISIONS_TABLE} (
    revision text PRIMARY KEY,
    sha256 text NOT NULL,
    filename text NOT NULL,
    recorded text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    deploy_id bigint
);
"""


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


async def tables_exist(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval(f"SELECT to_regclass('{HISTORY_TABLE}') IS NOT NULL AND to_regclass('{REVISIONS_TABLE}') IS NOT NULL"))


async def ensure_tables(conn: asyncpg.Connection) -> None:
    if not await tables_exist(conn):
        await conn.execute(DDL)
        log.info("created the tool's tables %s and %s", HISTORY_TABLE, REVISIONS_TABLE)


async def start_run(
    conn: asyncpg.Connection, *, kind: str, environment: str, actor: str, host: str, pid: int,
    from_revision: str | None, to_revision: str | None, log_path: str | None, options: dict[str, object],
) -> int:
    # A 'running' row whose deploy lock is free (we hold it now) belongs to a killed deploy.
    abandoned = await conn.fetch(
        f"UPDATE {HISTORY_TABLE} SET result = 'abandoned', finished_at = now(), "
        "message = coalesce(message, 'the deploy process ended without recording a result (killed?)') "
        "WHERE result = 'running' RETURNING id, actor, host, pid, started_at"
    )
    for row in abandoned:
        log.warning(
            "deploy #%d by %s@%s (pid %d), started %s, never finished (killed?): marked abandoned",
            row["id"], row["actor"], row["host"], row["pid"], row["started_at"].isoformat(timespec="seconds"),
        )
    return int(
        await conn.fetchval(
            f"INSERT INTO {HISTORY_TABLE} (kind, environment, actor, host, pid, from_revision, to_revision, log_path, options) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb) RETURNING id",
            kind, environment, actor, host, pid, from_revision, to_revision, log_path, json.dumps(options, default=str),
        )
    )


async def finish_run(
    conn: asyncpg.Connection, run_id: int, *, result: str, exit_code: int, final_revision: str | None,
    duration_s: float, message: str | None,
) -> None:
    await conn.execute(
        f"UPDATE {HISTORY_TABLE} SET result = $2, exit_code = $3, final_revision = $4, duration_s = $5, "
        "message = $6, finished_at = now() WHERE id = $1",
        run_id, result, exit_code, final_revision, duration_s, message,
    )


# -- checksums -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChecksumFinding:
    revision: str
    problem: str  # "changed" | "missing-file"
    recorded: str | None
    current: str | None
    filename: str

    def describe(self) -> str:
        if self.problem == "missing-file":
            return f"revision {self.revision} is applied but its file ({self.filename}) is no longer in the migration history"
        return (
            f"revision {self.revision} ({self.filename}) changed since it was applied: "
            f"recorded sha256 {self.recorded[:12] if self.recorded else '?'}..., file now {self.current[:12] if self.current else '?'}..."
        )


def applied_scripts(script: ScriptDirectory, current: str | None) -> list[object]:
    """The revisions from base up to and including ``current``, oldest first."""
    if current is None:
        return []
    return list(reversed(list(script.iterate_revisions(current, "base"))))


async def recorded_checksums(conn: asyncpg.Connection) -> dict[str, tuple[str, str]]:
    if not await conn.fetchval(f"SELECT to_regclass('{REVISIONS_TABLE}') IS NOT NULL"):
        return {}
    return {r["revision"]: (r["sha256"], r["filename"]) for r in await conn.fetch(f"SELECT revision, sha256, filename FROM {REVISIONS_TABLE}")}


async def verify_checksums(
    conn: asyncpg.Connection, script: ScriptDirectory, current: str | None
) -> tuple[list[ChecksumFinding], list[tuple[str, str, str]]]:
    """Compare applied revisions' files with what was recorded.

    Returns (findings, unrecorded) where unrecorded are (revision, sha256, filename) of applied
    revisions the tool has no record of yet (to adopt).
    """
    recorded = await recorded_checksums(conn)
    applied = applied_scripts(script, current)
    findings: list[ChecksumFinding] = []
    unrecorded: list[tuple[str, str, str]] = []
    applied_ids = set()
    for rev in applied:
        rid = rev.revision  # type: ignore[attr-defined]
        applied_ids.add(rid)
        path = Path(rev.path)  # type: ignore[attr-defined]
        digest = file_sha256(path)
        if rid not in recorded:
            unrecorded.append((rid, digest, path.name))
        elif recorded[rid][0] != digest:
            findings.append(ChecksumFinding(rid, "changed", recorded[rid][0], digest, path.name))
    for rid, (digest, filename) in recorded.items():
        if rid not in applied_ids:
            # Recorded but not on the path from base to current: either its file vanished from
            # the history or the database was moved by something other than the tool.
            try:
                known = script.get_revision(rid) is not None
            except Exception:  # noqa: BLE001 - alembic raises for unknown ids
                known = False
            if not known:
                findings.append(ChecksumFinding(rid, "missing-file", digest, None, filename))
    return findings, unrecorded


async def record_revision(conn: asyncpg.Connection, revision: str, sha256: str, filename: str, *, how: str, deploy_id: int | None) -> None:
    await conn.execute(
        f"INSERT INTO {REVISIONS_TABLE} (revision, sha256, filename, recorded, deploy_id) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (revision) DO UPDATE SET sha256 = excluded.sha256, filename = excluded.filename, "
        "recorded = excluded.recorded, applied_at = now(), deploy_id = excluded.deploy_id",
        revision, sha256, filename, how, deploy_id,
    )


async def forget_revision(conn: asyncpg.Connection, revision: str) -> None:
    await conn.execute(f"DELETE FROM {REVISIONS_TABLE} WHERE revision = $1", revision)
