"""``hokmdb topology start|stop|status`` with ``"topology": {"local": "patroni"}``, as an operator
runs it: etcd, two Patroni nodes and PgBouncer in front of the leader, real processes on
loopback. The game writes through PgBouncer; after a switchover PgBouncer routes to the new
leader (Patroni's on_role_change callback); the environment's endpoints (deploy target,
standbys, PgBouncer, Patroni) resolve from the topology; stop leaves no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from helpers import PROJECT_ROOT, write_config_dir

from pytest_hokmdb.cluster import pgbouncer_follow
from pytest_hokmdb.cluster.osuser import resolve_os_user
from pytest_hokmdb.cluster.patroni_topology import LocalPatroniTopology
from pytest_hokmdb.cluster.pgbouncer import PgBouncer
from pytest_hokmdb.cluster.process import pid_alive, postmaster_pid
from pytest_hokmdb.config import LoadedConfig, load_config
from pytest_hokmdb.db.resolve import (
    local_patroni_for,
    resolve_monitor_target,
    resolve_owner_target,
    resolve_target,
)
from pytest_hokmdb.db.topology import resolve_topology

pytestmark = pytest.mark.xdist_group("patroni")

HOKMDB = Path(sys.executable).parent / "hokmdb"
ENVIRONMENT = "development"
TABLE = "pt_moves"


@dataclass
class PatroniEnv:
    config_dir: Path
    env: dict[str, str]
    topology: LocalPatroniTopology
    started: subprocess.CompletedProcess[str]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run([str(HOKMDB), "topology", *args, "--environment", ENVIRONMENT, "--config", str(self.config_dir)], self.env)

    def loaded(self) -> LoadedConfig:
        return load_config(ENVIRONMENT, self.config_dir, environ=self.env)

    @property
    def passwords(self) -> list[str]:
        state = json.loads(self.topology.patroni.state_file.read_text())
        return [state["superuser_password"], state["replication_password"], *state.get("app_passwords", {}).values()]

    def app_password(self) -> str:
        return json.loads(self.topology.patroni.state_file.read_text())["app_passwords"]["hokm_app"]

    async def through_pgbouncer(self, sql: str, *args: object) -> object:
        """One statement as the game: the application role, through PgBouncer (transaction mode)."""
        conn = await asyncpg.connect(host="127.0.0.1", port=self.topology.pooler_port, user="hokm_app",
                                     password=self.app_password(), database="hokm_dev", statement_cache_size=0, timeout=10)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, check=False, cwd=PROJECT_ROOT)


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DB_") and k != "HOKMDB_ENVIRONMENT"}
    env["HOKMDB_ENV_FILE"] = str(tmp / "no-such.env")
    return env


@pytest.fixture(scope="module")
def patroni_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PatroniEnv]:
    """One topology for the module, started through the CLI (the first test asserts how)."""
    tmp = tmp_path_factory.mktemp("patroni-cli")
    config_dir = tmp / "config"
    write_config_dir(config_dir, ENVIRONMENT, embedded__data_dir=str(tmp / "primary"), topology={"local": "patroni"})
    env = _env(tmp)
    topology = local_patroni_for(load_config(ENVIRONMENT, config_dir, environ=env))
    assert topology is not None
    try:
        started = _run([str(HOKMDB), "topology", "start", "--environment", ENVIRONMENT, "--config", str(config_dir)], env)
        assert started.returncode == 0, started.stdout + started.stderr
        patroni = PatroniEnv(config_dir, env, topology, started)
        asyncio.run(_create_table(patroni))
        yield patroni
    finally:
        topology.destroy()


async def _create_table(patroni: PatroniEnv) -> None:
    """The game's table, created as the owner role the topology's setup provisioned."""
    loaded = patroni.loaded()
    owner = await resolve_owner_target(loaded, await resolve_target(loaded, start=False))
    conn = await asyncpg.connect(**owner.asyncpg_kwargs())  # type: ignore[arg-type]
    try:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, note text NOT NULL)")
    finally:
        await conn.close()


def _our_pids(topology: LocalPatroniTopology) -> dict[str, int | None]:
    """Every process of the topology: etcd, both Patroni processes, both postmasters, PgBouncer."""
    pids = dict(topology.patroni.processes())
    for node in ("node1", "node2"):
        pids[f"{node} postgres"] = postmaster_pid(topology.base_dir / node / "data")
    pids["pgbouncer"] = topology.pooler.pid()
    return pids


def _whole(topology: LocalPatroniTopology, *, replica: str | None = None) -> bool:
    """A running leader, a running replica (``replica`` when named), every process up."""
    members = topology.patroni.members() or []
    replicas = [m.name for m in members if m.role == "replica" and m.state in ("running", "streaming")]
    leaders = [m for m in members if m.role == "leader" and m.state == "running"]
    return bool(leaders) and (replica in replicas if replica else bool(replicas)) and all(_our_pids(topology).values())


def test_topology_start_runs_patroni_with_pgbouncer_in_front_of_the_leader(patroni_env: PatroniEnv) -> None:
    out = patroni_env.started.stdout
    assert "etcd running" in out and "node1 running" in out and "node2 running" in out, out
    assert "leader, running" in out and "replica," in out
    assert "pgbouncer: running" in out and "transaction mode" in out and "PgBouncer routes to the leader" in out
    assert f"the game connects through PgBouncer: postgresql://hokm_app@127.0.0.1:{patroni_env.topology.pooler_port}/hokm_dev" in out

    again = patroni_env.cli("start")  # idempotent
    assert again.returncode == 0, again.stdout + again.stderr
    status = patroni_env.cli("status")
    assert status.returncode == 0, status.stderr
    leader = patroni_env.topology.leader()
    assert f"{leader.name}: leader, running, 127.0.0.1:{leader.port}" in status.stdout
    replica = next(m for m in patroni_env.topology.patroni.members() or [] if m.role != "leader")
    assert f"{replica.name}: replica, " in status.stdout and "lag " in status.stdout
    assert f"-> 127.0.0.1:{leader.port}, transaction mode" in status.stdout
    # The deploy's maintenance mode reaches the same PgBouncer's admin console.
    resume = patroni_env.cli("resume")
    assert resume.returncode == 0, resume.stdout + resume.stderr
    assert f"hokm_dev was not paused in PgBouncer at 127.0.0.1:{patroni_env.topology.pooler_port}" in resume.stdout

    # Passwords never in output, config files or command lines.
    files = [patroni_env.topology.base_dir / f"{n}.yml" for n in ("node1", "node2")] + [patroni_env.topology.pooler.ini]
    texts = [patroni_env.started.stdout + patroni_env.started.stderr, again.stdout + again.stderr, status.stdout,
             *(f.read_text() for f in files)]
    texts += [Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
              for pid in _our_pids(patroni_env.topology).values() if pid and pid_alive(pid)]
    for password in patroni_env.passwords:
        assert not any(password in text for text in texts)


async def test_the_game_writes_through_pgbouncer_and_the_endpoints_come_from_the_topology(patroni_env: PatroniEnv) -> None:
    topology = patroni_env.topology
    leader = topology.leader()
    assert await patroni_env.through_pgbouncer(f"INSERT INTO {TABLE} (note) VALUES ('through pgbouncer') RETURNING true")
    assert await patroni_env.through_pgbouncer("SELECT inet_server_port()") == leader.port

    loaded = patroni_env.loaded()
    target = await resolve_target(loaded)
    assert (target.host, target.port, target.user) == (leader.host, leader.port, "hokm_app")  # the deploy's: the leader
    monitor = await resolve_monitor_target(loaded, target)
    assert monitor is not None and monitor.user == "hokm_monitor"
    view = resolve_topology(loaded, target, monitor)
    replica = next(m for m in topology.patroni.members() or [] if m.role != "leader")
    assert view.problem is None
    assert [(s.port, s.user, s.read_only) for s in view.standbys] == [(replica.port, "hokm_monitor", True)]
    assert view.standby_names == (replica.name,)
    assert view.pooler is not None and view.pooler.port == topology.pooler_port and view.pooler.database == "hokm_dev"
    assert view.pooler_admin is not None and view.pooler_admin.user == "postgres"
    assert view.patroni_rest_urls == tuple(topology.rest_urls) and view.patroni_expected_members == 2

    # The smoke suite judges the local members: primary, standby, slots, synchronous replication, pools and
    # Patroni all pass.
    smoke = _run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "smoke/test_topology.py",
                  "--environment", ENVIRONMENT, "--db-config", str(patroni_env.config_dir), "-q"], patroni_env.env)
    assert smoke.returncode == 0, smoke.stdout
    assert "6 passed" in smoke.stdout


async def test_a_deploy_finds_the_leader_and_a_lost_primary_names_patronis_new_leader(patroni_env: PatroniEnv) -> None:
    """In Patroni mode the deploy's server is the topology, not the (never started) embedded
    cluster: without --setup it still reaches the leader. And when its target stops answering,
    the switchover check asks the local Patroni who leads now."""
    from dataclasses import replace
    from types import SimpleNamespace

    from pytest_hokmdb.deploy.steps import primary_changed

    dry = _run([sys.executable, "database/deploy.py", "--environment", ENVIRONMENT, "--config", str(patroni_env.config_dir),
                "--dry-run", "--force"], patroni_env.env)  # --force: the module's own table is drift
    assert dry.returncode == 0, dry.stdout + dry.stderr
    leader = patroni_env.topology.leader()
    assert "embedded cluster of development is not running" not in dry.stdout + dry.stderr
    assert f"postgresql://hokm_owner:***@127.0.0.1:{leader.port}/hokm_dev?sslmode=disable" in dry.stdout, dry.stdout[-1500:]
    assert "revision(s) would be applied (empty -> " in dry.stdout and "nothing was changed" in dry.stdout

    loaded = patroni_env.loaded()
    target = await resolve_target(loaded, start=False)
    session = SimpleNamespace(target=target, config=loaded.config, loaded=loaded)
    assert await primary_changed(session, settle_s=5) is None  # type: ignore[arg-type]  # the leader, answering
    gone = replace(target, port=1)  # the deploy's primary no longer answers (stopped by a switchover)
    why = await primary_changed(SimpleNamespace(target=gone, config=loaded.config, loaded=loaded), settle_s=5)  # type: ignore[arg-type]
    assert why == f"Patroni's leader is now {leader.host}:{leader.port}, not {target.host}:1"


def test_a_backup_is_taken_and_restored_on_the_leader(patroni_env: PatroniEnv, tmp_path: Path) -> None:
    """Backups and restores in Patroni mode reach the leader as its superuser (creating,
    renaming and dropping databases), not the embedded cluster that is not running."""
    config = patroni_env.config_dir / "development.json"
    data = json.loads(config.read_text())
    data.setdefault("backup", {})["local_dir"] = str(tmp_path / "backups")
    config.write_text(json.dumps(data, indent=2))
    common = ["--environment", ENVIRONMENT, "--config", str(patroni_env.config_dir)]
    env = {**patroni_env.env, "BACKUP_ENCRYPTION_KEY": "a passphrase for the patroni test backups"}
    backup = _run([sys.executable, "database/backup.py", *common, "--verify", "none"], env)
    assert backup.returncode == 0, backup.stdout + backup.stderr
    asyncio.run(patroni_env.through_pgbouncer(f"INSERT INTO {TABLE} (note) VALUES ('after the backup') RETURNING true"))

    restore = _run([sys.executable, "database/rollback.py", "restore", *common, "--backup-file", "latest", "--no-smoke"],
                   env)
    assert restore.returncode == 0, restore.stdout + restore.stderr
    notes = asyncio.run(patroni_env.through_pgbouncer(f"SELECT array_agg(note) FROM {TABLE}"))
    assert "after the backup" not in (notes or []), notes  # type: ignore[operator]
    assert not any(p in backup.stdout + backup.stderr + restore.stdout + restore.stderr for p in patroni_env.passwords)


async def test_pgbouncer_follows_the_new_leader_after_a_switchover(patroni_env: PatroniEnv) -> None:
    topology = patroni_env.topology
    old = topology.leader()
    assert await patroni_env.through_pgbouncer("SELECT inet_server_port()") == old.port

    new = await asyncio.to_thread(topology.patroni.switchover)
    assert new.name != old.name

    # Patroni's on_role_change callback on the new leader re-points PgBouncer and reloads it.
    deadline, last = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        try:
            last = await patroni_env.through_pgbouncer("SELECT ARRAY[inet_server_port(), pg_is_in_recovery()::int]")
        except (OSError, asyncpg.PostgresError) as exc:
            last = exc  # the old leader's server connections die with it
        if last == [new.port, 0]:
            break
        await asyncio.sleep(0.3)
    assert last == [new.port, 0], f"PgBouncer still routes elsewhere: {last!r}"
    assert await patroni_env.through_pgbouncer(f"INSERT INTO {TABLE} (note) VALUES ('after switchover') RETURNING true")
    assert await patroni_env.through_pgbouncer("SELECT pg_is_in_recovery()") is False
    assert "on_role_change" in (topology.base_dir / f"{new.name}.log").read_text()

    status = topology.status()  # what `hokmdb topology status` prints
    assert status.pooler_follows_leader and f"PgBouncer routes to the leader {new.name}" in status.describe()
    target = await resolve_target(patroni_env.loaded(), start=False)
    assert target.port == new.port  # the deploy follows too
    # The old leader comes back as a replica of the new one (the topology is whole again).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _whole(topology, replica=old.name):
        await asyncio.sleep(0.3)
    assert _whole(topology, replica=old.name), topology.patroni.members()


def test_stop_leaves_no_process_behind_and_start_brings_the_data_back(patroni_env: PatroniEnv) -> None:
    topology = patroni_env.topology
    asyncio.run(patroni_env.through_pgbouncer(f"INSERT INTO {TABLE} (note) VALUES ('before stop') RETURNING true"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _whole(topology):  # a demoted leader may still be restarting
        time.sleep(0.3)
    pids = _our_pids(topology)
    assert all(pids.values()), pids

    stopped = patroni_env.cli("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "etcd stopped, node1 stopped, node2 stopped" in stopped.stdout and "pgbouncer: stopped" in stopped.stdout
    alive = {name: pid for name, pid in pids.items() if pid_alive(pid)}
    assert not alive, f"still running after `hokmdb topology stop`: {alive}"

    restarted = patroni_env.cli("start")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "PgBouncer routes to the leader" in restarted.stdout
    notes = asyncio.run(patroni_env.through_pgbouncer(f"SELECT array_agg(note) FROM {TABLE}"))
    assert "before stop" in notes  # type: ignore[operator]
    # Both members end on one timeline: the old leader started first and kept its role, so the
    # replica can follow it (the other way round it could not: no pg_rewind). Patroni reports a
    # leader's new timeline a loop later than its replica's, so ask until they agree.
    deadline, members = time.monotonic() + 30, []
    while time.monotonic() < deadline:
        members = topology.patroni.members() or []
        if len({m.timeline for m in members}) == 1 and all(m.state == "running" for m in members) and _whole(topology):
            break
        time.sleep(0.3)
    assert len({m.timeline for m in members}) == 1 and all(m.state == "running" for m in members), members

    # `hokmdb cluster stop` (and `make clean`'s --all) stops the Patroni topology too.
    pids = _our_pids(topology)
    stopped = _run([str(HOKMDB), "cluster", "stop", "--environment", ENVIRONMENT, "--config", str(patroni_env.config_dir)],
                   patroni_env.env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "etcd stopped, node1 stopped, node2 stopped" in stopped.stdout, stopped.stdout
    assert not {name: pid for name, pid in pids.items() if pid and pid_alive(pid)}


def test_topology_commands_say_what_to_run_when_patroni_mode_cannot_serve(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    write_config_dir(config_dir, ENVIRONMENT, embedded__data_dir=str(tmp_path / "primary"), topology={"local": "patroni"})
    env = _env(tmp_path)
    common = ["--environment", ENVIRONMENT, "--config", str(config_dir)]

    status = _run([str(HOKMDB), "topology", "status", *common], env)
    assert status.returncode == 0, status.stderr
    assert "patroni: not created yet" in status.stdout and "pgbouncer: stopped" in status.stdout
    assert "hint: start it with `hokmdb topology start --environment development`" in status.stdout

    resume = _run([str(HOKMDB), "topology", "resume", *common], env)
    assert resume.returncode == 3, resume.stdout + resume.stderr
    assert "the local Patroni topology of development has not been set up" in resume.stderr
    assert "hokmdb topology start --environment development" in resume.stderr and "Traceback" not in resume.stderr

    cluster = _run([str(HOKMDB), "cluster", "start", *common], env)  # the embedded cluster is not this server
    assert cluster.returncode == 2, cluster.stdout + cluster.stderr
    assert "development runs on its local Patroni topology" in cluster.stderr
    assert "start it with `hokmdb topology start --environment development`" in cluster.stderr

    staging = _run([str(HOKMDB), "topology", "start", "--environment", "staging", "--config", str(config_dir)], env)
    assert staging.returncode == 2 and "only for development and testing, not staging" in staging.stderr


def test_the_callback_repoints_only_the_databases_and_only_on_a_new_leader(tmp_path: Path) -> None:
    """What Patroni runs (``pgbouncer_follow``) on the ini ``PgBouncer`` writes: a node becoming a
    replica changes nothing; the new leader rewrites every [databases] port, never listen_port."""
    bouncer = PgBouncer(tmp_path, resolve_os_user(None))
    bouncer._write_ini(6432, 5001, ["postgres"], ["hokm_monitor"], ["hokm_dev"])  # noqa: SLF001 - the file the callback edits
    bouncer._write_state(port=6432, backend_port=5001)  # noqa: SLF001
    before = bouncer.ini.read_text()

    assert pgbouncer_follow.main([str(tmp_path), "5002", "on_role_change", "replica", "hokmdb"]) == 0
    assert bouncer.ini.read_text() == before

    assert pgbouncer_follow.main([str(tmp_path), "5002", "on_role_change", "master", "hokmdb"]) == 0
    after = bouncer.ini.read_text()
    assert "hokm_dev = host=127.0.0.1 port=5002 dbname=hokm_dev" in after and "* = host=127.0.0.1 port=5002" in after
    assert "listen_port = 6432" in after and "5001" not in after
    assert bouncer.status().backend_port == 5002 and bouncer.status().port == 6432
    assert oct(bouncer.ini.stat().st_mode & 0o777) == "0o600"
    assert pgbouncer_follow.main([str(tmp_path / "none"), "5003", "on_start", "primary", "hokmdb"]) == 0  # no PgBouncer yet
