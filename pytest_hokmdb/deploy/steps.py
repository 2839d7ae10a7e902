"""Steps 3 to 8 of a deploy (README "Deploying"), one function each, in the order they run.

``orchestrator.run_deploy`` reads as the list: config and rules (1), the lock (2), then
these, then history and notification (9). Each step says what it changes and what undoes it:

3. ``preflight``: changes nothing but the history row; refuses (exit 4) before any lock on a
   game table: unknown or later revision, changed revision files, schema drift, lint errors,
   and a check that could not run (unless ``--force`` outside production, recorded).
4. ``backup`` and ``restore_point``: a verified backup / a named pgBackRest restore point,
   or no deploy (exit 7). Nothing to undo: they only add.
5. ``maintenance``: the flag row and connection cap; switched off by the orchestrator's
   ``finally`` whatever happens (and a flag a killed deploy left is cleared here).
6. ``migrate``: revision by revision; a failure is not raised but kept in the plan, because
   revisions may have run: step 8 brings the database back.
7. ``gate``: the gate suites held to the target revision.
8. ``recover``: downgrade to the start revision and gate again; else restore the pre-deploy
   backup and gate again.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pytest_hokmdb.db import connect
from pytest_hokmdb.deploy import history
from pytest_hokmdb.deploy.drift import check_drift
from pytest_hokmdb.deploy.options import DeployOptions, backup_wanted, gate_suites
from pytest_hokmdb.deploy.runner import RevisionFailed
from pytest_hokmdb.deploy.session import DeploySession, Outcome, Step, StepFailed
from pytest_hokmdb.errors import ConfigError, ExitCode, HokmdbError, Refused
from pytest_hokmdb.redaction import redact

log = logging.getLogger("hokmdb.deploy")


@dataclass
class Plan:
    """What the pre-flight established and the later steps act on."""

    start: str | None
    target: str
    pending: list[Any]
    applied: list[str] = field(default_factory=list)
    failure: str | None = None  # why step 6 or 7 failed: step 8 recovers
    # Why a rollback of the pending revisions could not be done online: then step 4 requires a
    # verified backup (or a restore point), so a failed deploy is never stranded between revisions.
    undo_problems: list[str] = field(default_factory=list)
    # Expand/contract pairs of the project, by contract revision (``transitions``).
    contracts: dict[str, Any] = field(default_factory=dict)
    # Why the deploy stopped before a contract revision, and with which exit code (0 for
    # --expand-only, 8 when the old release still uses what the contract removes).
    held: str | None = None
    held_code: int = 0
    held_before: str | None = None


# -- 3. pre-flight -----------------------------------------------------------------------------


async def preflight(session: DeploySession, options: DeployOptions, outcome: Outcome) -> Plan:
    """Refuse, or return the plan. Writes only the history row (``running``) and checksums of
    revisions applied before hokmdb tracked them."""
    config, force = session.config, options.force
    async with session.step("pre-flight") as info:
        if await session.in_recovery():
            raise Refused(
                f"{session.target.host}:{session.target.port} is a standby (in recovery): a deploy there can write nothing",
                hint="point database.host/port at the primary (with Patroni, the leader: patronictl list)",
            )
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
        if start is not None and start != target_rev and not is_ancestor(session, start, target_rev):
            raise Refused(
                f"the database is at {start}, which is not below the target {target_rev}",
                hint=f"a deploy only moves forward; to go back use `python database/rollback.py migration --environment {config.environment} --revision {target_rev}`",
            )
        await session.start_history(from_revision=start, to_revision=target_rev, options=options.recorded())
        notes: list[str] = [f"at {start or 'empty'}, target {target_rev}"]
        notes.append(await _verify_applied_files(session, start, force))
        pending = session.migrator(max_downtime_s=None).upgrade_path(start, target_rev) if start != target_rev else []
        notes.append(await _require_no_drift(session, start, force, pending[0] if pending else None))
        notes.append(_require_lint(session, pending, force))
        if pending:
            notes.append(await _require_gate_before(session, start, gate_suites(session.loaded, options), force))
        undo = undo_problems(session, [r.revision for r in pending])
        if undo:
            notes.append(f"{len(undo)} revision(s) cannot be undone online, so a verified backup is required")
        contracts = {t.contract: t for t in transitions(session)}
        waiting = [r.revision for r in pending if r.revision in contracts]
        if waiting:
            notes.append(f"contract revision(s) {', '.join(waiting)} pending: applied only when nothing uses what they remove")
        info["detail"] = "; ".join(notes)
    return Plan(start, target_rev, pending, undo_problems=undo, contracts=contracts)


def transitions(session: DeploySession) -> list[Any]:
    """The project's expand/contract pairs, checked against the history (exit 2 when one
    names a revision the code does not have, or a contract that is not above its expand)."""
    from pytest_hokmdb.migration.settings import load_settings

    found = list(load_settings(session.loaded.project_root).transitions)
    for t in found:
        for revision in (t.expand, t.contract):
            if not session.knows(revision):
                raise ConfigError(f"[[tool.hokmdb.migrations.transitions]] names revision {revision}, which the "
                                  "migration history does not have")
        if not is_ancestor(session, t.expand, t.contract):
            raise ConfigError(f"[[tool.hokmdb.migrations.transitions]]: expand {t.expand} is not below contract {t.contract}")
    return found


async def _watch(session: DeploySession, refs: list[str]) -> Any:
    from pytest_hokmdb.deploy.transitions import observe

    window = session.config.deploy.transition_window_s
    log.info("watching %s for %gs: does anything still use %s?", session.target.dbname, window, ", ".join(refs))
    return await observe(session.monitor_target or session.target, refs, window,
                         stats_database=session.config.deploy.statement_stats_database)


async def hold_contract(session: DeploySession, options: DeployOptions, plan: Plan, rev: Any) -> bool:
    """True to stop before ``rev``: a contract revision while the old release may still use
    what it removes (the evidence of ``transitions.observe``), or ``--expand-only``."""
    t = plan.contracts.get(rev.revision)
    if t is None:
        return False
    plan.held_before = rev.revision
    advice = (f"roll out the release that uses {', '.join(t.new)}"
              + (f" ({t.note})" if t.note else "")
              + f", stop the old one, then deploy again: `python database/deploy.py --environment {session.config.environment}`")
    if options.expand_only:
        plan.held, plan.held_code = (f"--expand-only: stopped before contract revision {rev.revision}, which removes "
                                     f"{', '.join(t.old)}; {advice}"), int(ExitCode.OK)
        return True
    use = await _watch(session, t.old)
    if not use.in_use:
        log.info("contract %s: %s", rev.revision, use.describe())
        plan.held_before = None
        return False
    if options.force:
        log.warning("--force: applying contract revision %s although %s", rev.revision, use.describe())
        session.unverified.append(f"contract {rev.revision} forced past: {use.describe()}")
        plan.held_before = None
        return False
    plan.held, plan.held_code = (f"contract revision {rev.revision} was not applied: it removes {', '.join(t.old)} and "
                                 f"{use.describe()}; {advice}"), int(ExitCode.CONTRACT_WAITS)
    log.warning("%s", plan.held)
    return True


async def _require_gate_before(session: DeploySession, start: str | None, suites: list[str], force: bool) -> str:
    """The gate at the current revision, before anything changes: a check that already fails
    there would fail the post-deploy gate too, and the deploy would migrate, roll back under
    load and end in exit 11 for a condition it did not cause. Refused (exit 4) instead, naming
    the checks; --force (never on production) records them and the later gates tolerate
    exactly those."""
    if not suites:
        return "no gate suites configured"
    ok, summary = await session.gate(start, suites, "pre-deploy")
    if ok:
        return f"gate at {start or 'empty'} passed before any change ({summary})"
    names = sorted(set(session.last_failures)) or [summary]
    if not force:
        raise Refused(
            f"the gate already fails at {start or 'an empty database'}, before this deploy changed anything: "
            f"{', '.join(names[:8])}{' and more' if len(names) > 8 else ''}; deploying now could only end in a "
            "rollback under load",
            hint=f"fix what these checks report first (pytest smoke/ --environment {session.config.environment} "
                 "-k <check> shows one), then deploy; outside production, --force deploys anyway, records them and "
                 "judges the deploy by every other check",
        )
    session.tolerated_failures = frozenset(session.last_failures)
    session.unverified.append(f"gate failing before the deploy: {', '.join(names)}")
    log.warning("--force: the gate already fails at %s (%s); the post-deploy gate will judge every other check",
                start or "empty", ", ".join(names))
    return f"gate at {start or 'empty'} FAILED before any change ({', '.join(names)}), accepted with --force"


async def _verify_applied_files(session: DeploySession, start: str | None, force: bool) -> str:
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
    return (f"{len(history.applied_scripts(session.script, start))} applied revision file(s) verified"
            + (f", {len(unrecorded)} recorded for the first time" if unrecorded else ""))


def _unexpected_key(item: str) -> str | None:
    """``section key`` of a drift item that reports something the reference does not have."""
    return item.removeprefix("unexpected ").split(":", 1)[0] if item.startswith("unexpected ") else None


def _can_leave_partial_state(script: Any) -> bool:
    """Only a revision with work outside its transaction (an autocommit block, an online
    backfill) can be cut off half-way; a transactional one is all or nothing."""
    try:
        source = Path(script.path).read_text()
    except OSError:
        return False
    return "autocommit_block" in source or "backfill(" in source


async def _own_leftovers(session: DeploySession, drift_items: list[str], nxt: Any) -> tuple[list[str], str]:
    """Drift that is the next revision's own, left by a run of it that was killed before it
    was recorded: objects it creates (a backfill's trigger, a concurrent build's index).
    Returns (those items, a note); its INVALID indexes are dropped, as its re-run builds them."""
    if nxt is None or not _can_leave_partial_state(nxt):
        return [], ""
    ahead = await check_drift(session.target, session.loaded.project_root, session.script, nxt.revision)
    if not ahead.checked:
        return [], ""
    unexpected_ahead = {_unexpected_key(i) for i in ahead.items} - {None}
    theirs = [i for i in drift_items if (key := _unexpected_key(i)) is not None and key not in unexpected_ahead]
    if not theirs:
        return [], ""
    dropped = await _drop_invalid_leftovers(session, theirs)
    for item in theirs:
        log.warning("pre-flight: %s is a leftover of revision %s, which was interrupted before it was recorded; "
                    "it runs again from the start", item, nxt.revision)
    note = (f"{len(theirs)} leftover(s) of revision {nxt.revision}'s interrupted run accepted (it runs again)"
            + (f", INVALID index(es) dropped: {', '.join(dropped)}" if dropped else ""))
    return theirs, note


async def _drop_invalid_leftovers(session: DeploySession, items: list[str]) -> list[str]:
    """DROP INDEX CONCURRENTLY the INVALID indexes among ``items`` (a killed concurrent build's)."""
    conn = await connect(replace(session.target, read_only=False, statement_timeout_ms=0))
    dropped: list[str] = []
    try:
        rows = await conn.fetch(
            "SELECT format('%I.%I', n.nspname, c.relname) AS qualified, n.nspname || '.' || c.relname AS name "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE NOT i.indisvalid AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid)"
        )
        for row in rows:
            if any(item.startswith(f"unexpected index {row['name']}:") for item in items):
                await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {row['qualified']}")
                log.warning("pre-flight: dropped INVALID index %s, left by a killed CREATE INDEX CONCURRENTLY", row["name"])
                dropped.append(row["name"])
    finally:
        await conn.close()
    return dropped


