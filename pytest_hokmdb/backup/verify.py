"""Prove a backup: *quick* (checksum, decryption, table of contents) and *full* (restore
into a scratch database, row counts against the manifest, amcheck, the smoke suite).

Every integrity problem is found while the object is fetched and decrypted into a local
file, before pg_restore is started: a size that differs from the manifest (truncated),
a wrong key (the manifest names the recipient), a SHA-256 that differs (a flipped byte:
age's authentication fails too; a wrong manifest: the object still decrypts), a plain
dump whose SHA-256 differs, an unreadable table of contents.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pyrage

from pytest_hokmdb.backup.crypto import BackupKey, load_key
from pytest_hokmdb.backup.pg import (
    amcheck,
    analyze,
    bin_dir,
    compare_counts,
    count_rows,
    create_database,
    drop_database,
    quote_ident,
    reset_statistics,
    run_pg_restore,
    toc_list,
)
from pytest_hokmdb.backup.plaintext import anonymous_file, scratch_dir
from pytest_hokmdb.backup.records import BackupRecord, find_backup, iso, utcnow
from pytest_hokmdb.backup.streams import HashingReader, HashingWriter
from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.console import progress
from pytest_hokmdb.db import Target, connect
from pytest_hokmdb.db.resolve import grant_monitor, provision_monitor
from pytest_hokmdb.errors import BackupError
from pytest_hokmdb.redaction import register_secret

log = logging.getLogger("hokmdb.backup")


@contextlib.contextmanager
def fetched_dump(
    loaded: LoadedConfig, record: BackupRecord, *, key: BackupKey | None = None, show_progress: bool | None = None
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Fetch, check and decrypt a backup into an anonymous file (gone when it closes).

    Yields the plain custom-format archive and the quick verification's findings; raises
    ``BackupError`` naming the problem when anything does not match the manifest.
    """
    manifest = record.manifest
    obj = manifest["object"]
    key = key or load_key(loaded)
    started = time.monotonic()
    expected_size = int(obj["size"])
    size = record.storage.size(record.data_name)
    if size is None:
        raise BackupError(f"backup {record.id}: object {record.location} is missing (the manifest exists)")
    if size != expected_size:
        what = "truncated" if size < expected_size else "longer than recorded"
        raise BackupError(
            f"backup {record.id} is {what}: {record.location} has {size} bytes, the manifest says {expected_size}"
        )
    identity = key.identity_for(manifest["encryption"], backup=record.id)  # wrong key: said before any download

    # The plaintext goes into a file without a name (see backup/plaintext.py): no moment, not
    # even a kill -9, leaves a decrypted copy of the database in a directory.
    with anonymous_file(scratch_dir()) as (fd, path):
        with progress(f"download+decrypt {record.id}", expected_size, enabled=show_progress) as advance:
            with record.storage.reader(record.data_name) as raw, open(fd, "wb", buffering=1024 * 1024, closefd=False) as out:
                stored = HashingReader(raw, on_bytes=advance)
                plain = HashingWriter(out)
                decrypt_error: BaseException | None = None
                try:
                    pyrage.decrypt_io(stored, plain, [identity])
                except (pyrage.DecryptError, OSError) as exc:
                    if stored.error is not None:
                        raise stored.error if isinstance(stored.error, BackupError) else BackupError(
                            f"reading {record.location} failed: {stored.error}"
                        ) from None
                    if plain.error is not None:
                        raise BackupError(f"writing the decrypted dump to {scratch_dir()} failed: {plain.error}") from None
                    decrypt_error = exc
                stored.drain()  # the whole object's checksum, also after a decryption error
        object_ok = stored.hexdigest == obj["sha256"]
        if decrypt_error is not None:
            mismatch = (
                f"its SHA-256 {stored.hexdigest[:16]}... differs from the manifest's {obj['sha256'][:16]}..."
                if not object_ok
                else "its SHA-256 matches the manifest"
            )
            raise BackupError(
                f"backup {record.id} is corrupt: age authentication failed ({decrypt_error}) and {mismatch}; "
                "the stored object was damaged after it was written",
                hint="restore another backup (rollback.py list-backups)",
            )
        if not object_ok:
            raise BackupError(
                f"backup {record.id}: checksum mismatch: the stored object's SHA-256 is {stored.hexdigest}, "
                f"the manifest says {obj['sha256']}; the object decrypts and authenticates, so the manifest is "
                "wrong or belongs to another backup",
                hint="do not trust this manifest; restore another backup",
            )
        dump = manifest["dump"]
        if plain.hexdigest != dump["sha256"] or plain.size != int(dump["size"]):
            raise BackupError(
                f"backup {record.id}: the decrypted dump's checksum does not match the manifest "
                f"({plain.size} bytes, SHA-256 {plain.hexdigest[:16]}...; manifest: {dump['size']} bytes, {dump['sha256'][:16]}...)"
            )
        entries = toc_list(bin_dir(loaded), path)
        data_entries = {" ".join(e.split()[5:7]) for e in entries if " TABLE DATA " in e}
        missing = [t for t in manifest["tables"] if " ".join(t.split(".", 1)) not in data_entries]
        if missing:
            raise BackupError(f"backup {record.id}: the archive's table of contents lacks data for {', '.join(missing)}")
        findings = {
            "object_sha256": stored.hexdigest,
            "object_size": stored.size,
            "dump_sha256": plain.hexdigest,
            "toc_entries": len(entries),
            "fetch_s": round(time.monotonic() - started, 3),
        }
        yield path, findings


