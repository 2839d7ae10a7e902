"""deploy.py end to end: options, steps, history, checksums, log file, dry run, safety rules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from deploy_support import COMMENT_0009, DEPLOY_PASSWORD, SLOW_0010, DeployEnv, add_revision
from helpers import write_config_dir

from pytest_hokmdb.deploy.orchestrator import APPROVAL_ENV, DeployOptions, approved, run_deploy
from pytest_hokmdb.errors import ExitCode, Refused


def test_deploy_script_migrates_an_empty_database_to_head_and_gates(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(empty=True)
    env.use_project(project_factory([]))
    proc = env.script("--run-smoke-tests")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "deploy on testing: OK (exit 0)" in proc.stdout
    for step in ("config", "lock", "pre-flight", "backup", "migrate", "gate"):
        assert f"  {step} " in proc.stdout, step
    assert "empty -> 0001 -> 0002 -> 0003 -> 0004 -> 0005 -> 0006 -> 0007 -> 0008" in proc.stdout
    assert "smoke: passed" in proc.stdout
    assert DEPLOY_PASSWORD not in output

    import asyncio

    async def probe():  # type: ignore[no-untyped-def]
        conn = await env.connect()
        try:
            run = await conn.fetchrow("SELECT * FROM hokmdb_deploy_history ORDER BY id DESC LIMIT 1")
            sums = await conn.fetch("SELECT revision, sha256, recorded FROM hokmdb_applied_revisions ORDER BY revision")
            return run, sums, await conn.fetchval("SELECT version_num FROM alembic_version")
        finally:
            await conn.close()

    run, sums, revision = asyncio.run(probe())
    assert revision == "0008"
    assert run["result"] == "succeeded" and run["exit_code"] == 0
    assert run["from_revision"] is None and run["to_revision"] == "0008" and run["final_revision"] == "0008"
    assert run["actor"] == "tester" and run["duration_s"] > 0
    assert [r["revision"] for r in sums] == ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008"]
    assert all(r["recorded"] == "applied" and len(r["sha256"]) == 64 for r in sums)
    log_path = Path(run["log_path"])
    assert log_path.parent == env.log_dir and log_path.name.startswith("deployment_testing_") and log_path.suffix == ".log"
    text = log_path.read_text()
    assert "step migrate: ok" in text and "step gate: ok" in text and "Running upgrade 0007 -> 0008" in text
    assert "deploy of testing to head by tester@" in text  # the actor the history records, not "?"
    assert DEPLOY_PASSWORD not in text


def test_dry_run_prints_the_sql_of_each_revision_and_touches_nothing(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(empty=True)
    env.use_project(project_factory([]))
    proc = env.script("--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    positions = [out.index(f"-- ===== revision {rev} =====") for rev in ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008")]
    assert positions == sorted(positions)
    assert "CREATE TABLE players" in out and "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_game_participants_player_id" in out
    assert "nothing was changed" in out
    import asyncio

    tables = asyncio.run(env.fetchval("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"))
    assert tables == 0, "the dry run created something"
    assert not env.log_dir.exists() or not list(env.log_dir.iterdir())


async def test_validate_config_checks_the_file_without_connecting(deploy_env: DeployEnv) -> None:
    from pytest_hokmdb.errors import ConfigError

    deploy_env.env["DB_HOST"] = "192.0.2.1"  # TEST-NET: would hang if it connected
    proc = deploy_env.script("--validate-config")
    assert proc.returncode == 0, proc.stderr
    assert "is valid" in proc.stdout
    data = json.loads((deploy_env.config_dir / "testing.json").read_text())
    data["deploy"]["lock_wait_seconds"] = 3
    (deploy_env.config_dir / "testing.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="deploy.lock_wait_seconds: unknown key") as caught:
        await run_deploy(DeployOptions("testing", str(deploy_env.config_dir), validate_config=True))
    assert caught.value.exit_code == ExitCode.CONFIG_ERROR


def test_an_unknown_target_revision_is_rejected_before_connecting_or_locking(deploy_env: DeployEnv) -> None:
    """Bad input is a usage error, said once: no connection (the host would hang), no deploy
    lock, no deploy log; the smoke script and pytest reject it before any check runs."""
    import subprocess
    import sys

    from helpers import PROJECT_ROOT

    deploy_env.env["DB_HOST"] = "192.0.2.1"  # TEST-NET: would hang if it connected
    for proc in (
        deploy_env.script("--target-revision", "nonexistent", timeout=30),
        deploy_env.script("--target-revision", "nonexistent", "--dry-run", timeout=30),
        subprocess.run([sys.executable, str(PROJECT_ROOT / "database" / "smoke_tests.py"), "--environment", "testing",
                        f"--config={deploy_env.config_dir}", "--target-revision", "nonexistent"],
                       capture_output=True, text=True, env={**os.environ, **deploy_env.env}, timeout=30, check=False),
    ):
        output = proc.stdout + proc.stderr
        assert proc.returncode == ExitCode.CONFIG_ERROR, output
        assert output.count("revision 'nonexistent' is not in this code's migration history") == 1, output
        assert "hint: `alembic history` lists the revisions" in output, output
        assert "lock" not in output and "log:" not in output and "Traceback" not in output, output
    proc = subprocess.run([sys.executable, "-m", "pytest", "smoke/", "--environment=testing", f"--db-config={deploy_env.config_dir}",
                           "--target-revision=nonexistent", "-p", "no:cacheprovider", "-q"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, env={**os.environ, **deploy_env.env}, timeout=60, check=False)
    assert proc.returncode == ExitCode.CONFIG_ERROR, proc.stdout + proc.stderr
    assert "hokmdb: --target-revision: revision 'nonexistent' is not in this code's migration history" in proc.stdout + proc.stderr


@pytest.fixture
def production_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config_dir = tmp_path / "prod"
    write_config_dir(config_dir, "production")
    monkeypatch.setenv("DB_HOST_PRODUCTION", "192.0.2.1")  # never reached: the rules refuse first
    monkeypatch.setenv("DB_PASSWORD_PRODUCTION", "prod-secret-123")
    monkeypatch.delenv(APPROVAL_ENV, raising=False)
    return config_dir


async def test_production_needs_approval_and_never_takes_force_or_skip_backup(production_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Refused, match="needs approval"):
        await run_deploy(DeployOptions("production", str(production_dir)))
    with pytest.raises(Refused, match="--force is not allowed on production"):
        await run_deploy(DeployOptions("production", str(production_dir), approve=True, force=True))
    with pytest.raises(Refused, match="--skip-backup is not allowed on production"):
        await run_deploy(DeployOptions("production", str(production_dir), approve=True, skip_backup=True))
    # The CI signal must name the environment it approves.
    monkeypatch.setenv(APPROVAL_ENV, "staging")
    assert approved(DeployOptions("production"), "production") is None
    monkeypatch.setenv(APPROVAL_ENV, "production")
    assert approved(DeployOptions("production"), "production") == f"{APPROVAL_ENV}=production"


def test_refusals_exit_4_through_the_script(production_dir: Path, deploy_env: DeployEnv) -> None:
    import subprocess
    import sys

    from deploy_support import SCRIPT

    proc = subprocess.run([sys.executable, str(SCRIPT), "--environment", "production", f"--config={production_dir}"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == ExitCode.REFUSED
    assert "needs approval" in proc.stderr and f"{APPROVAL_ENV}=production" in proc.stderr


async def test_tampered_applied_revision_is_refused_before_anything_runs(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[])
    root = project_factory([COMMENT_0009])
    env.use_project(root)
    first = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert first.exit_code == 0, first.message
    assert await env.revision() == "0009"
    # Someone edits the applied revision, and a new one is pending.
    revision_file = root / "migrations" / "versions" / "0009_test.py"
    revision_file.write_text(revision_file.read_text().replace("probe 0009", "probe 0009, edited later"))
    add_revision(root, SLOW_0010, down="0009")
    second = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert second.exit_code == ExitCode.REFUSED
    assert "revision 0009 (0009_test.py) changed since it was applied" in second.message
    assert [s.name for s in second.steps if s.status == "failed"] == ["pre-flight"]
    assert "migrate" not in [s.name for s in second.steps]
    assert await env.revision() == "0009"
    assert await env.fetchval("SELECT obj_description('game_sessions'::regclass)") is None
    assert await env.fetchval("SELECT result FROM hokmdb_deploy_history ORDER BY id DESC LIMIT 1") == "refused"
    # --force (allowed on testing) accepts the edit, records the new checksum and deploys.
    third = await run_deploy(DeployOptions("testing", str(env.config_dir), force=True))
    assert third.exit_code == 0, third.message
    assert await env.revision() == "0010"


async def test_drift_is_refused_in_pre_flight(deploy_env_factory) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[])
    conn = await env.connect()
    try:
        await conn.execute("CREATE INDEX ix_hotfix_players_email ON players (lower(email))")
    finally:
        await conn.close()
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert outcome.exit_code == ExitCode.REFUSED
    assert "unexpected index public.ix_hotfix_players_email" in outcome.message


async def test_autovacuum_tuning_of_a_table_is_not_drift_but_its_fillfactor_is(deploy_env_factory) -> None:  # type: ignore[no-untyped-def]
    """A DBA's per-table autovacuum settings are operations, not schema a revision owns: the
    deploy goes on. Any other storage parameter is still drift, named."""
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[])
    conn = await env.connect()
    try:
        await conn.execute("ALTER TABLE moves SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_threshold = 10, "
                           "toast.autovacuum_enabled = true, vacuum_truncate = false)")
    finally:
        await conn.close()
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert outcome.exit_code == ExitCode.OK, outcome.message
    conn = await env.connect()
    try:
        await conn.execute("ALTER TABLE moves SET (fillfactor = 70)")
    finally:
        await conn.close()
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert outcome.exit_code == ExitCode.REFUSED
    assert "relation public.moves is 'kind=r persistence=p options={fillfactor=70} replica-identity=d'" in outcome.message


async def test_lint_errors_of_pending_revisions_are_refused(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[])
    unsafe = ("0009", "An index built without CONCURRENTLY on a live table.",
              "op.create_index('ix_players_display_name', 'players', ['display_name'])",
              "op.drop_index('ix_players_display_name', table_name='players')")
    env.use_project(project_factory([unsafe], lint_default="error"))
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert outcome.exit_code == ExitCode.REFUSED, outcome.message
    assert "lint finding(s)" in outcome.message and "0009" in outcome.message
    assert await env.revision() == "0008"


async def test_maintenance_mode_is_visible_during_the_deploy_and_off_afterwards(deploy_env_factory, project_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[])
    env.use_project(project_factory([COMMENT_0009, SLOW_0010]))
    monkeypatch.setenv("HOKMDB_TEST_SLEEP_S", "1.5")
    task = asyncio.create_task(run_deploy(DeployOptions("testing", str(env.config_dir), maintenance_mode=True)))
    seen: set[tuple[object, object]] = set()
    conn = await env.connect()
    try:
        while not task.done():
            if await conn.fetchval("SELECT to_regclass('hokmdb_maintenance') IS NOT NULL"):
                row = await conn.fetchrow("SELECT m.enabled, d.datconnlimit FROM hokmdb_maintenance m, pg_database d WHERE d.datname = current_database()")
                if row is not None:
                    seen.add((row["enabled"], row["datconnlimit"]))
            await asyncio.sleep(0.1)
        outcome = await task
        assert outcome.exit_code == 0, outcome.message
        on = [limit for enabled, limit in seen if enabled]
        assert on and all(isinstance(limit, int) and limit > 0 for limit in on), seen
        row = await conn.fetchrow("SELECT m.enabled, m.ended_at, d.datconnlimit FROM hokmdb_maintenance m, pg_database d WHERE d.datname = current_database()")
        assert row["enabled"] is False and row["ended_at"] is not None and row["datconnlimit"] == -1
    finally:
        await conn.close()


async def test_a_deploy_exports_its_result_as_metrics_and_a_refusal_reads_as_one(deploy_env_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Issue 20: deploy duration and result, the revision, for the monitoring operators run;
    parsed with prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    def samples() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = (tmp_path / "hokmdb_deploy_testing.prom").read_text()
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[], metrics__textfile_dir=str(tmp_path))
    testing = ("environment", "testing")
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert outcome.exit_code == ExitCode.OK, outcome.message
    first = samples()
    assert first[("hokmdb_deploy_result", frozenset({testing, ("result", "succeeded")}))] == 1
    assert first[("hokmdb_deploy_result", frozenset({testing, ("result", "refused")}))] == 0
    assert first[("hokmdb_deploy_exit_code", frozenset({testing}))] == 0
    assert first[("hokmdb_deploy_revision_info", frozenset({testing, ("revision", outcome.final_revision)}))] == 1

    conn = await env.connect()
    try:
        await conn.execute("CREATE INDEX ix_hotfix_players_email ON players (lower(email))")  # drift: refused
    finally:
        await conn.close()
    refused = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert refused.exit_code == ExitCode.REFUSED
    second = samples()
    assert second[("hokmdb_deploy_result", frozenset({testing, ("result", "refused")}))] == 1
    assert second[("hokmdb_deploy_result", frozenset({testing, ("result", "succeeded")}))] == 0
    assert second[("hokmdb_deploy_exit_code", frozenset({testing}))] == ExitCode.REFUSED


async def test_a_gate_failure_that_exists_before_the_deploy_refuses_it_before_anything_changes(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    """Issue 31: a monitoring role without the pg_hba grants makes security.no_remote_trust_auth
    'not verified' (fail closed) before any deploy. The deploy used to migrate, fail its gate,
    roll back under load, fail the gate again and end in exit 11 with the database healthy.
    Now the pre-flight runs the same gate at the current revision and refuses (exit 4), naming
    the check; with --force (not production) it deploys, records it, and the post-deploy gate
    judges every other check."""
    from deploy_support import MONITOR_ROLE, admin

    env: DeployEnv = deploy_env_factory()
    env.use_project(project_factory([COMMENT_0009]))
    for sql in (f"REVOKE SELECT ON pg_catalog.pg_hba_file_rules FROM {MONITOR_ROLE}",
                f"REVOKE EXECUTE ON FUNCTION pg_catalog.pg_hba_file_rules() FROM {MONITOR_ROLE}"):
        await admin(env.db.cluster, sql, env.name)
    refused = env.script("--target-revision", "0009")
    output = refused.stdout + refused.stderr
    assert refused.returncode == ExitCode.REFUSED, output
    assert "the gate already fails at 0008, before this deploy changed anything: security.no_remote_trust_auth" in output
    assert "rollback" not in [line.split()[0] for line in refused.stdout.splitlines() if line.strip()], output
    assert "Traceback" not in output
    assert await env.revision() == "0008"
    assert await env.fetchval("SELECT obj_description('players'::regclass)") is None  # 0009 never ran

    forced = env.script("--target-revision", "0009", "--force")
    output = forced.stdout + forced.stderr
    assert forced.returncode == ExitCode.OK, output
    assert "1 failing before the deploy too, accepted with --force" in output
    assert await env.revision() == "0009"
    message = await env.fetchval("SELECT message FROM hokmdb_deploy_history ORDER BY id DESC LIMIT 1")
    assert "forced unverified: gate failing before the deploy: security.no_remote_trust_auth" in str(message)
