"""``hokmdb topology start|stop|status`` and the smoke suite on the environment it serves, as
an operator runs them: real processes, an environment config with ``topology.local``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROJECT_ROOT, admin_fetchval, write_config_dir

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.cluster.topology import LocalTopology

HOKMDB = Path(sys.executable).parent / "hokmdb"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, check=False, cwd=PROJECT_ROOT)


@pytest.fixture
def topology_dev(tmp_path: Path):  # type: ignore[no-untyped-def]
    config_dir = tmp_path / "config"
    write_config_dir(config_dir, "development", embedded__data_dir=str(tmp_path / "primary"), topology={"local": True})
    env = {k: v for k, v in os.environ.items() if not k.startswith("DB_") and k != "HOKMDB_ENVIRONMENT"}
    env["HOKMDB_ENV_FILE"] = str(tmp_path / "no-such.env")
    cluster = EmbeddedCluster(tmp_path / "primary")
    yield config_dir, env, cluster
    LocalTopology(cluster).destroy()
    cluster.destroy()


def test_topology_start_serves_the_smoke_suite_and_stop_stops_every_process(topology_dev) -> None:  # type: ignore[no-untyped-def]
    config_dir, env, cluster = topology_dev
    common = ["--environment", "development", "--config", str(config_dir)]
    smoke = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "smoke/test_topology.py", "smoke/test_health.py",
             "-k", "topology or replication", "--environment", "development", "--db-config", str(config_dir), "-q"]

    # Set up without the topology: the topology checks say what to run, they do not pass.
    assert _run([str(HOKMDB), "cluster", "start", *common], env).returncode == 0
    before = _run(smoke, env)
    assert before.returncode == 1, before.stdout
    assert "has not been set up (run `hokmdb topology start --environment development`)" in before.stdout

    started = _run([str(HOKMDB), "topology", "start", *common], env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "standby embedded cluster: running" in started.stdout
    assert "pgbouncer: running" in started.stdout and "transaction mode" in started.stdout
    again = _run([str(HOKMDB), "topology", "start", *common], env)  # idempotent
    assert again.returncode == 0, again.stdout + again.stderr

    after = _run(smoke, env)
    assert after.returncode == 0, after.stdout
    assert "6 passed, 1 skipped" in after.stdout  # Patroni: not in this topology

    topology = LocalTopology(cluster)
    passwords = [p for p in [cluster.superuser_password, *(topology._state().get("app_passwords", {}) or {}).values()] if p]
    for output in (started.stdout + started.stderr, after.stdout, topology.pooler.ini.read_text()):
        assert not any(p in output for p in passwords)

    stopped = _run([str(HOKMDB), "topology", "stop", *common], env)
    assert stopped.returncode == 0, stopped.stderr
    status = topology.status()
    assert not status.primary.running and not status.standby.running and not status.pooler.running
    assert "pgbouncer: stopped" in _run([str(HOKMDB), "topology", "status", *common], env).stdout

    # The primary alone afterwards keeps no slot for the stopped standby (no WAL piling up, no
    # xmin pinned); the topology started again clones the standby and streams.
    assert _run([str(HOKMDB), "cluster", "start", *common], env).returncode == 0
    assert run_sync(admin_fetchval(cluster, "SELECT count(*) FROM pg_replication_slots")) == 0
    restarted = _run([str(HOKMDB), "topology", "start", *common], env)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "standby embedded cluster: running" in restarted.stdout
    assert run_sync(admin_fetchval(cluster, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")) == 1
    assert _run([str(HOKMDB), "topology", "stop", *common], env).returncode == 0

    # `make clean` stops what hokmdb runs for every environment, the topology included.
    assert _run([str(HOKMDB), "topology", "start", *common], env).returncode == 0
    assert topology.status().standby.running and topology.status().pooler.running
    every = _run([str(HOKMDB), "cluster", "stop", "--all", "--config", str(config_dir)], env)
    assert every.returncode == 0, every.stdout + every.stderr
    assert "development: primary embedded cluster: stopped" in every.stdout, every.stdout
    assert "standby embedded cluster: stopped" in every.stdout and "pgbouncer: stopped" in every.stdout
    assert "testing: skipped:" in every.stdout  # this config directory has no testing.json
    status = topology.status()
    assert not status.primary.running and not status.standby.running and not status.pooler.running


def test_topology_commands_need_a_local_topology_in_the_config(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    write_config_dir(config_dir, "development", embedded__data_dir=str(tmp_path / "primary"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DB_")}
    env["HOKMDB_ENV_FILE"] = str(tmp_path / "no-such.env")
    proc = _run([str(HOKMDB), "topology", "start", "--environment", "development", "--config", str(config_dir)], env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "development has no local topology" in proc.stderr
    assert '"topology": {"local": true}' in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_after_rotating_the_app_password_the_game_logs_in_through_pgbouncer_with_the_new_one(topology_dev) -> None:  # type: ignore[no-untyped-def]
    """Issue 32 item 6: PgBouncer's auth file held the old SCRAM verifier until `topology start` ran again."""
    import asyncpg

    config_dir, env, cluster = topology_dev
    common = ["--environment", "development", "--config", str(config_dir)]
    started = _run([str(HOKMDB), "topology", "start", *common], env)
    assert started.returncode == 0, started.stdout + started.stderr
    topology = LocalTopology(cluster)
    old = topology._state()["app_passwords"]["hokm_app"]  # type: ignore[index]
    through_pooler = dict(host="127.0.0.1", port=topology.pooler_port, user="hokm_app", database="hokm_dev",
                          statement_cache_size=0)
    conn = await asyncpg.connect(password=old, **through_pooler)  # type: ignore[arg-type]
    await conn.close()

    rotated = _run([str(HOKMDB), "rotate-password", "--role", "app", *common], env)
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    new = topology._state()["app_passwords"]["hokm_app"]  # type: ignore[index]
    assert new != old
    conn = await asyncpg.connect(password=new, **through_pooler)  # type: ignore[arg-type]
    try:
        assert await conn.fetchval("SELECT current_user") == "hokm_app"
    finally:
        await conn.close()
    assert f"PgBouncer on 127.0.0.1:{topology.pooler_port} reloaded with the new verifier" in rotated.stdout
    with pytest.raises(asyncpg.ProtocolViolationError, match="SASL authentication failed"):  # PgBouncer's wording
        await asyncpg.connect(password=old, **through_pooler)  # type: ignore[arg-type]
    assert new not in topology.pooler.auth_file.read_text()  # a verifier, never the password
