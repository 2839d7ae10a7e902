#!/usr/bin/env python3
"""Deploy 0004 -> head while the game is played: what each way of migrating costs the game.

    .venv/bin/python bench/deploy_under_load.py [--sizes 1000,100000] [--clients 16]
        [--runs plain-old,deploy-old,plain-online,deploy-online] [--lock-timeout-ms 1000]
        [--game-statement-timeout-ms 3000] [--report-every 5 --report-hold 4]

Per size (games; players = games / 5, at least 200), one database is seeded at head and taken
back to revision 0004, kept as a template in a persistent cluster under ``--cache-dir``
(default ``.hokmdb/bench``; ``make clean`` removes it) and reused by later runs of the bench:
the 100k-game database (40.9M moves, about 9 GB) takes about 17 minutes to build, once. On
2 cores a 100k-game run of the online history takes about an hour (its backfill rewrites
40.9M rows at about 12k rows/s while the game plays); 10k games take minutes. Each run clones the template and migrates
it to head while, against the same clone:

* ``--clients`` game clients run the game's transactions in a loop, each session with the
  game server's ``statement_timeout``: a game with its seats, a player's recent games, the
  leaderboard, a game's moves in order, a rating update, a websocket connect and heartbeat;
* one report client holds a transaction that read ``moves`` for ``--report-hold`` seconds of
  every ``--report-every`` (the long transaction every production has).

The runs, one after the other in this process, on identical clones and load:

* ``plain-old``: ``alembic upgrade head`` over the history before the online rewrite (0005
  split ``moves.card`` with one UPDATE under ACCESS EXCLUSIVE; 0006 built the index), as
  stock alembic runs it: no session lock_timeout (``--plain-lock-timeout-ms`` sets one; the
  old 0005 set its own 1 s);
* ``deploy-old``: ``deploy.py`` (lock_timeout, retries, waiting for long transactions) over
  that same old history, ``--force`` past the lint that now refuses its 0005: the lock
  discipline alone, without online revisions;
* ``plain-online``: ``alembic upgrade head`` over today's history (expand 0005, batched
  backfill 0006, contract 0007, index 0008), without the deploy's lock discipline;
* ``deploy-online``: ``deploy.py`` over today's history: the new deploy.

Printed per run: game transactions, failed ones and why, the longest stall, p50 and p99, the
migration's wall time, and the longest write-blocking lock per table (sampled every 50 ms
from pg_locks, for any session that is not the game, the report or the bench itself). No
test asserts these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import write_config_dir  # noqa: E402  (tests/ is put on sys.path above)

from pytest_hokmdb.cluster.embedded import THROWAWAY_SETTINGS, EmbeddedCluster  # noqa: E402
from pytest_hokmdb.deploy.locks import STRONG_MODES  # noqa: E402

ROLE, PASSWORD = "hokm_bench", "bench-pw-3Kx9-secret"
OLD_HISTORY_COMMIT = "f7349e0"  # the last commit whose 0005 rewrote moves in one transaction
OURS = ("game-server", "nightly-report", "bench-sampler")

READS = {
    "game_with_participants": (
        "SELECT g.id, g.status, p.seat, p.player_id FROM game_sessions g JOIN game_participants p ON p.game_id = g.id "
        "WHERE g.id = $1", "game"),
    "player_recent_games": (
        "SELECT g.id, g.created_at FROM game_participants p JOIN game_sessions g ON g.id = p.game_id "
        "WHERE p.player_id = $1 ORDER BY g.created_at DESC LIMIT 20", "player"),
    "leaderboard": ("SELECT id, username, rating FROM players WHERE is_active ORDER BY rating DESC LIMIT 100", None),
    "game_moves_in_order": (
        "SELECT id, sequence_number, player_id, move_type FROM moves WHERE game_id = $1 ORDER BY sequence_number", "game"),
}
WRITES = ("rating_update", "websocket_connect")

_LOCKS = """
SELECT c.relname AS table, l.mode, l.granted, l.pid
FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.mode = ANY($1::text[]) AND c.relkind IN ('r', 'p')
  AND a.datname = current_database() AND NOT (coalesce(a.application_name, '') = ANY($2::text[]))
