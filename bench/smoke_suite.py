#!/usr/bin/env python3
"""Wall time of the whole smoke suite, as operators run it (a new pytest process each time).

    .venv/bin/python bench/smoke_suite.py [--games 100000] [--players 20000] [--runs 3] [--load]

Measures, on one throwaway cluster in one run:
  * the suite on an empty database at head,
  * the suite on a seeded database of realistic size (default 100k games),
  * with ``--load``, the seeded suite again while a load generator keeps every core busy
    (one spinning process per core, at the suite's own priority),
  * pytest start-up alone (``--collect-only``: imports, plugins, config, collection),
and prints medians plus the share of each suite run that is start-up, and for each run
the five slowest checks with their share of the per-check statement timeout
(``smoke.check_statement_timeout_ms``; issue 19's goal: none above 20 % under load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import write_config_dir  # noqa: E402

from hokm_profile.seed import seed  # noqa: E402
from pytest_hokmdb.config.model import SmokeSettings  # noqa: E402
from pytest_hokmdb.fixtures.throwaway import create_database, start_throwaway_cluster  # noqa: E402
from pytest_hokmdb.migrate import upgrade  # noqa: E402


async def _app_role(dsn: str, role: str, password: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        if not exists:
            await conn.execute(await conn.fetchval("SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)", role, password))
        for sql in (
            f"GRANT USAGE ON SCHEMA public TO {role}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
            f"GRANT pg_monitor TO {role}",
            # what README asks of the monitoring role: security.no_remote_trust_auth reads pg_hba
            f"GRANT SELECT ON pg_catalog.pg_hba_file_rules TO {role}",
            f"GRANT EXECUTE ON FUNCTION pg_catalog.pg_hba_file_rules() TO {role}",
        ):
            await conn.execute(sql)
    finally:
        await conn.close()


async def _seed(dsn: str, players: int, games: int) -> tuple[int, float]:
    conn = await asyncpg.connect(dsn)
    try:
        report = await seed(conn, players=players, games=games, random_seed=11, clear=False)
        await conn.execute("VACUUM ANALYZE")
        return sum(report.rows.values()), report.seconds
    finally:
        await conn.close()


def _time(cmd: list[str], env: dict[str, str], runs: int) -> tuple[float, list[float], str]:
    times, last = [], ""
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    return statistics.median(times), times, last


def _check_timeout_s(config_file: Path) -> float:
    """The per-check statement timeout the suite runs with: the config's, else the default."""
    smoke = json.loads(config_file.read_text()).get("smoke", {})
    return smoke.get("check_statement_timeout_ms", SmokeSettings().check_statement_timeout_ms) / 1000


def _slowest_and_failed(base: list[str], env: dict[str, str], json_path: Path, timeout_s: float) -> None:
    """One more run with the JSON result: the five slowest checks (with their share of the
    per-check statement timeout) and any that did not pass."""
    subprocess.run([*base, f"--hokmdb-json={json_path}"], cwd=ROOT, env=env, capture_output=True, text=True)
    tests = json.loads(json_path.read_text())["tests"]
    for test in sorted(tests, key=lambda t: -t["duration_s"])[:5]:
        share = 100 * test["duration_s"] / timeout_s
        print(f"    {test['duration_s']:7.2f}s  {share:5.1f}% of its {timeout_s:g} s timeout  {test['check'] or test['nodeid']}")
    for test in tests:
        if test["outcome"] in ("failed", "error"):
            print(f"    FAILED {test['check'] or test['nodeid']}: {test['message'][:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", type=int, default=100_000)
    parser.add_argument("--players", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave the cluster running and print how to reach it")
    parser.add_argument("--load", action="store_true", help="also time the seeded suite while every core is kept busy")
    args = parser.parse_args()

    cluster = start_throwaway_cluster("bench-smoke")
    try:
        password = "bench-app-password"
        with tempfile.TemporaryDirectory() as tmp:
            config_dir = Path(tmp) / "config"
            timeout_s = _check_timeout_s(write_config_dir(config_dir, "testing"))
            results: dict[str, tuple[float, list[float], str]] = {}
            for label, games in (("empty", 0), ("seeded", args.games)):
                db = create_database(cluster, f"bench_{label}")
                upgrade(db.url, "head")
                detail = "no rows"
                if games:
                    started = time.perf_counter()
                    rows, _ = asyncio.run(_seed(db.dsn, args.players, games))
                    detail = f"{rows:,} rows ({args.players:,} players, {games:,} games) seeded in {time.perf_counter() - started:.0f}s"
                asyncio.run(_app_role(db.dsn, "bench_app", password))
                env = {
                    **os.environ,
                    "DB_HOST": cluster.host,
                    "DB_PORT": str(cluster.port),
                    "DB_NAME": db.name,
                    "DB_USER": "bench_app",
                    "DB_PASSWORD_TEST": password,
                    "HOKMDB_ENV_FILE": str(Path(tmp) / "none.env"),
                }
                base = [sys.executable, "-m", "pytest", "smoke", "--environment=testing", f"--db-config={config_dir}", "-p", "no:cacheprovider", "-q"]
                results[label] = _time(base, env, args.runs)
                print(f"{label}: {detail}; suite: {results[label][2]}", flush=True)
                _slowest_and_failed(base, env, Path(tmp) / f"{label}.json", timeout_s)
                results[f"{label}-startup"] = _time([*base, "--collect-only"], env, args.runs)
                if games and args.load:
                    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
                    try:
                        time.sleep(1)
                        results["loaded"] = _time(base, env, args.runs)
                        print(f"seeded, every core busy ({len(spinners)} spinning processes): suite: {results['loaded'][2]}",
                              flush=True)
                        _slowest_and_failed(base, env, Path(tmp) / "loaded.json", timeout_s)
                        results["loaded-startup"] = _time([*base, "--collect-only"], env, args.runs)
                    finally:
                        for spinner in spinners:
                            spinner.kill()
                            spinner.wait()
        print()
        print(f"smoke suite wall time, median of {args.runs} runs (whole process, pytest start-up included)")
        for label in ("empty", "seeded", "loaded"):
            if label not in results:
                continue
            total = results[label][0]
            startup = results[f"{label}-startup"][0]
            runs = ", ".join(f"{t:.2f}" for t in results[label][1])
            print(f"  {label:<7} {total:6.2f}s  (runs: {runs})  start-up {startup:.2f}s = {100 * startup / total:.0f}% of it")
    finally:
        if args.keep:
            print(f"cluster kept: {cluster.base_dir} on 127.0.0.1:{cluster.port} (superuser postgres; password in {cluster.state_file})")
        else:
            cluster.destroy()


if __name__ == "__main__":
    main()
