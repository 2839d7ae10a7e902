"""``database/deploy.py``: move a database to the target revision safely and prove it with pytest.

The sequence (each step logged with its duration, to the console and to
``<deploy.log_dir>/deployment_<env>_<timestamp>.log``):

1. config: load and validate; production needs approval (``--approve``, or
   ``HOKMDB_DEPLOY_APPROVED=<environment>`` set by the CI job that holds the approval);
   ``--force`` and ``--skip-backup`` are refused on production.
2. deploy lock (``lock.py``): one deploy per database; a second one waits ``deploy.lock_wait_s``
   and exits 6 naming the holder.
3. pre-flight: connectivity, current revision known to the code, applied revisions' files
   unchanged (SHA-256 in ``hokmdb_applied_revisions``), live schema = schema of the current
   revision (``drift.py``), lock-safety lint of the pending revisions within policy.
4. backup (``--backup-before-deploy`` or ``backup.required_before_deploy``): verified, or no deploy.
5. maintenance mode (``--maintenance-mode``): ``maintenance.py``; always switched off again.
(Steps 3 to 8 are the functions of ``steps.py``, called in order by ``_locked`` below.)

6. migrate revision by revision (``runner.py``): lock_timeout + statement_timeout, retries with
   backoff and jitter inside ``deploy.lock_retry_budget_s``, ``--max-downtime`` bound.
7. gate: ``pytest <suite>/`` for each of ``deploy.gate_suites`` (``run_gate``).
8. on failure after the first migration ran: downgrade to the start revision and gate again;
   if that fails, restore the pre-deploy backup and gate again.
9. history row, log file, notification.

Between 6 and 7, a contract revision of ``[[tool.hokmdb.migrations.transitions]]`` is applied
only when nothing used what it removes during ``deploy.transition_window_s`` (``transitions.py``);
else the deploy stops before it, gates what it reached and exits 8. In 8, an automatic rollback
never undoes such an expand revision while something uses what it added.

Exit codes: 0 deployed, 8 the expand phase deployed and the contract waits, 10 failed and rolled back cleanly, 11 failed and the rollback failed
(page someone), 2 config, 3 connection, 4 refused, 6 locked, 7 backup, 1 gate failed with
nothing to roll back.
"""

from __future__ import annotations

import logging
import os
import time

import asyncpg

from pytest_hokmdb.config import LoadedConfig, load_config
from pytest_hokmdb.db import connect, embedded_cluster_for, resolve_target
from pytest_hokmdb.db.resolve import local_patroni_for, resolve_owner_target, runs_ddl_as_app_role
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.deploy import history, steps
from pytest_hokmdb.deploy.drift import check_drift
from pytest_hokmdb.deploy.lock import Actor
from pytest_hokmdb.deploy.options import APPROVAL_ENV, DeployOptions, backup_wanted, gate_suites  # noqa: F401 - part of this module's API
from pytest_hokmdb.deploy.session import DeployLogFile, DeploySession, Outcome, Step
from pytest_hokmdb.errors import ConfigError, ConnectionFailed, ExitCode, HokmdbError, Refused
from pytest_hokmdb.migrate import check_revision, current_revision
from pytest_hokmdb.redaction import redact

log = logging.getLogger("hokmdb.deploy")



# -- step 1: config and safety rules ---------------------------------------------------------------


def approved(options: DeployOptions, environment: str) -> str | None:
    """How the deploy is approved, or None. The CI signal must name the environment it approves."""
    if options.approve:
        return "--approve"
    if os.environ.get(APPROVAL_ENV, "").strip() == environment:
        return f"{APPROVAL_ENV}={environment}"
    return None


def check_rules(loaded: LoadedConfig, options: DeployOptions) -> list[str]:
    config = loaded.config
    notes: list[str] = []
    if options.dry_run or options.validate_config:
        return notes
    if config.approval_required:
        how = approved(options, config.environment)
        if how is None:
            raise Refused(
                f"a deploy to {config.environment} needs approval",
                hint=f"pass --approve, or run from the CI job that sets {APPROVAL_ENV}={config.environment} after approval",
            )
        notes.append(f"approved by {how}")
    if options.force and not config.force_allowed:
        raise Refused(f"--force is not allowed on {config.environment}", hint="fix what the pre-flight reports instead")
    if options.skip_backup and config.environment == "production":
        raise Refused("--skip-backup is not allowed on production", hint="production deploys always take a verified backup first")
    if options.setup and config.is_protected:
        raise Refused(f"--setup creates databases and roles, which hokmdb never does on {config.environment}")
    if options.skip_backup and options.backup_before_deploy:
        raise Refused("--skip-backup and --backup-before-deploy contradict each other; pick one")
    return notes


