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
6. migrate revision by revision (``runner.py``): lock_timeout + statement_timeout, retries with
   backoff and jitter inside ``deploy.lock_retry_budget_s``, ``--max-downtime`` bound.
7. gate: ``pytest <suite>/`` for each of ``deploy.gate_suites`` (``run_gate``).
8. on failure after the first migration ran: downgrade to the start revision and gate again;
   if that fails, restore the pre-deploy backup and gate again.
9. history row, log file, notification.

Exit codes: 0 deployed, 10 failed and rolled back cleanly, 11 failed and the rollback failed
(page someone), 2 config, 3 connection, 4 refused, 6 locked, 7 backup, 1 gate failed with
nothing to roll back.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from pytest_hokmdb.config import LoadedConfig, load_config
from pytest_hokmdb.db import connect, embedded_cluster_for, resolve_target
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.deploy import history
from pytest_hokmdb.deploy.drift import check_drift
from pytest_hokmdb.deploy.runner import RevisionFailed
from pytest_hokmdb.deploy.session import DeployLogFile, DeploySession, Outcome, Step, StepFailed
from pytest_hokmdb.errors import ConnectionFailed, ExitCode, HokmdbError, Refused
from pytest_hokmdb.migrate import current_revision
from pytest_hokmdb.redaction import redact

log = logging.getLogger("hokmdb.deploy")

APPROVAL_ENV = "HOKMDB_DEPLOY_APPROVED"


@dataclass
class DeployOptions:
    environment: str
    config_path: str | None = None
    setup: bool = False
    target_revision: str = "head"
    dry_run: bool = False
    validate_config: bool = False
    backup_before_deploy: bool = False
    backup_retention_days: int | None = None
    skip_backup: bool = False
    run_smoke_tests: bool = False
    maintenance_mode: bool = False
    max_downtime_s: float | None = None
    force: bool = False
    approve: bool = False
    gate: bool = True  # the demo gates itself after seeding
    notify: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def recorded(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k not in ("extra", "config_path") and v not in (None, False)}


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


def backup_wanted(loaded: LoadedConfig, options: DeployOptions) -> tuple[bool, str]:
    if options.skip_backup:
        return False, "skipped (--skip-backup)"
    if options.backup_before_deploy:
        return True, "--backup-before-deploy"
    if loaded.config.backup.required_before_deploy:
        return True, f"backup.required_before_deploy in {loaded.path.name}"
    return False, "not requested and not required by the config"


def gate_suites(loaded: LoadedConfig, options: DeployOptions) -> list[str]:
    if not options.gate:
        return []
    suites = list(loaded.config.deploy.gate_suites)
    if options.run_smoke_tests and "smoke" not in suites:
        suites.insert(0, "smoke")
    return suites


async def resolve_deploy_target(loaded: LoadedConfig, options: DeployOptions) -> tuple[Target, str]:
    """The writable target; ``--setup`` starts the embedded cluster and creates role and database."""
    config = loaded.config
    if config.uses_embedded:
        cluster = embedded_cluster_for(loaded)
        if not options.setup and not cluster.is_running():
            raise ConnectionFailed(
                f"the embedded cluster of {config.environment} is not running ({cluster.data_dir})",
                hint=f"add --setup to create/start it, or run `hokmdb cluster start --environment {config.environment}`",
            )
        # A dry run touches nothing: it may start the cluster, never create or alter roles.
        target = await resolve_target(loaded, start=True, provision_embedded=options.setup and not options.dry_run)
        detail = "embedded cluster running; role and database ensured" if options.setup else "embedded cluster"
        return target.writable(), detail
    target = await resolve_target(loaded, start=False)
    detail = "external server"
    if options.setup:
        detail += " (--setup: hokmdb creates roles and databases only on its embedded cluster; this one must exist)"
    return target.writable(), detail


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


def lint_pending(session: DeploySession, revisions: list[str]) -> tuple[list[str], list[str], str | None]:
    """(errors, warnings, skipped reason) of the lock-safety lint for ``revisions``."""
    if not revisions:
        return [], [], None
    try:
        from pytest_hokmdb.migration.lint import LintError, MigrationLinter
        from pytest_hokmdb.migration.settings import load_settings
    except ImportError as exc:
        return [], [], f"the migration lint is not available ({exc})"
    try:
        linter = MigrationLinter(load_settings(session.loaded.project_root))
    except LintError as exc:
        return [], [], exc.message
    errors: list[str] = []
    warnings: list[str] = []
    for revision in revisions:
        result = linter.lint(revision)
        errors += [f.render() for f in result.errors]
        warnings += [f.render() for f in result.warnings]
    return errors, warnings, None


