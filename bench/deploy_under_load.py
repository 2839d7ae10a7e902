#!/usr/bin/env python3
"""Deploy 0004 -> head while the game is played: what each way of migrating costs the game.

    .venv/bin/python bench/deploy_under_load.py [--sizes 1000,100000] [--clients 16] [--topology]
        [--runs plain-old,deploy-old,plain-online,deploy-online,rehearse] [--lock-timeout-ms 1000]
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
  leaderboard, a game's moves in order, a rating update, a websocket connect and heartbeat,
  a turn (the game and its seats, its first 60 moves read, the player touched, one of those
  moves UPDATEd, a metric written) and a new move INSERTed; moves are written in the old
  release's form (``card``) until the expand phase is complete (0006's trigger), then in the
  new release's (suit and rank), as a rollout goes; in a rollback, the other way round;
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
* ``deploy-online``: ``deploy.py`` over today's history: the new deploy;
* ``rehearse``: a verified backup of the clone, then ``deploy.py --rehearse`` on it (restore
  into its own local topology, deploy under the same game load, roll back): its wall time is
  printed against the ``deploy-online`` run's of the same size, as a ratio;
* ``roundtrip``: ``--repeat`` times, ``deploy.py`` 0004 -> head and then ``rollback.py
  migration`` back to 0004, each under the load (the goals of issue 31), as an operator runs
  expand and contract around a game release: the first deploy under the old release stops
  before 0007 (exit 8, naming the old release's statements), the release rolls out, the
  second deploy contracts; back, ``rollback.py`` to 0006, the release rolled back, then to 0004;
* ``unhealthy``: ``deploy.py`` with its smoke gate on and no monitoring connection, so that
  checks fail closed before the deploy as after it: the pre-flight's gate refuses it (exit 4)
  before anything changes; no rollback under load, no exit 11.

Autovacuum is kept busy (it wakes every second and acts on 1 % of changes; ``log_lock_waits``
on) unless ``--no-busy-autovacuum``: on the persistent cache cluster, so the settings apply
when it starts.

``--topology`` runs the same with the production topology: a streaming standby of the bench
cluster (``pg_basebackup``; at 100k games a 9 GB copy) and PgBouncer in transaction mode in
front of it; the game clients go through PgBouncer, the deploy waits for the standby to replay
each revision and its backfill throttles on replica lag. Printed also: the standby's peak replay
lag (bytes and seconds) and PgBouncer's longest client wait during the migration.

Printed per run: game transactions, failed ones by class (deadlocks counted apart) and why,
the longest stall, p50 and p99, the migration's wall time, the revision reached and a data
check (every move has its suit and a rank exactly when it is not a trump selection; a card
where the column is), and the longest write-blocking lock per table (sampled every 50 ms
from pg_locks, for any session that is not the game, the report or the bench itself). The
game's transactions are the Hokm profile's workload (``hokm_profile/workload.py``), run and
measured by ``pytest_hokmdb/deploy/load.py``, the same code a rehearsal runs. No test asserts
these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import write_config_dir  # noqa: E402  (tests/ is put on sys.path above)

from hokm_profile.workload import MOVE_WRITING_WORKLOAD  # noqa: E402
from pytest_hokmdb.cluster.embedded import THROWAWAY_SETTINGS, EmbeddedCluster  # noqa: E402
from pytest_hokmdb.db.topology import PoolerEndpoint  # noqa: E402
from pytest_hokmdb.deploy.load import LockTimes, Peaks, Traffic, run_traffic, sample_locks, sample_topology  # noqa: E402

ROLE, PASSWORD = "hokm_bench", "bench-pw-3Kx9-secret"
OLD_HISTORY_COMMIT = "f7349e0"  # the last commit whose 0005 rewrote moves in one transaction
REPORT_APP = "nightly-report"


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
    await _admin(cluster, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")  # in postgres, as provision() does
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


async def report_client(kw: dict, stop: asyncio.Event, args: argparse.Namespace) -> None:  # type: ignore[type-arg]
    """The long transaction every production has: reads moves, then holds it open."""
    conn = await asyncpg.connect(**kw, server_settings={"application_name": REPORT_APP}, statement_cache_size=0)
    try:
        while not stop.is_set():
            try:
                async with conn.transaction():
                    await conn.fetchval("SELECT count(*) FROM moves WHERE id % 97 = 0")
                    await asyncio.sleep(args.report_hold)
            except (asyncpg.PostgresError, asyncpg.InterfaceError):
                pass
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, args.report_every - args.report_hold))
            except TimeoutError:
                pass
    finally:
        await conn.close()


DATA_CHECK = """
SELECT (SELECT version_num FROM alembic_version) AS revision,
       EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'moves'::regclass AND attname = 'card' AND NOT attisdropped) AS card,
       EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'moves'::regclass AND attname = 'card_suit' AND NOT attisdropped) AS split,
       (SELECT count(*) FROM moves) AS moves