async def resolve_deploy_target(loaded: LoadedConfig, options: DeployOptions) -> tuple[Target, str]:
    """The writable target the deploy migrates through: the owner role (``database.owner_user``;
    the embedded cluster's ``hokm_owner``), never the game's role on staging and production.
    ``--setup`` starts the embedded cluster and creates roles and database."""
    config = loaded.config
    if config.uses_embedded:
        cluster = embedded_cluster_for(loaded)
        # In Patroni mode the server is the local Patroni cluster: resolve_target names its
        # leader, or says that the topology is not running and what to start.
        if local_patroni_for(loaded) is None and not options.setup and not cluster.is_running():
            raise ConnectionFailed(
                f"the embedded cluster of {config.environment} is not running ({cluster.data_dir})",
                hint=f"add --setup to create/start it, or run `hokmdb cluster start --environment {config.environment}`",
            )
        # A dry run touches nothing: it may start the cluster, never create or alter roles.
        target = await resolve_target(loaded, start=True, provision_embedded=options.setup and not options.dry_run)
        detail = "embedded cluster running; roles and database ensured" if options.setup else "embedded cluster"
    else:
        target = await resolve_target(loaded, start=False)
        detail = "external server"
        if options.setup:
            detail += " (--setup: hokmdb creates roles and databases only on its embedded cluster; this one must exist)"
    if runs_ddl_as_app_role(loaded, target):
        if config.is_protected and not options.dry_run:
            raise Refused(
                f"{config.environment}: the deploy would run DDL as the application role {config.database.user}, which "
                "would then own the tables the game only needs to read and write",
                hint="set database.owner_user/owner_password (DB_OWNER_USER, DB_OWNER_PASSWORD_*) to the role that owns "
                     "the schema (README \"The three roles\")",
            )
        return target.writable(), detail + f"; migrating as {target.user} (no separate owner role)"
    owner = await resolve_owner_target(loaded, target)
    return owner, detail + f"; migrating as owner {owner.user}"


# -- dry run ---------------------------------------------------------------------------------------


def offline_sql(session: DeploySession, start: str | None, revision: str) -> str:
    import io

    from alembic import command

    from pytest_hokmdb.migrate import alembic_config

    buffer = io.StringIO()
    cfg = alembic_config(project_root=session.loaded.project_root)
    cfg.output_buffer = buffer
    command.upgrade(cfg, f"{start or 'base'}:{revision}", sql=True)
    return buffer.getvalue()


# -- the deploy ------------------------------------------------------------------------------------


async def run_deploy(options: DeployOptions) -> Outcome:
    """Run a deploy and return its outcome (exit code, steps, log path); never raises for operator errors."""
    started = time.monotonic()
    t0 = time.monotonic()
    loaded = load_config(options.environment, options.config_path)  # ConfigError -> exit 2 in the front door
    check_revision(options.target_revision, project_root=loaded.project_root)  # exit 2, before any connection or lock
    config_step = Step("config", time.monotonic() - t0, "ok", f"{loaded.path} is valid")
    if options.validate_config:
        return Outcome(int(ExitCode.OK), f"{loaded.path} is valid", environment=loaded.config.environment, steps=[config_step])
    if options.backup_retention_days is not None:
        from pytest_hokmdb.deploy.backup_hook import with_retention

        loaded = with_retention(loaded, options.backup_retention_days)
    notes = check_rules(loaded, options)
    if notes:
        config_step.detail += "; " + "; ".join(notes)
    if options.dry_run:
        return await _dry_run(loaded, options, config_step, started)
    logfile = DeployLogFile(loaded)
    with logfile:
        # The same actor the deploy lock and the deploy history record: HOKMDB_DEPLOY_ACTOR, else the OS user.
        log.info("deploy of %s to %s by %s", loaded.config.environment, options.target_revision, Actor.current())
        log.info("step config: ok in %.2fs (%s)", config_step.seconds, config_step.detail)
        outcome = await _deploy(loaded, options, config_step, logfile)
        outcome.duration_s = time.monotonic() - started
        outcome.log_path = logfile.path
        log.info("deploy finished: %s (exit %d) in %.1fs: %s", outcome.result, outcome.exit_code, outcome.duration_s, outcome.message)
        _export_metrics(loaded, outcome)
    return outcome


