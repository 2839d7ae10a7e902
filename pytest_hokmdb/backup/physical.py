"""Physical backups and point-in-time restores: what the scripts do with ``pytest_hokmdb.pitr``.

``pitr/`` knows pgBackRest and recovery; this module knows the environment: which
server (the embedded cluster, started archiving, or a configured one), where to connect
for a restore point, how to prove a restored copy with the smoke gate, and how to swap
it in. The swap mirrors the logical restore's: the running data directory is kept
beside the new one (``data.before-pitr-<stamp>``) until the operator removes it.

What hokmdb records of its own lives in the stanza's private work directory next to the
restore-point ledger: ``backups.json`` (per backup label: revision, reason, source (the
primary, or which standby and how current it was) and the last verification), so
``list-backups`` shows physical backups with the same columns as logical ones.

With ``physical.backup_standby`` pgBackRest copies the data files from the streaming
standby (``standby_pg_*``, else the local topology's); hokmdb checks that standby first
(``pitr.standby``) and never falls back to the primary.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from pytest_hokmdb.cluster.embedded import EmbeddedCluster
from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.db import connect, resolve_target
from pytest_hokmdb.db.resolve import embedded_cluster_for
from pytest_hokmdb.errors import BackupError, ConfigError, HokmdbError
from pytest_hokmdb.pitr import (
    BackupSet,
    PgBackRest,
    PitrSetup,
    RecoveryTarget,
    RestoredCopy,
    RestorePoint,
    RestorePointLedger,
    create_restore_point,
    resolve_setup,
    restore_to_point,
    standby_state,
)
from pytest_hokmdb.pitr.standby import FALLBACK_HINT, StandbyNotReady

log = logging.getLogger("hokmdb.backup.physical")

RECORDS_FILE = "backups.json"


# --- where -------------------------------------------------------------------------------------------


def _require_physical(loaded: LoadedConfig) -> Any:
    physical = loaded.config.physical
    if physical is None:
        raise ConfigError(
            f"{loaded.config.environment} has no physical backup engine: {loaded.path} has no \"physical\" section",
            hint="add a physical section (engine pgbackrest, repo_path, ...; see README \"Point-in-time recovery\")",
        )
    return physical


def _cluster(loaded: LoadedConfig) -> EmbeddedCluster | None:
    return embedded_cluster_for(loaded) if loaded.config.uses_embedded else None


def _uses_local_standby(loaded: LoadedConfig) -> bool:
    """Whether the standby to copy backups from is the local topology's: ``backup_standby``
    without ``standby_pg_*``, beside an embedded primary with ``topology.local: true``."""
    physical, topology = loaded.config.physical, loaded.config.topology
    return (
        physical is not None and physical.backup_standby and physical.standby_pg_data is None
        and loaded.config.uses_embedded and topology is not None and topology.local is True
    )


def _local_standby(loaded: LoadedConfig, cluster: EmbeddedCluster | None) -> EmbeddedCluster | None:
    """The local topology's standby (it may not exist yet), when backups are copied from it."""
    if cluster is None or not _uses_local_standby(loaded):
        return None
    from pytest_hokmdb.cluster.topology import LocalTopology

    return LocalTopology(cluster).standby


def _require_standby_config(loaded: LoadedConfig) -> None:
    """``backup_standby`` needs a standby pgBackRest can reach on this host; checked before anything
    starts. ``topology.standbys`` does not do: pgBackRest copies from the standby's data directory."""
    physical = loaded.config.physical
    if physical is None or not physical.backup_standby or physical.standby_pg_data is not None:
        return
    if _uses_local_standby(loaded):
        return
    env = loaded.config.environment
    raise ConfigError(
        f"physical.backup_standby is set but {env} has no standby for pgBackRest to copy the backup from: "
        f"physical.standby_pg_data is unset and {loaded.path} has no local topology with a standby "
        "(\"topology\": {\"local\": true})",
        hint="set physical.standby_pg_data, standby_pg_port and standby_pg_socket_dir to a standby on this host, or "
        f"run hokmdb's local topology (development/testing), {FALLBACK_HINT}",
    )


