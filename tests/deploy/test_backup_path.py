"""The deploy's backup: required -> verified or no deploy; the last resort of the rollback."""

from __future__ import annotations

import pytest
from deploy_support import DeployEnv

from pytest_hokmdb.deploy.orchestrator import DeployOptions, run_deploy
from pytest_hokmdb.errors import ExitCode

BREAKER_WITH_BROKEN_DOWNGRADE = (
    "0009", "A hotfix column the models do not have (the gate fails), whose downgrade fails too.",
    'op.add_column("players", sa.Column("hotfix_note", sa.Text, nullable=True))',
    "op.execute('SELECT 1 / 0')",
)


async def test_a_required_backup_that_cannot_be_taken_stops_the_deploy_before_migrating(deploy_env_factory, project_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("BACKUP_ENCRYPTION_KEY", raising=False)
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[], backup__required_before_deploy=True)
    env.use_project(project_factory([BREAKER_WITH_BROKEN_DOWNGRADE]))
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert outcome.exit_code == ExitCode.BACKUP_ERROR, outcome.message
    assert "no verified backup, so no deploy" in outcome.message and "encryption key" in outcome.message
    assert "migrate" not in [s.name for s in outcome.steps]
    assert await env.revision() == "0008"


@pytest.mark.slow
async def test_when_the_downgrade_fails_the_pre_deploy_backup_is_restored_and_gated(deploy_env_factory, project_factory, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(backup__local_dir=str(tmp_path / "backups"))
    from pyrage import x25519

    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY", str(x25519.Identity.generate()))  # an identity: no scrypt, fast
    # The restore creates and swaps databases: it needs a role that may (the deploy role may not).
    monkeypatch.setenv("DB_ADMIN_USER", "postgres")
    monkeypatch.setenv("DB_ADMIN_PASSWORD", env.db.cluster.superuser_password)
    env.use_project(project_factory([BREAKER_WITH_BROKEN_DOWNGRADE]))
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir), backup_before_deploy=True, backup_retention_days=2))
    steps = {s.name: s for s in outcome.steps}
    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome.message + "\n" + "\n".join(f"{s.name} {s.status} {s.detail}" for s in outcome.steps)
    assert steps["backup"].status == "ok" and "verified" in steps["backup"].detail
    assert steps["gate"].status == "failed"
    assert steps["rollback"].status == "failed" and "division by zero" in steps["rollback"].detail
    assert steps["restore-backup"].status == "ok" and steps["gate-after-restore"].status == "ok"
    assert "restored the pre-deploy backup" in outcome.message
    assert await env.revision() == "0008"
    assert await env.fetchval("SELECT count(*) FROM pg_attribute WHERE attrelid = 'players'::regclass AND attname = 'hotfix_note'") == 0
    assert await env.fetchval("SELECT result FROM hokmdb_deploy_history ORDER BY id DESC LIMIT 1") == "rolled_back"


async def test_backup_before_deploy_then_retention_after_success(deploy_env_factory, project_factory, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from deploy_support import COMMENT_0009
    from pyrage import x25519

    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY", str(x25519.Identity.generate()))
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[], backup__local_dir=str(tmp_path / "backups"))
    env.use_project(project_factory([COMMENT_0009]))
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir), backup_before_deploy=True, backup_retention_days=1))
    assert outcome.exit_code == 0, outcome.message
    steps = {s.name: s for s in outcome.steps}
    assert steps["backup"].status == "ok" and "verified (--backup-before-deploy)" in steps["backup"].detail
    assert steps["backup-retention"].detail.startswith("retention 1 days: 0 old backup(s) deleted")
    manifests = list((tmp_path / "backups").rglob("*.manifest.json"))
    assert len(manifests) == 1 and '"alembic_revision": "0008"' in manifests[0].read_text()


UNDO_NOT_ONLINE = (
    "0009", "A column whose downgrade first rewrites every player in one statement.",
    'op.add_column("players", sa.Column("nickname", sa.Text, nullable=True))',
    "op.execute(\"UPDATE players SET display_name = coalesce(nickname, display_name)\")\n"
    'op.drop_column("players", "nickname")',
)


async def test_a_revision_whose_undo_cannot_run_online_requires_a_verified_backup(deploy_env_factory, project_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Never strand a database between revisions: when rolling a revision back would rewrite a
    table inside a transaction, the deploy takes a verified backup first, and says why; without
    one (here: no encryption key) it does not start."""
    monkeypatch.delenv("BACKUP_ENCRYPTION_KEY", raising=False)
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[])
    env.use_project(project_factory([UNDO_NOT_ONLINE]))
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert outcome.exit_code == ExitCode.BACKUP_ERROR, outcome.message
    preflight = next(s for s in outcome.steps if s.name == "pre-flight")
    assert "1 revision(s) cannot be undone online, so a verified backup is required" in preflight.detail
    assert "no verified backup, so no deploy" in outcome.message
    assert "(a backup is required: a failed deploy could not be rolled back online (revision 0009's downgrade" in outcome.message
    assert "migrate" not in [s.name for s in outcome.steps]
    assert await env.revision() == "0008"

    skipped = await run_deploy(DeployOptions("testing", str(env.config_dir), skip_backup=True))
    assert skipped.exit_code == ExitCode.REFUSED, skipped.message
    assert "--skip-backup, but a failed deploy could not be rolled back online" in skipped.message
    assert "revision 0009's downgrade changes the rows of players in one statement inside its transaction" in skipped.message