async def _require_no_drift(session: DeploySession, start: str | None, force: bool, nxt: Any = None) -> str:
    drift = await check_drift(session.target, session.loaded.project_root, session.script, start)
    leftovers_note = ""
    if drift.checked and drift.items:
        theirs, leftovers_note = await _own_leftovers(session, drift.items, nxt)
        drift.items = [i for i in drift.items if i not in theirs]
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
    verdict = (f"schema matches {drift.reference}" if drift.checked and not drift.items else
               f"drift check FORCED past: {drift.reason}" if not drift.checked else f"{len(drift.items)} drift item(s) forced")
    return verdict + (f" ({leftovers_note})" if leftovers_note else "")


def _require_lint(session: DeploySession, pending: list[Any], force: bool) -> str:
    errors, warnings, skipped = lint_pending(session, [r.revision for r in pending])
    for warning in warnings:
        log.info("pre-flight lint warning: %s", warning)  # each in the deploy log; one line on the console
    if warnings:
        rules = sorted({m.group(1) for w in warnings if (m := re.search(r"\[([\w-]+)\]", w))})
        log.warning("pre-flight lint: %d warning(s) in the pending revisions (%s): within policy, not blocking; "
                    "each is in the deploy log%s", len(warnings), ", ".join(rules) or "see the log",
                    f" {session.log_path}" if session.log_path else "")
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
        return f"lint FORCED past: {skipped}"
    if errors:
        for error in errors:
            log.error("pre-flight lint: %s", error)
        if not force:
            raise Refused(f"{len(errors)} lint finding(s) of the pending revisions are errors by the project's policy: {errors[0]}",
                          hint="fix the revision or waive the rule in it with a reason (see migration_tests lint)")
        return f"{len(errors)} lint error(s) forced"
    return f"lint: {len(pending)} pending revision(s) within policy ({len(warnings)} warning(s))"


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
        config = session.loaded.config
        linter = MigrationLinter(load_settings(session.loaded.project_root),
                                 budgets=(config.database.lock_timeout_ms, config.deploy.migration_statement_timeout_ms))
    except LintError as exc:
        return [], [], exc.message
    errors: list[str] = []
    warnings: list[str] = []
    for revision in revisions:
        result = linter.lint(revision)
        errors += [f.render() for f in result.errors]
        warnings += [f.render() for f in result.warnings]
    return errors, warnings, None