def _export_metrics(loaded: LoadedConfig, outcome: Outcome) -> None:
    """The deploy as Prometheus metrics, where the config's ``metrics`` section says; a target
    that fails is logged as a warning and changes nothing about the deploy."""
    from prometheus_client import CollectorRegistry

    from pytest_hokmdb.report.metrics import deploy_registry, export_configured

    def build() -> CollectorRegistry:
        return deploy_registry(loaded.config.environment, result=outcome.result, exit_code=outcome.exit_code,
                               duration_s=outcome.duration_s, revision=outcome.final_revision,
                               longest_locks=dict(outcome.longest_locks))

    for problem in export_configured(loaded, build, name="hokmdb_deploy"):
        log.warning("metrics not exported: %s", problem)


async def _dry_run(loaded: LoadedConfig, options: DeployOptions, config_step: Step, started: float) -> Outcome:
    """Validate, connect read-only, pre-flight without writing, lint, and render the SQL per revision."""
    from dataclasses import replace

    outcome = Outcome(int(ExitCode.OK), "", environment=loaded.config.environment, steps=[config_step])
    t0 = time.monotonic()
    target, _ = await resolve_deploy_target(loaded, replace(options, setup=options.setup))
    session = DeploySession(loaded, replace(target, read_only=True), kind="dry-run", log_path=None)
    session.target = replace(session.target, read_only=True)
    conn = await connect(session.target)
    try:
        current = await current_revision(conn)
        from pytest_hokmdb.deploy.lock import lock_holders

        holders = await lock_holders(conn)
        findings, unrecorded = ([], []) if current is None or not session.knows(current) else await history.verify_checksums(conn, session.script, current)
    finally:
        await conn.close()
    outcome.steps.append(Step("connect", time.monotonic() - t0, "ok", f"{target.dsn()} at revision {current or 'empty'}"
                              + (f"; a deploy is running now: {holders[0].describe()}" if holders else "")))
    outcome.from_revision = current
    if current is not None and not session.knows(current):
        outcome.exit_code = int(ExitCode.REFUSED)
        outcome.message = f"the database is at revision {current}, which this code does not know"
        return outcome
    target_rev = session.resolve_revision(options.target_revision)
    outcome.to_revision = target_rev
    t0 = time.monotonic()
    problems = [f.describe() for f in findings]
    drift = await check_drift(session.target, loaded.project_root, session.script, current)
    if drift.checked:
        problems += [f"drift: {item}" for item in drift.items]
    else:
        problems.append(f"the drift check could not run: {drift.reason}")
    pending = session.migrator(max_downtime_s=None).upgrade_path(current, target_rev) if steps.is_ancestor(session, current, target_rev) else []
    errors, warnings, skipped = steps.lint_pending(session, [r.revision for r in pending])
    problems += [f"lint: {e}" for e in errors]
    if skipped:
        problems.append(f"the lock-safety lint could not run: {skipped}")
    for item in problems:
        log.warning("pre-flight: %s", item)
    detail = f"{len(findings)} checksum finding(s), {len(unrecorded)} unrecorded; drift: " + (
        f"{len(drift.items)} vs {drift.reference}" if drift.checked else f"skipped ({drift.reason})"
    ) + "; lint: " + (f"skipped ({skipped})" if skipped else f"{len(errors)} error(s), {len(warnings)} warning(s)")
    outcome.steps.append(Step("pre-flight", time.monotonic() - t0, "failed" if problems else "ok", detail))
    t0 = time.monotonic()
    previous = current
    for rev in pending:
        outcome.sql[rev.revision] = offline_sql(session, previous, rev.revision)
        previous = rev.revision
    outcome.steps.append(Step("sql", time.monotonic() - t0, "ok", f"{len(pending)} revision(s) rendered offline; nothing was run"))
    outcome.duration_s = time.monotonic() - started
    if problems and not options.force:
        outcome.exit_code = int(ExitCode.REFUSED)
        outcome.message = f"dry run: the deploy would be refused: {'; '.join(problems[:5])}"
    else:
        outcome.message = f"dry run: {len(pending)} revision(s) would be applied ({current or 'empty'} -> {target_rev}); nothing was changed"
    outcome.final_revision = current
    return outcome


