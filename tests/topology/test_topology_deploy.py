"""The deploy on a real topology: it waits for the standby to replay each revision, fails (and
rolls back) when the standby does not, refuses a standby as its target; the online backfill
waits for a lagging standby."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from helpers import PROJECT_ROOT, write_config_dir
from topology_support import TopologyEnv

from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.cluster.topology import LocalTopology
from pytest_hokmdb.migration import online

# One worker runs these (they share one topology); each sets up the state it needs, as xdist
# may interleave other modules and rebuild the module's topology in between.
pytestmark = pytest.mark.xdist_group("topology-deploy")

HOKMDB = Path(sys.executable).parent / "hokmdb"
DEPLOY = PROJECT_ROOT / "database" / "deploy.py"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, check=False, cwd=PROJECT_ROOT)


class DevTopology:
    def __init__(self, base: Path) -> None:
        self.config_dir = base / "config"
        write_config_dir(self.config_dir, "development", embedded__data_dir=str(base / "primary"),
                         topology={"local": True, "replay_timeout_s": 3}, deploy__gate_suites=[],
                         deploy__log_dir=str(base / "logs"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DB_") and k != "HOKMDB_ENVIRONMENT"}
        self.env["HOKMDB_ENV_FILE"] = str(base / "no-such.env")
        self.cluster = EmbeddedCluster(base / "primary")
        self.topology = LocalTopology(self.cluster)
        self.base = base

    def deploy(self, *args: str, config_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
        return _run([sys.executable, str(DEPLOY), "--environment", "development", "--config",
                     str(config_dir or self.config_dir), *args], self.env)

    async def standby_sql(self, sql: str, dbname: str = "hokm_dev") -> object:
        conn = await asyncpg.connect(host="127.0.0.1", port=self.topology.standby_port, user="postgres",
                                     password=self.cluster.superuser_password, database=dbname)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()


@pytest.fixture(scope="module")
def dev_topology(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    dev = DevTopology(tmp_path_factory.mktemp("topo-deploy"))
    started = _run([str(HOKMDB), "topology", "start", "--environment", "development", "--config", str(dev.config_dir)], dev.env)
    assert started.returncode == 0, started.stdout + started.stderr
    yield dev
    dev.topology.destroy()
    dev.cluster.destroy()


async def test_a_standby_that_does_not_replay_fails_the_revision_and_the_deploy_rolls_back(dev_topology: DevTopology) -> None:
    await dev_topology.standby_sql("SELECT pg_wal_replay_pause()", dbname="postgres")
    try:
        proc = dev_topology.deploy("--target-revision", "0002")
    finally:
        await dev_topology.standby_sql("SELECT pg_wal_replay_resume()", dbname="postgres")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 10, output
    assert "revision 0001 (upgrade) committed on the primary, but hokmdb_standby (streaming" in output
    assert "had not replayed it within 3s (topology.replay_timeout_s)" in output
    assert "rolled back to an empty database" in output or "rolled back to base" in output


async def _game_through_pgbouncer(dev: DevTopology, stop: asyncio.Event) -> tuple[int, list[str]]:
    """The game's role reading through PgBouncer in a loop: (transactions, errors)."""
    password = json.loads(dev.cluster.state_file.read_text())["app_passwords"]["hokm_app"]
    done, errors = 0, []
    conn = await asyncpg.connect(host="127.0.0.1", port=dev.topology.pooler_port, user="hokm_app", password=password,
                                 database="hokm_dev", statement_cache_size=0)
    try:
        while not stop.is_set():
            try:
                await conn.fetchval("SELECT count(*) FROM pg_class")
                done += 1
            except asyncpg.PostgresError as exc:
                errors.append(str(exc))
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    return done, errors