def undo_problems(session: DeploySession, revisions: list[str]) -> list[str]:
    """Why a rollback of ``revisions`` could not be done online (see MigrationLinter.undo_problems)."""
    if not revisions:
        return []
    try:
        from pytest_hokmdb.migration.lint import LintError, MigrationLinter
        from pytest_hokmdb.migration.settings import load_settings

        linter = MigrationLinter(load_settings(session.loaded.project_root))
    except (ImportError, LintError):
        return []  # the pre-flight lint already refused a deploy whose lint cannot run
    return [problem for revision in revisions for problem in linter.undo_problems(revision)]


def is_ancestor(session: DeploySession, current: str | None, target: str) -> bool:
    if current is None or current == target:
        return current != target
    try:
        return any(r.revision == current for r in session.script.iterate_revisions(target, "base"))
    except Exception:  # noqa: BLE001
        return False


# -- 4. backup and restore point ----------------------------------------------------------------


async def backup(session: DeploySession, options: DeployOptions, plan: Plan) -> None:
    """A verified backup when asked or required (exit 7 without one); nothing to undo."""
    want_backup, why = backup_wanted(session.loaded, options)
    if plan.undo_problems and session.config.physical is None and not want_backup:
        reasons = "; ".join(plan.undo_problems)
        if options.skip_backup and not options.force:
            raise Refused(
                f"--skip-backup, but a failed deploy could not be rolled back online: {reasons}",
                hint="deploy with a backup (drop --skip-backup); outside production, --force deploys without one",
            )
        if not options.skip_backup:
            want_backup, why = True, f"required: a failed deploy could not be rolled back online ({reasons})"
    if not plan.pending:
        want_backup, why = False, "nothing to migrate"
    async with session.step("backup") as info:
        if want_backup:
            from pytest_hokmdb.deploy.backup_hook import take_verified_backup

            try:
                session.backup = await take_verified_backup(session.loaded, session.target, deploy_id=session.run_id)
            except HokmdbError as exc:
                raise StepFailed(f"no verified backup, so no deploy: {exc.message} (a backup is {why})", ExitCode.BACKUP_ERROR,
                                 hint=exc.hint) from None
            info["detail"] = f"backup {session.backup.id} verified ({why}) at {redact(str(session.backup.location))}"
        else:
            info["status"] = "skipped"
            info["detail"] = why