"""


async def data_check(kw: dict) -> str:  # type: ignore[type-arg]
    """The revision reached and the card invariants of whichever form(s) the schema has: every
    move has its suit, a rank exactly when it is not a trump selection, a card when the column
    is there."""
    conn = await asyncpg.connect(**kw)
    try:
        facts = await conn.fetchrow(DATA_CHECK)
        problems = []
        if facts["split"]:
            bad = await conn.fetchval("SELECT count(*) FROM moves WHERE card_suit IS NULL "
                                      "OR (move_type = 'trump_selection') <> (card_rank IS NULL)")
            if bad:
                problems.append(f"{bad} move(s) without suit or with a rank that does not fit")
        if facts["card"]:
            bad = await conn.fetchval("SELECT count(*) FROM moves WHERE card IS NULL")
            if bad:
                problems.append(f"{bad} move(s) without card")
        verdict = "data ok" if not problems else "DATA WRONG: " + "; ".join(problems)
        return f"at {facts['revision']}, {facts['moves']:,} moves, {verdict}"
    finally:
        await conn.close()


async def unthrottled_update_rate(cluster: EmbeddedCluster, base: str) -> tuple[int, float]:
    """The yardstick of the online backfill: 0006's UPDATE as one statement, on an idle clone
    at 0005 (no game, no trigger, no batches), rows and seconds."""
    import importlib.util

    from pytest_hokmdb.migrate import aupgrade

    spec = importlib.util.spec_from_file_location("rev0006", ROOT / "migrations" / "versions" / "0006_backfill_move_card.py")
    assert spec is not None and spec.loader is not None
    rev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rev)
    db = "bench_unthrottled"
    await _admin(cluster, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    await _admin(cluster, f"CREATE DATABASE {db} TEMPLATE {base} OWNER {ROLE}")
    try:
        from sqlalchemy.engine import URL

        await aupgrade(URL.create("postgresql+asyncpg", ROLE, PASSWORD, cluster.host, cluster.port, db), "0005", project_root=ROOT)
        conn = await asyncpg.connect(**kwargs(cluster, db))
        try:
            t0 = time.monotonic()
            status = await conn.execute(f"UPDATE moves SET {rev.SPLIT_CARDS} WHERE card_suit IS NULL AND card ~ '{rev.CARD_PATTERN}'")
            return int(status.split()[-1]), time.monotonic() - t0
        finally:
            await conn.close()
    finally:
        await _admin(cluster, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def backfill_rate(log_path: Path | None) -> tuple[int, float] | None:
    """Rows and seconds of the deploy's backfill of moves, from its log ("backfill moves: N rows in B batches, S s")."""
    import re

    if log_path is None or not log_path.exists():
        return None
    found = re.findall(r"backfill moves: (\d+) rows in \d+ batches, ([\d.]+)s", log_path.read_text())
    return (int(found[-1][0]), float(found[-1][1])) if found else None