async def test_the_deploy_waits_for_the_standby_and_pauses_the_game_in_pgbouncer(dev_topology: DevTopology) -> None:
    """Maintenance mode through PgBouncer: the game's transactions wait in PgBouncer's queue while
    the revisions run and are served after RESUME; none fails. Every revision reaches the standby."""
    paused_config = dev_topology.base / "paused-config"
    write_config_dir(paused_config, "development", embedded__data_dir=str(dev_topology.base / "primary"),
                     topology={"local": True, "replay_timeout_s": 10}, deploy__gate_suites=["smoke"],
                     deploy__maintenance_pause_pooler=True, deploy__log_dir=str(dev_topology.base / "logs"))
    stop = asyncio.Event()
    game = asyncio.create_task(_game_through_pgbouncer(dev_topology, stop))
    await asyncio.sleep(0.5)
    proc = await asyncio.to_thread(dev_topology.deploy, "--maintenance-mode", config_dir=paused_config)
    stop.set()
    served, errors = await game
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "waiting for standbys to replay (peak" in output
    assert f"PgBouncer paused 127.0.0.1:{dev_topology.topology.pooler_port}/hokm_dev" in output
    assert "pool-resume" in output and f"PgBouncer resumed 127.0.0.1:{dev_topology.topology.pooler_port}/hokm_dev" in output
    assert served > 10 and errors == []
    # The gate ran with the pool serving (topology.pgbouncer_pools would fail on a paused one).
    assert "smoke: passed" in output
    log = next((dev_topology.base / "logs").glob("deployment_development_*.log"))
    assert log.exists()
    # What the primary has, the standby has: the revision is there the moment the deploy ends.
    head = await dev_topology.standby_sql("SELECT version_num FROM alembic_version")
    assert head == "0008"


def test_a_deploy_pointed_at_the_standby_is_refused(dev_topology: DevTopology) -> None:
    assert dev_topology.deploy().returncode == 0  # roles and passwords exist, whatever ran before
    state = json.loads(dev_topology.cluster.state_file.read_text())
    config_dir = dev_topology.base / "standby-config"
    write_config_dir(config_dir, "development", database__host="127.0.0.1",
                     database__port=dev_topology.topology.standby_port, database__password=state["app_passwords"]["hokm_app"],
                     database__sslmode="disable", deploy__gate_suites=[], deploy__log_dir=str(dev_topology.base / "logs"))
    proc = dev_topology.deploy(config_dir=config_dir)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 4, output
    assert f"127.0.0.1:{dev_topology.topology.standby_port} is a standby (in recovery)" in output
    assert "point database.host/port at the primary" in output
    assert state["app_passwords"]["hokm_app"] not in output


async def _backfill(env: TopologyEnv, table: str, rows: int, settings: online.BackfillSettings) -> online.BackfillReport:
    """Make ``table`` with ``rows`` rows needing ``v = 1`` and backfill it on the primary."""
    from pytest_hokmdb.db.engine import create_engine

    conn = await asyncpg.connect(**env.primary.asyncpg_kwargs())  # type: ignore[arg-type]
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id bigint PRIMARY KEY, pad text, v int); "
                           f"INSERT INTO {table} SELECT g, repeat('x', 300), NULL FROM generate_series(1, {rows}) g")
    finally:
        await conn.close()
    engine = create_engine(env.primary)
    try:
        async with engine.connect() as bind:
            autocommit = await bind.execution_options(isolation_level="AUTOCOMMIT")
            return await autocommit.run_sync(
                lambda sync: online.run_backfill(sync, table, set_="v = 1", where="v IS NULL", settings=settings))
    finally:
        await engine.dispose()


async def test_a_backfill_waits_for_a_lagging_standby_then_finishes(topology_env: TopologyEnv) -> None:
    await topology_env.on_standby("SELECT pg_wal_replay_pause()")
    settings = online.BackfillSettings(batch_size=2000, pause_ms=0, max_replica_lag_bytes=256 * 1024)
    task = asyncio.create_task(_backfill(topology_env, "lagging_backfill", 20000, settings))
    try:
        await asyncio.sleep(2.0)
        assert not task.done(), "the backfill did not wait for the paused standby"
    finally:
        await topology_env.on_standby("SELECT pg_wal_replay_resume()")
    report = await asyncio.wait_for(task, 60)
    assert report.rows == 20000
    assert report.replica_waits >= 1 and report.replica_wait_s >= 1.5
    assert report.replica_peak_bytes > 256 * 1024


