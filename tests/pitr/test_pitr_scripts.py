"""Point-in-time recovery through the operators' scripts, on an embedded development cluster
that archives into a pgBackRest repository in a temporary directory:

backup.py --type full -> markers -> deploy.py (names a restore point, then migrates) ->
rollback.py restore --point-in-time --verify-only (the copy holds exactly the markers up to
the moment, the server is untouched) -> rollback.py restore --target-name (swapped in: the
database is back to just before the deploy, and archives again) -> list-backups shows the
physical backup next to the logical kind -> backup.py --verify-repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from helpers import PROJECT_ROOT, write_config_dir
from pitr_support import new_base_dir

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.cluster import EmbeddedCluster

CIPHER_PASS = "pitr-scripts-Cipher-5x9Q"


@dataclass
class ScriptEnv:
    base: Path
    config_dir: Path
    env: dict[str, str]

    def run(self, script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(PROJECT_ROOT / "database" / script), *args],
            capture_output=True, text=True, env=self.env, timeout=timeout, check=False, cwd=PROJECT_ROOT,
        )

    @property
    def cluster(self) -> EmbeddedCluster:
        return EmbeddedCluster(self.base / "cluster")

    async def sql(
        self, query: str, *args: object, port: int | None = None, dbname: str = "postgres"
    ) -> list[asyncpg.Record]:
        """As the superuser; markers live in ``postgres`` (the deploy's database must hold
        only its schema, or the deploy's drift check refuses it)."""
        kwargs = self.cluster.admin_connect_kwargs(dbname)
        if port is not None:
            kwargs["port"] = port
        conn = await asyncpg.connect(**kwargs)  # type: ignore[arg-type]
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()


@pytest.fixture(scope="module")
def scripts(pgbackrest_bin: str) -> Iterator[ScriptEnv]:
    base = new_base_dir("hokmdb-pitr-scripts")
    config_dir = base / "config"
    write_config_dir(
        config_dir,
        "development",
        embedded__data_dir=str(base / "cluster"),
        backup__local_dir=str(base / "backups"),
        deploy__log_dir=str(base / "logs"),
        physical={
            "engine": "pgbackrest",
            "stanza": "hokm-dev",
            "repo_path": str(base / "repo"),
            "cipher_type": "aes-256-cbc",
            "cipher_pass": "${PGBACKREST_CIPHER_PASS}",
            "archive_timeout_s": 5,
        },
    )
    env = {**os.environ, "PGBACKREST_CIPHER_PASS": CIPHER_PASS, "HOKMDB_PROJECT_ROOT": str(PROJECT_ROOT), "CI": "true"}
    env.pop("HOKMDB_ENVIRONMENT", None)
    script_env = ScriptEnv(base, config_dir, env)
    try:
        yield script_env
    finally:
        try:
            script_env.cluster.destroy()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def common(env: ScriptEnv) -> list[str]:
    return ["--environment", "development", f"--config={env.config_dir}"]


def test_backup_deploy_and_restore_to_moments(scripts: ScriptEnv) -> None:
    first = scripts.run("deploy.py", *common(scripts), "--setup", "--target-revision", "0007")
    assert first.returncode == 0, first.stdout + first.stderr
    # Games in the database, so the restored copy's gate really times the hot queries: held to
    # 0007, they must not expect the index 0008 adds (which made this restore fail its gate).
    seeded = scripts.run("seed_data.py", *common(scripts), "--players", "20", "--games", "30")
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    taken = scripts.run("backup.py", *common(scripts), "--type", "full", "--json")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    backup = json.loads(taken.stdout)
    assert backup["kind"] == "physical full", backup
    time.sleep(1.1)  # pgBackRest records the stop in whole seconds: the markers come after it

    run_sync(scripts.sql("CREATE TABLE pitr_markers (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())"))
    run_sync(scripts.sql("INSERT INTO pitr_markers (id) VALUES (1)"))
    moment = run_sync(scripts.sql("SELECT clock_timestamp() AS at"))[0]["at"]
    run_sync(scripts.sql("SELECT pg_sleep(0.05)"))
    run_sync(scripts.sql("INSERT INTO pitr_markers (id) VALUES (2)"))

    deployed = scripts.run("deploy.py", *common(scripts), "--skip-backup")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    output = deployed.stdout + deployed.stderr
    assert "restore-point" in output and "--target-name hokmdb-deploy-" in output, output
    name = output.split("--target-name ", 1)[1].split()[0]
    assert run_sync(scripts.sql("SELECT version_num FROM alembic_version", dbname="hokm_dev"))[0][0] == "0008"

    # A moment between marker 1 and 2 (given in UTC without an offset, as the docs promise).
    when = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    inspected = scripts.run("rollback.py", "restore", *common(scripts), "--point-in-time", when, "--verify-only", "--json")
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
    result = json.loads(inspected.stdout)
    assert result["swapped"] is False and result["smoke"]["passed"] is True, result
    try:
        rows = run_sync(scripts.sql("SELECT id FROM pitr_markers ORDER BY id", port=result["port"]))
        assert [r["id"] for r in rows] == [1], rows
        revision = run_sync(scripts.sql("SELECT version_num FROM alembic_version", port=result["port"], dbname="hokm_dev"))
        assert revision[0][0] == "0007"  # before the second deploy
    finally:
        subprocess.run(
            [str(scripts.cluster.bin_dir / "pg_ctl"), "stop", "-D", result["data_dir"], "-m", "immediate"],
            check=False, capture_output=True, **scripts.cluster.user.subprocess_kwargs(),  # type: ignore[arg-type]
        )
        shutil.rmtree(Path(result["data_dir"]).parent, ignore_errors=True)
        shutil.rmtree(result["socket_dir"], ignore_errors=True)
    # The server was not touched by the inspection.
    assert [r["id"] for r in run_sync(scripts.sql("SELECT id FROM pitr_markers ORDER BY id"))] == [1, 2]

    swapped = scripts.run("rollback.py", "restore", *common(scripts), "--target-name", name)
    assert swapped.returncode == 0, swapped.stdout + swapped.stderr
    assert "swapped in; the previous data directory is kept at" in swapped.stdout, swapped.stdout
    # Just before the second deploy: both markers, and revision 0007.
    assert [r["id"] for r in run_sync(scripts.sql("SELECT id FROM pitr_markers ORDER BY id"))] == [1, 2]
    assert run_sync(scripts.sql("SELECT version_num FROM alembic_version", dbname="hokm_dev"))[0][0] == "0007"
    assert run_sync(scripts.sql("SHOW archive_mode"))[0]["archive_mode"] == "on"
    auto_conf = (scripts.cluster.data_dir / "postgresql.auto.conf").read_text()
    assert "restore_command" not in auto_conf and "recovery_target" not in auto_conf, auto_conf

    listed = scripts.run("rollback.py", "list-backups", *common(scripts), "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["kind"] for r in rows if r["id"] == backup["id"]] == ["physical full"], rows

    verified = scripts.run("backup.py", *common(scripts), "--verify-repository", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["passed"] is True
    listed = json.loads(scripts.run("rollback.py", "list-backups", *common(scripts), "--json").stdout)
    newest = max((r for r in listed if r["kind"].startswith("physical")), key=lambda r: r["time"])
    assert newest["verified"] is True, newest
    for stream in (taken, deployed, inspected, swapped, verified):
        assert CIPHER_PASS not in stream.stdout + stream.stderr


def test_target_out_of_reach_is_refused_with_the_window(scripts: ScriptEnv) -> None:
    # Its own backup: under pytest-xdist this test may get a module fixture of its own.
    taken = scripts.run("backup.py", *common(scripts), "--type", "full")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    early = datetime(2001, 1, 1, tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")
    refused = scripts.run("rollback.py", "restore", *common(scripts), "--point-in-time", early)
    assert refused.returncode == 7, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
    assert "earliest" in refused.stderr and "latest" in refused.stderr, refused.stderr


def test_bad_timestamp_and_missing_engine_are_config_errors(scripts: ScriptEnv, tmp_path: Path) -> None:
    bad = scripts.run("rollback.py", "restore", *common(scripts), "--point-in-time", "yesterday-ish")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "--point-in-time 'yesterday-ish' is not a timestamp" in bad.stderr, bad.stderr
    write_config_dir(tmp_path, "development", embedded__data_dir=str(tmp_path / "cluster"))
    none = scripts.run("backup.py", "--environment", "development", f"--config={tmp_path}", "--type", "full")
    assert none.returncode == 2, none.stdout + none.stderr
    assert "development has no physical backup engine" in none.stderr, none.stderr
