"""A deploy whose pre-flight cannot look does not start: the lock-safety lint (squawk) that
cannot run refuses the deploy; ``--force`` outside production deploys anyway and records
in ``hokmdb_deploy_history`` what went unverified."""

from __future__ import annotations

from deploy_support import COMMENT_0009, DeployEnv

from pytest_hokmdb.errors import ExitCode


def test_a_lint_that_cannot_run_refuses_the_deploy_and_force_records_it(deploy_env_factory, project_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[])
    env.use_project(project_factory([COMMENT_0009]))
    missing = tmp_path / "no-squawk-here"
    env.env["HOKMDB_SQUAWK"] = str(missing)

    proc = env.script()
    output = proc.stdout + proc.stderr
    assert proc.returncode == int(ExitCode.REFUSED), output
    assert "lock-safety lint of the 1 pending revision(s) could not run" in output
    assert f"HOKMDB_SQUAWK={missing}" in output and "does not start" in output
    assert "Traceback" not in output

    import asyncio

    assert asyncio.run(env.revision()) == "0008", "a refused deploy migrated anyway"

    proc = env.script("--force")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "lint FORCED past" in output
    assert asyncio.run(env.revision()) == "0009"
    message = asyncio.run(env.fetchval("SELECT message FROM hokmdb_deploy_history ORDER BY id DESC LIMIT 1"))
    assert "forced unverified: lint could not run" in str(message), message


def test_the_dry_run_reports_a_lint_that_cannot_run_as_a_refusal(deploy_env_factory, project_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[])
    env.use_project(project_factory([COMMENT_0009]))
    env.env["HOKMDB_SQUAWK"] = str(tmp_path / "absent")
    proc = env.script("--dry-run")
    output = proc.stdout + proc.stderr
    assert proc.returncode == int(ExitCode.REFUSED), output
    assert "the lock-safety lint could not run" in output
