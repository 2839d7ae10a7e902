"""``--restore-from-backup``: the session's fixtures run against a scratch restore of a backup."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
from backup_support import BackupSetup, database_names
from helpers import PROJECT_ROOT

from pytest_hokmdb.backup import take_backup
from pytest_hokmdb.gate import run_gate

SMOKE_SCRIPT = PROJECT_ROOT / "database" / "smoke_tests.py"


async def break_live_schema(setup: BackupSetup) -> None:
    """After the backup: the live database loses an index the schema check requires."""
    conn = await asyncpg.connect(setup.dsn)
    try:
        await conn.execute("DROP INDEX ix_players_rating_desc")
    finally:
        await conn.close()


def scratch_databases(names: set[str]) -> set[str]:
    return {n for n in names if n.startswith("hokmdb_restored_")}


async def test_smoke_suite_runs_against_the_restored_copy_in_xdist_workers_and_drops_it(backup_setup: BackupSetup) -> None:
    loaded = backup_setup.loaded()
    record = await take_backup(loaded, verify="none")
    await break_live_schema(backup_setup)
    conn = await asyncpg.connect(backup_setup.dsn)
    try:  # the live database really lacks what schema.matches_models requires
        assert not await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_players_rating_desc'")
    finally:
        await conn.close()

    restored = run_gate(
        loaded, "smoke",
        extra_args=["-k", "schema or connection", f"--restore-from-backup={record.location}", "-n", "2"],
        env=backup_setup.env,
    )
    assert restored.passed, restored.output[-3000:]
    checks = {t["check"] for t in restored.tests if t["outcome"] == "passed"}
    assert {"schema.matches_models", "schema.at_expected_revision", "connection.connect_time"} <= checks
    assert not scratch_databases(await database_names(backup_setup))


def test_smoke_script_restore_from_backup_and_keep_restored(backup_setup: BackupSetup) -> None:
    import asyncio

    record = asyncio.run(take_backup(backup_setup.loaded(), verify="none"))
    asyncio.run(break_live_schema(backup_setup))
    proc = subprocess.run(
        [sys.executable, str(SMOKE_SCRIPT), "--environment", "testing", f"--db-config={backup_setup.config_dir}",
         "--restore-from-backup", record.location, "--keep-restored", "-k", "schema"],
        capture_output=True, text=True, env={**os.environ, **backup_setup.env, "COLUMNS": "200"}, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "result: PASSED" in proc.stdout
    kept = scratch_databases(asyncio.run(database_names(backup_setup)))
    assert len(kept) == 1
    name = kept.pop()
    assert record.id.replace("-", "_").lower()[:20] in name

    async def check_and_drop() -> None:
        conn = await asyncpg.connect(backup_setup.admin_dsn(name))
        try:
            assert await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_players_rating_desc'") == 1
        finally:
            await conn.close()
        admin = await asyncpg.connect(backup_setup.admin_dsn())
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(check_and_drop())


def test_restore_from_backup_is_refused_for_protected_environments(backup_setup: BackupSetup, pytester, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from helpers import write_config_dir

    write_config_dir(backup_setup.config_dir, "staging")
    monkeypatch.setenv("DB_HOST_STAGING", "127.0.0.1")
    monkeypatch.setenv("DB_PASSWORD_STAGING", "unused-password")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess(
        "--environment=staging", f"--db-config={backup_setup.config_dir}", "--restore-from-backup=latest"
    )
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--restore-from-backup creates a scratch database*not on staging*"])


async def test_whole_smoke_suite_passes_on_a_restored_copy_of_a_good_backup(backup_setup: BackupSetup) -> None:
    """Issue 32, item 5: the scratch copy is restored without ACLs (``--no-acl``), so it lost the
    per-database grants the monitoring role needs on ``pg_hba_file_rules``, and the blocker
    security.no_remote_trust_auth was "not verified": every ``--restore-from-backup`` run
    exited 1. The restore gives the copy the monitoring role's grants, as setup does."""
    loaded = backup_setup.loaded()
    await take_backup(loaded, verify="none")
    await break_live_schema(backup_setup)  # so only a run against the copy can pass
    restored = run_gate(loaded, "smoke", extra_args=["--restore-from-backup=latest"], env=backup_setup.env)
    outcomes = {t["check"]: t for t in restored.tests if t.get("check")}
    trust = outcomes["security.no_remote_trust_auth"]
    assert trust["outcome"] == "passed", trust.get("message")
    assert "not verified" not in trust.get("message", "") and "may not read pg_hba_file_rules" not in trust.get("message", "")
    assert restored.exit_code == 0, [f"{t['check']}: {t.get('message')}" for t in restored.tests if t["outcome"] != "passed"]
    assert not scratch_databases(await database_names(backup_setup))