def _result(depth: str, passed: bool, started: float, problems: list[str], details: dict[str, Any]) -> dict[str, Any]:
    return {
        "depth": depth,
        "passed": passed,
        "at": iso(utcnow()),
        "duration_s": round(time.monotonic() - started, 3),
        "problems": problems,
        "details": details,
    }


async def verify_backup(
    loaded: LoadedConfig,
    record: BackupRecord | str,
    *,
    depth: str = "quick",
    cluster: Any = None,
    smoke: bool = True,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Verify a backup and append the result to its manifest. Returns the result.

    ``cluster``: an ``EmbeddedCluster`` to restore into for ``full`` (default: a throwaway
    cluster started and removed here).
    """
    if isinstance(record, str):
        record = find_backup(loaded, record)
    if depth not in ("quick", "full"):
        raise BackupError(f"unknown verification depth {depth!r}", hint="use quick or full")
    started = time.monotonic()
    details: dict[str, Any] = {}
    problems: list[str] = []
    try:
        with fetched_dump(loaded, record, show_progress=show_progress) as (path, findings):
            details.update(findings)
            if depth == "full":
                problems += await _full(loaded, record, path, details, cluster=cluster, smoke=smoke, show_progress=show_progress)
    except BackupError as exc:
        problems.append(exc.message)
    result = _result(depth, not problems, started, problems, details)
    try:
        record.record_verification(result)
    except BackupError as exc:
        log.warning("could not record the verification in %s: %s", record.manifest_location, exc.message)
    (log.info if result["passed"] else log.error)(
        "%s verification of %s %s in %.1fs%s",
        depth, record.id, "passed" if result["passed"] else "FAILED", result["duration_s"],
        "" if result["passed"] else ": " + "; ".join(problems)[:2000],
    )
    return result


async def grant_app_role(admin_db: Target, role: str) -> None:
    """Data privileges for the application role on a copy restored without owners/ACLs."""
    conn = await connect(admin_db)
    try:
        await conn.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {quote_ident(admin_db.dbname)} TO {quote_ident(role)}")
        schemas = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp%'"
        )
        for row in schemas:
            schema = quote_ident(row["nspname"])
            await conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {quote_ident(role)}")
            await conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {quote_ident(role)}")
            await conn.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {quote_ident(role)}")
    finally:
        await conn.close()


async def grant_monitor_role(admin_db: Target, role: str) -> None:
    """The monitoring role's grants (``MONITOR_GRANTS``, as setup gives them) on a copy restored
    without ACLs. Granting on catalog objects takes a superuser: a restoring role that is not
    one is said in the log, and the checks that need the grants report "not verified"."""
    conn = await connect(admin_db)
    try:
        await grant_monitor(conn, role)
    except asyncpg.InsufficientPrivilegeError as exc:
        log.warning(
            "the monitoring role %s gets no grants on the restored copy %s: role %s may not give them (%s); "
            "the checks that read pg_hba_file_rules will report \"not verified\" (restore as a superuser: "
            "backup.admin_user)", role, admin_db.dbname, admin_db.user, exc,
        )
    finally:
        await conn.close()


async def check_restored(db: Target, manifest: dict[str, Any], details: dict[str, Any]) -> list[str]:
    """Row counts against the manifest, then amcheck over every btree index; a copy that
    passes has its statistics reset (``reset_statistics``): what the smoke suite and, after a
    swap, the application see counts from here, not the restore's and this check's own reads."""
    problems: list[str] = []
    conn = await connect(replace(db, statement_timeout_ms=0, read_only=False))
    try:
        counts = await count_rows(conn)
        count_problems = compare_counts(manifest["tables"], counts)
        details["row_counts"] = {"tables": len(counts), "rows": sum(counts.values()), "matched": not count_problems}
        problems += [f"row count: {p}" for p in count_problems]
        checked = await amcheck(conn)
        details["amcheck"] = checked
        problems += [f"amcheck: {p}" for p in checked["problems"]]
    finally:
        await conn.close()
    if not problems:
        details["statistics_reset"] = await reset_statistics(db)
    return problems


def scratch_smoke_settings(loaded: LoadedConfig) -> dict[str, Any]:
    """The environment's smoke settings for a restored copy on a scratch server: properties of
    the original *server* (TLS, connection logging, its replicas) are not the copy's to check."""
    smoke = loaded.config.smoke.model_dump(mode="json")
    smoke["require_ssl"] = False
    smoke["log_connections"] = None
    smoke["expected_replicas"] = 0
    return {k: v for k, v in smoke.items() if v is not None}


def _verification_config(loaded: LoadedConfig, db: Target, directory: Path) -> Path:
    """A config for the smoke gate against the restored copy: the environment's smoke
    thresholds, the copy as database (password through an environment variable)."""
    data = {
        "environment": "testing",
        "description": f"verification of a backup of {loaded.config.environment}",
        "database": {
            "host": db.host,
            "port": db.port,
            "name": db.dbname,
            "user": db.user,
            "password": "${HOKMDB_VERIFY_PASSWORD}",
            "monitor_user": f"{db.user}_monitor",
            "monitor_password": "${HOKMDB_VERIFY_MONITOR_PASSWORD}",
            "sslmode": "disable",
        },
        "embedded": {"enabled": False},
        "smoke": scratch_smoke_settings(loaded),
    }
    path = directory / "testing.json"
    path.write_text(json.dumps(data, indent=2))
    return path


async def _full(
    loaded: LoadedConfig,
    record: BackupRecord,
    dump: Path,
    details: dict[str, Any],
    *,
    cluster: Any,
    smoke: bool,
    show_progress: bool | None,
) -> list[str]:
    from pytest_hokmdb.cluster.embedded import SUPERUSER
    from pytest_hokmdb.config import load_config
    from pytest_hokmdb.db.scratch import start_throwaway_cluster
    from pytest_hokmdb.gate import run_gate

    own_cluster = cluster is None
    if own_cluster:
        cluster = start_throwaway_cluster("verify")
        # The decrypted copy gets a name on disk here: only where no other account can read
        # it, or swap a directory on its way for one of its own.
        exposed = cluster.exposure()
        if exposed:
            cluster.destroy()
            raise BackupError(
                "the backup is not restored into the verification server: another account could read or replace "
                "its data directory: " + "; ".join(exposed),
                hint="point HOKMDB_SCRATCH_DIR (or TMPDIR) at a directory only root, hokmdb's account and the "
                "server account control",
            )
    scratch = f"hokmdb_verify_{secrets.token_hex(4)}"
    admin = Target(
        environment="testing", host=cluster.host, port=cluster.port, dbname=scratch, user=SUPERUSER,
        password=cluster.superuser_password, sslmode="disable", embedded=True, statement_timeout_ms=0,
    )
    # A role of its own (never the configured one: the cluster may be shared), not a superuser,
    # so the security checks see what the application would.
    app_user = f"hokmdb_verify_{secrets.token_hex(4)}"
    app_password = secrets.token_urlsafe(18)
    problems: list[str] = []
    try:
        conn = await connect(admin.with_database("postgres"))
        try:
            await conn.execute(
                await conn.fetchval(
                    "SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', $1::text, $2::text)",
                    app_user, app_password,
                )
            )
            await conn.execute(f"GRANT pg_monitor TO {quote_ident(app_user)}")
        finally:
            await conn.close()
        await create_database(admin, scratch)
        t0 = time.monotonic()
        run_pg_restore(
            bin_dir(loaded), dump, admin, jobs=loaded.config.backup.restore_jobs, exact=False,
            entries=int(details.get("toc_entries", 0)), show_progress=show_progress,
        )
        details["restore_s"] = round(time.monotonic() - t0, 3)
        await grant_app_role(admin, app_user)
        # The gate's monitoring connection on the copy, created as setup creates one.
        monitor_password = secrets.token_urlsafe(18)
        register_secret(monitor_password)
        conn = await connect(admin)
        try:
            await provision_monitor(conn, user=f"{app_user}_monitor", password=monitor_password)
        finally:
            await conn.close()
        await analyze(admin)
        problems += await check_restored(admin, record.manifest, details)
        if smoke and not problems:
            app = replace(admin, user=app_user, password=app_password)
            with tempfile.TemporaryDirectory(prefix="hokmdb-verify-config-") as tmp:
                path = _verification_config(loaded, app, Path(tmp))
                secrets_env = {"HOKMDB_VERIFY_PASSWORD": app_password, "HOKMDB_VERIFY_MONITOR_PASSWORD": monitor_password}
                gate_loaded = load_config("testing", path, environ=secrets_env)
                extra = [f"--target-revision={record.revision}"] if record.revision else []
                t0 = time.monotonic()
                gate = run_gate(
                    gate_loaded, "smoke", extra_args=extra,
                    env={**secrets_env, "HOKMDB_ENVIRONMENT": "testing"},
                    timeout_s=loaded.config.deploy.gate_timeout_s,
                )
                summary = gate.summary
                details["smoke"] = {"exit_code": gate.exit_code, "summary": summary, "duration_s": round(time.monotonic() - t0, 3)}
                if not gate.passed:
                    failed = [
                        f"{t.get('check') or t['nodeid']}: {t.get('message', '')}"[:300]
                        for t in gate.tests if t.get("outcome") in ("failed", "error")
                    ]
                    problems.append(
                        "smoke suite failed on the restored copy: " + ("; ".join(failed) if failed else gate.output[-800:])
                    )
    finally:
        if own_cluster:
            cluster.destroy()
        else:
            await drop_database(admin, scratch)
            conn = await connect(admin.with_database("postgres"))
            try:
                await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(app_user)}")
                await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(app_user + '_monitor')}")
            finally:
                await conn.close()
    return problems