# -- the deploy ------------------------------------------------------------------------------------


async def run_deploy(options: DeployOptions) -> Outcome:
    """Run a deploy and return its outcome (exit code, steps, log path); never raises for operator errors."""
    started = time.monotonic()
    t0 = time.monotonic()
    loaded = load_config(options.environment, options.config_path)  # ConfigError -> exit 2 in the front door
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
        log.info("deploy of %s to %s by %s", loaded.config.environment, options.target_revision, os.environ.get("HOKMDB_DEPLOY_ACTOR") or "?")
        log.info("step config: ok in %.2fs (%s)", config_step.seconds, config_step.detail)
        outcome = await _deploy(loaded, options, config_step, logfile)
        outcome.duration_s = time.monotonic() - started
        outcome.log_path = logfile.path
        log.info("deploy finished: %s (exit %d) in %.1fs: %s", outcome.result, outcome.exit_code, outcome.duration_s, outcome.message)
    return outcome


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
    pending = session.migrator(max_downtime_s=None).upgrade_path(current, target_rev) if _is_ancestor(session, current, target_rev) else []
    errors, warnings, skipped = lint_pending(session, [r.revision for r in pending])
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


def _is_ancestor(session: DeploySession, current: str | None, target: str) -> bool:
    if current is None or current == target:
        return current != target
    try:
        return any(r.revision == current for r in session.script.iterate_revisions(target, "base"))
    except Exception:  # noqa: BLE001
        return False


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
        session.steps.append(Step("setup" if options.setup else "target", time.monotonic() - t0, "ok", f"{target.dsn()}: {detail}"))
        async with session.step("lock") as info:
            await session.lock.acquire()
            terminated = await session.lock.wait_for_orphans(config.deploy.lock_wait_s)
            info["detail"] = f"advisory lock held by {session.actor.application_name('deploy')}" + (
                f"; terminated orphaned migration session(s) {terminated}" if terminated else ""
            )
        outcome = await _locked(session, options, outcome, suites)
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
                await _maintenance_off(session)
            outcome.duration_s = time.monotonic() - session.started
            await session.finish_history(outcome)
            await session.lock.close()
    if session is not None and session.run_id is not None and options.notify and outcome.exit_code != ExitCode.DEPLOY_LOCKED:
        t0 = time.monotonic()
        title = {
            0: f"{config.environment} deployed to {outcome.final_revision}",
            10: f"{config.environment} deploy failed and was rolled back to {outcome.final_revision or 'empty'}",
            11: f"{config.environment} deploy failed and the ROLLBACK FAILED: act now",
        }.get(outcome.exit_code, f"{config.environment} deploy did not run ({outcome.result})")
        outcome.notification_problems = await session.notify(outcome, title=title)
        outcome.steps.append(Step("notify", time.monotonic() - t0, "failed" if outcome.notification_problems else "ok",
                                  "; ".join(outcome.notification_problems) or "done (per the notifications config)"))
    return outcome


async def _maintenance_off(session: DeploySession) -> None:
    from pytest_hokmdb.deploy import maintenance

    t0 = time.monotonic()
    try:
        conn = session.lock.conn
        if conn is None or conn.is_closed():
            conn = await connect(session.target)
            try:
                await maintenance.disable(conn)
            finally:
                await conn.close()
        else:
            async with session.lock._use:
                await maintenance.disable(conn)
        session.maintenance_on = False
        session.steps.append(Step("maintenance-off", time.monotonic() - t0, "ok", "flag cleared, connection limit restored"))
    except Exception as exc:  # noqa: BLE001 - reported loudly; the next deploy switches it off too
        session.steps.append(Step("maintenance-off", time.monotonic() - t0, "failed", redact(str(exc))))
        log.error("could not switch maintenance mode off: %s; run the deploy again or clear hokmdb_maintenance by hand", redact(str(exc)))