async def one_run(label: str, game_kw: dict, primary_kw: dict, pooler: PoolerEndpoint | None, migrate,  # type: ignore[no-untyped-def,type-arg]
                  args: argparse.Namespace, direction: str = "forward") -> tuple[str, float]:
    stop, sampler_stop = asyncio.Event(), asyncio.Event()
    traffic, locks, peaks = Traffic(), LockTimes(), Peaks()
    releases: dict = {}  # type: ignore[type-arg]

    def steer(context: dict) -> None:  # type: ignore[type-arg]
        context["release"]["direction"] = "back" if direction == "back" else "forward"
        context["release"]["manual"] = direction == "manual"  # the run rolls the release out itself
        releases.update(context["release"])
        releases["state"] = context["release"]

    load = asyncio.gather(
        run_traffic(game_kw, MOVE_WRITING_WORKLOAD, stop, traffic, clients=args.clients,
                    statement_timeout_ms=args.game_statement_timeout_ms, on_prepared=steer),
        report_client(game_kw, stop, args))
    samplers = asyncio.gather(sample_locks(primary_kw, sampler_stop, locks, ignore_apps=(REPORT_APP,)),
                              sample_topology(primary_kw if args.topology else None, pooler, sampler_stop, peaks))
    await asyncio.sleep(args.warmup)
    t0 = time.monotonic()
    result = await migrate(releases.get("state", {}))
    migrate_s = time.monotonic() - t0
    sampler_stop.set()
    await samplers
    await asyncio.sleep(args.cooldown)
    stop.set()
    await load
    line = (f"{label:<14} {traffic.count:>7} {traffic.failed:>6} {traffic.stall_s * 1000:>9.0f} "
            f"{traffic.percentile(0.5) * 1000:>7.1f} {traffic.percentile(0.99) * 1000:>8.1f} {migrate_s:>9.1f}  "
            f"{locks.text():<44} ")
    if args.topology:
        line += f"{peaks.lag_text():<22} {peaks.pool_text():<9} "
    line += result
    classes = traffic.by_class()
    state = releases.get("state", {})
    line += (f"\n{'':<14}   failed by class: {', '.join(f'{n} {c}' for c, n in classes.most_common()) or 'none'}; "
             f"deadlocks: {classes.get('DeadlockDetectedError', 0)}; release at the end: {state.get('form', '?')}; "
             f"{await data_check(primary_kw)}")
    for kind, count in traffic.failures.most_common(4):
        line += f"\n{'':<14}   {count} x {kind}: {traffic.examples.get(kind, '')[:120]}"
    for problem in peaks.problems:
        line += f"\n{'':<14}   sampler: {problem}"
    return line, migrate_s


async def take_verified_backup(config_dir: Path) -> str:
    from pytest_hokmdb.backup.take import take_backup
    from pytest_hokmdb.config import load_config

    record = await take_backup(load_config("testing", config_dir), reason="bench rehearsal", verify="quick")
    return record.id