async def restore_point(session: DeploySession, plan: Plan) -> None:
    """With physical backups configured, a named restore point before migrating, or no deploy."""
    config = session.config
    if config.physical is None or not plan.pending:
        return
    async with session.step("restore-point") as info:
        from pytest_hokmdb.deploy.backup_hook import restore_point_before_migrating

        try:
            point = await restore_point_before_migrating(session.loaded, deploy_id=session.run_id)
        except HokmdbError as exc:
            raise StepFailed(
                f"no restore point, so no deploy: {exc.message}", ExitCode.BACKUP_ERROR, hint=exc.hint
            ) from None
        session.restore_point = point.name
        info["detail"] = (
            f"named restore point {point.name} at {point.lsn}; back to it with: python database/rollback.py "
            f"restore --environment {config.environment} --target-name {point.name}"
        )


# -- 5. maintenance --------------------------------------------------------------------------------


async def maintenance(session: DeploySession, options: DeployOptions, plan: Plan) -> None:
    """Maintenance mode when asked; undone by ``maintenance_off`` (the orchestrator's finally)."""
    from pytest_hokmdb.deploy import maintenance as flag

    if options.maintenance_mode and plan.pending:
        async with session.step("maintenance-on") as info:
            async with session.lock._use:
                state = await flag.enable(
                    session.lock.conn, reason=f"deploy #{session.run_id} to {plan.target}", actor=str(session.actor),
                    deploy_id=session.run_id, reserve=session.config.pool.max_size + 4,
                    app_role=session.config.database.user,
                )
            session.maintenance_on = True
            info["detail"] = f"flag row set, connection limit on {state.limited}"
            await resume_leftover_pause(session)
            if session.config.deploy.maintenance_pause_pooler:
                info["detail"] += "; " + await pause_pool(session)
        return
    async with session.lock._use:
        leftover = await flag.state(session.lock.conn)
        if leftover is not None and leftover.enabled:
            log.warning("maintenance mode was left on by deploy #%s (killed?): switching it off", leftover.deploy_id)
            await flag.disable(session.lock.conn)
    await resume_leftover_pause(session)


