#!/usr/bin/env python3
"""How fast the seed generates and loads data, on a throwaway embedded cluster.

    .venv/bin/python bench/seed_rate.py [--sizes 200x400,1000x2000,2000x5000] [--repeat 1]

For each ``PLAYERSxGAMES`` size it prints the pure-Python generation rate (moves/s, no
database) and the end-to-end seed rate (rows/s and moves/s, one transaction with COPY).
The cluster runs with fsync off, like the test clusters, so the figures show the
generator and the server's per-row work (constraint and foreign-key checks), not the disk.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from datetime import UTC, datetime

import asyncpg

from hokm_profile.seed import seed
from hokm_profile.simulator import generate_games
from pytest_hokmdb.fixtures.throwaway import create_database, start_throwaway_cluster
from pytest_hokmdb.migrate import upgrade


def _sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        players, _, games = item.partition("x")
        sizes.append((int(players), int(games)))
    return sizes


def generation_rate(players: int, games: int) -> tuple[int, float]:
    """Moves generated per second by the simulator alone (rows are built, then dropped)."""
    anchor = datetime.now(UTC)
    gc.disable()
    try:
        started = time.perf_counter()
        moves = sum(len(g.moves) for g in generate_games(
            games, player_pool=range(1, players + 1), game_ids=range(1, games + 1), random_seed=1, anchor=anchor))
        return moves, moves / (time.perf_counter() - started)
    finally:
        gc.enable()


async def seed_rate(dsn: str, players: int, games: int, repeat: int) -> list[str]:
    conn = await asyncpg.connect(dsn)
    lines = []
    try:
        for run in range(repeat):
            report = await seed(conn, players=players, games=games, random_seed=1, clear=True)
            lines.append(
                f"  seed   run {run + 1}: {report.total_rows:>10,} rows in {report.seconds:6.2f}s = "
                f"{report.rows_per_second:>9,.0f} rows/s, {report.moves_per_second:>9,.0f} moves/s "
                f"(phases: {', '.join(f'{k} {v:.2f}s' for k, v in report.phases.items())})"
            )
    finally:
        await conn.close()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="200x400,1000x2000,2000x5000", help="PLAYERSxGAMES,...")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    sizes = _sizes(args.sizes)

    cluster = start_throwaway_cluster("bench")
    try:
        db = create_database(cluster, "seed_bench")
        upgrade(db.url, "head")
        print(f"PostgreSQL cluster {cluster.host}:{cluster.port} (throwaway, fsync off); Python {sys.version.split()[0]}")
        for players, games in sizes:
            print(f"{players} players, {games} games")
            moves, rate = generation_rate(players, games)
            print(f"  generate:      {moves:>10,} moves            = {rate:>9,.0f} moves/s (no database)")
            for line in asyncio.run(seed_rate(db.dsn, players, games, args.repeat)):
                print(line)
    finally:
        cluster.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
