"""The deploy under failure, against real clusters: SIGKILL mid-migration, two deploys at once,
a revision failing halfway, a gate failure after a good migration, a migration blocked by a
long transaction, a failed concurrent index build, the --max-downtime bound."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import asyncpg
import pytest
from deploy_support import COMMENT_0009, SLOW_0010, DeployEnv

from pytest_hokmdb.deploy.lock import DEPLOY_KEY, MIGRATION_KEY, NAMESPACE
from pytest_hokmdb.deploy.orchestrator import DeployOptions, run_deploy
from pytest_hokmdb.errors import ExitCode

ADVISORY_HELD = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1::oid AND objid = $2::oid"


async def _wait_for(probe, timeout: float = 30.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


async def test_sigkill_mid_migration_leaves_a_revision_boundary_a_free_lock_and_a_rerun_completes(deploy_env_factory, project_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[])
    env.use_project(project_factory([COMMENT_0009, SLOW_0010]))
    env.env["HOKMDB_TEST_SLEEP_S"] = "60"
    monkeypatch.delenv("HOKMDB_TEST_SLEEP_S", raising=False)
    proc = env.popen()
    conn = await env.connect()
    try:
        async def sleeping() -> object:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            return await conn.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'SELECT pg_sleep%' "
                "AND application_name LIKE 'hokmdb-migrate %'"
            )

        backend = await _wait_for(sleeping, timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        # The lock session ends with the process; the orphaned migration backend notices its client
        # is gone within client_connection_check_interval and rolls back.
        await _wait_for(lambda: _none(conn, ADVISORY_HELD, NAMESPACE, DEPLOY_KEY), timeout=10)
        await _wait_for(lambda: _none(conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", backend), timeout=10)
        assert await conn.fetchval(ADVISORY_HELD, NAMESPACE, MIGRATION_KEY) == 0
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == "0009"  # the boundary before 0010
        assert await conn.fetchval("SELECT obj_description('players'::regclass)") == "probe 0009"
        assert await conn.fetchval("SELECT obj_description('game_sessions'::regclass)") is None  # nothing of 0010
    finally:
        await conn.close()
    rerun = await run_deploy(DeployOptions("testing", str(env.config_dir)))  # HOKMDB_TEST_SLEEP_S unset here: no sleep
    assert rerun.exit_code == 0, rerun.message
    assert rerun.from_revision == "0009" and rerun.final_revision == "0010"
    assert await env.revision() == "0010"
    results = await env.fetchval("SELECT string_agg(result, ',' ORDER BY id) FROM hokmdb_deploy_history")
    assert results == "abandoned,succeeded"


async def _none(conn: asyncpg.Connection, sql: str, *args: object) -> bool:
    return await conn.fetchval(sql, *args) == 0


async def test_two_deploys_at_once_exactly_one_migrates_the_other_names_the_holder(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[], deploy__lock_wait_s=0.5)
    env.use_project(project_factory([COMMENT_0009, SLOW_0010]))
    env.env["HOKMDB_TEST_SLEEP_S"] = "3"
    first, second = env.popen(), env.popen()
    out1, _ = first.communicate(timeout=120)
    out2, _ = second.communicate(timeout=120)
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, ExitCode.DEPLOY_LOCKED], out1 + out2
    loser = out1 if first.returncode == ExitCode.DEPLOY_LOCKED else out2
    assert "deploy already in progress" in loser
    assert "hokmdb-deploy tester@" in loser and "server pid" in loser and "connected since" in loser
    assert await env.revision() == "0010"
    assert await env.fetchval("SELECT count(*) FROM hokmdb_deploy_history") == 1


async def test_a_revision_failing_halfway_is_rolled_back_to_the_start_and_gated(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory()
    halfway = (
        "0010", "Creates a table and a column, then fails.",
        """
        op.create_table("halfway_probe", sa.Column("id", sa.Integer, primary_key=True))
        op.add_column("players", sa.Column("halfway_flag", sa.Boolean, nullable=True))
        op.execute("SELECT 1 / 0")
        """,
        """
        op.drop_column("players", "halfway_flag")
        op.drop_table("halfway_probe")
        """,
    )
    env.use_project(project_factory([COMMENT_0009, halfway]))
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir), maintenance_mode=True))
    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome.message
    assert "division by zero" in outcome.message
    steps = {s.name: s for s in outcome.steps}
    assert steps["migrate"].status == "failed" and "0008 -> 0009" in steps["migrate"].detail
    assert steps["rollback"].status == "ok" and "downgraded 0009 to 0008" in steps["rollback"].detail
    assert steps["gate-after-rollback"].status == "ok" and "smoke: passed" in steps["gate-after-rollback"].detail
    assert "gate" not in steps  # the post-deploy gate never ran on a half-migrated database
    assert steps["maintenance-off"].status == "ok"
    assert outcome.final_revision == "0008" and await env.revision() == "0008"
    assert await env.fetchval("SELECT to_regclass('halfway_probe')") is None
    assert await env.fetchval("SELECT count(*) FROM pg_attribute WHERE attrelid = 'players'::regclass AND attname = 'halfway_flag'") == 0
    assert await env.fetchval("SELECT obj_description('players'::regclass)") is None  # 0009 reverted too
    assert await env.fetchval("SELECT string_agg(revision, ',' ORDER BY revision) FROM hokmdb_applied_revisions") == "0001,0002,0003,0004,0005,0006,0007,0008"
    assert await env.fetchval("SELECT enabled FROM hokmdb_maintenance") is False
    assert await env.fetchval("SELECT datconnlimit FROM pg_database WHERE datname = current_database()") == -1
    assert await env.fetchval("SELECT result FROM hokmdb_deploy_history ORDER BY id DESC LIMIT 1") == "rolled_back"


async def test_a_gate_failure_after_a_good_migration_downgrades_and_gates_again(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory()
    breaker = (
        "0009", "A hotfix column the models do not have: the gate's drift check fails.",
        'op.add_column("players", sa.Column("hotfix_note", sa.Text, nullable=True))',
        'op.drop_column("players", "hotfix_note")',
    )
    env.use_project(project_factory([breaker]))
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome.message
    names = [s.name for s in outcome.steps]
    assert names.index("migrate") < names.index("gate") < names.index("rollback") < names.index("gate-after-rollback")
    steps = {s.name: s for s in outcome.steps}
    assert steps["migrate"].status == "ok"
    assert steps["gate"].status == "failed" and "smoke: FAILED" in steps["gate"].detail
    assert steps["gate-after-rollback"].status == "ok"
    assert "unexpected column players.hotfix_note" in outcome.log_path.read_text()  # type: ignore[union-attr]
    assert await env.revision() == "0008"


LOCKER = ("0009", "Needs players exclusively for a moment.", "op.execute('LOCK TABLE players IN ACCESS EXCLUSIVE MODE')", "pass")


async def _read_players_until(game: asyncpg.Connection, stop: asyncio.Event, stalls: list[float]) -> None:
    """The game reading a player in a loop; each read's time goes to ``stalls``."""
    while not stop.is_set():
        t0 = time.monotonic()
        await game.fetchval("SELECT rating FROM players WHERE id = (SELECT min(id) FROM players)")
        stalls.append(time.monotonic() - t0)
        await asyncio.sleep(0.02)