def _pool_admin(session: DeploySession) -> tuple[Any, str]:
    topology = session.topology()
    if topology.problem:
        raise HokmdbError(f"cannot pause the game's pool: {topology.problem}")
    admin = topology.pooler_admin
    if admin is None:
        raise ConfigError("deploy.maintenance_pause_pooler is set but the environment has no PgBouncer (topology.pgbouncer)")
    return admin, f"{admin.host}:{admin.port}/{admin.database}"


async def pause_pool(session: DeploySession) -> str:
    """PAUSE the game's database in PgBouncer; recorded first, so a kill leaves a trace to resume."""
    from pytest_hokmdb.db.topology import pooler_command
    from pytest_hokmdb.deploy import maintenance as flag

    admin, where = _pool_admin(session)
    async with session.lock._use:
        await flag.record_pause(session.lock.conn, where)
    session.pool_paused = True
    try:
        await pooler_command(admin, f"PAUSE {admin.database}", timeout_s=session.config.deploy.pause_timeout_s)
    except HokmdbError:
        await resume_pool(session)  # a PAUSE that timed out is still pending: cancel it
        raise
    log.warning("the game's database %s is PAUSED in PgBouncer for the migration: new transactions wait there", where)
    return f"PgBouncer paused {where}"


async def resume_pool(session: DeploySession) -> None:
    """RESUME what ``pause_pool`` paused; safe to call twice. Failing to resume is loud: the game waits."""
    from pytest_hokmdb.db.topology import pooler_command
    from pytest_hokmdb.deploy import maintenance as flag

    if not session.pool_paused:
        return
    admin, where = _pool_admin(session)
    t0 = time.monotonic()
    try:
        await pooler_command(admin, f"RESUME {admin.database}", timeout_s=10)
    except HokmdbError as exc:
        if "is not paused" not in exc.message:
            session.steps.append(Step("pool-resume", time.monotonic() - t0, "failed", redact(exc.message)))
            log.error("could not RESUME %s in PgBouncer: %s; the game's transactions wait. Run `hokmdb topology resume "
                      "--environment %s` now", where, exc.message, session.config.environment)
            return
    session.pool_paused = False
    conn = session.lock.conn
    if conn is not None and not conn.is_closed():
        async with session.lock._use:
            await flag.record_pause(conn, None)
    session.steps.append(Step("pool-resume", time.monotonic() - t0, "ok", f"PgBouncer resumed {where}"))
    log.info("PgBouncer resumed %s", where)