async def main_async(args: argparse.Namespace) -> None:
    import logging

    from pyrage import x25519

    from pytest_hokmdb.cluster.topology import POOLER_ADMIN, LocalTopology
    from pytest_hokmdb.db.target import Target
    from pytest_hokmdb.deploy.orchestrator import DeployOptions, run_deploy
    from pytest_hokmdb.deploy.rehearsal import RehearsalOptions, run_rehearsal
    from pytest_hokmdb.migrate import aupgrade

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cache = args.cache_dir.resolve()
    busy = {"autovacuum_naptime": "1s", "autovacuum_vacuum_scale_factor": "0.01", "autovacuum_analyze_scale_factor": "0.01",
            "autovacuum_vacuum_insert_scale_factor": "0.01", "autovacuum_vacuum_cost_delay": "2ms",
            "log_lock_waits": "on", "deadlock_timeout": "1s"} if args.busy_autovacuum else {}
    cluster = EmbeddedCluster(cache / "cluster", settings={**THROWAWAY_SETTINGS, "max_connections": "100", **busy})
    cluster.start()
    topology = LocalTopology(cluster, pooler_roles=(ROLE,)) if args.topology else None
    work = Path(tempfile.mkdtemp(prefix="hokmdb-bench-deploy-"))
    try:
        if not await _admin_val(cluster, f"SELECT count(*) FROM pg_roles WHERE rolname = '{ROLE}'"):
            await _admin(cluster, f"CREATE ROLE {ROLE} LOGIN NOSUPERUSER CREATEDB PASSWORD '{PASSWORD}'")
            await _admin(cluster, f"GRANT pg_monitor TO {ROLE}")
        old_root = old_history_project(work)
        config_dir = work / "config"
        settings: dict[str, object] = dict(
            deploy__gate_suites=[], deploy__log_dir=str(work / "logs"), deploy__transition_window_s=args.transition_window_s, database__lock_timeout_ms=args.lock_timeout_ms,
            deploy__lock_retry_budget_s=120.0, deploy__backfill_batch_size=args.backfill_batch_size,
            deploy__backfill_max_batch_ms=args.backfill_max_batch_ms, backup__local_dir=str(work / "backups"),
            backup__required_before_deploy=False,
        )
        env = {"DB_HOST": cluster.host, "DB_PORT": str(cluster.port), "DB_USER": ROLE,
               "DB_PASSWORD_TEST": PASSWORD, "HOKMDB_ENV_FILE": str(work / "none.env"),
               "HOKMDB_CACHE_DIR": str(cache / "snapshots"), "HOKMDB_DEPLOY_ACTOR": "bench",
               "BACKUP_ENCRYPTION_KEY": str(x25519.Identity.generate())}
        if topology is not None:
            t0 = time.monotonic()
            await asyncio.to_thread(topology.start)
            print(f"topology: standby on {topology.standby_port}, PgBouncer on {topology.pooler_port} "
                  f"(started in {time.monotonic() - t0:.0f}s)")
            settings.update(topology__standbys=[{"host": "127.0.0.1", "port": topology.standby_port}],
                            topology__pgbouncer={"host": "127.0.0.1", "port": topology.pooler_port,
                                                 "admin_user": POOLER_ADMIN, "admin_password": "${BENCH_POOLER_PASSWORD}"})
            env["BENCH_POOLER_PASSWORD"] = cluster.superuser_password
        write_config_dir(config_dir, "testing", **settings)
        # The "unhealthy" run: the gate on, and no monitoring role (so the checks it would run
        # are "not verified" before the deploy as after it: a condition the deploy did not cause).
        gated_dir = work / "config-gated"
        write_config_dir(gated_dir, "testing", **{**settings, "deploy__gate_suites": ["smoke"]})
        os.environ.update(env)
        print(f"{args.clients} game clients (statement_timeout {args.game_statement_timeout_ms} ms"
              f"{', through PgBouncer' if topology else ''}), a report holding moves "
              f"{args.report_hold:g}s of every {args.report_every:g}s; deploy lock_timeout {args.lock_timeout_ms} ms, "
              f"plain alembic lock_timeout {args.plain_lock_timeout_ms or 'none'}; deploy backfill batches of "
              f"{args.backfill_batch_size} (halved above {args.backfill_max_batch_ms} ms)")
        for games in args.sizes:
            print(f"\n{games} games")
            base = await template(cluster, games)
            lines, walls = [], {}
            unthrottled = 0.0
            if any(r in ("deploy-online", "roundtrip") for r in args.runs):
                rows, seconds = await unthrottled_update_rate(cluster, base)
                unthrottled = rows / seconds if seconds else 0.0
                print(f"  yardstick: 0006's UPDATE as one statement on an idle clone at 0005: {rows:,} rows in "
                      f"{seconds:.1f}s = {unthrottled:,.0f} rows/s", flush=True)
            for run in args.runs:
                db = f"bench_run_{run.replace('-', '_')}"
                await _admin(cluster, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
                t0 = time.monotonic()
                await _admin(cluster, f"CREATE DATABASE {db} TEMPLATE {base} OWNER {ROLE}")
                clone_s = time.monotonic() - t0
                project = old_root if run.endswith("-old") else ROOT
                primary_kw = kwargs(cluster, db)
                game_kw = dict(primary_kw, host="127.0.0.1", port=topology.pooler_port) if topology else primary_kw
                bouncer = (PoolerEndpoint("127.0.0.1", topology.pooler_port, POOLER_ADMIN, cluster.superuser_password, db)
                           if topology else None)
                os.environ["DB_NAME"] = db
                os.environ["HOKMDB_PROJECT_ROOT"] = str(project)

                if run == "rehearse":
                    backup_id = await take_verified_backup(config_dir)
                    t0 = time.monotonic()
                    report = await run_rehearsal(RehearsalOptions(
                        "testing", str(config_dir), backup=backup_id, clients=args.clients,
                        game_statement_timeout_ms=args.game_statement_timeout_ms))
                    wall = time.monotonic() - t0
                    real = walls.get("deploy-online")
                    ratio = f"{wall / real:.2f}x the real deploy's {real:.0f}s" if real else "no deploy-online run to compare"
                    lines.append(f"rehearse       {report.transactions:>7} {report.failed:>6} {report.stall_ms:>9.0f} "
                                 f"{'':>7} {report.p99_ms:>8.1f} {report.deploy_s:>9.1f}  exit {report.exit_code}; wall "
                                 f"{wall:.0f}s (restore {report.restore_s:.0f}s, deploy {report.deploy_s:.0f}s, rollback "
                                 f"{report.rollback_s:.0f}s) = {ratio}; standby lag peak "
                                 f"{(report.lag_peak_bytes or 0) / 1024 / 1024:.1f} MiB")
                    await _admin(cluster, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
                    print(f"  {run}: done (clone {clone_s:.0f}s)", flush=True)
                    continue

                async def plain(release: dict | None = None, db: str = db, project: Path = project) -> str:  # type: ignore[type-arg]
                    target = Target(environment="testing", host=cluster.host, port=cluster.port, dbname=db, user=ROLE,
                                    password=PASSWORD, sslmode="disable", lock_timeout_ms=args.plain_lock_timeout_ms,
                                    statement_timeout_ms=0, application_name="alembic")
                    try:
                        await aupgrade(target, "head", project_root=project)
                        return "alembic upgrade head: ok"
                    except Exception as exc:  # noqa: BLE001
                        text = str(exc)
                        return f"alembic upgrade head FAILED: {text.splitlines()[0].split(') ', 1)[-1][:90]}"

                async def deploy(release: dict | None = None, project: Path = project) -> str:  # type: ignore[type-arg]
                    old = project != ROOT
                    expand, first_log = "", None
                    if release is not None and release.get("manual"):
                        # Two deploys around the rollout, as an operator runs them: the first
                        # under the old release stops before the contract (exit 8, with the
                        # statements it saw); the release rolls out; the second contracts.
                        first = await run_deploy(DeployOptions("testing", str(config_dir)))
                        first_log = first.log_path
                        seen = re.search(r"(\d+) call\(s\) of", first.message)
                        expand = (f"expand: exit {first.exit_code} at {first.final_revision}"
                                  f"{f' ({seen.group(1)} old-release calls seen)' if seen else ''}; rollout; contract: ")
                        release["form"] = "new"
                    # For the old history only: --force past the lint that now refuses its 0005, and
                    # --skip-backup past the backup its not-online downgrade now requires.
                    outcome = await run_deploy(DeployOptions("testing", str(config_dir), force=old, skip_backup=old))
                    step = next((s for s in outcome.steps if s.name == "migrate"), None)
                    detail = expand + (step.detail.split(";")[0] if step else outcome.message[:90])
                    rate = backfill_rate(first_log) or backfill_rate(outcome.log_path)  # 0006 ran in the first
                    if rate and rate[1] > 0:
                        detail += f"; backfill {rate[0]:,} rows at {rate[0] / rate[1]:,.0f} rows/s"
                        if unthrottled:
                            detail += f" = {rate[0] / rate[1] / unthrottled:.2f}x the unthrottled UPDATE's"
                    return f"exit {outcome.exit_code}; {detail}"

                if run == "unhealthy":
                    async def gated(release: dict | None = None) -> str:  # type: ignore[type-arg]
                        outcome = await run_deploy(DeployOptions("testing", str(gated_dir)))
                        steps = ", ".join(step.name for step in outcome.steps)
                        return f"exit {outcome.exit_code}; steps: {steps}; {outcome.message[:160]}"

                    line, walls[run] = await one_run(run, game_kw, primary_kw, bouncer, gated, args)
                    lines.append(line)
                    await _admin(cluster, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
                    print(f"  {run}: done (clone {clone_s:.0f}s)", flush=True)
                    continue

                if run == "roundtrip":
                    # deploy.py 0004 -> head, then rollback.py migration back to 0004, each under load;
                    # the release rolls forward as the expand completes, and back once the contract is undone.
                    async def back(release: dict | None = None) -> str:  # type: ignore[type-arg]
                        from pytest_hokmdb.deploy.rollback import RollbackRequest, rollback_migration

                        # Back in two steps around the release's rollback: to the expand (both
                        # releases work there), the release rolled back, then below it.
                        first = await rollback_migration(RollbackRequest("testing", str(config_dir), revision="0006"))
                        if first.exit_code != 0:  # an operator rolls the release back only onto 0006
                            step = next((s for s in first.steps if s.name == "migrate"), None)
                            return (f"to 0006: exit {first.exit_code} at {first.final_revision}; release NOT rolled back; "
                                    f"{(step.detail if step else first.message)[:120]}")
                        if release is not None:
                            release["form"] = "old"
                        outcome = await rollback_migration(RollbackRequest("testing", str(config_dir), revision="0004"))
                        step = next((s for s in outcome.steps if s.name in ("rollback", "migrate")), None)
                        return (f"to 0006: exit {first.exit_code}; release back; to 0004: exit {outcome.exit_code}; "
                                f"{(step.detail if step else outcome.message).split(';')[0][:90]}")

                    for i in range(args.repeat):
                        line, walls[f"deploy-{i}"] = await one_run(f"deploy #{i + 1}", game_kw, primary_kw, bouncer, deploy, args,
                                                                   direction="manual")
                        lines.append(line)
                        line, walls[f"back-{i}"] = await one_run(f"rollback #{i + 1}", game_kw, primary_kw, bouncer, back, args,
                                                                 direction="manual")
                        lines.append(line)
                    await _admin(cluster, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
                    print(f"  {run}: done (clone {clone_s:.0f}s)", flush=True)
                    continue

                line, walls[run] = await one_run(run, game_kw, primary_kw, bouncer,
                                                 plain if run.startswith("plain") else deploy, args)
                lines.append(line)
                await _admin(cluster, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
                print(f"  {run}: done (clone {clone_s:.0f}s)", flush=True)
            topo = f"{'standby lag peak':<22} {'pool wait':<9} " if topology else ""
            print(f"\n{'run':<14} {'txns':>7} {'failed':>6} {'stall ms':>9} {'p50 ms':>7} {'p99 ms':>8} {'migrate s':>9}  "
                  f"{'longest write-blocking lock':<44} {topo}result")
            for line in lines:
                print(line)
    finally:
        if topology is not None:
            topology.destroy()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")], default=[1000, 100_000])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--runs", type=lambda t: t.split(","), default=["plain-old", "deploy-old", "plain-online", "deploy-online"],
                   help="any of plain-old, deploy-old, plain-online, deploy-online, rehearse (after deploy-online for the "
                        "ratio), roundtrip (--repeat times: deploy.py 0004 -> head, then rollback.py back to 0004), "
                        "unhealthy (the gate on and no monitoring connection: refused before anything changes)")
    p.add_argument("--repeat", type=int, default=5, help="deploy and rollback pairs of the roundtrip run")
    p.add_argument("--no-busy-autovacuum", dest="busy_autovacuum", action="store_false",
                   help="leave autovacuum at PostgreSQL's defaults (by default it wakes every second, at 1%% changes)")
    p.add_argument("--game-statement-timeout-ms", type=int, default=3000)
    p.add_argument("--report-every", type=float, default=5.0)
    p.add_argument("--report-hold", type=float, default=4.0)
    p.add_argument("--lock-timeout-ms", type=int, default=1000, help="the deploy's database.lock_timeout_ms")
    p.add_argument("--plain-lock-timeout-ms", type=int, default=0,
                   help="session lock_timeout of the plain alembic runs (default 0: none, as stock alembic)")
    p.add_argument("--backfill-batch-size", type=int, default=1000, help="the deploy's deploy.backfill_batch_size")
    p.add_argument("--backfill-max-batch-ms", type=int, default=200, help="the deploy's deploy.backfill_max_batch_ms")
    p.add_argument("--topology", action="store_true",
                   help="a streaming standby and PgBouncer: the game goes through PgBouncer, the deploy waits for replay")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--transition-window-s", type=float, default=10.0,
                   help="deploy.transition_window_s: how long the deploy watches for the old release before 0007")
    p.add_argument("--cooldown", type=float, default=2.0)
    p.add_argument("--cache-dir", type=Path, default=ROOT / ".hokmdb" / "bench",
                   help="persistent cluster holding the seeded templates, reused between runs")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
