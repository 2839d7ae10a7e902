"""Take a backup: pg_dump (custom format) -> age -> SHA-256 -> storage, manifest last.

Consistency: one REPEATABLE READ transaction exports its snapshot; pg_dump runs with
``--snapshot`` while the same transaction counts the rows of every table, so the
manifest's counts describe exactly the state in the dump. The transaction stays open
until pg_dump has finished.

Compression: pg_dump's custom format compresses each table's data itself (gzip on
PostgreSQL 15; ``compression_level`` capped at 9). No second compressor is added: the
data is already compressed, a second pass would burn CPU for nothing, and compressing
outside pg_dump would force restores to keep an uncompressed archive on disk (pg_restore
needs a seekable file for ``--jobs``) and add a tool to the manual recovery path.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import tempfile
import time
from dataclasses import replace
from typing import Any

import pyrage

from pytest_hokmdb.backup.crypto import load_key
from pytest_hokmdb.backup.pg import bin_dir, count_rows, subprocess_env, tool_version
from pytest_hokmdb.backup.records import (
    FORMAT_VERSION,
    MANIFEST_FORMAT,
    BackupRecord,
    iso,
    new_backup_id,
    utcnow,
)
from pytest_hokmdb.backup.storage import DATA_SUFFIX, Storage, destination_storage
from pytest_hokmdb.backup.streams import HashingReader, HashingWriter, PipeAborted
from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.console import progress
from pytest_hokmdb.db import Target, connect, resolve_target
from pytest_hokmdb.errors import BackupError, HokmdbError
from pytest_hokmdb.migrate import current_revision
from pytest_hokmdb.redaction import redact

log = logging.getLogger("hokmdb.backup")


def _hokmdb_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytest-hokmdb")
    except PackageNotFoundError:  # pragma: no cover
        return "?"


PIPE_BYTES = 1024 * 1024


def _widen_pipe(stream: Any) -> None:
    """A 1 MiB pipe instead of 64 KiB: fewer context switches between pg_dump and us."""
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (OSError, ValueError, AttributeError):
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default pipe works too


def _pipeline(proc: subprocess.Popen[bytes], storage: Storage, name: str, recipient: Any, show_progress: bool | None) -> dict[str, Any]:
    """Encrypt pg_dump's stdout into storage; commit the object only if pg_dump succeeded."""
    assert proc.stdout is not None
    with progress(f"dump+encrypt+store {name}", None, enabled=show_progress) as advance:
        with storage.writer(name) as sink:
            plain = HashingReader(proc.stdout, on_bytes=advance)
            stored = HashingWriter(sink)
            try:
                pyrage.encrypt_io(plain, stored, [recipient])
            except (pyrage.EncryptError, OSError) as exc:
                own = stored.error or plain.error
                if isinstance(own, PipeAborted) and hasattr(sink, "_raise_upload_error"):
                    sink._raise_upload_error()  # type: ignore[attr-defined]
                if isinstance(own, HokmdbError):
                    raise own from None
                raise BackupError(f"writing {storage.url(name)} failed: {own or exc}") from None
            code = proc.wait()
            if code != 0:
                raise BackupError(f"pg_dump failed (exit {code})")  # stderr is added by the caller
            sink.commit()  # type: ignore[attr-defined]
    return {"plain_size": plain.size, "plain_sha256": plain.hexdigest, "size": stored.size, "sha256": stored.hexdigest}


async def _standby_source(loaded: LoadedConfig, target: Target) -> tuple[Target, str]:
    """The first standby of the environment's topology that is streaming, reached as the
    backup's own role (a physical standby has the primary's roles and grants). A backup asked
    of a standby never falls back to the primary silently: no usable standby is an error."""
    from pytest_hokmdb.db.topology import resolve_topology

    topology = resolve_topology(loaded, target, None)
    if topology.problem:
        raise BackupError(f"backup.from_standby: {topology.problem}")
    if not topology.standbys:
        raise BackupError("backup.from_standby is set but the environment lists no standby (topology.standbys or topology.local)",
                          hint="list the standbys, or unset backup.from_standby to back up from the primary")
    problems = []
    for standby in topology.standbys:
        candidate = replace(standby, user=target.user, password=target.password, read_only=True)
        try:
            conn = await connect(candidate)
        except HokmdbError as exc:
            problems.append(f"{candidate.host}:{candidate.port}: {exc.message}")
            continue
        try:
            in_recovery = await conn.fetchval("SELECT pg_is_in_recovery()")
        finally:
            await conn.close()
        if in_recovery:
            return candidate, f"standby {candidate.host}:{candidate.port}"
        problems.append(f"{candidate.host}:{candidate.port} is not in recovery (promoted?)")
    raise BackupError("backup.from_standby: no standby can serve the backup: " + "; ".join(problems),
                      hint="fix the standby (pytest smoke/ -k topology), or unset backup.from_standby for this run")


