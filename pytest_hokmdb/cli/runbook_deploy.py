"""``hokmdb runbook pre-deploy|post-deploy``: the deployment day's checklists.

pre-deploy (before the change window): the deploy's own dry run (config, connection,
applied revisions unchanged, no drift, lock-safety lint of what would run, the SQL it would
run; nothing is changed), whether a deploy is running now, the smoke suite as the baseline
(a deploy onto a database that already fails cannot tell its own failures apart), and the
backup the deploy relies on.

post-deploy (after it): the last deploy's recorded result, the smoke suite at the revision
deployed, the deploy lock released and maintenance mode off (a killed deploy leaves both).
"""

from __future__ import annotations

from pytest_hokmdb.cli.runbook_steps import (
    Row,
    attempt,
    backup,
    deploy_state,
    failed,
    last_deploy,
    over_environments,
    smoke,
)
from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.errors import HokmdbError


async def _dry_run(loaded: LoadedConfig, config_path: str | None, target_revision: str) -> tuple[Row, str | None]:
    """The dry run's verdict, and the revision the database is at now."""
    from pytest_hokmdb.deploy.options import DeployOptions
    from pytest_hokmdb.deploy.orchestrator import run_deploy

    env = loaded.config.environment
    outcome = await run_deploy(DeployOptions(environment=env, config_path=config_path, dry_run=True,
                                             target_revision=target_revision))
    if outcome.exit_code:
        return Row(env, "deploy dry run", "attention", f"{outcome.message}; details: python database/deploy.py "
                   f"--environment {env} --dry-run"), outcome.from_revision
    pending = list(outcome.sql)
    if not pending:
        return Row(env, "deploy dry run", "ok", f"nothing to deploy: the database is at {outcome.from_revision}"), \
            outcome.from_revision
    return Row(env, "deploy dry run", "ok", f"{outcome.message}: {', '.join(pending)}"), outcome.from_revision


def _backup_plan(loaded: LoadedConfig) -> Row:
    """The backup a failed deploy would restore: the one the deploy takes first, else the
    newest one (judged as the daily runbook judges it when ``backup.max_age_h`` is set)."""
    from pytest_hokmdb.deploy.options import DeployOptions, backup_wanted

    env = loaded.config.environment
    wanted, why = backup_wanted(loaded, DeployOptions(environment=env))
    if wanted:
        return Row(env, "backup", "ok", f"the deploy takes a verified backup first ({why})")
    row = backup(loaded)
    if row.status == "skipped":
        return Row(env, "backup", "skipped", f"the deploy takes no backup first ({why}), so a failed deploy can only "
                   "be downgraded; add --backup-before-deploy to have one")
    return row


async def _pre_deploy(loaded: LoadedConfig, config_path: str | None, target_revision: str) -> list[Row]:
    env = loaded.config.environment
    try:
        row, current = await _dry_run(loaded, config_path, target_revision)
    except HokmdbError as exc:
        return [failed(env, "deploy dry run", exc)]  # nothing further can be seen on a server the deploy cannot reach
    rows = [row, *await attempt(loaded, "deploy lock", deploy_state)]
    # The baseline at the revision the database is at now, not the one about to be deployed.
    if current is None:
        rows.append(Row(env, "smoke", "skipped", "the database is empty (its first deploy): no baseline to check"))
    else:
        rows.append(smoke(loaded, current))
    rows += await attempt(loaded, "backup", _backup_plan)
    if loaded.config.approval_required:
        rows.append(Row(env, "approval", "ok", "the deploy needs --approve, or the CI job that sets "
                        f"HOKMDB_DEPLOY_APPROVED={env} after approval"))
    return rows


async def pre_deploy(environments: list[str], config_path: str | None, target_revision: str) -> list[Row]:
    return await over_environments(environments, config_path,
                                   lambda loaded: _pre_deploy(loaded, config_path, target_revision))


async def _post_deploy(loaded: LoadedConfig, target_revision: str) -> list[Row]:
    try:
        rows = [await last_deploy(loaded)]
    except HokmdbError as exc:
        return [failed(loaded.config.environment, "connect", exc)]  # the smoke suite would only say the same
    return rows + await attempt(loaded, "deploy lock", deploy_state) + [smoke(loaded, target_revision)]


async def post_deploy(environments: list[str], config_path: str | None, target_revision: str) -> list[Row]:
    return await over_environments(environments, config_path, lambda loaded: _post_deploy(loaded, target_revision))