async def resume_leftover_pause(session: DeploySession) -> None:
    """A deploy killed while the pool was paused: resume it before anything else."""
    from pytest_hokmdb.deploy import maintenance as flag

    async with session.lock._use:
        leftover = await flag.paused_pool(session.lock.conn)
    if leftover is None:
        return
    log.warning("PgBouncer pool %s was left paused by a deploy that did not finish (killed?): resuming it", leftover)
    session.pool_paused = True
    await resume_pool(session)


async def maintenance_off(session: DeploySession) -> None:
    from pytest_hokmdb.deploy import maintenance

    await resume_pool(session)
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


# -- 6. migrate ----------------------------------------------------------------------------------


async def migrate(session: DeploySession, options: DeployOptions, plan: Plan, outcome: Outcome) -> None:
    """Apply the pending revisions; a failure is kept in ``plan.failure`` for step 8."""
    config = session.config
    max_downtime = options.max_downtime_s if options.max_downtime_s is not None else config.deploy.max_downtime_s
    migrator = session.migrator(max_downtime_s=max_downtime)
    before = await session.table_stats() if plan.pending else {}
    async with session.step("migrate") as info:
        if not plan.pending:
            info["detail"] = f"already at {plan.target}; nothing to apply"
        else:
            async def hold(rev: Any) -> bool:
                return await hold_contract(session, options, plan, rev)

            try:
                await session.apply(migrator, plan.pending, plan.applied, hold if plan.contracts else None)
                if plan.held:
                    plan.target = plan.applied[-1] if plan.applied else plan.start  # type: ignore[assignment]
            except RevisionFailed as exc:
                plan.failure = exc.message
                info["status"] = "failed"
            except HokmdbError:
                raise
            except Exception as exc:  # whatever happened, revisions may have run: recover below
                log.exception("unexpected error while migrating")
                plan.failure = f"unexpected error while migrating: {type(exc).__name__}: {redact(str(exc))}"
                info["status"] = "failed"
            finally:
                await resume_pool(session)  # the pause covers the migration only; the gate sees the pool serving
            b = migrator.budget
            info["detail"] = (
                f"{plan.start or 'empty'} -> {' -> '.join(plan.applied) or '(none)'}"
                + (f"; FAILED: {plan.failure}" if plan.failure else "")
                + (f"; stopped before contract {plan.held_before}" if plan.held_before else "")
                + f"; {b.lock_timeouts} lock timeout(s), {b.retry_spent_s:.1f}s of {b.retry_budget_s:g}s retry budget"
                + (f" ({b.waited_for_holders_s:.1f}s waiting for long transactions)" if b.waited_for_holders_s else "")
                + f"; {b.in_database_s:.1f}s inside the database, {b.downtime_s():.2f}s holding locks that block writes"
                + (f" of {b.max_downtime_s:g}s max downtime" if b.max_downtime_s is not None else "")
                + (f"; {b.replay_wait_s:.1f}s waiting for standbys to replay (peak {b.replay_peak_bytes} bytes behind)"
                   if migrator.replicas is not None else "")
                + f"; {b.watch.summary()}"
            )
            outcome.longest_locks = {t: round(sec, 3) for t, (sec, _mode) in b.watch.longest.items()}
            if migrator.replicas is not None:
                outcome.replay_wait_s, outcome.replay_peak_bytes = round(b.replay_wait_s, 3), b.replay_peak_bytes
    outcome.final_revision = await session.current_revision()
    if plan.applied and plan.failure is None:
        await session.tidy(before)


# -- 7. gate ---------------------------------------------------------------------------------------


