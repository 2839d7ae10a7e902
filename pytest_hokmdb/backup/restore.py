"""Restores: a scratch copy for tests (``--restore-from-backup``) and the swap of a live
database (``rollback.py restore``).

The swap never touches the target until a complete, verified copy exists under another
name: the backup is checked and decrypted to a local file (integrity problems stop here),
restored into ``<db>_restoring_<time>``, its row counts compared with the manifest and
its btree indexes checked with amcheck (and the smoke suite run against it), and only
then are both databases renamed in one transaction: the target becomes
``<db>_before_restore_<time>`` and the copy becomes the target. A restore killed at any
point before that transaction leaves the target as it was (plus a leftover copy that
``cleanup`` drops); one killed inside it is rolled back by PostgreSQL.

A scratch copy (``hokmdb_restored_*``) says in its database comment which process made it
(``cluster.scratch.owner_record``), from the moment it exists; ``--keep-restored`` replaces
that with the moment it was kept. ``cleanup`` drops the copies whose process is gone (a
killed run's: a full copy of the data nobody else would remove) and kept ones past
``retention_days``, never one a live run owns, nor one somebody is connected to.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pytest_hokmdb.backup.pg import (
    admin_connect,
    admin_target,
    analyze,
    bin_dir,
    create_database,
    drop_database,
    quote_ident,
    run_pg_restore,
)
from pytest_hokmdb.backup.records import BackupRecord, find_backup
from pytest_hokmdb.backup.verify import check_restored, fetched_dump, grant_app_role, grant_monitor_role
from pytest_hokmdb.cluster.scratch import owner_record
from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.db import Target, resolve_monitor_target, resolve_target
from pytest_hokmdb.errors import BackupError, Refused

log = logging.getLogger("hokmdb.backup")

RESTORING_INFIX = "_restoring_"
BEFORE_RESTORE_INFIX = "_before_restore_"
SCRATCH_PREFIX = "hokmdb_restored_"
_MAX_IDENT = 63


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


def _name(base: str, infix: str, stamp: str) -> str:
    suffix = f"{infix}{stamp}"
    return base[: _MAX_IDENT - len(suffix)] + suffix


@dataclass
class ScratchRestore:
    """A backup restored into a scratch database on the environment's server."""

    record: BackupRecord
    dbname: str
    admin: Target = field(repr=False)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def revision(self) -> str | None:
        return self.record.revision

    async def drop(self) -> None:
        await drop_database(self.admin, self.dbname)
        log.info("dropped scratch database %s", self.dbname)

    async def keep(self) -> None:
        """Kept on purpose (``--keep-restored``): ``cleanup`` leaves it for ``retention_days``."""
        await _mark(self.admin, self.dbname, {"kept_at": datetime.now(UTC).isoformat(timespec="seconds")})
        log.info("kept scratch database %s", self.dbname)


SCRATCH_COMMENT_KEY = "hokmdb_restored"


async def _mark(admin: Target, name: str, what: dict[str, Any]) -> None:
    """Record in the scratch copy's comment who owns it (or that it was kept)."""
    comment = json.dumps({SCRATCH_COMMENT_KEY: what}).replace("'", "''")
    conn = await admin_connect(admin)
    try:
        await conn.execute(f"COMMENT ON DATABASE {quote_ident(name)} IS '{comment}'")
    finally:
        await conn.close()


def scratch_mark(comment: str | None) -> dict[str, Any] | None:
    """What ``_mark`` recorded in a scratch copy's comment; None when there is nothing (a copy
    made before the record existed, or killed in the moment between creating and marking it)."""
    try:
        value = json.loads(comment or "")
    except ValueError:
        return None
    mark = value.get(SCRATCH_COMMENT_KEY) if isinstance(value, dict) else None
    return mark if isinstance(mark, dict) else None


async def restore_scratch(loaded: LoadedConfig, location: str, *, show_progress: bool | None = False) -> ScratchRestore:
    """Restore ``location`` into a new scratch database the environment's app role can use."""
    config = loaded.config
    if config.is_protected:
        raise Refused(
            f"--restore-from-backup creates a scratch database on the selected environment's server; "
            f"not on {config.environment}",
            hint="select a development or testing environment (e.g. --environment testing)",
        )
    record = find_backup(loaded, location)
    target = await resolve_target(loaded)
    admin = await admin_target(loaded, target)
    name = f"{SCRATCH_PREFIX}{record.id.replace('-', '_').lower()}"[: _MAX_IDENT - 9] + "_" + secrets.token_hex(4)
    details: dict[str, Any] = {}
    with fetched_dump(loaded, record, show_progress=show_progress) as (dump, findings):
        details.update(findings)
        await create_database(admin, name)
        scratch_admin = admin.with_database(name)
        try:
            await _mark(admin, name, {"owner": owner_record()})
            run_pg_restore(
                bin_dir(loaded), dump, scratch_admin, jobs=config.backup.restore_jobs, exact=False,
                entries=findings["toc_entries"], show_progress=show_progress,
            )
            if scratch_admin.user != target.user:
                await grant_app_role(scratch_admin, target.user)
            monitor = await resolve_monitor_target(loaded, target)
            if monitor is not None:
                # --no-acl dropped what the monitoring role has on the environment's database.
                await grant_monitor_role(scratch_admin, monitor.user)
            await analyze(scratch_admin)
            problems = await check_restored(scratch_admin, record.manifest, details)
            if problems:
                raise BackupError(f"backup {record.id} restored into {name} but: " + "; ".join(problems))
        except BaseException:
            await drop_database(admin, name)
            raise
    log.info("backup %s restored into scratch database %s", record.id, name)
    return ScratchRestore(record, name, admin, details)