"""


@dataclass
class Traffic:
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    reports: int = 0


@dataclass
class LockTimes:
    """Longest continuous write-blocking lock per table, any non-game session (sampled)."""

    longest: dict[str, float] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)

    def observe(self, tables: set[str], now: float) -> None:
        for table in tables:
            self.since.setdefault(table, now)
        for table in list(self.since):
            if table not in tables:
                held = now - self.since.pop(table)
                self.longest[table] = max(self.longest.get(table, 0.0), held)

    def text(self) -> str:
        if not self.longest:
            return "none seen"
        return ", ".join(f"{t} {s:.2f}s" for t, s in sorted(self.longest.items(), key=lambda kv: -kv[1])[:3])


async def _admin(cluster: EmbeddedCluster, sql: str, db: str = "postgres") -> None:
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs(db))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _admin_val(cluster: EmbeddedCluster, sql: str, db: str = "postgres") -> object:
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs(db))
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def kwargs(cluster: EmbeddedCluster, db: str) -> dict:  # type: ignore[type-arg]
    return dict(user=ROLE, password=PASSWORD, host=cluster.host, port=cluster.port, database=db)


async def template(cluster: EmbeddedCluster, games: int) -> str:
    """The seeded database at 0004 for ``games`` (built once, kept in the cache cluster)."""
    from alembic import command
    from sqlalchemy.engine import URL

    from hokm_profile.seed import seed
    from pytest_hokmdb.migrate import alembic_config, aupgrade
    from pytest_hokmdb.migration.online import ATTRIBUTE, BackfillSettings

    name = f"bench_g{games}_0004"
    if await _admin_val(cluster, f"SELECT count(*) FROM pg_database WHERE datname = '{name}'"):
        print(f"  reusing {name} from the cache")
        return name
    building = f"{name}_building"
    await _admin(cluster, f"DROP DATABASE IF EXISTS {building}")
    await _admin(cluster, f"CREATE DATABASE {building} OWNER {ROLE}")
    url = URL.create("postgresql+asyncpg", ROLE, PASSWORD, cluster.host, cluster.port, building)
    t0 = time.monotonic()
    await aupgrade(url, "head", project_root=ROOT)
    conn = await asyncpg.connect(**kwargs(cluster, building))
    try:
        report = await seed(conn, players=max(200, games // 5), games=games, random_seed=5, clear=False)
    finally:
        await conn.close()
    print(f"  seeded {games} games ({report.rows.get('moves', 0):,} moves) in {time.monotonic() - t0:.0f}s")
    # 0007's downgrade rebuilds moves.card exactly; nobody plays here, so in large batches.
    cfg = alembic_config(url, project_root=ROOT)
    cfg.attributes[ATTRIBUTE] = BackfillSettings(batch_size=50_000, pause_ms=0, max_batch_ms=60_000)
    await asyncio.to_thread(command.downgrade, cfg, "0004")
    conn = await asyncpg.connect(**kwargs(cluster, building))
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    await _admin(cluster, f"ALTER DATABASE {building} RENAME TO {name}")
    print(f"  built {name} in {time.monotonic() - t0:.0f}s")
    return name


def old_history_project(work: Path) -> Path:
    """This checkout's env.py and settings with the revisions of ``OLD_HISTORY_COMMIT``."""
    root = work / "old-history"
    if root.exists():
        return root
    (root / "migrations").mkdir(parents=True)
    for item in ("alembic.ini", "pyproject.toml"):
        shutil.copy2(ROOT / item, root / item)
    shutil.copy2(ROOT / "migrations" / "env.py", root / "migrations" / "env.py")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD_HISTORY_COMMIT, "migrations/versions"],
                             capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return root


