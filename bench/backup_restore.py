#!/usr/bin/env python3
"""Backup and restore: hokmdb's pipeline against plain pg_dump / pg_restore, in the same run.

    .venv/bin/python bench/backup_restore.py [--base-games 2000] [--copies 8] [--jobs 2] [--no-s3]

On a throwaway cluster (fsync off, like the test clusters) it seeds a *small* database
with the game simulator (``--base-games`` games, ~127 MB for 2000) and a *big* one made of
that seed plus ``--copies`` clones of every game (default 8: about 1.1 GB), then prints:

* backup wall time: ``pg_dump -Fc -Z<level>`` to a file vs hokmdb's full backup
  (snapshot + row counts, pg_dump, age encryption, SHA-256, store) to the local directory
  and to a local S3 endpoint (moto's server in its own process);
* restore wall time: ``pg_restore -j N`` of the plain file vs hokmdb's restore (fetch,
  checksums, decryption, the same pg_restore), plus the verification hokmdb adds on top
  (ANALYZE, row counts, amcheck), reported separately;
* the peak RSS of the hokmdb process (each operation runs in a child process of its own) at
  both sizes: it must not grow with the database.

Both sides use the same compression level (``backup.compression_level``, default 3) and
the same number of restore jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


# -- child: one hokmdb operation, measured from inside -----------------------------------------


def child(args: argparse.Namespace) -> int:
    import pytest_hokmdb.backup  # noqa: F401  (imports are start-up, not work)
    from pytest_hokmdb.backup import take_backup
    from pytest_hokmdb.config import load_config

    loaded = load_config("testing", args.config)
    out: dict[str, Any] = {}
    started = time.perf_counter()
    if args.child == "backup":
        record = asyncio.run(take_backup(loaded, verify="none", destination=args.dest, show_progress=False))
        out.update(location=record.location, size=record.size, dump_size=record.manifest["dump"]["size"],
                   timings=record.manifest["timings"])
        out["wall_s"] = time.perf_counter() - started
    else:
        from dataclasses import replace

        from pytest_hokmdb.backup.pg import analyze, bin_dir, create_database, run_pg_restore
        from pytest_hokmdb.backup.records import find_backup
        from pytest_hokmdb.backup.verify import check_restored, fetched_dump
        from pytest_hokmdb.db import resolve_target

        record = find_backup(loaded, args.location)
        target = asyncio.run(resolve_target(loaded))
        admin = replace(target, dbname=args.restore_db, statement_timeout_ms=0)
        with fetched_dump(loaded, record, show_progress=False) as (dump, findings):
            out["fetch_s"] = time.perf_counter() - started
            asyncio.run(create_database(admin, args.restore_db))
            run_pg_restore(bin_dir(loaded), dump, admin, jobs=loaded.config.backup.restore_jobs, exact=False,
                           entries=findings["toc_entries"], show_progress=False)
        out["wall_s"] = time.perf_counter() - started
        t = time.perf_counter()
        details: dict[str, Any] = {}
        asyncio.run(analyze(admin))
        problems = asyncio.run(check_restored(admin, record.manifest, details))
        out["verify_s"] = time.perf_counter() - t
        out["verify_problems"] = problems
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("BENCH " + json.dumps(out))
    return 0


# -- parent --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_child(mode: str, env: dict[str, str], config: Path, **kw: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, "--config", str(config)]
    for key, value in kw.items():
        cmd += [f"--{key.replace('_', '-')}", value]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed:\n{proc.stderr[-4000:]}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("BENCH "))
    result = json.loads(line[6:])
    result["process_s"] = time.perf_counter() - started
    return result


def timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


async def seed_databases(cluster: Any, base_games: int, copies: int) -> tuple[str, str]:
    import asyncpg

    from hokm_profile.seed import seed
    from pytest_hokmdb.fixtures.throwaway import create_database
    from pytest_hokmdb.migrate import upgrade

    small = create_database(cluster, "bench_small")
    upgrade(small.url, "head")
    conn = await asyncpg.connect(small.dsn)
    try:
        t = time.perf_counter()
        report = await seed(conn, players=max(200, base_games // 2), games=base_games, random_seed=1)
        print(f"  seeded bench_small: {report.total_rows:,} rows in {time.perf_counter() - t:.1f}s")
    finally:
        await conn.close()
    admin = await asyncpg.connect(cluster.admin_dsn())
    try:
        await admin.execute("CREATE DATABASE bench_big TEMPLATE bench_small")
    finally:
        await admin.close()
    conn = await asyncpg.connect(cluster.admin_dsn("bench_big"))
    try:
        t = time.perf_counter()
        base_max = await conn.fetchval("SELECT max(id) FROM game_sessions")

        async def columns(table: str) -> list[str]:
            return [r["column_name"] for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 "
                "AND is_generated = 'NEVER' ORDER BY ordinal_position", table)]

        for k in range(1, copies + 1):
            offset = k * base_max
            cols = await columns("game_sessions")
            exprs = [f"id + {offset}" if c == "id" else f'"{c}"' for c in cols]
            await conn.execute(
                f"INSERT INTO game_sessions ({', '.join(chr(34) + c + chr(34) for c in cols)}) "
                f"SELECT {', '.join(exprs)} FROM game_sessions WHERE id <= {base_max}"
            )
            for table in ("game_participants", "player_game_stats", "moves"):
                cols = [c for c in await columns(table) if c != "id"]
                exprs = [f"game_id + {offset}" if c == "game_id" else f'"{c}"' for c in cols]
                await conn.execute(
                    f"INSERT INTO {table} ({', '.join(chr(34) + c + chr(34) for c in cols)}) "
                    f"SELECT {', '.join(exprs)} FROM {table} WHERE game_id <= {base_max}"
                )
        await conn.execute("SELECT setval(pg_get_serial_sequence('game_sessions', 'id'), (SELECT max(id) FROM game_sessions))")
        await conn.execute("VACUUM ANALYZE")
        print(f"  bench_big: bench_small plus {copies} clones of every game in {time.perf_counter() - t:.1f}s")
        for name in ("bench_small", "bench_big"):
            size = await conn.fetchval("SELECT pg_database_size($1)", name)
            print(f"  {name}: {size / 2**20:,.0f} MiB")
    finally:
        await conn.close()
    return "bench_small", "bench_big"


def parent(args: argparse.Namespace) -> int:
    from pyrage import x25519

    from pytest_hokmdb.backup.pg import bin_dir
    from pytest_hokmdb.fixtures.throwaway import start_throwaway_cluster

    work = Path(tempfile.mkdtemp(prefix="hokmdb-bench-", dir=args.workdir))
    cluster = start_throwaway_cluster("bench")
    moto = None
    try:
        print(f"cluster {cluster.host}:{cluster.port} (throwaway, fsync off); work dir {work}")
        small, big = asyncio.run(seed_databases(cluster, args.base_games, args.copies))
        bins = bin_dir()
        level = 3
        port = _free_port()
        config_dir = work / "config"
        config_dir.mkdir()
        data = json.loads((ROOT / "database" / "config" / "testing.json").read_text())
        data["backup"] = {
            "local_dir": str(work / "backups"),
            "encryption_key": "${BACKUP_ENCRYPTION_KEY}",
            "compression_level": level,
            "restore_jobs": args.jobs,
            "s3_bucket": "${S3_BACKUP_BUCKET_TEST:-}",
            "s3_endpoint_url": f"http://127.0.0.1:{port}",
            "s3_region": "us-east-1",
            "s3_multipart_threshold_mb": args.multipart_threshold_mb,
        }
        (config_dir / "testing.json").write_text(json.dumps(data))
        base_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PG")},
            "DB_HOST": cluster.host, "DB_PORT": str(cluster.port), "DB_USER": "postgres",
            "DB_PASSWORD_TEST": cluster.superuser_password, "DB_ADMIN_USER": "postgres",
            "DB_ADMIN_PASSWORD": cluster.superuser_password, "HOKMDB_ENV_FILE": str(work / "none.env"),
            "BACKUP_ENCRYPTION_KEY": str(x25519.Identity.generate()), "HOKMDB_BACKUP_TMP": str(work),
            "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1",
        }
        pg_env = {**base_env, "PGHOST": cluster.host, "PGPORT": str(cluster.port), "PGUSER": "postgres",
                  "PGPASSWORD": cluster.superuser_password}
        if not args.no_s3:
            moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            time.sleep(2)
            import boto3

            boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                         aws_access_key_id="bench", aws_secret_access_key="bench-secret").create_bucket(Bucket="bench")

        rows = []
        memory: dict[str, dict[str, float]] = {}
        for name in (small, big):
            env = {**base_env, "DB_NAME": name}
            plain_file = work / f"{name}.plain.dump"
            # warm the cache the same way for both sides
            subprocess.run([str(bins / "pg_dump"), "-Fc", f"-Z{level}", "-f", str(plain_file), name], check=True, env=pg_env)
            plain_dump = timed([str(bins / "pg_dump"), "-Fc", f"-Z{level}", "-f", str(plain_file), name], pg_env)
            local = run_child("backup", env, config_dir, dest="local")
            plain_restore_db = f"{name}_plain_restore"
            subprocess.run([str(bins / "createdb"), "-T", "template0", plain_restore_db], check=True, env=pg_env)
            plain_restore = timed([str(bins / "pg_restore"), f"-j{args.jobs}", "--no-owner", "--no-acl", "-d", plain_restore_db,
                                   str(plain_file)], pg_env)
            # gone before the next run, so its autovacuum does not compete with it
            subprocess.run([str(bins / "dropdb"), plain_restore_db], check=True, env=pg_env)
            time.sleep(2)
            restored = run_child("restore", env, config_dir, location=local["location"], restore_db=f"{name}_hokmdb_restore")
            subprocess.run([str(bins / "dropdb"), f"{name}_hokmdb_restore"], check=True, env=pg_env)
            time.sleep(2)
            memory[name] = {"backup": local["max_rss_mb"], "restore": restored["max_rss_mb"]}
            rows.append((name, "backup -> local file", plain_dump, local["wall_s"], local["process_s"]))
            if not args.no_s3:
                s3 = run_child("backup", {**env, "S3_BACKUP_BUCKET_TEST": "bench"}, config_dir, dest="s3")
                rows.append((name, "backup -> local S3", plain_dump, s3["wall_s"], s3["process_s"]))
                memory[name]["backup_s3"] = s3["max_rss_mb"]
            rows.append((name, "restore (fetch+decrypt+pg_restore)", plain_restore, restored["wall_s"], restored["process_s"]))
            print(f"  {name}: hokmdb backup inside: row counts {local['timings']['row_counts_s']:.1f}s beside "
                  f"pg_dump+encrypt+store {local['timings']['dump_encrypt_store_s']:.1f}s")
            print(f"  {name}: plain dump {plain_file.stat().st_size / 2**20:,.1f} MiB, hokmdb object {local['size'] / 2**20:,.1f} MiB; "
                  f"hokmdb restore inside: fetch+checks+decrypt {restored['fetch_s']:.1f}s; "
                  f"verification on top of the restore (ANALYZE, row counts, amcheck): {restored['verify_s']:.1f}s"
                  f"{' PROBLEMS ' + str(restored['verify_problems']) if restored['verify_problems'] else ''}")
            plain_file.unlink()

        print()
        print(f"{'database':12} {'operation':38} {'plain s':>8} {'hokmdb s':>9} {'ratio':>6} {'(process s)':>12}")
        for name, op, plain, ours, proc in rows:
            print(f"{name:12} {op:38} {plain:8.2f} {ours:9.2f} {ours / plain:6.2f} {proc:12.2f}")
        print()
        print("peak RSS of the hokmdb process (MiB):")
        for name, values in memory.items():
            print(f"  {name:12} " + ", ".join(f"{k} {v:.0f}" for k, v in values.items()))
        print("(ratio = hokmdb / plain; 'process s' adds the Python start-up of the measuring child)")
    finally:
        if moto is not None:
            os.killpg(moto.pid, signal.SIGTERM)
            moto.wait()
        cluster.destroy()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-games", type=int, default=2000, help="games seeded by the simulator (the small database)")
    p.add_argument("--copies", type=int, default=8, help="clones of every game in the big database (8: about 1.1 GB)")
    p.add_argument("--jobs", type=int, default=2, help="pg_restore --jobs on both sides")
    p.add_argument("--no-s3", action="store_true", help="skip the S3 backup")
    p.add_argument("--multipart-threshold-mb", type=int, default=64,
                   help="S3 multipart threshold; set it below the small dump to compare memory with both sizes multipart")
    p.add_argument("--workdir", default=None, help="where dumps and backups go (default: the temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--child", choices=("backup", "restore"), help=argparse.SUPPRESS)
    p.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--dest", help=argparse.SUPPRESS)
    p.add_argument("--location", help=argparse.SUPPRESS)
    p.add_argument("--restore-db", help=argparse.SUPPRESS)
    args = p.parse_args()
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    sys.exit(main())