@dataclass
class RestoreResult:
    backup_id: str
    database: str
    swapped: bool
    dry_run: bool
    previous_database: str | None
    restored_as: str
    details: dict[str, Any]
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def restore_and_swap(
    loaded: LoadedConfig,
    location: str | BackupRecord,
    *,
    dry_run: bool = False,
    smoke_before_swap: bool = True,
    show_progress: bool | None = None,
) -> RestoreResult:
    """Restore a backup into a new database, verify it, then swap it in for the target.

    ``dry_run``: everything but the swap (the verified copy is dropped again).
    Raises ``BackupError`` with the target untouched when anything before the swap fails.
    """
    started = time.monotonic()
    config = loaded.config
    record = location if isinstance(location, BackupRecord) else find_backup(loaded, location)
    target = await resolve_target(loaded)
    admin = await admin_target(loaded, target)
    stamp = _stamp()
    restoring = _name(target.dbname, RESTORING_INFIX, stamp)
    previous = _name(target.dbname, BEFORE_RESTORE_INFIX, stamp)
    details: dict[str, Any] = {"backup": record.id, "location": record.location, "revision": record.revision}
    log.info("restore of backup %s (%s) into %s on %s", record.id, record.manifest.get("started_at"), target.dbname, target.dsn())

    conn = await admin_connect(admin)
    try:
        row = await conn.fetchrow(
            "SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = $1", target.dbname
        )
    finally:
        await conn.close()
    owner = row["owner"] if row else None

    with fetched_dump(loaded, record, show_progress=show_progress) as (dump, findings):
        details["fetch"] = findings
        await create_database(admin, restoring, owner=owner)
        copy_admin = admin.with_database(restoring)
        try:
            t0 = time.monotonic()
            run_pg_restore(
                bin_dir(loaded), dump, copy_admin, jobs=config.backup.restore_jobs, exact=True,
                entries=findings["toc_entries"], show_progress=show_progress,
            )
            details["restore_s"] = round(time.monotonic() - t0, 3)
            await analyze(copy_admin)
            problems = await check_restored(copy_admin, record.manifest, details)
            if not problems and smoke_before_swap:
                problems += _smoke(loaded, restoring, record, details)
            if problems:
                raise BackupError(
                    f"the restored copy of {record.id} failed verification; {target.dbname} was not touched: "
                    + "; ".join(problems)[:2000]
                )
        except BaseException:
            await drop_database(admin, restoring)
            raise

    if dry_run:
        await drop_database(admin, restoring)
        log.info("dry run: backup %s restored and verified as %s, which is dropped again; %s untouched", record.id, restoring, target.dbname)
        return RestoreResult(record.id, target.dbname, False, True, None, restoring, details, round(time.monotonic() - started, 3))

    kept = await swap(admin, target.dbname, restoring, previous)
    return RestoreResult(record.id, target.dbname, True, False, kept, restoring, details, round(time.monotonic() - started, 3))


def _smoke(loaded: LoadedConfig, dbname: str, record: BackupRecord, details: dict[str, Any]) -> list[str]:
    from pytest_hokmdb.gate import run_gate

    extra = [f"--database-name={dbname}"]
    if record.revision:
        extra.append(f"--target-revision={record.revision}")
    t0 = time.monotonic()
    gate = run_gate(loaded, "smoke", extra_args=extra, timeout_s=loaded.config.deploy.gate_timeout_s)
    details["smoke"] = {"exit_code": gate.exit_code, "summary": gate.summary, "duration_s": round(time.monotonic() - t0, 3)}
    if gate.passed:
        return []
    failed = [f"{t.get('check') or t['nodeid']}: {t.get('message', '')}"[:300] for t in gate.tests if t.get("outcome") in ("failed", "error")]
    return ["smoke suite failed on the restored copy: " + ("; ".join(failed) if failed else gate.output[-800:])]


async def swap(admin: Target, target: str, restoring: str, previous: str) -> str | None:
    """Rename target -> previous and restoring -> target in one transaction.

    Returns the previous database's new name (None when the target did not exist any more).
    """
    conn = await admin_connect(admin)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", target)
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '10s'")
            terminated = await conn.fetch(
                "SELECT pid, usename, application_name, pg_terminate_backend(pid) AS ok FROM pg_stat_activity "
                "WHERE datname = ANY($1::text[]) AND pid <> pg_backend_pid()",
                [target, restoring],
            )
            if terminated:
                log.warning(
                    "terminating %d connection(s) to %s for the swap: %s",
                    len(terminated), target,
                    ", ".join(f"pid {r['pid']} ({r['usename']}/{r['application_name'] or '-'})" for r in terminated),
                )
            if exists:
                await conn.execute(f"ALTER DATABASE {quote_ident(target)} RENAME TO {quote_ident(previous)}")
            else:
                log.warning("database %s does not exist (any more): the restored copy takes its name", target)
            await conn.execute(f"ALTER DATABASE {quote_ident(restoring)} RENAME TO {quote_ident(target)}")
    except Exception as exc:
        raise BackupError(
            f"the swap of {restoring} into {target} failed and was rolled back; {target} is unchanged: {exc}",
            hint=f"the verified copy is still there as {restoring}; retry, or drop it with rollback.py cleanup",
        ) from None
    finally:
        await conn.close()
    if exists:
        log.info("swapped: %s is now the restored copy; the previous database is kept as %s until cleanup", target, previous)
    return previous if exists else None