async def run_traffic(kw: dict, stop: asyncio.Event, traffic: Traffic, args: argparse.Namespace) -> None:  # type: ignore[type-arg]
    probe = await asyncpg.connect(**kw)
    game_ids = [r[0] for r in await probe.fetch("SELECT id FROM game_sessions ORDER BY random() LIMIT 2000")]
    player_ids = [r[0] for r in await probe.fetch("SELECT id FROM players ORDER BY random() LIMIT 2000")]
    await probe.close()
    settings = {"statement_timeout": str(args.game_statement_timeout_ms), "application_name": "game-server"}

    async def client(n: int) -> None:
        rng = random.Random(n)
        conn = await asyncpg.connect(**kw, server_settings=settings)
        try:
            while not stop.is_set():
                name = rng.choice([*READS, *WRITES])
                t0 = time.monotonic()
                try:
                    async with conn.transaction():
                        if name == "rating_update":
                            await conn.execute("UPDATE players SET rating = least(rating + 1, 3000), last_seen_at = now() "
                                               "WHERE id = $1", rng.choice(player_ids))
                        elif name == "websocket_connect":
                            row = await conn.fetchval(
                                "INSERT INTO websocket_connections (connection_id, player_id) VALUES ($1, $2) RETURNING id",
                                uuid.uuid4(), rng.choice(player_ids))
                            await conn.execute("UPDATE websocket_connections SET last_heartbeat_at = now() WHERE id = $1", row)
                        else:
                            sql, param = READS[name]
                            await conn.fetch(sql, *([rng.choice(game_ids if param == "game" else player_ids)] if param else []))
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                    traffic.failures[f"{name}: {type(exc).__name__}"] += 1
                    if conn.is_closed():
                        conn = await asyncpg.connect(**kw, server_settings=settings)
                traffic.latencies.append(time.monotonic() - t0)
                await asyncio.sleep(rng.uniform(0.002, 0.01))
        finally:
            await conn.close()

    async def report() -> None:
        conn = await asyncpg.connect(**kw, server_settings={"application_name": "nightly-report"})
        try:
            while not stop.is_set():
                try:
                    async with conn.transaction():
                        await conn.fetchval("SELECT count(*) FROM moves WHERE id % 97 = 0")
                        traffic.reports += 1
                        await asyncio.sleep(args.report_hold)
                except (asyncpg.PostgresError, asyncpg.InterfaceError):
                    pass
                try:
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, args.report_every - args.report_hold))
                except TimeoutError:
                    pass
        finally:
            await conn.close()

    await asyncio.gather(*(client(i) for i in range(args.clients)), report())


async def sample_locks(kw: dict, stop: asyncio.Event, locks: LockTimes) -> None:  # type: ignore[type-arg]
    conn = await asyncpg.connect(**kw, server_settings={"application_name": "bench-sampler"})
    try:
        while not stop.is_set():
            rows = await conn.fetch(_LOCKS, list(STRONG_MODES), list(OURS))
            locks.observe({r["table"] for r in rows}, time.monotonic())
            await asyncio.sleep(0.05)
        locks.observe(set(), time.monotonic())
    finally:
        await conn.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else 0.0


async def one_run(label: str, kw: dict, migrate, args: argparse.Namespace) -> str:  # type: ignore[no-untyped-def,type-arg]
    stop, sampler_stop = asyncio.Event(), asyncio.Event()
    traffic, locks = Traffic(), LockTimes()
    load = asyncio.create_task(run_traffic(kw, stop, traffic, args))
    sampler = asyncio.create_task(sample_locks(kw, sampler_stop, locks))
    await asyncio.sleep(args.warmup)
    t0 = time.monotonic()
    result = await migrate()
    migrate_s = time.monotonic() - t0
    sampler_stop.set()
    await sampler
    await asyncio.sleep(args.cooldown)
    stop.set()
    await load
    lat = traffic.latencies
    failed = sum(traffic.failures.values())
    line = (f"{label:<14} {len(lat):>7} {failed:>6} {max(lat, default=0) * 1000:>9.0f} {percentile(lat, 0.5) * 1000:>7.1f} "
            f"{percentile(lat, 0.99) * 1000:>8.1f} {migrate_s:>9.1f}  {locks.text():<44} {result}")
    for kind, count in traffic.failures.most_common(4):
        line += f"\n{'':<14}   {count} x {kind}"
    return line


