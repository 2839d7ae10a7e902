"""``rollback.py migration``: the same lock, steps, history and gate as a deploy, going back."""

from __future__ import annotations

import argparse

from deploy_support import COMMENT_0009, SLOW_0010, DeployEnv

from pytest_hokmdb.cli.rollback_migration import add_migration_parser, run_migration
from pytest_hokmdb.deploy.orchestrator import DeployOptions, run_deploy
from pytest_hokmdb.errors import ExitCode


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rollback.py")
    add_migration_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["migration", *argv])


async def test_steps_and_revision_roll_back_under_the_lock_with_history(deploy_env_factory, project_factory, capsys) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[])
    env.use_project(project_factory([COMMENT_0009, SLOW_0010]))
    assert (await run_deploy(DeployOptions("testing", str(env.config_dir)))).exit_code == 0
    assert await env.revision() == "0010"

    code = await asyncio.to_thread(run_migration, _args("--environment", "testing", f"--config={env.config_dir}", "--steps", "1"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "rollback on testing: OK" in out and "reverted 0010" in out
    assert await env.revision() == "0009"
    assert await env.fetchval("SELECT obj_description('game_sessions'::regclass)") is None

    code = await asyncio.to_thread(run_migration, _args("--environment", "testing", f"--config={env.config_dir}", "--revision", "0007"))
    assert code == 0, capsys.readouterr().out
    assert await env.revision() == "0007"
    assert await env.fetchval("SELECT to_regclass('ix_game_participants_player_id')") is None
    assert await env.fetchval("SELECT max(revision) FROM hokmdb_applied_revisions") == "0007"
    rows = await env.fetchval("SELECT string_agg(kind || ':' || result, ',' ORDER BY id) FROM hokmdb_deploy_history")
    assert rows == "deploy:succeeded,rollback:succeeded,rollback:succeeded"

    code = await asyncio.to_thread(run_migration, _args("--environment", "testing", f"--config={env.config_dir}", "--revision", "0009"))
    assert code == ExitCode.REFUSED  # not below the current revision
    assert "not below" in capsys.readouterr().out


async def test_a_clean_rollback_from_head_passes_its_gate_and_a_broken_one_fails(deploy_env_factory, capsys) -> None:  # type: ignore[no-untyped-def]
    """`rollback.py migration --steps 1` from 0008 gates the database held to 0007: the hot
    queries no longer expect 0008's index, the schema is compared with what 0007 builds. A
    database at 0007 that lost an index 0007 has still fails."""
    import asyncio
    import os
    import subprocess
    import sys

    from helpers import PROJECT_ROOT

    env: DeployEnv = deploy_env_factory()  # seeded, at head (0008), gate: smoke
    code = await asyncio.to_thread(run_migration, _args("--environment", "testing", f"--config={env.config_dir}", "--steps", "1"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "rollback on testing: OK" in out and "smoke: passed" in out
    assert await env.revision() == "0007"

    conn = await env.connect()
    try:
        await conn.execute("DROP INDEX ix_players_rating_desc")
    finally:
        await conn.close()
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(PROJECT_ROOT / "database" / "smoke_tests.py"), "--environment", "testing",
         f"--config={env.config_dir}", "--target-revision", "0007", "-k", "schema or performance"],
        capture_output=True, text=True, env={**os.environ, **env.env, "COLUMNS": "250"}, timeout=180,
    )
    flat = " ".join(proc.stdout.split())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "held to revision 0007" in flat and "ix_players_rating_desc" in flat
    assert "leaderboard_top_n does not use ix_players_rating_desc, which does not exist" in flat


def test_an_unknown_revision_is_rejected_before_connecting_locking_or_logging(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue 32 item 13: `rollback.py migration --revision 9999` took the deploy lock and wrote
    a rollback log before it said the revision does not exist. Bad input is a usage error,
    said once, before any connection (this port refuses one), lock or log file."""
    import os
    import subprocess
    import sys

    from helpers import PROJECT_ROOT, write_config_dir

    config_dir = tmp_path / "config"
    logs = tmp_path / "logs"
    write_config_dir(config_dir, "testing", deploy__log_dir=str(logs))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "HOKMDB_"))}
    env.update(DB_HOST="127.0.0.1", DB_PORT="1", DB_PASSWORD_TEST="unused", HOKMDB_ENV_FILE=str(tmp_path / "none.env"))
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "database" / "rollback.py"), "migration", "--environment",
                           "testing", f"--config={config_dir}", "--revision", "9999"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == ExitCode.CONFIG_ERROR, output
    assert output.count("revision '9999' is not in this code's migration history") == 1, output
    assert "hint: `alembic history` lists the revisions" in output
    assert "cannot connect" not in output and "lock" not in output and "Traceback" not in output, output
    assert not logs.exists() or not any(logs.iterdir()), sorted(p.name for p in logs.iterdir())
