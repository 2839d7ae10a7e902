"""``hokmdb runbook pre-deploy|post-deploy|incident`` against a live testing database (issue 20):
each says "all clear" (exit 0) on a healthy database and, once the database is broken the way
the runbook exists to catch, exits 1 naming what needs a person and what to run. Also
``rollback.py maintenance-off``, the command the runbooks name for maintenance mode a killed
deploy left on."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
from deploy_support import COMMENT_0009, DeployEnv
from helpers import PROJECT_ROOT

from pytest_hokmdb.deploy import maintenance
from pytest_hokmdb.deploy.lock import DEPLOY_KEY, NAMESPACE
from pytest_hokmdb.deploy.orchestrator import DeployOptions, run_deploy

HOKMDB = Path(sys.executable).parent / "hokmdb"
ROLLBACK = PROJECT_ROOT / "database" / "rollback.py"


def _runbook(env: DeployEnv, name: str, result: Path, *args: str, extra_env: dict[str, str] | None = None,
             ) -> tuple[subprocess.CompletedProcess[str], dict]:  # type: ignore[type-arg]
    proc = subprocess.run([str(HOKMDB), "runbook", name, "--environment", "testing", "--config", str(env.config_dir),
                           "--json", str(result), *args], capture_output=True, text=True,
                          env={**os.environ, **env.env, **(extra_env or {})}, timeout=300, check=False, cwd=PROJECT_ROOT)
    document = json.loads(result.read_text()) if result.is_file() else {}
    return proc, document


def _row(document: dict, step: str) -> dict:  # type: ignore[type-arg]
    return next(r for r in document["rows"] if r["step"] == step)


async def _hold_deploy_lock(env: DeployEnv) -> asyncpg.Connection:
    """A session holding the deploy lock, as a running deploy does."""
    conn = await env.connect()
    await conn.execute("SET application_name = 'deploy.py testing (tester)'")
    await conn.execute("SELECT pg_advisory_lock($1, $2)", NAMESPACE, DEPLOY_KEY)
    return conn


async def test_pre_deploy_lists_what_would_run_and_refuses_on_drift_or_a_running_deploy(deploy_env_factory, project_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory()
    env.use_project(project_factory([COMMENT_0009]))
    clear, document = _runbook(env, "pre-deploy", tmp_path / "clear.json")
    assert clear.returncode == 0, clear.stdout + clear.stderr
    assert "hokmdb runbook pre-deploy: all clear" in clear.stdout
    dry_run = _row(document, "deploy dry run")
    assert dry_run["status"] == "ok" and "1 revision(s) would be applied (0008 -> 0009)" in dry_run["detail"]
    assert _row(document, "smoke")["status"] == "ok"  # the baseline, at 0008: not failed for being behind 0009
    assert _row(document, "deploy lock")["status"] == "ok"
    assert clear.stderr == ""  # one table, no log lines beside it
    assert await env.revision() == "0008"  # a dry run changes nothing

    await env.fetchval("ALTER TABLE players ADD COLUMN nickname_probe text")  # drift: a column no revision made
    holder = await _hold_deploy_lock(env)
    try:
        broken, document = _runbook(env, "pre-deploy", tmp_path / "broken.json")
    finally:
        await holder.close()
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "NEEDS A PERSON" in broken.stdout
    dry_run = _row(document, "deploy dry run")
    assert dry_run["status"] == "attention"
    assert "the deploy would be refused" in dry_run["detail"] and "nickname_probe" in dry_run["detail"]
    assert "python database/deploy.py --environment testing --dry-run" in dry_run["detail"]
    lock = _row(document, "deploy lock")
    assert lock["status"] == "attention" and "a deploy is running now: deploy.py testing (tester)" in lock["detail"]
    assert env.env["DB_PASSWORD_TEST"] not in broken.stdout + broken.stderr + (tmp_path / "broken.json").read_text()


def test_a_runbook_rejects_an_unknown_target_revision_before_connecting(deploy_env: DeployEnv, tmp_path: Path) -> None:
    proc, document = _runbook(deploy_env, "pre-deploy", tmp_path / "r.json", "--target-revision", "nonexistent",
                              extra_env={"DB_PORT": "1"})  # a connection attempt would fail differently
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: revision 'nonexistent' is not in this code's migration history" in proc.stderr
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert document == {}


async def test_post_deploy_finds_maintenance_mode_left_on_and_maintenance_off_switches_it_off(deploy_env_factory, project_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory()
    env.use_project(project_factory([COMMENT_0009]))
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert outcome.exit_code == 0, outcome.message
    clear, document = _runbook(env, "post-deploy", tmp_path / "clear.json")
    assert clear.returncode == 0, clear.stdout + clear.stderr
    deployed = _row(document, "last deploy")
    assert deployed["status"] == "ok" and "succeeded (exit 0) by tester" in deployed["detail"] and "at 0009" in deployed["detail"]
    assert _row(document, "smoke")["status"] == "ok" and _row(document, "maintenance mode")["detail"] == "off"

    conn = await asyncpg.connect(user=env.env["DB_USER"], password=env.env["DB_PASSWORD_TEST"], host=env.env["DB_HOST"],
                                 port=int(env.env["DB_PORT"]), database=env.name)
    try:  # a deploy killed after switching maintenance mode on leaves this state
        await maintenance.enable(conn, reason="deploy", actor="tester", deploy_id=outcome.run_id, reserve=5)
    finally:
        await conn.close()
    left_on, document = _runbook(env, "post-deploy", tmp_path / "left-on.json")
    assert left_on.returncode == 1, left_on.stdout + left_on.stderr
    mode = _row(document, "maintenance mode")
    assert mode["status"] == "attention"
    assert f"on, since deploy #{outcome.run_id} by tester" in mode["detail"]
    assert "python database/rollback.py maintenance-off --environment testing" in mode["detail"]

    def maintenance_off() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROLLBACK), "maintenance-off", "--environment", "testing",
                               "--config", str(env.config_dir)], capture_output=True, text=True,
                              env={**os.environ, **env.env}, timeout=120, check=False)

    holder = await _hold_deploy_lock(env)
    try:
        refused = maintenance_off()
    finally:
        await holder.close()
    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert "a deploy is running now: deploy.py testing (tester)" in refused.stderr
    assert await env.fetchval("SELECT enabled FROM hokmdb_maintenance") is True
    off = maintenance_off()
    assert off.returncode == 0, off.stdout + off.stderr
    assert f"maintenance mode switched off (left on by deploy #{outcome.run_id} of tester)" in off.stdout
    assert await env.fetchval("SELECT enabled FROM hokmdb_maintenance") is False
    assert await env.fetchval("SELECT datconnlimit FROM pg_database WHERE datname = current_database()") == -1
    again, _ = _runbook(env, "post-deploy", tmp_path / "again.json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "maintenance mode is off already" in maintenance_off().stdout


async def test_incident_names_the_blocked_session_and_its_blocker_without_the_query_literals(deploy_env_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(smoke__blocked_lock_s=0.5)
    calm, document = _runbook(env, "incident", tmp_path / "calm.json")
    assert calm.returncode == 0, calm.stdout + calm.stderr
    assert "hokmdb runbook incident: all clear" in calm.stdout
    assert "primary" in _row(document, "server")["detail"]
    assert _row(document, "checks")["status"] == "ok"

    blocker = await env.connect()
    waiter = await env.connect()
    await blocker.execute("SET application_name = 'report-job'")
    await blocker.execute("BEGIN; UPDATE players SET rating = rating WHERE id = (SELECT min(id) FROM players)")
    blocked = asyncio.create_task(waiter.execute(
        "UPDATE players SET display_name = 'secret-player-name' WHERE id = (SELECT min(id) FROM players)"))
    try:
        await asyncio.sleep(1.0)  # past smoke.blocked_lock_s
        trouble, document = _runbook(env, "incident", tmp_path / "trouble.json")
    finally:
        await blocker.execute("ROLLBACK")
        await blocked
        await blocker.close()
        await waiter.close()
    assert trouble.returncode == 1, trouble.stdout + trouble.stderr
    assert _row(document, "check health.blocked_locks")["status"] == "attention"
    sessions = _row(document, "sessions")["detail"]
    assert "waiting on Lock:transactionid" in sessions and "blocked by pid" in sessions
    assert "report-job" in sessions
    assert "secret-player-name" not in trouble.stdout + (tmp_path / "trouble.json").read_text()
    assert "display_name = '?'" in sessions


def test_incident_on_an_unreachable_server_says_so_and_still_names_the_restore_point(deploy_env: DeployEnv, tmp_path: Path) -> None:
    proc, document = _runbook(deploy_env, "incident", tmp_path / "down.json", extra_env={"DB_PORT": "1"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    server = _row(document, "server")
    assert server["status"] == "attention" and "127.0.0.1:1" in server["detail"]
    assert _row(document, "restore point")["status"] in ("skipped", "attention")
    assert [r["step"] for r in document["rows"]] == ["server", "restore point"]
    assert "Traceback" not in proc.stdout + proc.stderr


def _readme_snippets() -> list[str]:
    """The README's Python blocks that begin as the operators' runbooks do."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", (PROJECT_ROOT / "README.md").read_text(), flags=re.S)
    return [b for b in blocks if "from database.smoke_tests import DatabaseSmokeTests" in b]