async def gate(session: DeploySession, options: DeployOptions, plan: Plan, outcome: Outcome, suites: list[str]) -> bool:
    """The gate suites held to the target. True when the deploy is finished (``outcome``
    filled): it passed, or it failed with nothing migrated, so there is nothing to recover."""
    async with session.step("gate") as info:
        ok, summary = await session.gate(plan.target, suites, "post-deploy")
        info["detail"] = summary
        info["status"] = "ok" if ok else "failed"
    if ok:
        outcome.exit_code = int(ExitCode.OK) if plan.held is None else plan.held_code
        outcome.message = f"deployed {plan.start or 'empty'} -> {plan.target}" + (
            f" ({len(plan.applied)} revision(s))" if plan.applied else " (nothing to apply)") + (
            f"; {plan.held}" if plan.held else "")
        if session.maintenance_on:
            await maintenance_off(session)
        if session.backup is not None and options.backup_retention_days is not None:
            from pytest_hokmdb.deploy.backup_hook import apply_retention

            t0 = time.monotonic()
            detail = await apply_retention(session.loaded, options.backup_retention_days)
            session.steps.append(Step("backup-retention", time.monotonic() - t0, "ok", detail))
        return True
    plan.failure = f"the gate failed after migrating to {plan.target}: {summary}"
    if not plan.applied:
        outcome.exit_code = int(ExitCode.CHECKS_FAILED)
        outcome.message = f"{plan.failure}; nothing was migrated, so there is nothing to roll back"
        return True
    return False


# -- 8. recovery -----------------------------------------------------------------------------------


async def _target_is_writable_primary(target: Any) -> bool | None:
    """True/False when the target answers (in recovery or not); None when it does not."""
    import asyncpg

    try:
        conn = await connect(replace(target, connect_timeout_s=3))
    except HokmdbError:
        return None
    try:
        return not await conn.fetchval("SELECT pg_is_in_recovery()")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return None
    finally:
        await conn.close()


def _patroni_rest_urls(session: DeploySession) -> list[str]:
    """Patroni's REST API of the environment: a configured ``topology.patroni``, or the local
    Patroni topology hokmdb runs (``topology.local: "patroni"``)."""
    from pytest_hokmdb.db.resolve import local_patroni_for

    topology = session.config.topology
    if topology is not None and topology.patroni is not None:
        return list(topology.patroni.rest_urls)
    local = local_patroni_for(session.loaded)
    return list(local.rest_urls) if local is not None else []


async def primary_changed(session: DeploySession, *, settle_s: float = 30.0) -> str | None:
    """Why the deploy's target is no longer the writable primary (a Patroni switchover or
    failover, a demotion), or None. Asked after a failure, before any rollback: rolling back
    through a lost or demoted session cannot work and would page someone for a routine
    switchover. While the target does not answer, Patroni is given ``settle_s`` to name the
    new leader (a switchover stops the old primary before the new one is promoted)."""
    import asyncio

    from pytest_hokmdb.db.resolve import patroni_leader

    target = session.target
    rest_urls = _patroni_rest_urls(session)
    deadline = time.monotonic() + (settle_s if rest_urls else 0.0)
    while True:
        writable = await _target_is_writable_primary(target)
        if writable is False:
            return f"{target.host}:{target.port} is now a standby (demoted)"
        if rest_urls:
            try:
                host, port = patroni_leader(rest_urls)
            except HokmdbError as exc:
                host, port, reason = None, None, exc.message
            else:
                reason = ""
            if host is not None and (host, port) != (target.host, target.port):
                return f"Patroni's leader is now {host}:{port}, not {target.host}:{target.port}"
            if writable and host is not None:
                return None  # the target is still the leader and answers: not a switchover
            if time.monotonic() >= deadline:
                return reason or None
            await asyncio.sleep(0.5)
            continue
        return None


