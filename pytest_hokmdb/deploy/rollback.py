"""A migration rollback: revert applied revisions with alembic downgrade, on the same path as a
deploy. The deploy lock (a deploy and a rollback never overlap), the pre-flight check of the
applied revisions' files (their ``downgrade()`` is what runs), revision-by-revision steps with
``lock_timeout``, ``statement_timeout`` and retries, the gate at the destination revision, the
history row (``kind = 'rollback'``), ``rollback_<env>_<timestamp>.log`` and the notification.

``database/rollback.py migration`` (``cli.rollback_migration``) and deploy rehearsals call it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pytest_hokmdb.config import load_config
from pytest_hokmdb.deploy import history, steps
from pytest_hokmdb.deploy.orchestrator import APPROVAL_ENV, DeployOptions, approved, resolve_deploy_target
from pytest_hokmdb.deploy.runner import RevisionFailed
from pytest_hokmdb.deploy.session import DeployLogFile, DeploySession, Outcome, Step
from pytest_hokmdb.errors import ExitCode, HokmdbError, Refused
from pytest_hokmdb.migrate import check_revision
from pytest_hokmdb.redaction import redact

log = logging.getLogger("hokmdb.rollback")


@dataclass(frozen=True)
class RollbackRequest:
    """What to revert: ``steps`` revisions, or down to ``revision`` (which stays applied; 'base' empties)."""

    environment: str
    config_path: str | None = None
    steps: int | None = None
    revision: str | None = None
    approve: bool = False
    force: bool = False


def _destination(session: DeploySession, current: str | None, request: RollbackRequest) -> str | None:
    if current is None:
        raise Refused("the database has no applied revision; there is nothing to roll back")
    chain = [r.revision for r in session.script.iterate_revisions(current, "base")]  # current first
    if request.revision is not None:
        if request.revision == "base":
            return None
        wanted = session.resolve_revision(request.revision)
        if wanted not in chain:
            raise Refused(f"revision {wanted} is not below the database's revision {current}", hint="a rollback only goes back")
        return wanted
    steps = int(request.steps or 0)
    if steps < 1:
        raise Refused("--steps must be at least 1")
    if steps > len(chain):
        raise Refused(f"--steps {steps}: only {len(chain)} revision(s) are applied")
    return chain[steps] if steps < len(chain) else None


async def rollback_migration(request: RollbackRequest) -> Outcome:
    """Revert to the requested revision under the deploy lock, gate, record and notify."""
    started = time.monotonic()
    t0 = time.monotonic()
    loaded = load_config(request.environment, request.config_path)
    # A revision this code does not have is a usage error (exit 2), said before any connection,
    # lock or log file, as a deploy's --target-revision is.
    check_revision(request.revision, project_root=loaded.project_root)
    config = loaded.config
    outcome = Outcome(int(ExitCode.OK), "", environment=config.environment, steps=[Step("config", time.monotonic() - t0, "ok", f"{loaded.path} is valid")])
    options = DeployOptions(environment=request.environment, approve=request.approve, force=request.force)
    if config.approval_required and approved(options, config.environment) is None:
        raise Refused(f"a migration rollback on {config.environment} needs approval", hint=f"pass --approve or set {APPROVAL_ENV}={config.environment}")
    if options.force and not config.force_allowed:
        raise Refused(f"--force is not allowed on {config.environment}")
    logfile = DeployLogFile(loaded, kind="rollback")
    session: DeploySession | None = None
    with logfile:
        try:
            target, _detail = await resolve_deploy_target(loaded, options)
            session = DeploySession(loaded, target, kind="rollback", log_path=logfile.path)
            session.steps = outcome.steps
            await session.find_monitor()
            async with session.step("lock") as info:
                await session.lock.acquire()
                await session.lock.wait_for_orphans(config.deploy.lock_wait_s)
                info["detail"] = f"advisory lock held by {session.actor.application_name('rollback')}"
            async with session.step("pre-flight") as info:
                current = await session.current_revision()
                outcome.from_revision = outcome.final_revision = current
                if current is not None and not session.knows(current):
                    raise Refused(f"the database is at revision {current}, which this code does not know; its downgrade is not here")
                destination = _destination(session, current, request)
                outcome.to_revision = destination
                await session.start_history(from_revision=current, to_revision=destination, options={"steps": request.steps, "revision": request.revision})
                async with session.lock._use:
                    findings, _unrecorded = await history.verify_checksums(session.lock.conn, session.script, current)
                if findings and not options.force:
                    raise Refused(
                        "applied migration files changed since they were applied, so their downgrade() is not what ran: "
                        + "; ".join(f.describe() for f in findings),
                        hint="restore the original files, or pass --force (never on production)",
                    )
                info["detail"] = f"at {current}, rolling back to {destination or 'base'}"
                refusal = await steps.expand_undo_refusal(session, current, destination, force=options.force)
                if refusal:
                    info["detail"] += f"; {refusal}"
            migrator = session.migrator(max_downtime_s=None)
            before = await session.table_stats()
            async with session.step("migrate") as info:
                try:
                    reverted = await session.revert(migrator, current, destination)
                    info["detail"] = f"reverted {' -> '.join(reverted)}; now at {destination or 'base'}"
                except RevisionFailed as exc:
                    info["status"] = "failed"
                    info["detail"] = exc.message
                    outcome.exit_code = int(ExitCode.ROLLBACK_FAILED)
                    outcome.message = f"{exc.message}; the database stays at the last revision boundary reached"
            outcome.final_revision = await session.current_revision()
            if outcome.exit_code == ExitCode.OK:
                from pytest_hokmdb.deploy.orchestrator import gate_suites

                await session.tidy(before)

                async with session.step("gate") as info:
                    ok, summary = await session.gate(destination, gate_suites(loaded, options), "post-rollback")
                    info["detail"] = summary
                    info["status"] = "ok" if ok else "failed"
                outcome.exit_code = int(ExitCode.OK if ok else ExitCode.CHECKS_FAILED)
                outcome.message = f"rolled back {current} -> {destination or 'base'}" + ("" if ok else f"; the gate FAILED: {summary}")
        except HokmdbError as exc:
            outcome.exit_code = int(exc.exit_code)
            outcome.message = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
        except Exception as exc:
            log.exception("the rollback stopped on an unexpected error")
            outcome.exit_code = int(ExitCode.ROLLBACK_FAILED)
            outcome.message = f"unexpected error: {type(exc).__name__}: {redact(str(exc))} (see the log)"
        finally:
            outcome.duration_s = time.monotonic() - started
            outcome.log_path = logfile.path
            if session is not None:
                outcome.run_id = session.run_id
                await session.finish_history(outcome)
                await session.lock.close()
        log.info("rollback finished: %s (exit %d): %s", outcome.result, outcome.exit_code, outcome.message)
    if session is not None and session.run_id is not None:
        t0 = time.monotonic()
        title = {
            ExitCode.OK: f"{config.environment} rolled back to {outcome.final_revision or 'base'}",
            ExitCode.ROLLBACK_FAILED: f"{config.environment} migration rollback FAILED at {outcome.final_revision}: act now",
        }.get(outcome.exit_code, f"{config.environment} migration rollback: {outcome.result}")
        outcome.notification_problems = await session.notify(outcome, title=title)
        outcome.steps.append(Step("notify", time.monotonic() - t0, "failed" if outcome.notification_problems else "ok",
                                  "; ".join(outcome.notification_problems) or "done (per the notifications config)"))
    return outcome