async def test_a_backfill_behind_a_standby_that_replays_nothing_fails_naming_it(topology_env: TopologyEnv, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(online, "REPLICA_STALL_S", 1.0)
    await topology_env.on_standby("SELECT pg_wal_replay_pause()")
    settings = online.BackfillSettings(batch_size=1000, pause_ms=0, max_replica_lag_bytes=64 * 1024)
    try:
        with pytest.raises(online.BackfillError) as failed:
            await _backfill(topology_env, "stalled_backfill", 5000, settings)
    finally:
        await topology_env.on_standby("SELECT pg_wal_replay_resume()")
    assert "backfill of stalled_backfill stopped: standby hokmdb_standby replayed nothing for 1s" in str(failed.value)
    assert "the backfill continues where it stopped" in str(failed.value)


async def test_a_pool_a_killed_deploy_left_paused_is_resumed_by_one_command(dev_topology: DevTopology) -> None:
    """What SIGKILL during the pause leaves: the pool PAUSEd and the deploy's record of it.
    ``hokmdb topology resume`` resumes it and clears the record; games waiting in the queue go on."""
    from pytest_hokmdb.db.topology import PoolerEndpoint, pooler_command, pooler_show

    port = dev_topology.topology.pooler_port
    admin = PoolerEndpoint("127.0.0.1", port, "postgres", dev_topology.cluster.superuser_password, "hokm_dev")
    await pooler_command(admin, "PAUSE hokm_dev", timeout_s=10)
    owner_pw = json.loads(dev_topology.cluster.state_file.read_text())["app_passwords"]["hokm_owner"]
    owner = await asyncpg.connect(host="127.0.0.1", port=dev_topology.cluster.port, user="hokm_owner", password=owner_pw,
                                  database="hokm_dev")
    try:
        from pytest_hokmdb.deploy.maintenance import DDL

        # Independent of the other tests' order (xdist may rebuild this module's topology).
        await owner.execute(DDL)
        await owner.execute("INSERT INTO hokmdb_maintenance (id, enabled) VALUES (true, true) ON CONFLICT (id) DO NOTHING")
        await owner.execute("UPDATE hokmdb_maintenance SET paused_pool = $1", f"127.0.0.1:{port}/hokm_dev")
        assert [d["paused"] for d in await pooler_show(admin, "DATABASES") if d["name"] == "hokm_dev"] == ["1"]
        proc = _run([str(HOKMDB), "topology", "resume", "--environment", "development", "--config", str(dev_topology.config_dir)],
                    dev_topology.env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"resumed hokm_dev in PgBouncer at 127.0.0.1:{port}" in proc.stdout
        assert "cleared the deploy's record of the pause" in proc.stdout
        assert [d["paused"] for d in await pooler_show(admin, "DATABASES") if d["name"] == "hokm_dev"] == ["0"]
        assert await owner.fetchval("SELECT paused_pool FROM hokmdb_maintenance") is None
        again = _run([str(HOKMDB), "topology", "resume", "--environment", "development", "--config", str(dev_topology.config_dir)],
                     dev_topology.env)
        assert again.returncode == 0 and "hokm_dev was not paused" in again.stdout, again.stdout + again.stderr
    finally:
        await owner.close()


async def test_a_backup_from_the_standby_loads_not_the_primary_and_restores(dev_topology: DevTopology) -> None:
    """backup.from_standby: pg_dump connects to the standby (the manifest records the server it
    dumped and says it was a standby, caught up or how far behind), and the quick verification
    restores it into a scratch database."""
    assert dev_topology.deploy().returncode == 0  # at head, whatever ran before on this topology
    config = dev_topology.base / "standby-backup-config"
    write_config_dir(config, "development", embedded__data_dir=str(dev_topology.base / "primary"), topology={"local": True},
                     backup__from_standby=True, backup__local_dir=str(dev_topology.base / "backups"))
    env = {**dev_topology.env, "BACKUP_ENCRYPTION_KEY": "standby-backup-passphrase-1234"}
    proc = _run([sys.executable, str(PROJECT_ROOT / "database" / "backup.py"), "--environment", "development", "--db-config",
                 str(config), "--verify", "quick", "--json"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest_path = next((dev_topology.base / "backups").rglob("*.manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    assert manifest["source"].startswith(f"standby 127.0.0.1:{dev_topology.topology.standby_port}")
    assert manifest["database"]["port"] == dev_topology.topology.standby_port
    # The revision the dump recorded is the standby's (seen once as None in a full parallel run,
    # not reproduced alone: compared with what the standby holds, not with a constant).
    assert manifest["alembic_revision"] == await dev_topology.standby_sql(
        "SELECT max(version_num) FROM alembic_version")
    assert manifest["total_rows"] >= 0
    assert manifest["verifications"] and manifest["verifications"][-1]["passed"] is True

    # With the standby down, a backup asked of the standby fails; it never silently loads the primary.
    dev_topology.topology.standby.stop()
    try:
        down = _run([sys.executable, str(PROJECT_ROOT / "database" / "backup.py"), "--environment", "development",
                     "--db-config", str(config), "--verify", "none"], env)
    finally:
        dev_topology.topology.start()
    assert down.returncode == 7, down.stdout + down.stderr
    assert "backup.from_standby: no standby can serve the backup" in down.stderr
    assert "standby-backup-passphrase-1234" not in down.stdout + down.stderr
