"""``database/deploy.py``: the main job. Moves a database to the target revision safely and
proves the result with pytest (see ``pytest_hokmdb.deploy.orchestrator`` for the sequence).

    python database/deploy.py --environment development --setup
    python database/deploy.py --environment staging --backup-before-deploy --maintenance-mode
    python database/deploy.py --environment production --approve --max-downtime 30
    python database/deploy.py --environment staging --dry-run          # SQL per revision; touches nothing
    python database/deploy.py --environment production --rehearse      # on a restored copy under game load

Production needs approval: ``--approve``, or ``HOKMDB_DEPLOY_APPROVED=production`` in the
environment (set by the CI job that holds the approval). Exit codes: 0 deployed; 10 failed
and rolled back cleanly; 11 failed and the rollback failed (page someone); 12 the primary
changed mid-deploy (switchover/failover: run again); 1 the gate failed with nothing to roll
back; 2 config; 3 connection; 4 refused; 6 another deploy holds the lock; 7 no verified backup.
A rehearsal exits with the deploy's code on the copy when that failed, 11 when its rollback
failed, 1 when game transactions failed, 0 when production can expect none of these.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pytest_hokmdb.cli.common import run_cli, setup_logging
from pytest_hokmdb.config import ENVIRONMENTS
from pytest_hokmdb.errors import ExitCode
from pytest_hokmdb.redaction import redact

if TYPE_CHECKING:  # imported where used: `deploy.py --help` and bad arguments need none of the deploy
    from pytest_hokmdb.deploy.orchestrator import DeployOptions
    from pytest_hokmdb.deploy.session import Outcome


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deploy.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--environment", required=True, choices=ENVIRONMENTS)
    p.add_argument("--config", "--db-config", dest="config_path", default=None, metavar="PATH", help="config directory or file")
    p.add_argument("--setup", action="store_true", help="create/start the embedded cluster, role and database (development/testing)")
    p.add_argument("--target-revision", default="head", metavar="REV", help="default: the code's head")
    p.add_argument("--dry-run", action="store_true", help="validate, connect, pre-flight, lint and print the SQL per revision; touches nothing")
    p.add_argument("--validate-config", action="store_true", help="validate the configuration and exit")
    p.add_argument("--backup-before-deploy", action="store_true", help="take a verified backup first (always when the config requires it)")
    p.add_argument("--backup-retention", type=int, default=None, metavar="DAYS", help="retention of that backup (overrides backup.retention_days)")
    p.add_argument("--skip-backup", action="store_true", help="do not take the backup the config requires (never on production)")
    p.add_argument("--run-smoke-tests", action="store_true", help="gate with the smoke suite even if deploy.gate_suites does not list it")
    p.add_argument("--maintenance-mode", action="store_true", help="flag maintenance and cap connections while migrating")
    p.add_argument("--max-downtime", type=float, default=None, metavar="SECONDS", help="bound on the time revisions may hold the game's tables")
    p.add_argument("--expand-only", action="store_true",
                   help="stop before the first contract revision ([[tool.hokmdb.migrations.transitions]]): "
                        "the expand phase, before the game release that needs it rolls out")
    p.add_argument("--force", action="store_true", help="deploy despite pre-flight findings (changed files, drift, lint); never on production")
    p.add_argument("--approve", action="store_true", help="approve a deploy that needs approval (production)")
    r = p.add_argument_group("rehearsal (deploy.rehearsal): nothing touches the environment's database")
    r.add_argument("--rehearse", action="store_true",
                   help="restore the newest verified backup into a local topology, deploy it under simulated game "
                        "load, roll it back, and print what production should expect")
    r.add_argument("--rehearsal-backup", default="latest-verified", metavar="ID",
                   help="the verified backup to rehearse on (default: the newest verified one)")
    r.add_argument("--rehearsal-clients", type=int, default=8, metavar="N", help="simulated game sessions (0: no load)")
    r.add_argument("--game-statement-timeout", type=int, default=3000, metavar="MS",
                   help="the game sessions' statement_timeout during the rehearsal")
    r.add_argument("--keep-rehearsal", action="store_true", help="keep the copy, its standby and PgBouncer afterwards")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def rehearse(args: argparse.Namespace) -> int:
    """Run a rehearsal and print its report; the exit code is its verdict's."""
    import asyncio

    from pytest_hokmdb.deploy.rehearsal import RehearsalOptions, run_rehearsal

    rejected = [flag for flag, on in (("--dry-run", args.dry_run), ("--validate-config", args.validate_config),
                                      ("--setup", args.setup), ("--backup-before-deploy", args.backup_before_deploy))
                if on]
    if rejected:
        from pytest_hokmdb.errors import Refused

        raise Refused(f"--rehearse runs on a restored copy; {', '.join(rejected)} does not apply to it",
                      hint="drop it, or run the real deploy without --rehearse")
    options = RehearsalOptions(
        environment=args.environment, config_path=args.config_path, target_revision=args.target_revision,
        backup=args.rehearsal_backup, clients=args.rehearsal_clients,
        game_statement_timeout_ms=args.game_statement_timeout, maintenance_mode=args.maintenance_mode,
        max_downtime_s=args.max_downtime, keep=args.keep_rehearsal,
    )
    report = asyncio.run(run_rehearsal(options))
    print(f"rehearsal of the {report.environment} deploy on a restored copy: exit {report.exit_code}")
    for line in report.lines():
        print(redact(line))
    print(f"  verdict      {redact(report.verdict())}")
    return report.exit_code