async def take_backup(
    loaded: LoadedConfig,
    *,
    target: Target | None = None,
    reason: str = "manual",
    verify: str | None = None,
    destination: str | None = None,
    show_progress: bool | None = None,
) -> BackupRecord:
    """Dump, encrypt and store a backup of the environment's database; verify it as configured.

    Raises ``BackupError`` (exit 7) when anything fails, including the verification; a
    failed backup leaves no manifest, so nothing that looks like a backup.
    """
    config = loaded.config
    settings = config.backup
    verify = verify or settings.verify_after_backup
    if verify not in ("none", "quick", "full"):
        raise BackupError(f"unknown verification depth {verify!r}", hint="use none, quick or full")
    key = load_key(loaded)  # before anything runs: no key, no backup
    storage = destination_storage(loaded, destination)
    source = "primary"
    if target is None:
        target = await resolve_target(loaded)
        if settings.from_standby:
            target, source = await _standby_source(loaded, target)
    bins = bin_dir(loaded)
    started = utcnow()
    t0 = time.monotonic()
    backup_id = new_backup_id(config.environment, started)
    name = backup_id + DATA_SUFFIX
    recipient, encryption = key.new_recipient()
    level = min(settings.compression_level, 9)
    log.info("backup %s of %s to %s", backup_id, target.dsn(), storage.url(name))

    conn = await connect(target)
    stderr_file = tempfile.TemporaryFile()
    proc: subprocess.Popen[bytes] | None = None
    try:
        transaction = conn.transaction(isolation="repeatable_read", readonly=True)
        await transaction.start()
        try:
            # The snapshot must outlive pg_dump; nothing in this session may time it out.
            await conn.execute("SET LOCAL statement_timeout = 0; SET LOCAL idle_in_transaction_session_timeout = 0")
            # The counts run beside pg_dump: one backend, not a parallel scan that takes every core from it.
            await conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            if source != "primary":
                lag = await conn.fetchval(
                    "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 "
                    "WHERE pg_last_wal_receive_lsn() IS DISTINCT FROM pg_last_wal_replay_lsn()")
                source += f", {lag:.1f}s behind the primary" if lag else ", caught up with the primary"
                log.info("backup taken from the standby (%s)", source)
            server_version = await conn.fetchval("SHOW server_version")
            server_version_num = int(await conn.fetchval("SHOW server_version_num"))
            revision = await current_revision(conn)
            proc = subprocess.Popen(
                [
                    str(bins / "pg_dump"),
                    "--format=custom",
                    f"--compress={level}",
                    f"--snapshot={snapshot}",
                    "--no-password",
                    target.dbname,
                ],
                stdout=subprocess.PIPE,
                stderr=stderr_file,
                env=subprocess_env(replace(target, application_name="hokmdb pg_dump")),
                bufsize=PIPE_BYTES,  # pyrage reads 8 KiB at a time: serve those from a 1 MiB buffer
            )
            _widen_pipe(proc.stdout)
            pipeline = asyncio.create_task(asyncio.to_thread(_pipeline, proc, storage, name, recipient, show_progress))
            t_counts = time.monotonic()
            try:
                counts = await count_rows(conn)
                counts_s = time.monotonic() - t_counts
            except BaseException:
                proc.kill()
                await asyncio.gather(pipeline, return_exceptions=True)
                raise
            try:
                stored = await pipeline
                dump_s = time.monotonic() - t_counts
            except BackupError as exc:
                stderr_file.seek(0)
                detail = redact(stderr_file.read().decode(errors="replace").strip())[-1500:]
                raise BackupError(exc.message + (f": {detail}" if detail and "pg_dump" in exc.message else ""), hint=exc.hint) from None
        finally:
            await transaction.rollback()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr_file.close()
        await conn.close()

    finished = utcnow()
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "format_version": FORMAT_VERSION,
        "id": backup_id,
        "environment": config.environment,
        "reason": reason,
        "database": {"name": target.dbname, "host": target.host, "port": target.port, "user": target.user},
        "source": source,
        "server_version": server_version,
        "server_version_num": server_version_num,
        "pg_dump_version": tool_version(bins / "pg_dump"),
        "hokmdb_version": _hokmdb_version(),
        "alembic_revision": revision,
        "snapshot": snapshot,
        "started_at": iso(started),
        "finished_at": iso(finished),
        "duration_s": round(time.monotonic() - t0, 3),
        "timings": {"row_counts_s": round(counts_s, 3), "dump_encrypt_store_s": round(dump_s, 3)},
        "dump": {
            "format": "custom",
            "size": stored["plain_size"],
            "sha256": stored["plain_sha256"],
            "compression": {"method": "gzip", "level": level, "by": "pg_dump --compress"},
        },
        "object": {
            "name": name,
            "storage": storage.kind,
            "location": storage.url(name),
            "size": stored["size"],
            "sha256": stored["sha256"],
            "server_side_encryption": config.backup.s3_sse if storage.kind == "s3" else None,
        },
        "encryption": encryption,
        "tables": counts,
        "total_rows": sum(counts.values()),
        "verifications": [],
    }
    record = BackupRecord(backup_id, storage.url(name), manifest, storage)
    record.save_manifest()  # the commit point
    log.info(
        "backup %s stored: %s, %d bytes (dump %d bytes), %d tables, %d rows, in %.1fs",
        backup_id, record.location, stored["size"], stored["plain_size"], len(counts), manifest["total_rows"], manifest["duration_s"],
    )
    if verify != "none":
        from pytest_hokmdb.backup.verify import verify_backup

        result = await verify_backup(loaded, record, depth=verify, show_progress=show_progress)
        if not result["passed"]:
            raise BackupError(
                f"backup {backup_id} was stored but failed its {verify} verification: " + "; ".join(result["problems"])[:1500]
            )
    return record