async def main_async(args: argparse.Namespace) -> None:
    import logging

    from pytest_hokmdb.db.target import Target
    from pytest_hokmdb.deploy.orchestrator import DeployOptions, run_deploy
    from pytest_hokmdb.migrate import aupgrade

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cache = args.cache_dir.resolve()
    cluster = EmbeddedCluster(cache / "cluster", settings={**THROWAWAY_SETTINGS, "max_connections": "100"})
    cluster.start()
    work = Path(tempfile.mkdtemp(prefix="hokmdb-bench-deploy-"))
    try:
        if not await _admin_val(cluster, f"SELECT count(*) FROM pg_roles WHERE rolname = '{ROLE}'"):
            await _admin(cluster, f"CREATE ROLE {ROLE} LOGIN NOSUPERUSER CREATEDB PASSWORD '{PASSWORD}'")
            await _admin(cluster, f"GRANT pg_monitor TO {ROLE}")
        old_root = old_history_project(work)
        config_dir = work / "config"
        write_config_dir(config_dir, "testing", deploy__gate_suites=[], deploy__log_dir=str(work / "logs"),
                         database__lock_timeout_ms=args.lock_timeout_ms, deploy__lock_retry_budget_s=120.0,
                         deploy__backfill_batch_size=args.backfill_batch_size, deploy__backfill_max_batch_ms=args.backfill_max_batch_ms)
        os.environ.update({"DB_HOST": cluster.host, "DB_PORT": str(cluster.port), "DB_USER": ROLE,
                           "DB_PASSWORD_TEST": PASSWORD, "HOKMDB_ENV_FILE": str(work / "none.env"),
                           "HOKMDB_CACHE_DIR": str(cache / "snapshots"), "HOKMDB_DEPLOY_ACTOR": "bench"})
        print(f"{args.clients} game clients (statement_timeout {args.game_statement_timeout_ms} ms), a report holding moves "
              f"{args.report_hold:g}s of every {args.report_every:g}s; deploy lock_timeout {args.lock_timeout_ms} ms, "
              f"plain alembic lock_timeout {args.plain_lock_timeout_ms or 'none'}; deploy backfill batches of "
              f"{args.backfill_batch_size} (halved above {args.backfill_max_batch_ms} ms)")
        for games in args.sizes:
            print(f"\n{games} games")
            base = await template(cluster, games)
            lines = []
            for run in args.runs:
                db = f"bench_run_{run.replace('-', '_')}"
                await _admin(cluster, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
                t0 = time.monotonic()
                await _admin(cluster, f"CREATE DATABASE {db} TEMPLATE {base} OWNER {ROLE}")
                clone_s = time.monotonic() - t0
                project = old_root if run.endswith("-old") else ROOT

                async def plain(db: str = db, project: Path = project) -> str:
                    target = Target(environment="testing", host=cluster.host, port=cluster.port, dbname=db, user=ROLE,
                                    password=PASSWORD, sslmode="disable", lock_timeout_ms=args.plain_lock_timeout_ms,
                                    statement_timeout_ms=0, application_name="alembic")
                    try:
                        await aupgrade(target, "head", project_root=project)
                        return "alembic upgrade head: ok"
                    except Exception as exc:  # noqa: BLE001
                        text = str(exc)
                        return f"alembic upgrade head FAILED: {text.splitlines()[0].split(') ', 1)[-1][:90]}"

                async def deploy(db: str = db, project: Path = project) -> str:
                    os.environ["DB_NAME"] = db
                    os.environ["HOKMDB_PROJECT_ROOT"] = str(project)
                    old = project != ROOT
                    # For the old history only: --force past the lint that now refuses its 0005, and
                    # --skip-backup past the backup its not-online downgrade now requires.
                    outcome = await run_deploy(DeployOptions("testing", str(config_dir), force=old, skip_backup=old))
                    step = next((s for s in outcome.steps if s.name == "migrate"), None)
                    detail = step.detail.split(";")[0] if step else outcome.message[:90]
                    return f"exit {outcome.exit_code}; {detail}"

                lines.append(await one_run(run, kwargs(cluster, db), plain if run.startswith("plain") else deploy, args))
                await _admin(cluster, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
                print(f"  {run}: done (clone {clone_s:.0f}s)", flush=True)
            print(f"\n{'run':<14} {'txns':>7} {'failed':>6} {'stall ms':>9} {'p50 ms':>7} {'p99 ms':>8} {'migrate s':>9}  "
                  f"{'longest write-blocking lock':<44} result")
            for line in lines:
                print(line)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")], default=[1000, 100_000])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--runs", type=lambda t: t.split(","), default=["plain-old", "deploy-old", "plain-online", "deploy-online"])
    p.add_argument("--game-statement-timeout-ms", type=int, default=3000)
    p.add_argument("--report-every", type=float, default=5.0)
    p.add_argument("--report-hold", type=float, default=4.0)
    p.add_argument("--lock-timeout-ms", type=int, default=1000, help="the deploy's database.lock_timeout_ms")
    p.add_argument("--plain-lock-timeout-ms", type=int, default=0,
                   help="session lock_timeout of the plain alembic runs (default 0: none, as stock alembic)")
    p.add_argument("--backfill-batch-size", type=int, default=1000, help="the deploy's deploy.backfill_batch_size")
    p.add_argument("--backfill-max-batch-ms", type=int, default=200, help="the deploy's deploy.backfill_max_batch_ms")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--cooldown", type=float, default=2.0)
    p.add_argument("--cache-dir", type=Path, default=ROOT / ".hokmdb" / "bench",
                   help="persistent cluster holding the seeded templates, reused between runs")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