def test_the_runbooks_python_snippets_run_as_written_against_an_embedded_environment(embedded, project_factory) -> None:  # type: ignore[no-untyped-def]
    """Health, security and pool, each copied from the README unchanged and run from a project
    checkout (``from database.smoke_tests import ...`` resolves against the current directory)
    whose development config is the embedded environment of this test."""
    import shutil

    config_dir, env, _ = embedded
    deployed = subprocess.run([sys.executable, str(PROJECT_ROOT / "database" / "deploy.py"), "--environment",
                               "development", "--config", str(config_dir), "--setup"], capture_output=True, text=True,
                              env=env, timeout=300, check=False)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    checkout = project_factory([])
    shutil.copy2(config_dir / "development.json", checkout / "database" / "config" / "development.json")
    shutil.copy2(PROJECT_ROOT / "database" / "smoke_tests.py", checkout / "database" / "smoke_tests.py")
    snippets = _readme_snippets()
    assert len(snippets) == 3, snippets
    outputs = []
    for snippet in snippets:
        proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120, check=False,
                              cwd=checkout, env={**env, "HOKMDB_PROJECT_ROOT": str(checkout)})
        assert proc.returncode == 0, snippet + proc.stdout + proc.stderr
        outputs.append(proc.stdout)
    health, security, pool = outputs
    assert health.startswith("health: passed in ") and "FAILED" not in health
    assert security == "security: passed\n"
    assert "pool.full_size: passed: " in pool and "pool.headroom: passed: " in pool
