"""PostgreSQL side of backups: client binaries, admin connections, row counts, amcheck, pg_restore."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg

from pytest_hokmdb.cluster.binaries import find_bin_dir
from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.console import progress
from pytest_hokmdb.db import Target, connect
from pytest_hokmdb.errors import BackupError, ClusterError
from pytest_hokmdb.redaction import redact, register_secret

log = logging.getLogger("hokmdb.backup")

# Tables of every schema but the system ones: what pg_dump dumps, what the manifest counts.
TABLES_SQL = """
SELECT n.nspname AS schema, c.relname AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def bin_dir(loaded: LoadedConfig | None = None) -> Path:
    """pg_dump/pg_restore: the configured embedded bin dir, else the server binaries found on this machine."""
    configured = None
    if loaded is not None and loaded.config.embedded is not None:
        configured = loaded.config.embedded.bin_dir
    try:
        found = find_bin_dir(configured)
    except ClusterError:
        on_path = shutil.which("pg_dump")
        if not on_path:
            raise BackupError("pg_dump not found", hint="install the PostgreSQL client (postgresql-client-15) or set HOKMDB_PG_BIN") from None
        found = Path(on_path).resolve().parent
    for tool in ("pg_dump", "pg_restore"):
        if not (found / tool).is_file():
            raise BackupError(f"{tool} not found in {found}", hint="install the PostgreSQL client binaries")
    return found