async def test_a_migration_blocked_by_a_long_transaction_retries_then_gives_up_within_the_budget(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    lock_timeout_ms, budget = 300, 2.5
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[], database__lock_timeout_ms=lock_timeout_ms,
                                        deploy__lock_retry_budget_s=budget, deploy__lock_retry_base_delay_s=0.2)
    env.use_project(project_factory([LOCKER]))
    holder = await env.connect()
    game = await env.connect()
    stalls: list[float] = []
    stop = asyncio.Event()

    async def game_traffic() -> None:
        await _read_players_until(game, stop, stalls)

    try:
        tx = holder.transaction()
        await tx.start()
        await holder.fetchval("SELECT count(*) FROM players")  # a long report holding ACCESS SHARE
        traffic = asyncio.create_task(game_traffic())
        outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
        migrate = next(s for s in outcome.steps if s.name == "migrate")
        stop.set()
        await traffic
        await tx.rollback()
    finally:
        await holder.close()
        await game.close()
    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome.message
    # The first attempt met a young transaction and gave up after one lock_timeout; from then
    # on the deploy saw a transaction older than the lock budget and waited instead of queueing.
    assert "revision 0009 (upgrade) did not start" in outcome.message
    assert "held its tables longer than the lock budget (300 ms)" in outcome.message
    assert "role postgres" in outcome.message and "'SELECT count(*) FROM players'" in outcome.message  # who, and what
    timeouts = int(migrate.detail.split(" lock timeout(s)")[0].rsplit(" ", 1)[-1])
    assert timeouts <= 1, migrate.detail
    assert "waiting for long transactions" in migrate.detail
    assert migrate.seconds <= budget + lock_timeout_ms / 1000 + 1.0, migrate.detail
    # Game queries waited behind the migration's lock request at most once, one lock_timeout.
    assert max(stalls) < lock_timeout_ms / 1000 + 0.25, max(stalls)
    assert sum(s for s in stalls if s > 0.05) <= lock_timeout_ms / 1000 + 0.25, sorted(stalls)[-5:]
    assert await env.revision() == "0008"


