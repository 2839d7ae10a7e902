"""The three roles on hokmdb's own cluster, for real: setup creates an owner that owns every
object, an application role with DML through grants and default privileges, and a monitoring
role; migrations run as the owner; the strict security checks pass; a database from before the
split is handed over; staging and production refuse to migrate as the application role."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from helpers import PROJECT_ROOT, admin_fetchval, write_config_dir

from pytest_hokmdb.cluster import EmbeddedCluster

HOKMDB = Path(sys.executable).parent / "hokmdb"
DEPLOY = PROJECT_ROOT / "database" / "deploy.py"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, check=False, cwd=PROJECT_ROOT)




async def _as_app(cluster: EmbeddedCluster) -> asyncpg.Connection:
    password = json.loads(cluster.state_file.read_text())["app_passwords"]["hokm_app"]
    return await asyncpg.connect(host=cluster.host, port=cluster.port, user="hokm_app", password=password, database="hokm_dev")


async def test_setup_splits_owner_and_app_and_the_strict_gate_passes(embedded) -> None:  # type: ignore[no-untyped-def]
    config_dir, env, cluster = embedded
    deployed = _run([sys.executable, str(DEPLOY), "--environment", "development", "--config", str(config_dir), "--setup"], env)
    output = deployed.stdout + deployed.stderr
    assert deployed.returncode == 0, output  # the gate ran the strict security checks as hokm_app
    assert "migrating as owner hokm_owner" in output

    owners = await admin_fetchval(cluster, "SELECT string_agg(DISTINCT pg_get_userbyid(relowner), ',') FROM pg_class c "
                                  "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'", "hokm_dev")
    assert owners == "hokm_owner"
    app = await _as_app(cluster)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("CREATE TABLE smuggled (id int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("TRUNCATE moves")
        async with app.transaction():
            player = await app.fetchval("INSERT INTO players (username, email, display_name, rating) VALUES ('role-test', "
                                        "'role-test@example.com', 'Role Test', 1500) RETURNING id")
            assert await app.fetchval("SELECT username FROM players WHERE id = $1", player) == "role-test"
            await app.execute("DELETE FROM players WHERE id = $1", player)
    finally:
        await app.close()

    # A database from before the split: the application role owned everything. Setup hands it over.
    await admin_fetchval(cluster, "REASSIGN OWNED BY hokm_owner TO hokm_app", "hokm_dev")
    assert await admin_fetchval(cluster, "SELECT count(*) FROM pg_class WHERE relowner = 'hokm_app'::regrole", "hokm_dev")
    again = _run([str(HOKMDB), "cluster", "start", "--environment", "development", "--config", str(config_dir)], env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert await admin_fetchval(cluster, "SELECT count(*) FROM pg_class WHERE relowner = 'hokm_app'::regrole", "hokm_dev") == 0
    smoke = _run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "smoke/test_security.py", "--environment",
                  "development", "--db-config", str(config_dir), "-q", "-k", "app_role"], env)
    assert smoke.returncode == 0, smoke.stdout


def test_staging_refuses_to_migrate_as_the_application_role(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    write_config_dir(config_dir, "staging", database__sslmode="require", deploy__log_dir=str(tmp_path / "logs"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DB_") and k != "HOKMDB_ENVIRONMENT"}
    env.update(HOKMDB_ENV_FILE=str(tmp_path / "no-such.env"), DB_HOST_STAGING="127.0.0.1", DB_PORT="1",
               DB_PASSWORD_STAGING="app-pw-not-to-leak-7", DB_USER="hokm_app")
    proc = _run([sys.executable, str(DEPLOY), "--environment", "staging", "--config", str(config_dir), "--skip-backup"], env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 4, output
    assert "staging: the deploy would run DDL as the application role hokm_app" in output
    assert "set database.owner_user/owner_password (DB_OWNER_USER, DB_OWNER_PASSWORD_*)" in output
    assert "app-pw-not-to-leak-7" not in output and "Traceback" not in output


def test_the_demo_prints_its_steps_and_summary_and_keeps_the_details_in_the_deploy_log(embedded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """README's first command: a newcomer reads its steps and summary, about fifteen lines; the
    deploy's step-by-step lines, alembic's per-revision lines and each lint warning go to the
    deploy log (they were 180 lines on the console)."""
    config_dir, env, _ = embedded
    demo = _run([str(HOKMDB), "demo", "--environment", "development", "--config", str(config_dir)], env)
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    assert "hokmdb demo on development: OK" in output
    for step in ("config", "cluster", "migrate", "seed", "smoke"):
        assert f"  {step} " in demo.stdout, output
    assert "alembic" not in output and "step lock" not in output, output
    assert len(output.strip().splitlines()) <= 16, output
    log = next((tmp_path / "logs").glob("deployment_development_*.log")).read_text()
    assert "Running upgrade 0007 -> 0008" in log and "step lock: ok" in log
    warnings = log.count("pre-flight lint warning: ")
    if warnings:  # one summary line on the console, each warning in the log
        assert f"pre-flight lint: {warnings} warning(s) in the pending revisions" in output, output