async def _deploy(loaded: LoadedConfig, options: DeployOptions, config_step: Step, logfile: DeployLogFile) -> Outcome:
    config = loaded.config
    outcome = Outcome(int(ExitCode.OK), "", environment=config.environment, steps=[config_step])
    session: DeploySession | None = None
    suites = gate_suites(loaded, options)
    try:
        t0 = time.monotonic()
        target, detail = await resolve_deploy_target(loaded, options)
        session = DeploySession(loaded, target, kind="deploy", log_path=logfile.path)
        session.steps = outcome.steps
        await session.find_monitor()
        session.steps.append(Step("setup" if options.setup else "target", time.monotonic() - t0, "ok", f"{target.dsn()}: {detail}"))
        async with session.step("lock") as info:
            await session.lock.acquire()
            terminated = await session.lock.wait_for_orphans(config.deploy.lock_wait_s)
            info["detail"] = f"advisory lock held by {session.actor.application_name('deploy')}" + (
                f"; terminated orphaned migration session(s) {terminated}" if terminated else ""
            )
        try:
            outcome = await _locked(session, options, outcome, suites)
        except (HokmdbError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # A lost deploy-lock session or a dead connection mid-step may be a switchover;
            # a refusal (e.g. a standby as the target) is what it says.
            if isinstance(exc, (Refused, ConfigError)):
                raise
            why = await steps.primary_changed(session)
            if why is None:
                raise
            log.warning("the deploy stopped: %s", redact(str(exc)))
            outcome = await steps.stop_for_new_primary(session, outcome, why, [])
    except HokmdbError as exc:
        outcome.exit_code = int(exc.exit_code)
        outcome.message = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    except Exception as exc:  # a bug or an unexpected driver error: recorded, logged with its traceback
        log.exception("the deploy stopped on an unexpected error")
        outcome.exit_code = int(ExitCode.CHECKS_FAILED)
        outcome.message = f"unexpected error: {type(exc).__name__}: {redact(str(exc))} (see the log)"
    except BaseException:
        outcome.exit_code = int(ExitCode.INTERRUPTED)
        outcome.message = "interrupted"
        raise
    finally:
        if session is not None:
            outcome.run_id = session.run_id
            if session.maintenance_on:
                await steps.maintenance_off(session)
            outcome.duration_s = time.monotonic() - session.started
            await session.finish_history(outcome)
            await session.lock.close()
    if session is not None and session.run_id is not None and options.notify and outcome.exit_code != ExitCode.DEPLOY_LOCKED:
        t0 = time.monotonic()
        title = {
            ExitCode.OK: f"{config.environment} deployed to {outcome.final_revision}",
            ExitCode.ROLLED_BACK: f"{config.environment} deploy failed and was rolled back to {outcome.final_revision or 'empty'}",
            ExitCode.ROLLBACK_FAILED: f"{config.environment} deploy failed and the ROLLBACK FAILED: act now",
            ExitCode.CONTRACT_WAITS: f"{config.environment} expand phase deployed to {outcome.final_revision}; the "
                                     "contract waits for the old release to stop",
            ExitCode.PRIMARY_CHANGED: f"{config.environment} deploy stopped: the primary changed (switchover/failover); run it again",
        }.get(outcome.exit_code, f"{config.environment} deploy did not run ({outcome.result})")
        outcome.notification_problems = await session.notify(outcome, title=title)
        outcome.steps.append(Step("notify", time.monotonic() - t0, "failed" if outcome.notification_problems else "ok",
                                  "; ".join(outcome.notification_problems) or "done (per the notifications config)"))
    return outcome


async def _locked(session: DeploySession, options: DeployOptions, outcome: Outcome, suites: list[str]) -> Outcome:
    """Steps 3 to 8, under the deploy lock (step 2); see ``steps`` for what each undoes."""
    plan = await steps.preflight(session, options, outcome)             # 3. refuse, or plan
    await steps.backup(session, options, plan)                          # 4. verified backup, or no deploy
    await steps.restore_point(session, plan)                            # 4. named restore point (pgBackRest)
    await steps.maintenance(session, options, plan)                     # 5. off again in _deploy's finally
    await steps.migrate(session, options, plan, outcome)                # 6. a failure is kept for step 8
    if plan.failure is not None and (why := await steps.primary_changed(session)):
        return await steps.stop_for_new_primary(session, outcome, why, plan.applied)  # switchover: re-run
    if plan.failure is None and await steps.gate(session, options, plan, outcome, suites):  # 7.
        return outcome
    return await steps.recover(session, plan, outcome, suites)          # 8. downgrade, else restore