async def test_the_deploy_waits_for_a_long_transaction_instead_of_queueing_then_deploys(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    """A report has held players for longer than the lock budget when the deploy starts: the
    deploy never asks for its lock while it runs (no game query stalls), and deploys once it ends."""
    lock_timeout_ms = 300
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[], database__lock_timeout_ms=lock_timeout_ms,
                                        deploy__lock_retry_budget_s=20.0)
    env.use_project(project_factory([LOCKER]))
    holder = await env.connect()
    game = await env.connect()
    stalls: list[float] = []
    stop = asyncio.Event()

    async def game_traffic() -> None:
        await _read_players_until(game, stop, stalls)

    async def report_ends() -> None:
        await asyncio.sleep(2.0)
        await tx.rollback()

    try:
        tx = holder.transaction()
        await tx.start()
        await holder.fetchval("SELECT count(*) FROM players")
        await asyncio.sleep(lock_timeout_ms / 1000 + 0.2)  # older than the lock budget
        traffic = asyncio.create_task(game_traffic())
        ending = asyncio.create_task(report_ends())
        outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
        await ending
        stop.set()
        await traffic
    finally:
        await holder.close()
        await game.close()
    assert outcome.exit_code == ExitCode.OK, outcome.message
    migrate = next(s for s in outcome.steps if s.name == "migrate")
    assert " 0 lock timeout(s)" in migrate.detail, migrate.detail
    waited = float(migrate.detail.split("s waiting for long transactions")[0].rsplit("(", 1)[-1])
    assert 0.2 <= waited <= 3.0, migrate.detail
    assert max(stalls) < 0.2, sorted(stalls)[-5:]  # nobody queued behind the deploy
    assert await env.revision() == "0009"


