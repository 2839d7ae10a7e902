#!/usr/bin/env python3
"""Load a deterministic set of Hokm players and games into a development or testing database.

    python database/seed_data.py --environment development [--clear] [--players N --games M] [--seed S]
                                 [--db-config PATH]

Running it twice with the same arguments leaves the same data: the seed set (usernames
``seed_``, rooms ``seed-``) is replaced, other rows are kept. ``--clear`` empties every
game table first. Production is never seeded (exit code 4).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

try:
    from pytest_hokmdb.cli.common import run_cli, setup_logging
    from pytest_hokmdb.config import ENVIRONMENTS, load_config
    from pytest_hokmdb.console import interactive, progress
    from pytest_hokmdb.errors import HokmdbError, Refused
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("error: hokmdb is not installed for this Python\n  hint: run `make install` and use .venv/bin/python")

log = logging.getLogger("hokmdb.seed")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seed_data.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--environment", default=os.environ.get("HOKMDB_ENVIRONMENT", "development"),
                        choices=ENVIRONMENTS)
    parser.add_argument("--db-config", "--config", default=None, metavar="PATH",
                        help="config directory or file (default: database/config/<environment>.json)")
    parser.add_argument("--players", type=int, default=None, help="default: the config's seed.players")
    parser.add_argument("--games", type=int, default=None, help="default: the config's seed.games")
    parser.add_argument("--seed", type=int, default=None, dest="random_seed",
                        help="random seed (default: the config's seed.random_seed)")
    parser.add_argument("--clear", action="store_true",
                        help="TRUNCATE every game table (RESTART IDENTITY) before seeding")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


class _Progress:
    """Adapts the loader's ``(phase, done, total)`` calls to the shared progress display."""

    def __init__(self, advance: Callable[[int], None]) -> None:
        self._advance = advance
        self._done = 0

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase == "games":
            self._advance(done - self._done)
            self._done = done


def _refuse(environment: str, reason: str) -> Refused:
    return Refused(
        f"seeding {environment} is refused: {reason}",
        hint="seed a development or testing database (--environment development)",
    )


async def _main(args: argparse.Namespace) -> int:
    import asyncpg  # here, not at the top: --help stays quick

    from pytest_hokmdb.config.profile import project_profile
    from pytest_hokmdb.db import connect, resolve_target
    from pytest_hokmdb.db.resolve import resolve_owner_target

    if args.environment == "production":
        # Decided before reading any config: no setting can make production seedable.
        raise _refuse("production", "production data is never generated")
    loaded = load_config(args.environment, args.db_config)
    config = loaded.config
    if not config.seeding_allowed:
        raise _refuse(config.environment, f"seed.allowed is false in {loaded.path}")
    seed = project_profile(loaded.project_root).load_seeder()  # the application's data, from its profile
    players = config.seed.players if args.players is None else args.players
    games = config.seed.games if args.games is None else args.games
    random_seed = config.seed.random_seed if args.random_seed is None else args.random_seed

    # Seeding is setup: it writes as the owner role, like migrations.
    target = await resolve_owner_target(loaded, await resolve_target(loaded))
    log.info("seeding %s (%s): %d players, %d games, seed %d%s", config.environment, target.dsn(), players,
             games, random_seed, ", clearing every game table first" if args.clear else "")
    conn = await connect(target)
    timeout_ms = config.seed.statement_timeout_ms
    try:
        # Bulk work gets its own budget (seed.statement_timeout_ms), not the interactive one.
        await conn.execute(f"SET statement_timeout = {int(timeout_ms)}")
        with progress("games", games, enabled=interactive()) as advance:
            report = await seed(conn, players=players, games=games, random_seed=random_seed, clear=args.clear,
                                progress=_Progress(advance))
    except asyncpg.UndefinedTableError as exc:
        raise HokmdbError(f"the database is not at the expected schema: {exc}",
                          hint="migrate it to head first (alembic upgrade head / deploy.py)") from None
    except asyncpg.QueryCanceledError as exc:
        during = "; ".join(getattr(exc, "__notes__", [])) or "a seeding statement"
        raise HokmdbError(
            f"seeding was cancelled and rolled back: {during} ran longer than seed.statement_timeout_ms "
            f"({timeout_ms} ms, {loaded.path})",
            hint="raise seed.statement_timeout_ms (0 = no limit) in that file, or seed fewer games per run") from None
    except asyncpg.LockNotAvailableError as exc:
        raise HokmdbError(f"seeding gave up waiting for a lock: {exc}",
                          hint="stop the game server or other sessions using these tables, then retry") from None
    except asyncpg.PostgresError as exc:
        raise HokmdbError(f"seeding failed and was rolled back: {type(exc).__name__}: {exc}") from None
    finally:
        await conn.close()

    print(f"seeded {config.environment} ({target.dbname}), random seed {random_seed}"
          f"{', after clearing every game table' if args.clear else ''}:")
    for line in report.summary_lines():
        print(f"  {line}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.players is not None and args.players < 4:
        parser.error(f"--players must be at least 4 (a game needs four players), got {args.players}")
    if args.games is not None and args.games < 0:
        parser.error(f"--games must not be negative, got {args.games}")
    setup_logging(args.verbose)
    run_cli(_main(args))


if __name__ == "__main__":
    main()
