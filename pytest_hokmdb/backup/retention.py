"""Retention: which backups, leftovers and kept databases ``cleanup`` removes.

A backup is deleted only when it is *both* older than ``retention_days`` and not among
the newest ``retention_count`` of its environment (so neither rule alone can empty the
store), and never when it is the newest backup whose verification passed. Leftovers of
interrupted backups (``.partial`` files, data objects without a manifest, incomplete
multipart uploads) older than an hour go too, as do half-restored ``_restoring_``
databases nobody is connected to, ``_before_restore_`` databases older than
``retention_days``, and ``hokmdb_restored_*`` scratch copies whose run is gone (killed:
its process, recorded in the copy's comment, no longer runs) or that were kept with
``--keep-restored`` longer than ``retention_days`` ago; a copy a live run owns, or that
somebody is connected to, stays.

Also the scratch servers of hokmdb processes that are gone (``cluster.scratch``): a full
backup verification killed while its server holds the decrypted copy leaves that server
running; cleanup stops it and removes its data directory, through the same janitor that
sweeps the test workers' clusters.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pytest_hokmdb.backup.pg import admin_connect, admin_target, quote_ident
from pytest_hokmdb.backup.plaintext import scratch_dir, stale_plaintext
from pytest_hokmdb.backup.records import BackupRecord, list_backups
from pytest_hokmdb.backup.restore import BEFORE_RESTORE_INFIX, RESTORING_INFIX, SCRATCH_PREFIX, scratch_mark
from pytest_hokmdb.backup.storage import DATA_SUFFIX, MANIFEST_SUFFIX, PARTIAL_SUFFIX, storages
from pytest_hokmdb.cluster.embedded import sweep_orphan_clusters
from pytest_hokmdb.cluster.scratch import owner_alive
from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.db import resolve_target
from pytest_hokmdb.errors import HokmdbError

log = logging.getLogger("hokmdb.backup")


@dataclass
class CleanupPlan:
    environment: str
    backups: list[BackupRecord] = field(default_factory=list)
    kept: list[tuple[BackupRecord, str]] = field(default_factory=list)
    leftovers: list[tuple[Any, str]] = field(default_factory=list)  # (storage, object name)
    uploads: list[tuple[Any, str, str]] = field(default_factory=list)  # (storage, name, upload id)
    databases: list[str] = field(default_factory=list)
    why: dict[str, str] = field(default_factory=dict)  # database -> why it goes
    kept_databases: list[tuple[str, str]] = field(default_factory=list)
    # Scratch servers (with their data directories) of hokmdb processes that are gone.
    servers: list[Path] = field(default_factory=list)
    # Decrypted dumps that versions before the anonymous-file restore left in the temp dir.
    plaintext: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"backup {r.id} ({r.manifest.get('started_at')}, {r.verified_label()}) {r.location}" for r in self.backups]
        out += [f"leftover {s.url(n)}" for s, n in self.leftovers]
        out += [f"incomplete upload {s.url(n)} ({u[:12]}...)" for s, n, u in self.uploads]
        out += [f"database {d}" + (f" ({self.why[d]})" if d in self.why else "") for d in self.databases]
        out += [f"orphaned scratch server {p} (its hokmdb process is gone: the server is stopped and its data "
                "directory removed)" for p in self.servers]
        out += [f"plaintext leftover {p} (a decrypted dump an earlier version's killed restore left)" for p in self.plaintext]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "delete": self.lines(),
            "keep": [f"{r.id}: {why}" for r, why in self.kept] + [f"database {d}: {why}" for d, why in self.kept_databases],
            "problems": self.problems,
        }


def plan_backups(records: list[BackupRecord], *, days: int, count: int, now: datetime) -> tuple[list[BackupRecord], list[tuple[BackupRecord, str]]]:
    """(delete, keep-with-reason) for one environment's records, newest first."""
    newest_verified = next((r for r in records if r.verified), None)
    cutoff = now - timedelta(days=days)
    delete: list[BackupRecord] = []
    keep: list[tuple[BackupRecord, str]] = []
    for index, record in enumerate(records):
        if record is newest_verified:
            keep.append((record, "newest verified backup"))
        elif index < count:
            keep.append((record, f"among the newest {count}"))
        elif record.created_at >= cutoff:
            keep.append((record, f"younger than {days} days"))
        else:
            delete.append(record)
    return delete, keep


async def plan_cleanup(
    loaded: LoadedConfig,
    *,
    days: int | None = None,
    count: int | None = None,
    leftover_age: timedelta = timedelta(hours=1),
    databases: bool = True,
    servers: bool = True,
) -> CleanupPlan:
    settings = loaded.config.backup
    days = days if days is not None else settings.retention_days
    count = count if count is not None else settings.retention_count
    now = datetime.now(UTC)
    environment = loaded.config.environment
    plan = CleanupPlan(environment)
    records = list_backups(loaded, environment=environment)
    plan.backups, plan.kept = plan_backups(records, days=days, count=count, now=now)
    plan.plaintext = stale_plaintext(scratch_dir())
    if servers:
        plan.servers = sweep_orphan_clusters(dry_run=True)
    for storage in storages(loaded):
        try:
            objects = storage.list()
        except HokmdbError as exc:
            plan.problems.append(exc.message)
            continue
        manifests = {o.name[: -len(MANIFEST_SUFFIX)] for o in objects if o.name.endswith(MANIFEST_SUFFIX)}
        for obj in objects:
            old = obj.modified <= now - leftover_age
            if obj.name.endswith(PARTIAL_SUFFIX) and old or obj.name.endswith(DATA_SUFFIX) and obj.name[: -len(DATA_SUFFIX)] not in manifests and old:
                plan.leftovers.append((storage, obj.name))
        try:
            for name, upload_id in storage.stale_uploads(now - leftover_age):
                plan.uploads.append((storage, name, upload_id))
        except HokmdbError as exc:
            plan.problems.append(exc.message)
    if databases:
        try:
            stale, plan.kept_databases = await _stale_databases(loaded, days=days, now=now)
            plan.databases = [name for name, _ in stale]
            plan.why = {name: why for name, why in stale if why}
        except HokmdbError as exc:
            plan.problems.append(f"databases not checked: {exc.message}")
    return plan