async def _archive_mode(cluster: EmbeddedCluster) -> str:
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        return str(await conn.fetchval("SHOW archive_mode"))
    finally:
        await conn.close()


async def physical_engine(loaded: LoadedConfig, *, start: bool = True) -> tuple[PgBackRest, EmbeddedCluster | None]:
    """pgBackRest for the environment's server. The embedded cluster is started (archiving);
    one that was started before ``physical`` was configured is restarted once to archive."""
    physical = _require_physical(loaded)
    cluster = _cluster(loaded)
    standby = _local_standby(loaded, cluster)
    if cluster is not None and start:
        # The config file first: the server's archive_command reads it from its first WAL switch.
        PgBackRest(resolve_setup(physical, cluster=cluster, standby=standby, project_root=loaded.project_root))
        cluster.start()
        if await _archive_mode(cluster) != "on":
            log.warning("the embedded cluster was started without WAL archiving: restarting it to archive")
            cluster.stop()
            cluster.start()
    # With the port, once started.
    setup = resolve_setup(physical, cluster=cluster, standby=standby, project_root=loaded.project_root)
    return PgBackRest(setup), cluster


# --- hokmdb's own records ----------------------------------------------------------------------------


def _records_file(setup: PitrSetup) -> Path:
    return setup.work_dir / RECORDS_FILE


def read_records(setup: PitrSetup) -> dict[str, dict[str, Any]]:
    try:
        return json.loads(_records_file(setup).read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise BackupError(f"{_records_file(setup)} is not valid JSON ({exc})", hint="fix or remove the file") from None


def _update_record(setup: PitrSetup, label: str, **values: Any) -> None:
    records = read_records(setup)
    records.setdefault(label, {}).update(values)
    path = _records_file(setup)
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(records, indent=2, default=str) + "\n")
    scratch.chmod(0o600)
    os.replace(scratch, path)


async def _current_revision(loaded: LoadedConfig) -> str | None:
    from pytest_hokmdb.migrate import current_revision

    try:
        conn = await connect(await resolve_target(loaded))
    except HokmdbError:
        return None
    try:
        return await current_revision(conn)
    finally:
        await conn.close()


# --- backups -----------------------------------------------------------------------------------------


def _standby_source(loaded: LoadedConfig, engine: PgBackRest, cluster: EmbeddedCluster | None) -> str:
    """The standby the backup is copied from, described for the record; ``BackupError`` (exit 7)
    when there is none fit for it (the local topology's: not created, not running; any: see
    ``pitr.standby``)."""
    env = loaded.config.environment
    start = f"hokmdb topology start --environment {env}"
    local = _local_standby(loaded, cluster)
    if local is not None and engine.setup.standby is None:
        raise StandbyNotReady(
            f"physical.backup_standby: the local topology of {env} has not been set up, so there is no standby "
            "to copy the backup from",
            hint=f"run `{start}`, {FALLBACK_HINT}",
        )
    if local is not None and not local.is_running():
        raise StandbyNotReady(
            f"physical.backup_standby: the local topology's standby ({local.data_dir}) is not running",
            hint=f"start it with `{start}`, {FALLBACK_HINT}",
        )
    return standby_state(engine.setup).describe()


async def take_physical_backup(loaded: LoadedConfig, kind: str, *, reason: str = "manual") -> BackupSet:
    """Stanza (created when missing), ``check`` (the server archives), then the backup.

    With ``physical.backup_standby`` the standby is checked first (before the stanza is
    touched) and pgBackRest copies the data files from it; the record's ``source`` says so.
    """
    from pytest_hokmdb.console import progress

    physical = _require_physical(loaded)
    _require_standby_config(loaded)
    engine, cluster = await physical_engine(loaded)
    source = "primary"
    if physical.backup_standby:
        source = await asyncio.to_thread(_standby_source, loaded, engine, cluster)
    await asyncio.to_thread(engine.stanza_create)
    await asyncio.to_thread(engine.check)
    revision = await _current_revision(loaded)
    with progress(f"pgBackRest {kind} backup of stanza {engine.setup.stanza} from the {source.split()[0]}", None):
        backup = await asyncio.to_thread(engine.backup, kind)  # type: ignore[arg-type]
    _update_record(engine.setup, backup.label, revision=revision, reason=reason, environment=loaded.config.environment,
                   source=source)
    log.info("pgBackRest %s backup %s taken from the %s", backup.type, backup.label, source)
    return backup


