#!/usr/bin/env python3
"""Physical backups: hokmdb's pgBackRest setup against plain pg_basebackup, and a point-in-time restore, in the same run.

    .venv/bin/python bench/pitr_backup.py [--size-gb 1.0] [--cipher] [--process-max 2] [--keep]

On an embedded cluster that archives every WAL segment into a pgBackRest repository
written by hokmdb's own configuration (``PhysicalBackupSettings`` with a posix
``repo_path``, lz4, ``--process-max`` processes, no cipher unless ``--cipher``), it seeds
a Hokm database with the game simulator and inflates it by cloning the seeded games until
``pg_database_size`` reaches ``--size-gb`` GiB, then prints:

* a pgBackRest full backup (``PgBackRest(setup).backup("full")``) against
  ``pg_basebackup`` of the same cluster (plain ``-Fp -X stream --checkpoint=fast``, and
  the tar format compressed with lz4 and with gzip), each as the server's OS account over
  the unix socket: seconds, MiB/s of the data directory, size on disk;
* a point-in-time restore (``restore_to_point`` to a moment between two marker rows
  written after the backup) until the copy is promoted and a verification query has
  passed (exactly one marker, the big table's row count equal to the source's);
* a differential backup after a few changes.

The cluster runs with fsync, synchronous_commit and full_page_writes *on* (PostgreSQL
defaults, jit off), unlike the test clusters: backups and restores write and sync files,
so turning durability off would flatter them. Everything is measured on a warm page cache
(the data was just written), and nothing is asserted: the script prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.config.model import PhysicalBackupSettings
from pytest_hokmdb.pitr import (
    PgBackRest,
    PitrSetup,
    RecoveryTarget,
    RestoredCopy,
    archiving_cluster,
    resolve_setup,
    restore_to_point,
)

DB_NAME = "hokm_bench"
BIG_TABLE = "moves"
MIB = 2**20
GIB = 2**30
# Production-like durability: a backup writes and syncs files, so fsync off would flatter it.
CLUSTER_SETTINGS = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on", "jit": "off"}
CHILD_TABLES = ("game_participants", "player_game_stats", "moves")


@dataclass
class Row:
    operation: str
    seconds: float
    source_bytes: int | None  # what was read (for MiB/s)
    disk_bytes: int | None  # what it left on disk


# -- small helpers ---------------------------------------------------------------------------


def du(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (like ``du -s``), symlinks not followed."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:,.0f}"


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextmanager
def captured_log(name: str) -> Iterator[list[tuple[float, str]]]:
    """Collect (perf_counter, message) of ``name``'s INFO records: restore_to_point reports its phases there."""
    records: list[tuple[float, str]] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append((time.perf_counter(), record.getMessage()))

    logger = logging.getLogger(name)
    handler = Handler(logging.INFO)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def run_as_server(setup: PitrSetup, args: list[str], cwd: Path) -> float:
    """Run a PostgreSQL client tool as the server's OS account (libpq PG* variables dropped); its wall time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(setup.user.env())
    env.update({"LC_ALL": "C", "LANG": "C"})
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd,
                            **setup.user.subprocess_kwargs())  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")
    return elapsed


async def connect(cluster: EmbeddedCluster, dbname: str = DB_NAME) -> asyncpg.Connection:
    return await asyncpg.connect(**cluster.admin_connect_kwargs(dbname))  # type: ignore[arg-type]


async def switch_and_wait_archived(conn: asyncpg.Connection, timeout_s: float = 600) -> float:
    """End the current WAL segment and wait until the archiver has stored it; seconds waited."""
    started = time.perf_counter()
    segment = await conn.fetchval("SELECT pg_walfile_name(pg_switch_wal())")
    while True:
        row = await conn.fetchrow("SELECT last_archived_wal, last_failed_wal, failed_count FROM pg_stat_archiver")
        if row["last_archived_wal"] and row["last_archived_wal"][:24] >= segment:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError(f"{segment} not archived within {timeout_s:.0f}s (archiver: {dict(row)})")
        await asyncio.sleep(0.1)


# -- seeding -----------------------------------------------------------------------------------


async def _columns(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 "
        "AND is_generated = 'NEVER' ORDER BY ordinal_position", table)
    return [r["column_name"] for r in rows]


async def clone_games(conn: asyncpg.Connection, offset: int, up_to_id: int) -> None:
    """Copy games 1..up_to_id (sessions, participants, stats, moves) under ids shifted by ``offset``, one transaction."""
    async with conn.transaction():
        cols = await _columns(conn, "game_sessions")
        exprs = [f"id + {offset}" if c == "id" else f'"{c}"' for c in cols]
        await conn.execute(
            f"INSERT INTO game_sessions ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in cols)}) "
            f"SELECT {', '.join(exprs)} FROM game_sessions WHERE id <= {up_to_id}")
        for table in CHILD_TABLES:
            cols = [c for c in await _columns(conn, table) if c != "id"]
            exprs = [f"game_id + {offset}" if c == "game_id" else f'"{c}"' for c in cols]
            await conn.execute(
                f"INSERT INTO {table} ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in cols)}) "
                f"SELECT {', '.join(exprs)} FROM {table} WHERE game_id <= {up_to_id}")


async def seed_and_inflate(cluster: EmbeddedCluster, base_games: int, target_bytes: int) -> dict[str, Any]:
    """Simulated games via the project's seeder (COPY), then clones of them until the database is big enough."""
    from hokm_profile.seed import seed

    out: dict[str, Any] = {}
    conn = await connect(cluster)
    try:
        t = time.perf_counter()
        report = await seed(conn, players=max(200, base_games // 2), games=base_games, random_seed=1)
        out["seed_s"] = time.perf_counter() - t
        out["seed_rows"] = report.total_rows
        out["seed_bytes"] = await conn.fetchval("SELECT pg_database_size(current_database())")
        print(f"  seeded {report.total_rows:,} rows ({base_games} games) with the simulator + COPY in {out['seed_s']:.1f}s: "
              f"{out['seed_bytes'] / MIB:,.0f} MiB")
        t = time.perf_counter()
        base_max = await conn.fetchval("SELECT max(id) FROM game_sessions")
        out["base_max"] = base_max
        clones = 0
        size = out["seed_bytes"]
        while size < target_bytes:
            clones += 1
            await clone_games(conn, clones * base_max, base_max)
            size = await conn.fetchval("SELECT pg_database_size(current_database())")
        out["clones"] = clones
        await conn.execute("SELECT setval(pg_get_serial_sequence('game_sessions', 'id'), (SELECT max(id) FROM game_sessions))")
        out["inflate_s"] = time.perf_counter() - t
        print(f"  inflated with {clones} clones of every game (INSERT ... SELECT) in {out['inflate_s']:.1f}s")
        t = time.perf_counter()
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
        out["vacuum_s"] = time.perf_counter() - t
        out["archive_wait_s"] = await switch_and_wait_archived(conn)
        print(f"  VACUUM ANALYZE + CHECKPOINT {out['vacuum_s']:.1f}s; archiver caught up {out['archive_wait_s']:.1f}s later")
        out["db_bytes"] = await conn.fetchval("SELECT pg_database_size(current_database())")
        out["big_rows"] = await conn.fetchval(f"SELECT count(*) FROM {BIG_TABLE}")
        out["big_bytes"] = await conn.fetchval(f"SELECT pg_total_relation_size('{BIG_TABLE}')")
        await conn.execute("CREATE TABLE bench_markers (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
    finally:
        await conn.close()
    return out


# -- point-in-time restore -----------------------------------------------------------------------


async def write_marker(conn: asyncpg.Connection, marker: int) -> datetime:
    """Commit marker ``marker``; the server's clock right after the commit."""
    await conn.execute("INSERT INTO bench_markers (id) VALUES ($1)", marker)
    moment: datetime = await conn.fetchval("SELECT clock_timestamp()")
    await asyncio.sleep(0.05)  # the next commit gets a later time-stamp
    return moment


async def pitr_restore(cluster: EmbeddedCluster, engine: PgBackRest, backup_stop: datetime, big_rows: int,
                       holder: list[RestoredCopy]) -> dict[str, Any]:
    """marker 1 | target time | marker 2 | WAL switch; then restore to the target until verified."""
    out: dict[str, Any] = {}
    # pgBackRest's stop time is truncated to the second: a target must be after the real end.
    remaining = backup_stop.timestamp() + 1.05 - time.time()
    if remaining > 0:
        await asyncio.sleep(remaining)
    live = await connect(cluster)
    try:
        target_time = await write_marker(live, 1)
        await write_marker(live, 2)
        out["archive_wait_s"] = await switch_and_wait_archived(live)
        with captured_log("hokmdb.pitr") as records:
            started = time.perf_counter()
            copy = await restore_to_point(engine, RecoveryTarget.at_time(target_time), live=live)
            holder.append(copy)
            out["promoted_s"] = time.perf_counter() - started
        restored_at = next((at for at, msg in records if "restored in" in msg), None)
        out["files_s"] = restored_at - started if restored_at is not None else None
        conn = await copy.admin_connect(DB_NAME)
        try:
            markers = await conn.fetchval("SELECT count(*) FROM bench_markers")
            rows = await conn.fetchval(f"SELECT count(*) FROM {BIG_TABLE}")
        finally:
            await conn.close()
        out["ready_s"] = time.perf_counter() - started
        out["verified"] = markers == 1 and rows == big_rows
        out["markers"], out["rows"] = markers, rows
        out["copy_bytes"] = du(copy.data_dir)
        out["describe"] = copy.describe()
    finally:
        await live.close()
    return out


async def change_some(cluster: EmbeddedCluster, base_max: int, offset: int) -> float:
    """A little new work for the diff backup: 5% of the seeded games cloned again, every player touched."""
    conn = await connect(cluster)
    try:
        t = time.perf_counter()
        await clone_games(conn, offset, max(1, base_max // 20))
        await conn.execute("UPDATE players SET last_seen_at = clock_timestamp()")
        await switch_and_wait_archived(conn)
        return time.perf_counter() - t
    finally:
        await conn.close()


# -- the run -----------------------------------------------------------------------------------------


def physical_settings(base: Path, args: argparse.Namespace) -> PhysicalBackupSettings:
    values: dict[str, object] = {
        "stanza": "hokmdb",
        "repo_path": str(base / "repo"),
        "work_dir": str(base / "pgbackrest"),
        "retention_full": 2,
        "process_max": args.process_max,
        "compress_type": "lz4",
        "archive_timeout_s": 0,
        "recovery_timeout_s": 1800,
    }
    if args.cipher:
        values.update(cipher_type="aes-256-cbc", cipher_pass=secrets.token_urlsafe(32))
    return PhysicalBackupSettings.model_validate(values)


def repo_delta(engine: PgBackRest, label: str) -> int | None:
    """What a backup added to the repository (pgBackRest's ``repository.delta``; ``repo_size`` counts the whole set)."""
    data = json.loads(engine.run("info", "--output=json", timeout=300), strict=False)
    for stanza in data:
        for backup in stanza.get("backup") or []:
            if backup.get("label") == label:
                return int(((backup.get("info") or {}).get("repository") or {}).get("delta") or 0)
    return None


def basebackup(setup: PitrSetup, cluster: EmbeddedCluster, dest: Path, *extra: str) -> float:
    args = [str(setup.bin_dir / "pg_basebackup"), "-h", str(setup.socket_dir), "-p", str(cluster.port), "-U",
            setup.settings.pg_user, "-D", str(dest), "-X", "stream", "--checkpoint=fast", *extra]
    return run_as_server(setup, args, dest.parent)


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    base = Path(tempfile.gettempdir()) / f"hokmdb-bench-pitr-{uuid.uuid4().hex[:10]}"
    base.mkdir(mode=0o755)
    base.chmod(0o755)  # the server account must traverse it
    cluster: EmbeddedCluster | None = None
    copies: list[RestoredCopy] = []
    rows: list[Row] = []
    total_started = time.perf_counter()
    try:
        cluster = EmbeddedCluster(base / "cluster", settings=dict(CLUSTER_SETTINGS))
        settings = physical_settings(base, args)
        setup = resolve_setup(settings, cluster=cluster)
        archiving_cluster(cluster, setup)
        PgBackRest(setup)  # writes the config file archive_command reads
        cluster.start()
        setup = resolve_setup(settings, cluster=cluster)  # now with the port
        engine = PgBackRest(setup)
        engine.stanza_create()
        pgbackrest_version = subprocess.run([engine.executable, "version"], capture_output=True, text=True).stdout.strip()
        print(f"{cluster.server_version()}, {pgbackrest_version}; {os.cpu_count()} CPUs, {load()} at start")
        print(f"cluster {cluster.host}:{cluster.port} in {base} as {setup.user.name}; settings "
              + ", ".join(f"{k}={v}" for k, v in CLUSTER_SETTINGS.items()) + " (PostgreSQL defaults otherwise)")
        print(f"repository {settings.repo_path}: compress {settings.compress_type}, process-max {settings.process_max}, "
              f"cipher {settings.cipher_type}; archiving every WAL segment (archive-push)")

        from pytest_hokmdb.fixtures.throwaway import create_database
        from pytest_hokmdb.migrate import upgrade

        db = create_database(cluster, DB_NAME)
        upgrade(db.url, "head")
        target_bytes = int(args.size_gb * GIB)
        print(f"seeding {DB_NAME} to at least {args.size_gb} GiB ({target_bytes / MIB:,.0f} MiB):")
        seeding_started = time.perf_counter()
        seeded = asyncio.run(seed_and_inflate(cluster, args.base_games, target_bytes))
        seeding_s = time.perf_counter() - seeding_started
        data_bytes = du(cluster.data_dir) - du(cluster.data_dir / "pg_wal")
        archive_bytes = du(settings.repo_path / "archive")  # type: ignore[operator]
        print(f"  pg_database_size({DB_NAME}) = {seeded['db_bytes'] / MIB:,.0f} MiB; {BIG_TABLE}: {seeded['big_rows']:,} rows, "
              f"{seeded['big_bytes'] / MIB:,.0f} MiB; data directory without pg_wal {data_bytes / MIB:,.0f} MiB")
        print(f"  seeding took {seeding_s:.1f}s in all; WAL archived meanwhile: {archive_bytes / MIB:,.0f} MiB in the repository (lz4)")

        # (a) pgBackRest full backup with hokmdb's configuration
        print(f"pgBackRest full backup ({load()}) ...")
        t = time.perf_counter()
        engine.info()
        info_s = time.perf_counter() - t
        t = time.perf_counter()
        full = engine.backup("full")
        full_s = time.perf_counter() - t
        full_disk = du(settings.repo_path / "backup" / setup.stanza / full.label)  # type: ignore[operator]
        rows.append(Row(f"pgBackRest full ({settings.compress_type}, p{settings.process_max}, {settings.cipher_type})",
                        full_s, data_bytes, full_disk))
        print(f"  {full.label}: {full_s:.1f}s wall (pgBackRest's own start-stop {(full.stopped_at - full.started_at).total_seconds():.0f}s), "
              f"database {full.size / MIB:,.0f} MiB, repository {full.repo_size / MIB:,.0f} MiB; "
              f"includes two pgbackrest info calls of {info_s:.2f}s each")

        # (b) pg_basebackup of the same cluster, as the server account over the socket
        bb_root = base / "basebackups"
        setup.own(bb_root, 0o700)
        variants = [
            ("pg_basebackup -Fp -X stream", "plain", ()),
            ("pg_basebackup -Ft -Z client-lz4", "tar-lz4", ("-Ft", "--compress=client-lz4")),
            ("pg_basebackup -Ft -z (gzip)", "tar-gzip", ("-Ft", "-z")),
        ]
        plain_s = None
        for label, dirname, extra in variants:
            print(f"{label} ({load()}) ...")
            dest = bb_root / dirname
            try:
                seconds = basebackup(setup, cluster, dest, *extra)
            except RuntimeError as exc:
                print(f"  skipped: {exc}")
                shutil.rmtree(dest, ignore_errors=True)
                continue
            size = du(dest)
            rows.append(Row(label, seconds, data_bytes, size))
            plain_s = seconds if dirname == "plain" else plain_s
            print(f"  {seconds:.1f}s, {size / MIB:,.0f} MiB on disk")
            if not args.keep:
                shutil.rmtree(dest, ignore_errors=True)

        # (c) point-in-time restore to a verified, promoted copy
        print(f"point-in-time restore ({load()}) ...")
        pitr = asyncio.run(pitr_restore(cluster, engine, full.stopped_at, seeded["big_rows"], copies))
        rows.append(Row("PITR restore -> promoted copy", pitr["promoted_s"], None, pitr["copy_bytes"]))
        rows.append(Row("PITR restore -> verified (markers, rows)", pitr["ready_s"], None, None))
        print(f"  {pitr['describe']}")
        files = f"{pitr['files_s']:.1f}s" if pitr["files_s"] is not None else "?"
        print(f"  pgbackrest restore of the files {files}, then start + WAL replay + promote "
              f"{pitr['promoted_s'] - (pitr['files_s'] or 0):.1f}s, verification {pitr['ready_s'] - pitr['promoted_s']:.1f}s; "
              f"markers {pitr['markers']} (want 1), {BIG_TABLE} rows {pitr['rows']:,} (want {seeded['big_rows']:,}): "
              f"{'VERIFIED' if pitr['verified'] else 'VERIFICATION FAILED'}")
        for copy in copies:
            if args.keep:
                copy.stop()
            else:
                copy.destroy()
        copies.clear()

        # (d) a differential backup after a few changes
        changed_s = asyncio.run(change_some(cluster, seeded["base_max"], (seeded["clones"] + 1) * seeded["base_max"]))
        print(f"pgBackRest diff backup after {changed_s:.1f}s of changes ({load()}) ...")
        t = time.perf_counter()
        diff = engine.backup("diff")
        diff_s = time.perf_counter() - t
        diff_disk = du(settings.repo_path / "backup" / setup.stanza / diff.label)  # type: ignore[operator]
        rows.append(Row(f"pgBackRest {diff.type} after changes", diff_s, data_bytes, diff_disk))
        delta = repo_delta(engine, diff.label)
        print(f"  {diff.label}: {diff_s:.1f}s; added {mib(delta)} MiB to the repository (the whole set: {diff.repo_size / MIB:,.0f} MiB); "
              "pgBackRest 2.45 copies a changed relation file (up to 1 GiB) whole, however few of its pages changed")

        print()
        print(f"summary: {DB_NAME} {seeded['db_bytes'] / MIB:,.0f} MiB, data directory {data_bytes / MIB:,.0f} MiB "
              f"(MiB/s = data directory / seconds); {load()} at the end; total run {time.perf_counter() - total_started:.0f}s")
        print(f"{'operation':44} {'seconds':>8} {'MiB/s':>7} {'on disk MiB':>12} {'vs full':>8}")
        for row in rows:
            rate = f"{row.source_bytes / MIB / row.seconds:7.0f}" if row.source_bytes else f"{'-':>7}"
            print(f"{row.operation:44} {row.seconds:8.1f} {rate} {mib(row.disk_bytes):>12} {row.seconds / full_s:8.2f}")
        if plain_s:
            print(f"pgBackRest full / pg_basebackup -Fp: {full_s / plain_s:.2f}")
        print(f"PITR restore (verified) / pgBackRest full backup: {pitr['ready_s'] / full_s:.2f}")
    finally:
        for copy in copies:
            try:
                copy.stop() if args.keep else copy.destroy()
            except Exception as exc:  # noqa: BLE001  (clean up the rest regardless)
                print(f"could not clean up the restored copy: {exc}", file=sys.stderr)
        if cluster is not None:
            try:
                cluster.stop() if args.keep else cluster.destroy()
            except Exception as exc:  # noqa: BLE001
                print(f"could not stop the cluster: {exc}", file=sys.stderr)
        if args.keep:
            print(f"kept {base} (servers stopped)")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=1.0, help="seed until pg_database_size reaches this many GiB")
    p.add_argument("--cipher", action="store_true", help="encrypt the repository (aes-256-cbc, random pass)")
    p.add_argument("--process-max", type=int, default=2, help="pgBackRest process-max")
    p.add_argument("--base-games", type=int, default=2000, help="games simulated by the seeder before cloning")
    p.add_argument("--keep", action="store_true", help="stop the servers but keep the temp dir (cluster, repository, base backups)")
    return run(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