async def test_a_failed_concurrent_index_build_leaves_no_invalid_index(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[])
    concurrent = (
        "0009", "A unique index built CONCURRENTLY on a column with duplicates: the build fails and leaves it INVALID.",
        """
        with op.get_context().autocommit_block():
            op.execute("CREATE UNIQUE INDEX CONCURRENTLY ix_players_is_active_unique ON players (is_active)")
        """,
        """
        with op.get_context().autocommit_block():
            op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_players_is_active_unique")
        """,
    )
    env.use_project(project_factory([concurrent]))
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome.message
    assert "could not create unique index" in outcome.message
    assert "left index public.ix_players_is_active_unique INVALID: dropped it" in outcome.log_path.read_text()  # type: ignore[union-attr]
    assert await env.fetchval("SELECT to_regclass('ix_players_is_active_unique')") is None
    assert await env.fetchval("SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0
    assert await env.revision() == "0008"


CONCURRENT_0009 = (
    "0009", "An index built CONCURRENTLY: it blocks no game write, so it may wait for older snapshots.",
    """
    with op.get_context().autocommit_block():
        op.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_players_last_seen_at ON players (last_seen_at)")
    """,
    """
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_players_last_seen_at")
    """,
)


@pytest.mark.parametrize("concurrent_wait_s", [600.0, 0.0], ids=["own-budget", "lock-timeout"])
async def test_a_concurrent_index_build_waits_for_old_snapshots_under_its_own_budget(
        deploy_env_factory, project_factory, concurrent_wait_s: float) -> None:  # type: ignore[no-untyped-def]
    """A transaction of another table holds a snapshot for 4 s: CREATE INDEX CONCURRENTLY waits
    for it (it must), blocking no game write meanwhile. Under the deploy's 300 ms lock_timeout
    each attempt gave up and the 3 s retry budget ran out (0008 took 7 attempts and 43 s at
    100k games); under deploy.concurrent_wait_s it waits once. ``concurrent_wait_s = 0`` is the
    old behaviour, proving the test sees the difference."""
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[], deploy__concurrent_wait_s=concurrent_wait_s)
    env.use_project(project_factory([CONCURRENT_0009], lint_default=None))
    reader = await env.connect()
    await reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    await reader.fetchval("SELECT count(*) FROM websocket_connections")

    async def end_later() -> None:
        await asyncio.sleep(4.0)
        await reader.execute("COMMIT")
        await reader.close()

    ender = asyncio.create_task(end_later())
    try:
        outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    finally:
        await ender
    log = outcome.log_path.read_text()  # type: ignore[union-attr]
    if concurrent_wait_s:
        assert outcome.exit_code == ExitCode.OK, outcome.message
        assert "revision 0009 applied" in log and "(1 attempt)" in log, log
        assert "blocks none of the game's reads or writes" in log and "waits up to 600s" in log
        assert await env.fetchval("SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0
        assert await env.revision() == "0009"
    else:
        assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome.message
        assert "could not get its locks" in outcome.message
        assert await env.revision() == "0008"


async def test_max_downtime_cancels_a_revision_that_holds_the_tables_too_long(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[])
    hog = ("0009", "Holds players exclusively for 20 seconds.",
           "op.execute('LOCK TABLE players IN ACCESS EXCLUSIVE MODE')\nop.execute('SELECT pg_sleep(20)')", "pass")
    env.use_project(project_factory([hog]))
    t0 = time.monotonic()
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir), max_downtime_s=1.0))
    assert time.monotonic() - t0 < 8
    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome.message
    assert "--max-downtime" in outcome.message
    migrate = next(s for s in outcome.steps if s.name == "migrate")
    assert migrate.seconds < 3, migrate.detail
    assert await env.revision() == "0008"


async def test_downtime_is_write_blocking_lock_time_not_revision_time(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    """A revision that works for two seconds without a strong lock, then holds players
    exclusively for about a second: --max-downtime 1.8 lets it through (the long work blocks
    nobody), and the summary names players and about how long it was held."""
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[])
    worker = ("0009", "Works 2 s without blocking writes, then holds players exclusively for 1 s.",
              "op.execute('SELECT pg_sleep(2)')\nop.execute('LOCK TABLE players IN ACCESS EXCLUSIVE MODE')\n"
              "op.execute('SELECT pg_sleep(1)')", "pass")
    env.use_project(project_factory([worker]))
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir), max_downtime_s=1.8))
    assert outcome.exit_code == ExitCode.OK, outcome.message
    migrate = next(s for s in outcome.steps if s.name == "migrate")
    assert "longest write-blocking lock: players" in migrate.detail and "(AccessExclusive)" in migrate.detail, migrate.detail
    assert 0.8 <= outcome.longest_locks["players"] <= 1.6, outcome.longest_locks
    inside = float(migrate.detail.split("s inside the database")[0].rsplit(" ", 1)[-1])
    assert inside >= 2.9, migrate.detail  # the revision ran 3 s; 1 s of it counted as downtime