def backup_source(loaded: LoadedConfig, label: str) -> str | None:
    """Where hokmdb recorded that backup ``label`` was copied from (``primary`` or ``standby ...``)."""
    physical = _require_physical(loaded)
    setup = resolve_setup(physical, cluster=_cluster(loaded), project_root=loaded.project_root)
    return _source(read_records(setup).get(label, {}))


def _source(record: dict[str, Any]) -> str | None:
    """A record's source; records of backups hokmdb took before it recorded sources were the primary's."""
    return record.get("source") or ("primary" if "reason" in record else None)


def _summary(loaded: LoadedConfig, setup: PitrSetup, backup: BackupSet, record: dict[str, Any]) -> dict[str, Any]:
    verification = record.get("verification")
    return {
        "id": backup.label,
        "kind": f"physical {backup.type}",
        "environment": loaded.config.environment,
        "time": backup.stopped_at.isoformat(),
        "revision": record.get("revision"),
        "size": backup.repo_size or backup.size,
        "verified": bool(verification and verification.get("passed")),
        "verification": verification,
        "location": f"pgbackrest:{setup.stanza}/{backup.label}",
        "reason": record.get("reason"),
        "source": _source(record),
    }


async def list_physical(loaded: LoadedConfig) -> list[dict[str, Any]]:
    """The stanza's backups (newest first) as ``list-backups`` rows; [] without a physical engine."""
    if loaded.config.physical is None:
        return []
    cluster = _cluster(loaded)
    standby = _local_standby(loaded, cluster)  # the config file it (re)writes keeps pg2
    setup = resolve_setup(loaded.config.physical, cluster=cluster, standby=standby, project_root=loaded.project_root)
    if not setup.config_file.exists():
        return []  # hokmdb never took a physical backup from here
    engine = PgBackRest(setup)
    info = await asyncio.to_thread(engine.info)
    records = read_records(engine.setup)
    rows = [_summary(loaded, engine.setup, b, records.get(b.label, {})) for b in info.backups]
    return sorted(rows, key=lambda r: r["time"] or "", reverse=True)


# --- restore points ----------------------------------------------------------------------------------


