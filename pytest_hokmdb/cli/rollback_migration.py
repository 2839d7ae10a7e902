"""``python database/rollback.py migration --environment NAME --steps N | --revision REV``.

Reverts applied revisions with alembic downgrade, on the same path as a deploy: the deploy
lock (a deploy and a rollback never overlap), the pre-flight check of the applied revisions'
files (their ``downgrade()`` is what runs), revision-by-revision steps with ``lock_timeout``,
``statement_timeout`` and retries, the gate at the destination revision, the history row
(``kind = 'rollback'``), ``rollback_<env>_<timestamp>.log`` and the notification.

Exit codes: 0 rolled back and the gate passed; 1 rolled back but the gate fails; 11 a
downgrade step failed (the database is at the last revision boundary reached: page someone);
2 config; 3 connection; 4 refused (approval on production, changed files, not an ancestor);
6 a deploy holds the lock.

``database/rollback.py`` (``pytest_hokmdb.cli.rollback``) registers the sub-command with
``add_migration_parser`` and runs it with ``run_migration``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

from pytest_hokmdb.config import ENVIRONMENTS, load_config
from pytest_hokmdb.deploy import history
from pytest_hokmdb.deploy.orchestrator import APPROVAL_ENV, DeployOptions, approved, resolve_deploy_target
from pytest_hokmdb.deploy.runner import RevisionFailed
from pytest_hokmdb.deploy.session import DeployLogFile, DeploySession, Outcome, Step
from pytest_hokmdb.errors import ExitCode, HokmdbError, Refused
from pytest_hokmdb.redaction import redact

log = logging.getLogger("hokmdb.rollback")


def add_migration_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "migration",
        help="revert applied revisions (alembic downgrade) under the deploy lock, then gate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--environment", required=True, choices=ENVIRONMENTS)
    p.add_argument("--config", "--db-config", dest="config_path", default=None, metavar="PATH")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--steps", type=int, default=None, metavar="N", help="revert the last N applied revisions")
    which.add_argument("--revision", default=None, metavar="REV", help="revert down to REV (REV stays applied; 'base' empties)")
    p.add_argument("--approve", action="store_true", help=f"approve a rollback that needs approval (production; or {APPROVAL_ENV}=<env>)")
    p.add_argument("--force", action="store_true", help="run despite changed revision files (never on production)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=run_migration)
    return p


def run_migration(args: argparse.Namespace) -> int:
    """Run the sub-command; returns the exit code (prints the summary)."""
    import sys

    from pytest_hokmdb.cli.deploy import render

    try:
        outcome = asyncio.run(rollback_migration(args))
    except HokmdbError as exc:  # refused or misconfigured before anything ran
        print(f"error: {redact(exc.message)}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {redact(exc.hint)}", file=sys.stderr)
        return int(exc.exit_code)
    render(outcome, title="rollback")
    return outcome.exit_code


def _destination(session: DeploySession, current: str | None, args: argparse.Namespace) -> str | None:
    if current is None:
        raise Refused("the database has no applied revision; there is nothing to roll back")
    chain = [r.revision for r in session.script.iterate_revisions(current, "base")]  # current first
    if args.revision is not None:
        if args.revision == "base":
            return None
        wanted = session.resolve_revision(args.revision)
        if wanted not in chain:
            raise Refused(f"revision {wanted} is not below the database's revision {current}", hint="a rollback only goes back")
        return wanted
    steps = int(args.steps)
    if steps < 1:
        raise Refused("--steps must be at least 1")
    if steps > len(chain):
        raise Refused(f"--steps {steps}: only {len(chain)} revision(s) are applied")
    return chain[steps] if steps < len(chain) else None


async def rollback_migration(args: argparse.Namespace) -> Outcome:
    started = time.monotonic()
    t0 = time.monotonic()
    loaded = load_config(args.environment, args.config_path)
    config = loaded.config
    outcome = Outcome(int(ExitCode.OK), "", environment=config.environment, steps=[Step("config", time.monotonic() - t0, "ok", f"{loaded.path} is valid")])
    options = DeployOptions(environment=args.environment, approve=bool(getattr(args, "approve", False)), force=bool(getattr(args, "force", False)))
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
                destination = _destination(session, current, args)
                outcome.to_revision = destination
                await session.start_history(from_revision=current, to_revision=destination, options={"steps": args.steps, "revision": args.revision})
                async with session.lock._use:
                    findings, _unrecorded = await history.verify_checksums(session.lock.conn, session.script, current)
                if findings and not options.force:
                    raise Refused(
                        "applied migration files changed since they were applied, so their downgrade() is not what ran: "
                        + "; ".join(f.describe() for f in findings),
                        hint="restore the original files, or pass --force (never on production)",
                    )
                info["detail"] = f"at {current}, rolling back to {destination or 'base'}"
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