async def _locked(session: DeploySession, options: DeployOptions, outcome: Outcome, suites: list[str]) -> Outcome:
    loaded, config = session.loaded, session.config
    force = options.force

    # -- 3. pre-flight ----------------------------------------------------------------------------
    async with session.step("pre-flight") as info:
        start = await session.current_revision()
        outcome.from_revision = start
        outcome.final_revision = start
        if start is not None and not session.knows(start):
            raise Refused(
                f"the database is at revision {start}, which this code does not know",
                hint="deploy the code that matches the database (newer or branched code migrated it)",
            )
        target_rev = session.resolve_revision(options.target_revision)
        outcome.to_revision = target_rev
        if start is not None and start != target_rev and not _is_ancestor(session, start, target_rev):
            raise Refused(
                f"the database is at {start}, which is not below the target {target_rev}",
                hint=f"a deploy only moves forward; to go back use `python database/rollback.py migration --environment {config.environment} --revision {target_rev}`",
            )
        await session.start_history(from_revision=start, to_revision=target_rev, options=options.recorded())
        notes: list[str] = [f"at {start or 'empty'}, target {target_rev}"]
        async with session.lock._use:
            findings, unrecorded = await history.verify_checksums(session.lock.conn, session.script, start)
        if findings:
            for finding in findings:
                log.error("pre-flight: %s", finding.describe())
            if not force:
                raise Refused(
                    "applied migration files changed since they were applied: " + "; ".join(f.describe() for f in findings),
                    hint="restore the original files (git log -p on them); a change belongs in a new revision",
                )
            log.warning("--force: accepting the changed file(s) and recording their new checksums")
            unrecorded += [(f.revision, f.current, f.filename) for f in findings if f.current]
        for revision, digest, filename in unrecorded:
            async with session.lock._use:
                await history.record_revision(session.lock.conn, revision, digest, filename, how="adopted", deploy_id=session.run_id)
        notes.append(f"{len(history.applied_scripts(session.script, start))} applied revision file(s) verified"
                     + (f", {len(unrecorded)} recorded for the first time" if unrecorded else ""))
        drift = await check_drift(session.target, loaded.project_root, session.script, start)
        if drift.checked and drift.items:
            for item in drift.items:
                log.error("pre-flight drift: %s", item)
            if not force:
                raise Refused(
                    f"the live schema differs from revision {start or 'empty'} ({drift.reference}) in {len(drift.items)} place(s): "
                    + "; ".join(drift.items[:5]),
                    hint="someone changed the schema by hand: turn the change into a revision or revert it, then deploy",
                )
            log.warning("--force: deploying over %d drift item(s)", len(drift.items))
        if not drift.checked:
            # A pre-flight that could not look has not passed (fail closed).
            log.error("pre-flight: the drift check could not run: %s", drift.reason)
            if not force:
                raise Refused(
                    f"the schema drift check could not run: {drift.reason}; a deploy whose pre-flight cannot look does not start",
                    hint="fix what stops it (PostgreSQL binaries for the reference database); outside production, "
                    "--force deploys without it and records that in hokmdb_deploy_history",
                )
            log.warning("--force: deploying without a drift check")
            session.unverified.append(f"drift check could not run ({drift.reason})")
        notes.append(f"schema matches {drift.reference}" if drift.checked and not drift.items else
                     f"drift check FORCED past: {drift.reason}" if not drift.checked else f"{len(drift.items)} drift item(s) forced")
        pending = session.migrator(max_downtime_s=None).upgrade_path(start, target_rev) if start != target_rev else []
        errors, warnings, skipped = lint_pending(session, [r.revision for r in pending])
        for warning in warnings:
            log.warning("pre-flight lint: %s", warning)
        if skipped:
            log.error("pre-flight: the lock-safety lint could not run: %s", skipped)
            if not force:
                raise Refused(
                    f"the lock-safety lint of the {len(pending)} pending revision(s) could not run: {skipped}; "
                    "a deploy whose lint cannot look does not start",
                    hint="install squawk (`pip install squawk-cli`, a dependency of hokmdb that `make install` installs) "
                    "and deploy again; outside production, --force deploys unlinted and records that in hokmdb_deploy_history",
                )
            log.warning("--force: deploying %d revision(s) the lint could not check", len(pending))
            session.unverified.append(f"lint could not run ({skipped})")
            notes.append(f"lint FORCED past: {skipped}")
        elif errors:
            for error in errors:
                log.error("pre-flight lint: %s", error)
            if not force:
                raise Refused(f"{len(errors)} lint finding(s) of the pending revisions are errors by the project's policy: {errors[0]}",
                              hint="fix the revision or waive the rule in it with a reason (see migration_tests lint)")
            notes.append(f"{len(errors)} lint error(s) forced")
        else:
            notes.append(f"lint: {len(pending)} pending revision(s) within policy ({len(warnings)} warning(s))")
        info["detail"] = "; ".join(notes)

    # -- 4. backup ------------------------------------------------------------------------------
    want_backup, why = backup_wanted(loaded, options)
    if not pending:
        want_backup, why = False, "nothing to migrate"
    async with session.step("backup") as info:
        if want_backup:
            from pytest_hokmdb.deploy.backup_hook import take_verified_backup

            try:
                session.backup = await take_verified_backup(loaded, session.target, deploy_id=session.run_id)
            except HokmdbError as exc:
                raise StepFailed(f"no verified backup, so no deploy: {exc.message}", ExitCode.BACKUP_ERROR, hint=exc.hint) from None
            info["detail"] = f"backup {session.backup.id} verified ({why}) at {redact(str(session.backup.location))}"
        else:
            info["status"] = "skipped"
            info["detail"] = why

    # -- 4b. restore point ---------------------------------------------------------------------
    if config.physical is not None and pending:
        async with session.step("restore-point") as info:
            from pytest_hokmdb.deploy.backup_hook import restore_point_before_migrating

            try:
                point = await restore_point_before_migrating(loaded, deploy_id=session.run_id)
            except HokmdbError as exc:
                raise StepFailed(
                    f"no restore point, so no deploy: {exc.message}", ExitCode.BACKUP_ERROR, hint=exc.hint
                ) from None
            session.restore_point = point.name
            info["detail"] = (
                f"named restore point {point.name} at {point.lsn}; back to it with: python database/rollback.py "
                f"restore --environment {config.environment} --target-name {point.name}"
            )

    # -- 5. maintenance ------------------------------------------------------------------------
    if options.maintenance_mode and pending:
        from pytest_hokmdb.deploy import maintenance

        async with session.step("maintenance-on") as info:
            async with session.lock._use:
                state = await maintenance.enable(
                    session.lock.conn, reason=f"deploy #{session.run_id} to {target_rev}", actor=str(session.actor),
                    deploy_id=session.run_id, reserve=config.pool.max_size + 4,
                )
            session.maintenance_on = True
            info["detail"] = f"flag row set, connection limit on {state.limited}"
    else:
        from pytest_hokmdb.deploy import maintenance

        async with session.lock._use:
            leftover = await maintenance.state(session.lock.conn)
            if leftover is not None and leftover.enabled:
                log.warning("maintenance mode was left on by deploy #%s (killed?): switching it off", leftover.deploy_id)
                await maintenance.disable(session.lock.conn)

    # -- 6. migrate ------------------------------------------------------------------------------
    max_downtime = options.max_downtime_s if options.max_downtime_s is not None else config.deploy.max_downtime_s
    migrator = session.migrator(max_downtime_s=max_downtime)
    applied: list[str] = []
    failure: str | None = None
    async with session.step("migrate") as info:
        if not pending:
            info["detail"] = f"already at {target_rev}; nothing to apply"
        else:
            try:
                await session.apply(migrator, pending, applied)
            except RevisionFailed as exc:
                failure = exc.message
                info["status"] = "failed"
            except HokmdbError:
                raise
            except Exception as exc:  # whatever happened, revisions may have run: recover below
                log.exception("unexpected error while migrating")
                failure = f"unexpected error while migrating: {type(exc).__name__}: {redact(str(exc))}"
                info["status"] = "failed"
            b = migrator.budget
            info["detail"] = (
                f"{start or 'empty'} -> {' -> '.join(applied) or '(none)'}"
                + (f"; FAILED: {failure}" if failure else "")
                + f"; {b.lock_timeouts} lock timeout(s), {b.retry_spent_s:.1f}s of {b.retry_budget_s:g}s retry budget"
                + (f", {b.in_database_s:.1f}s of {b.max_downtime_s:g}s max downtime" if b.max_downtime_s is not None else f", {b.in_database_s:.1f}s inside the database")
            )
    outcome.final_revision = await session.current_revision()

    # -- 7. gate -------------------------------------------------------------------------------
    if failure is None:
        async with session.step("gate") as info:
            ok, summary = await session.gate(target_rev, suites, "post-deploy")
            info["detail"] = summary
            info["status"] = "ok" if ok else "failed"
        if ok:
            outcome.exit_code = int(ExitCode.OK)
            outcome.message = f"deployed {start or 'empty'} -> {target_rev}" + (f" ({len(applied)} revision(s))" if applied else " (nothing to apply)")
            if session.maintenance_on:
                await _maintenance_off(session)
            if session.backup is not None and options.backup_retention_days is not None:
                from pytest_hokmdb.deploy.backup_hook import apply_retention

                t0 = time.monotonic()
                detail = await apply_retention(loaded, options.backup_retention_days)
                session.steps.append(Step("backup-retention", time.monotonic() - t0, "ok", detail))
            return outcome
        failure = f"the gate failed after migrating to {target_rev}: {summary}"
        if not applied:
            outcome.exit_code = int(ExitCode.CHECKS_FAILED)
            outcome.message = f"{failure}; nothing was migrated, so there is nothing to roll back"
            return outcome

    # -- 8. recovery ---------------------------------------------------------------------------
    code, message = await session.recover(start, suites, failure)
    outcome.exit_code = code
    outcome.message = message
    try:
        outcome.final_revision = await session.current_revision()
    except Exception:  # noqa: BLE001
        pass
    return outcome