async def _admin_connection(loaded: LoadedConfig, cluster: EmbeddedCluster | None) -> asyncpg.Connection:
    if cluster is not None:
        return await asyncpg.connect(**cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    from pytest_hokmdb.backup.pg import admin_connect, admin_target

    return await admin_connect(await admin_target(loaded, await resolve_target(loaded)))


async def named_restore_point(loaded: LoadedConfig, name: str) -> RestorePoint:
    """``pg_create_restore_point`` on the environment's server, archived and recorded."""
    engine, cluster = await physical_engine(loaded)
    await asyncio.to_thread(engine.stanza_create)  # idempotent; archiving needs the stanza
    conn = await _admin_connection(loaded, cluster)
    try:
        return await create_restore_point(conn, name, ledger=RestorePointLedger.for_setup(engine.setup))
    finally:
        await conn.close()


# --- point-in-time restore ---------------------------------------------------------------------------


@dataclass
class PitrResult:
    target: str
    backup: str
    recovered_to: str
    swapped: bool
    verify_only: bool
    port: int | None = None
    data_dir: str | None = None
    socket_dir: str | None = None
    previous_data_dir: str | None = None
    smoke: dict[str, Any] | None = None
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def _copy_revision(loaded: LoadedConfig, copy: RestoredCopy) -> str | None:
    """The alembic revision the copy's database was at: the moment chosen, not the code's head,
    is what the smoke suite must hold it to."""
    from pytest_hokmdb.migrate import current_revision

    try:
        conn = await copy.admin_connect(loaded.config.database.name)
    except (OSError, asyncpg.PostgresError):
        return None  # no such database at that moment: the smoke suite says so
    try:
        return await current_revision(conn)
    finally:
        await conn.close()


def _smoke_copy(loaded: LoadedConfig, copy: RestoredCopy, revision: str | None) -> dict[str, Any]:
    """The smoke gate against the copy on its spare port (the same roles and passwords:
    it is a physical copy of the server)."""
    from pytest_hokmdb.gate import run_gate

    started = time.monotonic()
    extra = [f"--database-port={copy.port}"] + ([f"--target-revision={revision}"] if revision else [])
    gate = run_gate(loaded, "smoke", extra_args=extra, timeout_s=loaded.config.deploy.gate_timeout_s)
    failed = [
        f"{t.get('check') or t['nodeid']}: {t.get('message', '')}"[:300]
        for t in gate.tests
        if t.get("outcome") in ("failed", "error")
    ]
    return {
        "passed": gate.passed,
        "exit_code": gate.exit_code,
        "summary": gate.summary,
        "failed": failed or ([] if gate.passed else [gate.output[-800:]]),
        "duration_s": round(time.monotonic() - started, 3),
    }


def _reachable_by_smoke(loaded: LoadedConfig) -> bool:
    """The copy listens on 127.0.0.1 only; the gate reaches it where the server's host is local."""
    return loaded.config.uses_embedded or (loaded.config.database.host or "") in ("127.0.0.1", "localhost", "::1")


async def restore_to_moment(
    loaded: LoadedConfig, target: RecoveryTarget, *, verify_only: bool = False, smoke: bool = True
) -> PitrResult:
    """Recover a copy to ``target``, prove it, then swap it in (or leave it running to inspect)."""
    started = time.monotonic()
    engine, cluster = await physical_engine(loaded)
    if cluster is None and not verify_only:
        raise BackupError(
            f"hokmdb swaps a recovered copy in only for a cluster it runs; {loaded.config.environment}'s server is "
            "managed elsewhere",
            hint="run with --verify-only, inspect the copy, then swap data directories with the server's own service "
            "tooling (README \"Point-in-time recovery\")",
        )
    live = await _admin_connection(loaded, cluster)
    try:
        copy = await restore_to_point(engine, target, live=live, ledger=RestorePointLedger.for_setup(engine.setup))
    finally:
        await live.close()
    result = PitrResult(
        target=target.describe(),
        backup=copy.backup.label,
        recovered_to=copy.describe(),
        swapped=False,
        verify_only=verify_only,
        port=copy.port,
        data_dir=str(copy.data_dir),
        socket_dir=str(copy.socket_dir),
    )
    try:
        if smoke and _reachable_by_smoke(loaded):
            revision = await _copy_revision(loaded, copy)
            result.smoke = await asyncio.to_thread(_smoke_copy, loaded, copy, revision)
            if not result.smoke["passed"]:
                raise BackupError(
                    f"the copy recovered to {target.describe()} failed the smoke suite; nothing was swapped: "
                    + "; ".join(result.smoke["failed"])[:2000]
                )
        elif smoke:
            result.notes.append("smoke suite not run: the copy listens on 127.0.0.1 and the server is not local")
        if verify_only:
            result.notes.append(
                f"the copy keeps running on 127.0.0.1:{copy.port} (data {copy.data_dir}); stop it with "
                f"`pg_ctl stop -D {copy.data_dir}` and delete {copy.base_dir} and {copy.socket_dir} when done"
            )
        else:
            assert cluster is not None
            result.previous_data_dir = str(await asyncio.to_thread(_swap, engine, cluster, copy))
            result.swapped = True
    except BaseException:
        if not result.swapped:
            await asyncio.to_thread(copy.destroy)
        raise
    result.duration_s = round(time.monotonic() - started, 3)
    return result


_RESTORE_ONLY_SETTINGS = ("archive_mode", "restore_command", "recovery_target")


def _without_restore_settings(data_dir: Path) -> None:
    """pgBackRest wrote ``archive_mode = 'off'`` (so the copy could not fork the archive) and
    the recovery settings into the copy's auto.conf; swapped in, the server must archive
    again, and a later standby built from it must not inherit an old recovery target."""
    auto = data_dir / "postgresql.auto.conf"
    if auto.exists():
        kept = [line for line in auto.read_text().splitlines() if not line.strip().startswith(_RESTORE_ONLY_SETTINGS)]
        auto.write_text("\n".join(kept) + "\n")


def _swap(engine: PgBackRest, cluster: EmbeddedCluster, copy: RestoredCopy) -> Path:
    """Stop the server, keep its data directory aside, move the copy in, start, archive."""
    copy.stop()
    _without_restore_settings(copy.data_dir)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    previous = cluster.data_dir.with_name(f"{cluster.data_dir.name}.before-pitr-{stamp}")
    cluster.stop()
    os.rename(cluster.data_dir, previous)
    try:
        shutil.move(str(copy.data_dir), str(cluster.data_dir))
        cluster.start()
    except BaseException as exc:
        log.error("the recovered copy did not start in place (%s): putting the previous data directory back", exc)
        cluster.stop(mode="immediate")
        failed = cluster.data_dir.with_name(f"{cluster.data_dir.name}.failed-pitr-{stamp}")
        if cluster.data_dir.exists():
            os.rename(cluster.data_dir, failed)
        os.rename(previous, cluster.data_dir)
        cluster.start()
        raise BackupError(
            f"the recovered copy did not start in place of the server; the previous data directory is back and "
            f"running, the copy is kept at {failed}: {exc}"
        ) from None
    shutil.rmtree(copy.base_dir, ignore_errors=True)
    shutil.rmtree(copy.socket_dir, ignore_errors=True)  # outside base_dir when that path is too long for a socket
    # The promotion's timeline history was written while archiving was off: push it now, so
    # later restores can follow the new timeline, and prove archiving works again.
    for history in sorted((cluster.data_dir / "pg_wal").glob("*.history")):
        engine.run("archive-push", argument=str(history))
    engine.check()
    log.info("recovered copy swapped in; the previous data directory is kept at %s", previous)
    return previous


# --- verification of the repository ------------------------------------------------------------------


async def verify_repository(loaded: LoadedConfig, *, smoke: bool = True) -> dict[str, Any]:
    """``pgbackrest verify`` plus a restore of the newest backup to its end, smoke-tested,
    recorded on that backup like a logical verification."""
    started = time.monotonic()
    engine, cluster = await physical_engine(loaded)
    report = await asyncio.to_thread(engine.verify)
    problems = list(report.problems)
    info = await asyncio.to_thread(engine.info)
    if not info.backups:
        raise BackupError(
            f"stanza {engine.setup.stanza} has no backups to verify",
            hint=f"take one: python database/backup.py --environment {loaded.config.environment} --type full",
        )
    newest = info.backups[-1]
    result: dict[str, Any] = {"backup": newest.label, "repository": report.describe()}
    try:
        copy = await restore_to_point(engine, RecoveryTarget.at_lsn(newest.lsn_stop), ledger=RestorePointLedger.for_setup(engine.setup))
    except HokmdbError as exc:
        problems.append(f"restore of {newest.label}: {exc.message}")
    else:
        try:
            result["restored"] = copy.describe()
            if smoke and _reachable_by_smoke(loaded):
                revision = await _copy_revision(loaded, copy)
                result["smoke"] = await asyncio.to_thread(_smoke_copy, loaded, copy, revision)
                if not result["smoke"]["passed"]:
                    problems.append("smoke suite failed on the restored copy: " + "; ".join(result["smoke"]["failed"]))
        finally:
            await asyncio.to_thread(copy.destroy)
    result.update(
        passed=not problems,
        problems=problems,
        verified_at=datetime.now(UTC).isoformat(timespec="seconds"),
        duration_s=round(time.monotonic() - started, 3),
    )
    _update_record(engine.setup, newest.label, verification=result)
    return result

