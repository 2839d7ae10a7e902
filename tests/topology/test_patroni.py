"""A real Patroni cluster (etcd + two nodes): the deploy finds the leader through Patroni's REST
API, the smoke check judges the members, and a switchover in the middle of a deploy stops it at
a revision boundary with exit 12; the re-run completes on the new leader, nothing applied twice."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest
from helpers import PROJECT_ROOT, process_environ, write_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
from deploy_support import COMMENT_0009, SLOW_0010, make_project  # noqa: E402

from pytest_hokmdb.checks import topology  # noqa: E402
from pytest_hokmdb.cluster.patroni import NODES, LocalPatroni  # noqa: E402
from pytest_hokmdb.cluster.scratch import new_scratch_dir  # noqa: E402
from pytest_hokmdb.db.topology import Topology  # noqa: E402
from pytest_hokmdb.errors import ExitCode  # noqa: E402

pytestmark = pytest.mark.xdist_group("patroni")

DEPLOY = PROJECT_ROOT / "database" / "deploy.py"
ROLE, PASSWORD, DBNAME = "hokm_deployer", "Pt9-deploy-secret-4Kq2", "hokm_ha"


# Started from a shell that holds the operator's secrets, as the README has it.
OPERATOR_SECRETS = {"BACKUP_ENCRYPTION_KEY": "AGE-SECRET-KEY-1PATRONISENTINEL000000000000000000000000000000000000",
                    "DB_PASSWORD_PRODUCTION": "sentinel-patroni-db-password-4Wx"}


@pytest.fixture(scope="module")
def patroni() -> Iterator[LocalPatroni]:
    cluster = LocalPatroni(new_scratch_dir("patroni"))
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in OPERATOR_SECRETS.items():
                mp.setenv(name, value)
            cluster.start()

        async def prepare() -> None:
            leader = cluster.leader()
            assert leader is not None
            conn = await asyncpg.connect(host=leader.host, port=leader.port, user="postgres",
                                         password=cluster.superuser_password, database="postgres")
            try:
                await conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
                await conn.execute(f"GRANT pg_monitor TO {ROLE}")
                await conn.execute(f"CREATE DATABASE {DBNAME} OWNER {ROLE}")
            finally:
                await conn.close()

        asyncio.run(prepare())
        yield cluster
    finally:
        cluster.destroy()


def _config(tmp_path: Path, cluster: LocalPatroni, node: str) -> tuple[Path, dict[str, str]]:
    pg, _ = cluster.ports(node)
    config_dir = tmp_path / "config"
    write_config_dir(config_dir, "testing", topology={"patroni": {"rest_urls": cluster.rest_urls}},
                     deploy__gate_suites=[], deploy__log_dir=str(tmp_path / "logs"), deploy__lock_wait_s=5.0,
                     notifications__notify_on_failure=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DB_")}
    env.update(DB_HOST="127.0.0.1", DB_PORT=str(pg), DB_NAME=DBNAME, DB_USER=ROLE, DB_PASSWORD_TEST=PASSWORD,
               HOKMDB_ENV_FILE=str(tmp_path / "none.env"), HOKMDB_DEPLOY_ACTOR="tester")
    return config_dir, env


async def _on_leader(cluster: LocalPatroni, sql: str) -> object:
    leader = cluster.leader()
    assert leader is not None
    conn = await asyncpg.connect(host=leader.host, port=leader.port, user=ROLE, password=PASSWORD, database=DBNAME)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def test_etcd_patroni_and_postgres_hold_only_what_each_needs(patroni: LocalPatroni) -> None:
    """None of the operator's secrets in etcd, Patroni or the servers Patroni runs; the
    database passwords in Patroni (which connects with them) and never in etcd."""
    processes = patroni.processes()
    assert all(processes.values()), processes
    environments = {key: process_environ(pid) for key, pid in processes.items() if pid}
    for node in NODES:
        data = Path(patroni.base_dir) / node / "data" / "postmaster.pid"
        environments[f"postgres of {node}"] = process_environ(int(data.read_text().split()[0]))
    for key, environment in environments.items():
        assert "PATH" in environment, key
        leaked = {k for k, v in environment.items() if k in OPERATOR_SECRETS or v in OPERATOR_SECRETS.values()}
        assert not leaked, (key, leaked)
    for key in ("etcd", *(f"postgres of {node}" for node in NODES)):
        assert not {k for k in environments[key] if k.startswith("PATRONI_")}, (key, environments[key].keys())
    assert not {v for v in environments["etcd"].values()
                if v in (patroni.superuser_password, patroni._state()["replication_password"])}  # noqa: SLF001
    patroni_nodes = [k for k in processes if k != "etcd"]
    assert all("PATRONI_SUPERUSER_PASSWORD" in environments[k] for k in patroni_nodes)
    # Their logs are their account's alone (Patroni's shows the servers' output, etcd's its keys).
    modes = {log.name: log.stat().st_mode & 0o777 for log in Path(patroni.base_dir).glob("*.log")}
    assert modes and set(modes.values()) == {0o600}, modes


async def test_patroni_members_pass_when_healthy_and_fail_when_paused(patroni: LocalPatroni, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    from pytest_hokmdb.checks.base import CheckContext

    leader = patroni.leader()
    assert leader is not None
    view = Topology(configured=True, patroni_rest_urls=tuple(patroni.rest_urls), patroni_expected_members=2)

    async def check() -> object:
        conn = await asyncpg.connect(host=leader.host, port=leader.port, user=ROLE, password=PASSWORD, database=DBNAME)
        try:
            from helpers import PROJECT_ROOT as root

            from pytest_hokmdb.config import load_config
            from pytest_hokmdb.db.target import Target

            target = Target(environment="testing", host=leader.host, port=leader.port, dbname=DBNAME, user=ROLE,
                            password=PASSWORD, sslmode="disable")
            ctx = CheckContext(conn=conn, target=target, config=load_config("testing", environ={}).config,
                               project_root=root, topology=view)
            healthy = await topology.patroni_members(ctx)
            elsewhere = await topology.patroni_members(replace(ctx, target=replace(target, port=1)))
            return healthy, elsewhere
        finally:
            await conn.close()

    healthy, elsewhere = await check()  # type: ignore[misc]
    assert healthy.status == "passed", healthy.message
    assert f"Patroni: leader {leader.name}, 2 member(s) running" in healthy.message
    assert elsewhere.status == "failed" and "the target 127.0.0.1:1 is not the leader" in elsewhere.message

    rest = patroni.ports(leader.name)[1]
    pause = urllib.request.Request(f"http://127.0.0.1:{rest}/config", data=json.dumps({"pause": True}).encode(), method="PATCH")
    urllib.request.urlopen(pause, timeout=10).read()  # noqa: S310
    try:
        time.sleep(2.5)  # loop_wait 1 s: the members report the pause
        paused, _ = await check()  # type: ignore[misc]
    finally:
        resume = urllib.request.Request(f"http://127.0.0.1:{rest}/config", data=json.dumps({"pause": False}).encode(), method="PATCH")
        urllib.request.urlopen(resume, timeout=10).read()  # noqa: S310
    assert paused.status == "failed"
    assert "the cluster is in maintenance mode (paused): Patroni will not fail over; run `patronictl resume`" in paused.message


def test_a_switchover_mid_deploy_stops_at_a_revision_boundary_and_a_rerun_completes(patroni: LocalPatroni, tmp_path: Path) -> None:
    replica = next(m for m in patroni.members() or [] if m.role != "leader")
    # database.host/port name the replica: the deploy must find the leader through Patroni.
    config_dir, env = _config(tmp_path, patroni, replica.name)
    env["HOKMDB_PROJECT_ROOT"] = str(make_project(tmp_path, [COMMENT_0009, SLOW_0010]))
    env["HOKMDB_TEST_SLEEP_S"] = "60"
    proc = subprocess.Popen([sys.executable, str(DEPLOY), "--environment", "testing", f"--config={config_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sleeping = asyncio.run(_on_leader(patroni, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60%'"))
            if sleeping:
                break
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.2)
        else:
            raise AssertionError("revision 0010 never started")
        old = patroni.leader()
        new = patroni.switchover()
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert old is not None and new.name != old.name
    assert proc.returncode == ExitCode.PRIMARY_CHANGED, output
    assert "the primary changed during the deploy (Patroni's leader is now" in output
    assert "the database is at revision 0009, a revision boundary" in output
    assert "Run the deploy again" in output and PASSWORD not in output
    # Recorded on the new leader (the row replicated there), not left 'running' for the next
    # deploy to call killed.
    recorded_result = asyncio.run(_on_leader(patroni, "SELECT result || ' ' || final_revision FROM hokmdb_deploy_history "
                                                      "ORDER BY id DESC LIMIT 1"))
    assert recorded_result == "primary_changed 0009", output

    env["HOKMDB_TEST_SLEEP_S"] = "0"
    rerun = subprocess.run([sys.executable, str(DEPLOY), "--environment", "testing", f"--config={config_dir}"],
                           capture_output=True, text=True, env=env, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "0009 -> 0010" in rerun.stdout + rerun.stderr  # only what was missing
    assert asyncio.run(_on_leader(patroni, "SELECT version_num FROM alembic_version")) == "0010"
    # 0009 was recorded by the first deploy, 0010 by the re-run: each revision landed once.
    recorded = asyncio.run(_on_leader(
        patroni, "SELECT count(DISTINCT deploy_id) = 2 AND count(*) = 2 FROM hokmdb_applied_revisions "
                 "WHERE revision IN ('0009', '0010')"))
    assert recorded is True