def options_from(args: argparse.Namespace) -> DeployOptions:
    from pytest_hokmdb.deploy.orchestrator import DeployOptions

    return DeployOptions(
        environment=args.environment,
        config_path=args.config_path,
        setup=args.setup,
        target_revision=args.target_revision,
        dry_run=args.dry_run,
        validate_config=args.validate_config,
        backup_before_deploy=args.backup_before_deploy,
        backup_retention_days=args.backup_retention,
        skip_backup=args.skip_backup,
        run_smoke_tests=args.run_smoke_tests,
        maintenance_mode=args.maintenance_mode,
        max_downtime_s=args.max_downtime,
        force=args.force,
        expand_only=args.expand_only,
        approve=args.approve,
    )


def render(outcome: Outcome, *, title: str, out=None) -> None:  # type: ignore[no-untyped-def]
    out = out if out is not None else sys.stdout  # looked up per call: a test may swap sys.stdout
    for revision, sql in outcome.sql.items():
        print(f"-- ===== revision {revision} =====", file=out)
        print(redact(sql).rstrip(), file=out)
        print(file=out)
    verdict = {ExitCode.OK: "OK", ExitCode.ROLLED_BACK: "ROLLED BACK", ExitCode.ROLLBACK_FAILED: "ROLLBACK FAILED",
               ExitCode.PRIMARY_CHANGED: "STOPPED: PRIMARY CHANGED",
               ExitCode.CONTRACT_WAITS: "EXPAND DEPLOYED, CONTRACT WAITS"}.get(
        outcome.exit_code, "FAILED")
    print(f"{title} on {outcome.environment}: {verdict} (exit {outcome.exit_code}) in {outcome.duration_s:.1f}s", file=out)
    for step in outcome.steps:
        mark = "" if step.status == "ok" else f" [{step.status}]"
        print(f"  {step.name:<19} {step.seconds:6.2f}s  {redact(step.detail)}{mark}", file=out)
    if outcome.message:
        print(f"  result: {redact(outcome.message)}", file=out)
    if outcome.log_path:
        print(f"  log: {outcome.log_path}", file=out)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.rehearse:
        run_cli(lambda: rehearse(args))
        return

    async def run() -> int:
        from pytest_hokmdb.deploy.orchestrator import run_deploy

        outcome = await run_deploy(options_from(args))
        render(outcome, title="dry run" if args.dry_run else "config" if args.validate_config else "deploy")
        return outcome.exit_code

    run_cli(run)