async def test_blockers_are_named_through_the_monitoring_connection(deploy_env_factory, project_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A deploy role without pg_read_all_stats sees neither another role's query nor how old its
    transaction is; through the monitoring connection the deploy sees both, waits instead of
    queueing, and names the query. Without one it falls back to lock_timeout and retries."""
    from deploy_support import DEPLOY_ROLE, admin

    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[], database__lock_timeout_ms=300, deploy__lock_retry_budget_s=1.5)
    env.use_project(project_factory([LOCKER]))
    cluster = env.db.cluster
    await admin(cluster, f"REVOKE pg_monitor FROM {DEPLOY_ROLE}")
    holder = await env.connect()  # the cluster's superuser: another role than the deploy's
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.fetchval("SELECT count(*) FROM players /* the nightly report */")
        await asyncio.sleep(0.5)
        seen = await run_deploy(DeployOptions("testing", str(env.config_dir)))
        monkeypatch.delenv("DB_MONITOR_USER")
        blind = await run_deploy(DeployOptions("testing", str(env.config_dir)))
        await tx.rollback()
    finally:
        await holder.close()
        await admin(cluster, f"GRANT pg_monitor TO {DEPLOY_ROLE}")
    assert "did not start" in seen.message and "role postgres" in seen.message, seen.message
    assert "SELECT count(*) FROM players /* the nightly report */" in seen.message
    # Blind, the deploy cannot even see how old the other role's transaction is: it falls back
    # to lock_timeout and retries, and can only say that it was blocked, not by what query.
    assert "could not get its locks" in blind.message and "<insufficient privilege>" in blind.message, blind.message
    assert "state hidden" in blind.message
    assert await env.revision() == "0008"


def test_an_autovacuum_that_a_lock_request_cancels_is_not_waited_for() -> None:
    """The 100k-game bench: an autovacuum of ``moves`` (3 minutes) made the deploy wait out its
    whole retry budget, though PostgreSQL cancels such a worker as soon as a lock waits on it.
    A wraparound vacuum is never cancelled and stays a holder to wait for."""
    from pytest_hokmdb.deploy.locks import Holder

    plain = Holder(1, "?", "", "active", 194.3, "autovacuum: VACUUM public.moves", "moves", "autovacuum worker")
    hidden = Holder(2, "?", "", "active", 194.3, "<insufficient privilege>", "moves", "autovacuum worker")
    wraparound = Holder(3, "?", "", "active", 194.3, "autovacuum: VACUUM public.moves (to prevent wraparound)", "moves",
                        "autovacuum worker")
    manual = Holder(4, "ops", "psql", "active", 194.3, "VACUUM moves", "moves", "client backend")
    assert plain.yields_to_locks and hidden.yields_to_locks
    assert not wraparound.yields_to_locks and not manual.yields_to_locks
    # Waited for like a long transaction, and named as what it is when the budget runs out.
    assert wraparound.describe() == ("pid 3, an anti-wraparound autovacuum of moves (PostgreSQL never cancels one; it has "
                                     "run 194.3s; query: 'autovacuum: VACUUM public.moves (to prevent wraparound)')")
    assert manual.describe().startswith("pid 4 (role ops, application psql, active, transaction open 194.3s")


CYCLE_0009 = (
    "0009", "Take players in SHARE ROW EXCLUSIVE, pause, then websocket_connections in ACCESS EXCLUSIVE: two tables.",
    """
    op.execute("LOCK TABLE players IN SHARE ROW EXCLUSIVE MODE")
    op.execute("SELECT pg_sleep(0.7)")
    op.execute("LOCK TABLE websocket_connections IN ACCESS EXCLUSIVE MODE")
    op.execute("COMMENT ON TABLE players IS 'probe 0009'")
    """,
    "op.execute('COMMENT ON TABLE players IS NULL')",
)


async def test_the_deploy_yields_when_it_and_a_game_transaction_wait_for_each_other(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    """A deadlock across two tables, made on purpose: a game transaction read
    websocket_connections; the deploy took players in SHARE ROW EXCLUSIVE; the game's UPDATE
    of players waits for the deploy; then the deploy asks for websocket_connections and waits
    for the game. PostgreSQL aborts whichever waiter runs its deadlock check first, after
    deadlock_timeout (1 s) of waiting: the game, which waited longer, since the deploy's
    lock_timeout (2 s here) has not run out. The deploy sees the cycle within a sample interval,
    cancels its own statement and retries; the game's UPDATE goes through. Without that the game
    gets DeadlockDetectedError."""
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[], database__lock_timeout_ms=2000,
                                        deploy__lock_retry_budget_s=15.0)
    env.use_project(project_factory([CYCLE_0009]))
    game = await env.connect()
    deploy = asyncio.create_task(run_deploy(DeployOptions("testing", str(env.config_dir))))
    try:
        deadline = time.monotonic() + 30
        while not await env.fetchval(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'players' "
                "AND l.mode = 'ShareRowExclusiveLock' AND l.granted"):
            assert time.monotonic() < deadline and not deploy.done(), "the deploy never took players"
            await asyncio.sleep(0.02)
        # Within the revision's 0.7 s pause: the game reads websocket_connections, then writes players.
        await game.execute("BEGIN")
        await game.fetchval("SELECT count(*) FROM websocket_connections")
        await game.execute("UPDATE players SET rating = rating WHERE id = (SELECT min(id) FROM players)")
        await game.execute("COMMIT")
    finally:
        outcome = await deploy
        await game.close()
    log = outcome.log_path.read_text()  # type: ignore[union-attr]
    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert "which waits for it: the deploy cancels its own statement so that the game is not the deadlock victim" in log
    assert "(2 attempts)" in log
    assert await env.revision() == "0009"


@pytest.mark.parametrize(("sql", "expected"), [
    ("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix ON t (a);", True),
    ("DO $$ BEGIN IF EXISTS (SELECT 1) THEN RAISE EXCEPTION 'run DROP INDEX CONCURRENTLY ix; then again'; END IF; END $$;\n"
     "CREATE INDEX CONCURRENTLY ix ON t (a);\nBEGIN;\nUPDATE alembic_version SET version_num='0009';\nCOMMIT;", True),
    ("ALTER TABLE moves VALIDATE CONSTRAINT ck;\nDROP INDEX CONCURRENTLY IF EXISTS ix;", True),
    ("CREATE INDEX CONCURRENTLY ix ON t (a);\nALTER TABLE t ADD COLUMN b int;", False),
    ("DO $$ BEGIN EXECUTE 'ALTER TABLE t ADD COLUMN b int'; END $$;", False),
    ("CREATE INDEX ix ON t (a);", False),
    ("BEGIN;\nUPDATE alembic_version SET version_num='0009';\nCOMMIT;", False),
], ids=["cic", "check-then-cic", "validate-and-drop", "cic-then-alter", "do-that-writes", "plain-index", "empty"])
def test_which_revisions_block_no_game_write(sql: str, expected: bool) -> None:
    """What earns a revision deploy.concurrent_wait_s: only statements whose locks never conflict
    with the game's reads and writes (a DO block that only reads and raises, its string literals
    aside); any other statement, or nothing at all, and it waits under lock_timeout."""
    from pytest_hokmdb.migration.lint.sql import never_blocks_writes

    assert never_blocks_writes(sql) is expected


WORK_THEN_LOCK = (
    "0009", "A second of work that locks nothing, then a statement that needs players exclusively.",
    "op.execute('SELECT pg_sleep(1.5)')\nop.execute('LOCK TABLE players IN ACCESS EXCLUSIVE MODE')",
    "pass",
)


async def test_a_strong_lock_late_in_a_revision_waits_for_a_long_holder_instead_of_queueing(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    """A report that took players after the revision began (as one does during a backfill) is
    waited out before the revision's DDL, not queued behind: no lock timeout, no retry, and the
    game's reads of players never wait behind the deploy's lock request."""
    lock_timeout_ms = 300
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[], database__lock_timeout_ms=lock_timeout_ms,
                                        deploy__lock_retry_budget_s=20.0)
    env.use_project(project_factory([WORK_THEN_LOCK]))
    report, game = await env.connect(), await env.connect()
    stalls: list[float] = []
    stop = asyncio.Event()
    try:
        deploy = asyncio.create_task(run_deploy(DeployOptions("testing", str(env.config_dir))))
        for _ in range(200):  # until the revision is in its second of work
            if await report.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(1.5)%'"):
                break
            await asyncio.sleep(0.05)
        tx = report.transaction()
        await tx.start()
        await report.fetchval("SELECT count(*) FROM players")  # the report holds players from now on
        traffic = asyncio.create_task(_read_players_until(game, stop, stalls))
        await asyncio.sleep(2.5)  # past the revision's second of work: its LOCK is due now
        await tx.rollback()
        outcome = await deploy
        stop.set()
        await traffic
    finally:
        await report.close()
        await game.close()
    assert outcome.exit_code == ExitCode.OK, outcome.message
    migrate = next(s for s in outcome.steps if s.name == "migrate")
    assert "; 0 lock timeout(s)" in migrate.detail, migrate.detail
    assert "waiting for long transactions" in migrate.detail, migrate.detail
    assert max(stalls) < lock_timeout_ms / 1000, max(stalls)  # no read of players queued behind the deploy