async def _stale_databases(
    loaded: LoadedConfig, *, days: int, now: datetime
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(drop, keep): each database with why ("" when its name says it all)."""
    target = await resolve_target(loaded, start=False)
    admin = await admin_target(loaded, target)
    conn = await admin_connect(admin)
    try:
        rows = await conn.fetch(
            "SELECT d.datname, (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname) AS sessions, "
            "shobj_description(d.oid, 'pg_database') AS comment "
            "FROM pg_database d WHERE d.datname LIKE $1 OR d.datname LIKE $2 OR d.datname LIKE $3",
            target.dbname[:40] + "%" + RESTORING_INFIX.replace("_", "\\_") + "%",
            target.dbname[:40] + "%" + BEFORE_RESTORE_INFIX.replace("_", "\\_") + "%",
            SCRATCH_PREFIX.replace("_", "\\_") + "%",
        )
    finally:
        await conn.close()
    stale: list[tuple[str, str]] = []
    kept: list[tuple[str, str]] = []
    for row in rows:
        name = row["datname"]
        if row["sessions"]:
            if name.startswith(SCRATCH_PREFIX):
                kept.append((name, f"{row['sessions']} session(s) connected"))
            continue  # in use: a restore in progress, or someone inspecting a kept copy
        if name.startswith(SCRATCH_PREFIX):
            drop, why = _scratch_fate(scratch_mark(row["comment"]), days=days, now=now)
            (stale if drop else kept).append((name, why))
        elif RESTORING_INFIX in name:
            stale.append((name, ""))
        elif BEFORE_RESTORE_INFIX in name:
            stamp = name.rsplit(BEFORE_RESTORE_INFIX, 1)[-1]
            try:
                when = datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            except ValueError:
                continue
            if when < now - timedelta(days=days):
                stale.append((name, ""))
    return stale, kept


def _scratch_fate(mark: dict[str, Any] | None, *, days: int, now: datetime) -> tuple[bool, str]:
    """Whether a ``--restore-from-backup`` copy nobody is connected to goes, and why."""
    if mark is None:
        return True, "a scratch restore that records no owner (an earlier version's, or killed as it began)"
    if "kept_at" in mark:
        try:
            when = datetime.fromisoformat(str(mark["kept_at"]))
            when = when if when.tzinfo else when.replace(tzinfo=UTC)
        except ValueError:
            return True, "a scratch restore kept with --keep-restored at an unreadable time"
        if when < now - timedelta(days=days):
            return True, f"kept with --keep-restored on {when:%Y-%m-%d}, more than {days} days ago"
        return False, f"kept with --keep-restored on {when:%Y-%m-%d}, until it is {days} days old"
    owner = mark.get("owner") if isinstance(mark.get("owner"), dict) else {}
    who = f"pid {owner.get('pid')} on {owner.get('host') or 'this host'}"
    alive = owner_alive(owner)
    if alive is None:
        return False, f"the scratch restore of a run on another host or container, {who}: run cleanup there, or drop it by hand"
    if alive:
        return False, f"the scratch restore of a live run, {who}"
    return True, f"the scratch restore of a run that is gone (killed), {who}"


async def run_cleanup(loaded: LoadedConfig, plan: CleanupPlan) -> list[str]:
    """Carry out a plan; returns problems (each deletion is tried on its own)."""
    problems: list[str] = []
    for record in plan.backups:
        try:
            # Manifest first: from that moment it is no longer a backup, whatever happens next.
            record.storage.delete(record.manifest_name)
            record.storage.delete(record.data_name)
            log.info("deleted backup %s (%s)", record.id, record.location)
        except HokmdbError as exc:
            problems.append(exc.message)
    for storage, name in plan.leftovers:
        try:
            storage.delete(name)
            log.info("deleted leftover %s", storage.url(name))
        except HokmdbError as exc:
            problems.append(exc.message)
    for storage, name, upload_id in plan.uploads:
        try:
            storage.abort_upload(name, upload_id)
            log.info("aborted incomplete upload of %s", storage.url(name))
        except HokmdbError as exc:
            problems.append(exc.message)
    for path in plan.plaintext:
        try:
            shutil.rmtree(path)
            log.info("removed plaintext leftover %s", path)
        except OSError as exc:
            problems.append(f"removing {path}: {exc}")
    if plan.servers:
        removed = sweep_orphan_clusters()
        problems += [f"orphaned scratch server {p}: could not be stopped and removed" for p in plan.servers if p.exists()]
        plan.servers = removed  # what was done (an orphan that appeared since the plan included)
    if plan.databases:
        target = await resolve_target(loaded, start=False)
        admin = await admin_target(loaded, target)
        conn = await admin_connect(admin)
        try:
            for name in plan.databases:
                try:
                    await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")
                    log.info("dropped database %s", name)
                except Exception as exc:  # noqa: BLE001 - one that fails (connected again since) does not stop the rest
                    problems.append(f"dropping database {name}: {exc}")
        finally:
            await conn.close()
    return problems