def tool_version(path: Path) -> str:
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def subprocess_env(target: Target) -> dict[str, str]:
    """The process environment for libpq tools: inherited, minus any PG* of the caller, plus the target's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(target.libpq_env())
    env["LC_ALL"] = "C"
    return env


async def admin_target(loaded: LoadedConfig, target: Target) -> Target:
    """A role that may create, rename and drop databases on the target's server.

    The superuser of a server hokmdb runs (embedded, or the local Patroni leader); else ``backup.admin_user``/``admin_password``
    (``DB_ADMIN_USER``/``DB_ADMIN_PASSWORD`` in the shipped configs); else the target's own
    role, which then needs CREATEDB (and ownership of the database for a swap).
    """
    from pytest_hokmdb.db.resolve import local_superuser

    superuser = local_superuser(loaded, target)  # the embedded cluster's, or the local Patroni leader's
    if superuser is not None:
        return superuser
    backup = loaded.config.backup
    if backup.admin_user:
        password = backup.admin_password.get_secret_value() if backup.admin_password else None
        register_secret(password)
        return replace(target, user=backup.admin_user, password=password, read_only=False)
    return target.writable()


async def admin_connect(admin: Target, dbname: str = "postgres") -> asyncpg.Connection:
    conn = await connect(replace(admin, dbname=dbname, statement_timeout_ms=0))
    return conn


async def table_names(conn: asyncpg.Connection) -> list[str]:
    return [f"{r['schema']}.{r['name']}" for r in await conn.fetch(TABLES_SQL)]


async def count_rows(conn: asyncpg.Connection, tables: list[str] | None = None) -> dict[str, int]:
    names = tables if tables is not None else await table_names(conn)
    counts: dict[str, int] = {}
    for qualified in names:
        schema, _, name = qualified.partition(".")
        counts[qualified] = int(await conn.fetchval(f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(name)}"))
    return counts


async def amcheck(conn: asyncpg.Connection) -> dict[str, Any]:
    """``bt_index_check`` on every btree index of the database; the extension is removed afterwards."""
    had = await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'amcheck'")
    if not had:
        await conn.execute("CREATE EXTENSION amcheck")
    problems: list[str] = []
    checked = 0
    try:
        indexes = await conn.fetch(
            """
            SELECT c.oid, n.nspname || '.' || c.relname AS name
            FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am a ON a.oid = c.relam
            WHERE a.amname = 'btree' AND i.indisvalid AND i.indisready
              AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
            ORDER BY 2
            """
        )
        for row in indexes:
            try:
                await conn.execute("SELECT bt_index_check($1::oid::regclass, true)", row["oid"])
                checked += 1
            except asyncpg.PostgresError as exc:
                problems.append(f"{row['name']}: {exc}")
    finally:
        if not had:
            await conn.execute("DROP EXTENSION IF EXISTS amcheck")
    return {"indexes_checked": checked, "problems": problems}


def compare_counts(expected: dict[str, int], actual: dict[str, int]) -> list[str]:
    problems = []
    for table, rows in sorted(expected.items()):
        if table not in actual:
            problems.append(f"{table}: in the manifest ({rows} rows) but not in the restored database")
        elif actual[table] != rows:
            problems.append(f"{table}: {actual[table]} rows restored, manifest says {rows}")
    for table in sorted(set(actual) - set(expected)):
        problems.append(f"{table}: in the restored database but not in the manifest")
    return problems


async def create_database(admin: Target, name: str, *, owner: str | None = None) -> None:
    conn = await admin_connect(admin)
    try:
        sql = f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0"
        if owner:
            sql += f" OWNER {quote_ident(owner)}"
        await conn.execute(sql)
    except asyncpg.InsufficientPrivilegeError:
        raise BackupError(
            f"role {admin.user!r} may not create databases on {admin.host}:{admin.port}",
            hint="restores need a role with CREATEDB: set backup.admin_user / admin_password (DB_ADMIN_USER / DB_ADMIN_PASSWORD)",
        ) from None
    finally:
        await conn.close()


async def drop_database(admin: Target, name: str) -> None:
    conn = await admin_connect(admin)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()


def toc_list(bin: Path, dump: Path) -> list[str]:
    proc = subprocess.run([str(bin / "pg_restore"), "--list", str(dump)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise BackupError(f"the archive's table of contents cannot be read: {proc.stderr.strip()[-500:]}")
    return [line for line in proc.stdout.splitlines() if line and not line.startswith(";")]


# One of these per TOC entry (with --jobs, "launching/processing/finished item" lines come on top).
_PROGRESS_LINE = re.compile(r"^pg_restore: (creating |processing data |executing )")


def run_pg_restore(
    bin: Path,
    dump: Path,
    target: Target,
    *,
    jobs: int,
    exact: bool,
    entries: int,
    show_progress: bool | None = None,
) -> None:
    """Restore ``dump`` into the (empty) database of ``target``; progress per TOC entry."""
    args = [
        str(bin / "pg_restore"),
        "--dbname", target.dbname,
        "--exit-on-error",
        "--no-password",
        "--verbose",
        f"--jobs={max(1, jobs)}",
    ]
    if not exact:
        args += ["--no-owner", "--no-acl"]
    args.append(str(dump))
    env = subprocess_env(replace(target, read_only=False, application_name="hokmdb pg_restore"))
    tail: list[str] = []
    with progress(f"restore {target.dbname}", entries or None, enabled=show_progress) as advance:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True, start_new_session=False)
        assert proc.stderr is not None
        for line in proc.stderr:
            if _PROGRESS_LINE.match(line):
                advance(1)
            else:
                tail.append(line.rstrip())
                del tail[:-20]
        code = proc.wait()
    if code != 0:
        detail = " | ".join(t for t in tail if "error" in t.lower())[-800:] or " | ".join(tail)[-800:]
        raise BackupError(f"pg_restore into {target.dbname} failed (exit {code}): {redact(detail)}")


async def analyze(target: Target) -> None:
    """``VACUUM (ANALYZE)`` of a restored copy: planner statistics, and the visibility map that
    autovacuum would otherwise set after the restore's inserts (``reset_statistics`` clears the
    counters that would have made it do so)."""
    conn = await connect(replace(target, statement_timeout_ms=0, read_only=False))
    try:
        await conn.execute("VACUUM (ANALYZE)")
    finally:
        await conn.close()


async def reset_statistics(target: Target) -> bool:
    """``pg_stat_reset()`` in a restored copy, once it is verified: its counters then hold the
    workload only, not the restore, VACUUM, row counts and amcheck that read it all from disk,
    and ``pg_stat_database.stats_reset`` says when the copy's statistics began (PostgreSQL keeps
    no creation time, and a new database's ``stats_reset`` is empty), so
    ``performance.cache_hit_ratio`` waits ``smoke.cache_hit_min_age_s`` from then. Nothing
    autovacuum needs is lost: ``analyze`` has just vacuumed and analyzed every table.

    False (and a warning) when the restoring role may not (a superuser's, by default)."""
    conn = await connect(replace(target, statement_timeout_ms=0, read_only=False))
    try:
        await conn.execute("SELECT pg_stat_reset()")
        return True
    except asyncpg.InsufficientPrivilegeError as exc:
        log.warning(
            "the statistics of the restored copy %s keep the restore's own reads: role %s may not reset them (%s); "
            "performance.cache_hit_ratio judges them once the server has run smoke.cache_hit_min_age_s "
            "(restore as a superuser: backup.admin_user)",
            target.dbname, target.user, exc,
        )
        return False
    finally:
        await conn.close()
