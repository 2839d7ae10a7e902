"""``deploy.py --rehearse``: the pending deploy on a restored copy of the newest verified backup,
in a local topology (primary, standby, PgBouncer) under simulated game load, then its rollback.
Nothing touches the environment's database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import COMMENT_0009, DEPLOY_PASSWORD, DeployEnv
from helpers import PROJECT_ROOT

from pytest_hokmdb.backup.take import take_backup
from pytest_hokmdb.cluster.scratch import scratch_root
from pytest_hokmdb.config import load_config
from pytest_hokmdb.errors import ExitCode

pytestmark = pytest.mark.xdist_group("rehearsal")

DEPLOY = PROJECT_ROOT / "database" / "deploy.py"

UNDO_FAILS = (
    "0009", "A comment whose downgrade fails: the deploy works, its rollback does not.",
    "op.execute(\"COMMENT ON TABLE players IS 'rehearsed'\")",
    "op.execute('SELECT 1 / 0')",
)


class Rehearsed(subprocess.CompletedProcess):  # type: ignore[type-arg]
    """The finished command, and whether it left a throwaway cluster of its own behind."""

    def left_clusters(self) -> list[str]:
        # Scratch directories are named <label>-<pid>-<id>: this process's only, not other workers'.
        return [p.name for p in scratch_root().glob(f"rehearsal-{self.pid}-*")]


def _rehearse(env: DeployEnv, *extra: str) -> Rehearsed:
    child = {**os.environ, "HOKMDB_PROJECT_ROOT": str(env.root)}
    args = [sys.executable, str(DEPLOY), "--environment", "testing", "--config", str(env.config_dir), "--rehearse", *extra]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child) as proc:
        stdout, stderr = proc.communicate(timeout=600)
    done = Rehearsed(args, proc.returncode, stdout, stderr)
    done.pid = proc.pid
    return done


async def _verified_backup(env: DeployEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    from pyrage import x25519

    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY", str(x25519.Identity.generate()))  # an identity: no scrypt, fast
    record = await take_backup(load_config("testing", env.config_dir), reason="rehearsal test", verify="quick")
    assert record.verified, record.last_verification
    return record.id


async def test_a_rehearsal_deploys_and_rolls_back_a_restored_copy_under_load_and_leaves_the_target_alone(
        deploy_env_factory, project_factory, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(backup__local_dir=str(tmp_path / "backups"))
    env.use_project(project_factory([COMMENT_0009]))
    backup_id = await _verified_backup(env, tmp_path, monkeypatch)
    history = "SELECT to_regclass('hokmdb_deploy_history') IS NOT NULL"
    assert await env.fetchval(history) is False  # never deployed by hokmdb: no history table yet

    proc = _rehearse(env, "--rehearsal-clients", "4")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"backup       {backup_id} at revision 0008" in out
    assert "0008 -> head: exit 0" in out and "now at 0009" in out
    assert "4 clients through PgBouncer" in out and " 0 failed" in out
    assert "replay lag peak" in out and "longest client wait" in out
    assert "rollback     head -> 0008" in out and "works" in out
    assert "verdict      the deploy and its rollback work" in out
    assert DEPLOY_PASSWORD not in out

    # The report and the copy's config stay; no secret in either.
    report_dir = Path(next(line.split(None, 1)[1] for line in out.splitlines() if line.strip().startswith("report")).strip())
    report = json.loads((report_dir / "rehearsal.json").read_text())
    assert report["exit_code"] == 0 and report["transactions"] > 0 and report["failed"] == 0
    assert report["lag_peak_bytes"] is not None and report["rollback_exit"] == 0
    copy_config = (report_dir / "testing.json").read_text()
    assert "${HOKMDB_REHEARSAL_APP_PASSWORD}" in copy_config
    assert any(report_dir.glob("deployment_testing_*.log")) and any(report_dir.glob("rollback_testing_*.log"))

    # The real target was never touched: same revision, no comment, not even a history table.
    assert await env.revision() == "0008"
    assert await env.fetchval("SELECT obj_description('players'::regclass, 'pg_class')") is None
    assert await env.fetchval(history) is False
    # The copy, its standby and PgBouncer are gone.
    assert proc.left_clusters() == []


async def test_a_rehearsal_whose_rollback_fails_says_so_and_exits_11(
        deploy_env_factory, project_factory, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(backup__local_dir=str(tmp_path / "backups"), deploy__gate_suites=[])
    env.use_project(project_factory([UNDO_FAILS]))
    await _verified_backup(env, tmp_path, monkeypatch)

    proc = _rehearse(env, "--rehearsal-clients", "2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == ExitCode.ROLLBACK_FAILED, out
    assert "0008 -> head: exit 0" in out
    assert "rollback     head -> 0008" in out and "FAILED (exit 11)" in out and "division by zero" in out
    assert "verdict      the deploy worked but its rollback FAILED" in out
    assert await env.revision() == "0008"
    assert proc.left_clusters() == []


def test_a_rehearsal_without_a_verified_backup_is_refused_before_any_work(deploy_env_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(backup__local_dir=str(tmp_path / "backups"))
    proc = _rehearse(env)
    assert proc.returncode == ExitCode.BACKUP_ERROR, proc.stdout + proc.stderr
    assert "no verified backup of testing found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.left_clusters() == []


def test_rehearse_refuses_options_that_do_not_apply_to_a_copy(deploy_env_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(backup__local_dir=str(tmp_path / "backups"))
    proc = _rehearse(env, "--dry-run")
    assert proc.returncode == ExitCode.REFUSED, proc.stdout + proc.stderr
    assert "--rehearse runs on a restored copy; --dry-run does not apply to it" in proc.stderr