async def stop_for_new_primary(session: DeploySession, outcome: Outcome, why: str, applied: list[str]) -> Outcome:
    """Stop at a revision boundary: each revision is one transaction, so the one in flight died
    with its session; the new primary holds exactly the revisions that committed before."""
    current: str | None = None
    try:
        from pytest_hokmdb.db.resolve import resolve_target

        fresh = await resolve_target(session.loaded, start=False)
        conn = await connect(replace(fresh, user=session.target.user, password=session.target.password, read_only=True))
        try:
            from pytest_hokmdb.migrate import current_revision

            current = await current_revision(conn)
        finally:
            await conn.close()
    except Exception as exc:  # noqa: BLE001 - the message still says what to do
        log.warning("could not read the new primary's revision: %s", redact(str(exc)))
    outcome.exit_code = int(ExitCode.PRIMARY_CHANGED)
    outcome.final_revision = current
    at = f"at revision {current}" if current else "at the revision it reached"
    outcome.message = (
        f"the primary changed during the deploy ({why}); the revision in flight was rolled back with its session and "
        f"the database is {at}, a revision boundary{f' (applied before the change: {chr(44).join(applied)})' if applied else ''}. "
        "Nothing was rolled back on purpose. Run the deploy again: it continues on the new primary and applies "
        "only what is missing"
    )
    log.error("%s", outcome.message)
    return outcome


async def recover(session: DeploySession, plan: Plan, outcome: Outcome, suites: list[str]) -> Outcome:
    """Back to the start revision (downgrade, gate; else the pre-deploy backup, gate)."""
    assert plan.failure is not None
    destination, floor = await rollback_floor(session, plan)
    code, message = await session.recover(destination, suites, plan.failure)
    outcome.exit_code = code
    outcome.message = message + (f"; not below {destination}: {floor}" if floor else "")
    try:
        outcome.final_revision = await session.current_revision()
    except Exception:  # noqa: BLE001
        pass
    return outcome


async def rollback_floor(session: DeploySession, plan: Plan) -> tuple[str | None, str | None]:
    """Where an automatic rollback may go: the start revision, unless that undoes an expand
    revision whose new columns something uses (or nobody could tell): then the expand,
    where the old and the new release both work. (destination, why it is not the start)."""
    floor: tuple[int, str, str] | None = None
    for t in transitions(session):
        if t.expand not in plan.applied:
            continue
        use = await _watch(session, t.new)
        if use.in_use:
            position = plan.applied.index(t.expand)
            if floor is None or position > floor[0]:
                floor = (position, t.expand, f"undoing {t.expand} would remove {', '.join(t.new)} and {use.describe()}; "
                         f"to go further back, roll the release back first, then `python database/rollback.py migration "
                         f"--environment {session.config.environment} --revision {plan.start or 'base'}`")
        else:
            log.info("rollback may undo expand %s: %s", t.expand, use.describe())
    if floor is None:
        return plan.start, None
    log.warning("the rollback stops at %s: %s", floor[1], floor[2])
    return floor[1], floor[2]


def _undoes(session: DeploySession, revision: str, current: str | None, destination: str | None) -> bool:
    """Whether going from ``current`` down to ``destination`` reverts ``revision``."""
    if current is None:
        return False
    at_or_below_current = revision == current or is_ancestor(session, revision, current)
    kept = destination is not None and (revision == destination or is_ancestor(session, revision, destination))
    return at_or_below_current and not kept


async def expand_undo_refusal(session: DeploySession, current: str | None, destination: str | None, *,
                              force: bool) -> str | None:
    """A migration rollback that would undo an expand revision while something uses what it
    added is refused (exit 4), from the same evidence as the deploy's; ``--force`` (never on
    production) proceeds and records it. Returns a note for the pre-flight."""
    notes: list[str] = []
    for t in transitions(session):
        if not _undoes(session, t.expand, current, destination):
            continue
        use = await _watch(session, t.new)
        if not use.in_use:
            notes.append(f"expand {t.expand} may be undone: {use.describe()}")
            continue
        problem = f"rolling back to {destination or 'base'} undoes expand {t.expand}, which removes {', '.join(t.new)}, and {use.describe()}"
        if not force:
            raise Refused(problem, hint=f"roll the game release back first (it needs {', '.join(t.new)}), then roll back; "
                          f"or roll back only to {t.expand} (--revision {t.expand}), where both releases work")
        log.warning("--force: %s", problem)
        session.unverified.append(f"expand {t.expand} undone by force: {use.describe()}")
        notes.append(f"expand {t.expand} undone with --force although in use")
    return "; ".join(notes) or None
