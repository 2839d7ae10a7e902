#!/usr/bin/env python3
"""Deploy under game traffic: the tool's deploy vs a plain ``alembic upgrade head``, one run.

    .venv/bin/python bench/deploy_under_load.py [--players 2000] [--games 4000] [--clients 8]
        [--report-every 5 --report-hold 4] [--game-statement-timeout-ms 3000]

On one throwaway cluster, two identical databases are seeded at head and taken back to
revision 0004, so 0005 (rewrites ``moves`` under ACCESS EXCLUSIVE) and 0006 (index built
CONCURRENTLY on ``game_participants``) are pending. Against each, game traffic runs while
the migration is applied:

* ``--clients`` asyncpg clients doing the game's reads and writes in short transactions
  (game with its seats, a player's recent games, the leaderboard, a game's moves, a rating
  update), each session with ``statement_timeout`` = ``--game-statement-timeout-ms`` as a
  game server would set;
* one "report" client that every ``--report-every`` seconds holds a transaction that read
  ``moves`` open for ``--report-hold`` seconds (the long transaction every production has).

Database A is migrated by ``deploy.py``'s path (``run_deploy``: lock, pre-flight,
lock_timeout + retries with backoff, no gate, so the figures are the migration's); database
B by plain ``alembic upgrade head``: no deploy lock, no session lock_timeout, no retries (a
revision that sets its own ``lock_timeout`` then simply fails at the first conflict; one that
does not queues behind the report, and every game query queues behind it). ``--plain-project``
runs the plain baseline on another checkout's revisions (e.g. before they set lock_timeout). Printed per run: game transactions, failed ones
(goal 0), the longest stall a game transaction saw, p99, and the migration's wall time.
No test asserts these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import write_config_dir  # noqa: E402  (tests/ is put on sys.path above)

from pytest_hokmdb.fixtures.throwaway import start_throwaway_cluster  # noqa: E402

ROLE, PASSWORD = "hokm_bench", "bench-pw-3Kx9-secret"

GAME_TRANSACTIONS = {
    "game_with_participants": (
        "SELECT g.id, g.status, p.seat, p.player_id FROM game_sessions g JOIN game_participants p ON p.game_id = g.id WHERE g.id = $1",
        "game",
    ),
    "player_recent_games": (
        "SELECT g.id, g.created_at FROM game_participants p JOIN game_sessions g ON g.id = p.game_id "
        "WHERE p.player_id = $1 ORDER BY g.created_at DESC LIMIT 20",
        "player",
    ),
    "leaderboard": ("SELECT id, username, rating FROM players WHERE is_active ORDER BY rating DESC LIMIT 100", None),
    "game_moves": ("SELECT count(*) FROM moves WHERE game_id = $1", "game"),
    "rating_update": ("UPDATE players SET rating = least(rating + 1, 3000), last_seen_at = now() WHERE id = $1", "player"),
}


@dataclass
class Traffic:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    reports: int = 0


async def _admin(cluster, sql: str, db: str = "postgres") -> None:  # type: ignore[no-untyped-def]
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs(db))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def prepare(cluster, name: str, players: int, games: int) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.engine import URL

    from hokm_profile.seed import seed
    from pytest_hokmdb.migrate import adowngrade, aupgrade

    await _admin(cluster, f"CREATE DATABASE {name} OWNER {ROLE}")
    url = URL.create("postgresql+asyncpg", ROLE, PASSWORD, cluster.host, cluster.port, name)
    await aupgrade(url, "head")
    conn = await asyncpg.connect(user=ROLE, password=PASSWORD, host=cluster.host, port=cluster.port, database=name)
    try:
        await seed(conn, players=players, games=games, random_seed=5, clear=False)
    finally:
        await conn.close()
    await adowngrade(url, "0004")  # 0005 rebuilds moves.card exactly; 0005 and 0006 are now pending
    conn = await asyncpg.connect(user=ROLE, password=PASSWORD, host=cluster.host, port=cluster.port, database=name)
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def run_traffic(kwargs: dict, stop: asyncio.Event, traffic: Traffic, *, clients: int, timeout_ms: int,  # type: ignore[type-arg]
                      report_every: float, report_hold: float) -> None:
    probe = await asyncpg.connect(**kwargs)
    game_ids = [r[0] for r in await probe.fetch("SELECT id FROM game_sessions ORDER BY random() LIMIT 500")]
    player_ids = [r[0] for r in await probe.fetch("SELECT id FROM players ORDER BY random() LIMIT 500")]
    await probe.close()
    settings = {"statement_timeout": str(timeout_ms), "application_name": "game-server"}

    async def client(n: int) -> None:
        rng = random.Random(n)
        conn = await asyncpg.connect(**kwargs, server_settings=settings)
        try:
            while not stop.is_set():
                name = rng.choice(list(GAME_TRANSACTIONS))
                sql, param = GAME_TRANSACTIONS[name]
                args = [rng.choice(game_ids if param == "game" else player_ids)] if param else []
                t0 = time.monotonic()
                try:
                    async with conn.transaction():
                        await conn.execute(sql, *args) if name == "rating_update" else await conn.fetch(sql, *args)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                    traffic.failures.append(f"{name}: {type(exc).__name__}: {exc}")
                    if conn.is_closed():
                        conn = await asyncpg.connect(**kwargs, server_settings=settings)
                traffic.latencies.append(time.monotonic() - t0)
                await asyncio.sleep(rng.uniform(0.002, 0.01))
        finally:
            await conn.close()

    async def report() -> None:
        conn = await asyncpg.connect(**kwargs, server_settings={"application_name": "nightly-report"})
        try:
            while not stop.is_set():
                try:
                    async with conn.transaction():
                        await conn.fetchval("SELECT count(*) FROM moves WHERE id % 97 = 0")
                        traffic.reports += 1
                        await asyncio.sleep(report_hold)
                except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    traffic.failures.append(f"report: {type(exc).__name__}: {exc}")
                try:
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, report_every - report_hold))
                except TimeoutError:
                    pass
        finally:
            await conn.close()

    await asyncio.gather(*(client(i) for i in range(clients)), report())


def summarize(label: str, traffic: Traffic, migrate_s: float, result: str) -> str:
    lat = sorted(traffic.latencies)
    p99 = lat[int(len(lat) * 0.99) - 1] if lat else 0.0
    game_failures = [f for f in traffic.failures if not f.startswith("report")]
    return (
        f"{label:<34} {len(lat):>7} {len(game_failures):>7} {max(lat, default=0) * 1000:>10.0f} {p99 * 1000:>8.1f} "
        f"{statistics.median(lat) * 1000 if lat else 0:>8.1f} {migrate_s:>9.2f}  {result}"
    )


async def one_run(label: str, kwargs: dict, migrate, args: argparse.Namespace) -> tuple[Traffic, float, str]:  # type: ignore[no-untyped-def,type-arg]
    stop = asyncio.Event()
    traffic = Traffic()
    load = asyncio.create_task(run_traffic(kwargs, stop, traffic, clients=args.clients, timeout_ms=args.game_statement_timeout_ms,
                                           report_every=args.report_every, report_hold=args.report_hold))
    await asyncio.sleep(args.warmup)
    t0 = time.monotonic()
    result = await migrate()
    migrate_s = time.monotonic() - t0
    await asyncio.sleep(args.cooldown)
    stop.set()
    await load
    return traffic, migrate_s, result


async def main_async(args: argparse.Namespace) -> None:
    import logging

    from sqlalchemy.engine import URL

    from pytest_hokmdb.deploy.orchestrator import DeployOptions, run_deploy
    from pytest_hokmdb.migrate import aupgrade

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cluster = start_throwaway_cluster("bench-deploy")
    work = Path(tempfile.mkdtemp(prefix="hokmdb-bench-deploy-"))
    try:
        await _admin(cluster, f"CREATE ROLE {ROLE} LOGIN NOSUPERUSER PASSWORD '{PASSWORD}'")
        await _admin(cluster, f"GRANT pg_monitor TO {ROLE}")
        t0 = time.monotonic()
        # One after the other: alembic keeps its running context in module globals.
        await prepare(cluster, "bench_tool", args.players, args.games)
        await prepare(cluster, "bench_plain", args.players, args.games)
        print(f"prepared two databases ({args.players} players, {args.games} games, at 0004) in {time.monotonic() - t0:.1f}s")

        def kwargs(db: str) -> dict:  # type: ignore[type-arg]
            return dict(user=ROLE, password=PASSWORD, host=cluster.host, port=cluster.port, database=db)

        config_dir = work / "config"
        write_config_dir(config_dir, "testing", deploy__gate_suites=[], deploy__log_dir=str(work / "logs"),
                         database__lock_timeout_ms=args.lock_timeout_ms, deploy__lock_retry_budget_s=60.0)
        os.environ.update({"DB_HOST": cluster.host, "DB_PORT": str(cluster.port), "DB_NAME": "bench_tool", "DB_USER": ROLE,
                           "DB_PASSWORD_TEST": PASSWORD, "HOKMDB_ENV_FILE": str(work / "none.env"),
                           "HOKMDB_CACHE_DIR": str(work / "cache"), "HOKMDB_DEPLOY_ACTOR": "bench"})
        os.environ.pop("HOKMDB_PROJECT_ROOT", None)

        async def tool() -> str:
            # --force only so that the bench does not depend on the lint policy of the day.
            outcome = await run_deploy(DeployOptions("testing", str(config_dir), force=True))
            migrate = next((s for s in outcome.steps if s.name == "migrate"), None)
            return f"exit {outcome.exit_code}; {migrate.detail if migrate else outcome.message}"

        async def plain() -> str:
            url = URL.create("postgresql+asyncpg", ROLE, PASSWORD, cluster.host, cluster.port, "bench_plain")
            try:
                await aupgrade(url, "head", project_root=args.plain_project)
                return "alembic upgrade head: ok"
            except Exception as exc:  # noqa: BLE001
                text = str(exc)
                sql = text.split("[SQL:", 1)[1].split("]", 1)[0].strip()[:80] if "[SQL:" in text else ""
                return f"alembic upgrade head FAILED: {text.splitlines()[0].split(') ', 1)[-1]} in: {sql}"

        runs = [("deploy.py (lock_timeout + retries)", kwargs("bench_tool"), tool),
                ("plain alembic upgrade head", kwargs("bench_plain"), plain)]
        lines = []
        for label, kw, migrate in runs:
            traffic, migrate_s, result = await one_run(label, kw, migrate, args)
            lines.append(summarize(label, traffic, migrate_s, result))
            for failure in sorted(set(f.split(":")[0] + ":" + f.split(":")[1] for f in traffic.failures))[:5]:
                lines.append(f"{'':<34}   failure kind: {failure}")
        print()
        print(f"{args.clients} game clients (statement_timeout {args.game_statement_timeout_ms} ms), a report holding moves "
              f"{args.report_hold:g}s every {args.report_every:g}s; tool lock_timeout {args.lock_timeout_ms} ms")
        print(f"{'run':<34} {'txns':>7} {'failed':>7} {'stall ms':>10} {'p99 ms':>8} {'p50 ms':>8} {'migrate s':>9}  result")
        for line in lines:
            print(line)
    finally:
        cluster.destroy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--players", type=int, default=2000)
    p.add_argument("--games", type=int, default=4000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--game-statement-timeout-ms", type=int, default=3000)
    p.add_argument("--report-every", type=float, default=5.0)
    p.add_argument("--report-hold", type=float, default=4.0)
    p.add_argument("--lock-timeout-ms", type=int, default=1000)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--cooldown", type=float, default=2.0)
    p.add_argument("--plain-project", type=Path, default=None, metavar="DIR",
                   help="project root whose alembic.ini + migrations/ the plain run uses (default: this checkout); e.g. "
                   "`git archive <commit> alembic.ini migrations | tar -x -C DIR` for revisions without their own lock_timeout")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
