"""``database/rollback.py``: restore a backup, roll back in an emergency, list and clean up backups.

    rollback.py restore --environment E --backup-file PATH|s3://...|ID|latest [--dry-run]
    rollback.py restore --environment E --point-in-time "2024-01-15 14:30:00" [--verify-only]
    rollback.py restore --environment E --target-name NAME | --target-lsn 0/3000060 [--verify-only]
    rollback.py emergency --environment E "reason"
    rollback.py migration --environment E ...            (deploy orchestration)
    rollback.py list-backups [--environment E] [--json]
    rollback.py cleanup [--environment E] [--dry-run] [--days N] [--count N]
    rollback.py maintenance-off --environment E          (after a deploy killed with maintenance mode on)

Exit codes: 0 done; 1 the smoke suite failed after an emergency restore; 2 configuration;
3 cannot connect; 6 a deploy is running (maintenance-off); 7 backup/restore failed (the
target was not touched); 11 emergency rollback failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from pytest_hokmdb.cli.common import run_cli, setup_logging
from pytest_hokmdb.config import ENVIRONMENTS, load_config
from pytest_hokmdb.errors import ExitCode, HokmdbError

log = logging.getLogger("hokmdb.rollback")


def _common(p: argparse.ArgumentParser, *, environment_required: bool = True) -> None:
    if environment_required:
        p.add_argument("--environment", required=True, choices=ENVIRONMENTS)
    else:
        p.add_argument("--environment", default=os.environ.get("HOKMDB_ENVIRONMENT"), choices=ENVIRONMENTS,
                       help="default: $HOKMDB_ENVIRONMENT, else every environment with a config")
    p.add_argument("--db-config", "--config", dest="config_path", default=None, metavar="PATH")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-v", "--verbose", action="store_true")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rollback.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    restore = sub.add_parser("restore", help="restore a backup (or a moment, with pgBackRest) into a copy, verify it, "
                             "then swap it in")
    _common(restore)
    restore.add_argument("--backup-file", default=None, metavar="PATH|s3://...|ID|latest",
                         help="a logical backup; with a point-in-time target, optionally a pgBackRest backup label "
                         "(the moment must lie after it)")
    restore.add_argument("backup", nargs="?", default=None, metavar="BACKUP",
                         help="the same as --backup-file, as the runbooks write it: restore --environment E FILE")
    moment = restore.add_mutually_exclusive_group()
    moment.add_argument("--point-in-time", metavar="TIMESTAMP",
                        help="recover to this moment (ISO 8601; without an offset it is UTC), from physical backups "
                        "and archived WAL")
    moment.add_argument("--target-lsn", metavar="LSN", help="recover up to this WAL position (e.g. 0/3000060)")
    moment.add_argument("--target-name", metavar="NAME",
                        help="recover to a named restore point (deploy.py creates hokmdb-deploy-<id> before migrating)")
    restore.add_argument("--verify-only", action="store_true",
                         help="with a point-in-time target: recover and smoke-test the copy, then leave it running to "
                         "inspect; nothing is swapped")
    restore.add_argument("--dry-run", action="store_true", help="everything but the swap (the verified copy is dropped)")
    restore.add_argument("--no-smoke", action="store_true", help="skip the smoke suite on the copy before the swap")

    emergency = sub.add_parser("emergency", help="back to the newest verified backup, with a critical alert")
    _common(emergency, environment_required=False)
    emergency.set_defaults(environment=None)  # never $HOKMDB_ENVIRONMENT: an emergency names its environment
    emergency.add_argument("words", nargs="+", metavar="[ENVIRONMENT] REASON",
                           help="why (sent with the alert); the environment may come first instead of --environment, "
                           "as the runbooks write it: emergency production \"reason\"")

    try:
        from pytest_hokmdb.cli.rollback_migration import add_migration_parser
    except ImportError:
        migration = sub.add_parser("migration", help="roll back alembic revisions (deploy orchestration; not installed)")
        migration.add_argument("rest", nargs=argparse.REMAINDER)
    else:
        add_migration_parser(sub)

    listing = sub.add_parser("list-backups", help="the backups, newest first")
    _common(listing, environment_required=False)

    cleanup = sub.add_parser("cleanup", help="delete backups past retention, leftovers and kept databases; stop the "
                             "scratch servers of hokmdb processes that are gone (a killed full verification's)")
    _common(cleanup, environment_required=False)
    cleanup.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    cleanup.add_argument("--days", type=int, default=None, help="override backup.retention_days")
    cleanup.add_argument("--count", type=int, default=None, help="override backup.retention_count")
    cleanup.add_argument("--no-databases", action="store_true", help="leave kept and half-restored databases alone")

    off = sub.add_parser("maintenance-off", help="switch off maintenance mode a killed deploy left on (flag row, "
                         "NOTIFY, connection limit); refused while a deploy runs")
    _common(off)
    return p


def _environments(args: argparse.Namespace) -> list[str]:
    if args.environment:
        return [args.environment]
    from pytest_hokmdb.config.loader import config_path_for, find_project_root

    root = find_project_root()
    return [e for e in ENVIRONMENTS if config_path_for(e, args.config_path, root).is_file()]


def _configs(args: argparse.Namespace) -> list[Any]:
    """Loaded configs: the one asked for (errors are errors), else every loadable one."""
    from pytest_hokmdb.errors import ConfigError

    if args.environment:
        return [load_config(args.environment, args.config_path)]
    loaded = []
    for environment in _environments(args):
        try:
            loaded.append(load_config(environment, args.config_path))
        except ConfigError as exc:
            print(f"note: {environment} skipped: {exc.message.splitlines()[0]}", file=sys.stderr)
    return loaded


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def cmd_list(args: argparse.Namespace) -> int:
    from pytest_hokmdb.aio import run_sync
    from pytest_hokmdb.backup.physical import list_physical
    from pytest_hokmdb.backup.records import list_backups

    rows: list[dict[str, Any]] = []
    for loaded in _configs(args):
        rows += [{**r.summary(), "kind": "logical"} for r in list_backups(loaded, environment=loaded.config.environment)]
        rows += run_sync(list_physical(loaded))
    rows.sort(key=lambda r: str(r.get("time") or ""), reverse=True)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="backups, newest first")
    for column in ("id", "kind", "environment", "time", "revision", "size", "verified", "source", "location"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["id"], r["kind"], r["environment"], str(r.get("time") or ""), r.get("revision") or "-",
                      _size(r.get("size") or 0), _verified_label(r), r.get("source") or "?", r["location"])
    Console(width=200).print(table)
    if not rows:
        print("no backups found")
    return 0


def _verified_label(row: dict[str, Any]) -> str:
    verification = row.get("verification")
    if not verification:
        return "no"
    depth = verification.get("depth") or "restore+smoke"
    return f"{depth} {'passed' if verification.get('passed') else 'FAILED'}"


async def cmd_cleanup(args: argparse.Namespace) -> int:
    from pytest_hokmdb.backup.retention import plan_cleanup, run_cleanup

    code = 0
    output: list[dict[str, Any]] = []
    for index, loaded in enumerate(_configs(args)):
        environment = loaded.config.environment
        # Scratch servers are this machine's, not an environment's: swept (and listed) once.
        plan = await plan_cleanup(loaded, days=args.days, count=args.count, databases=not args.no_databases,
                                  servers=index == 0)
        problems = list(plan.problems)
        if not args.dry_run:
            problems += await run_cleanup(loaded, plan)
        document = plan.to_dict()
        document["dry_run"] = args.dry_run
        document["problems"] = problems
        output.append(document)
        if not args.json:
            verb = "would delete" if args.dry_run else "deleted"
            lines = plan.lines()
            print(f"{environment}: {verb} {len(lines)} item(s)")
            for line in lines:
                print(f"  - {line}")
            for line in document["keep"]:
                print(f"  keep {line}")
            for problem in problems:
                print(f"  problem: {problem}")
        if problems:
            code = int(ExitCode.BACKUP_ERROR)
    if args.json:
        print(json.dumps(output, indent=2))
    return code


def _recovery_target(args: argparse.Namespace) -> Any:
    """The --point-in-time / --target-lsn / --target-name asked for, or None."""
    from datetime import UTC, datetime

    from pytest_hokmdb.errors import ConfigError
    from pytest_hokmdb.pitr import RecoveryTarget

    if args.point_in_time:
        try:
            moment = datetime.fromisoformat(args.point_in_time.strip())
        except ValueError:
            raise ConfigError(
                f"--point-in-time {args.point_in_time!r} is not a timestamp",
                hint='write it as "2024-01-15 14:30:00" (UTC) or with an offset, "2024-01-15T14:30:00+03:30"',
            ) from None
        return RecoveryTarget.at_time(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    if args.target_lsn:
        try:
            return RecoveryTarget.at_lsn(args.target_lsn.strip())
        except (ValueError, HokmdbError) as exc:
            raise ConfigError(f"--target-lsn {args.target_lsn!r} is not a WAL position like 0/3000060: {exc}") from None
    if args.target_name:
        return RecoveryTarget.named(args.target_name)
    return None


async def cmd_restore_moment(args: argparse.Namespace, target: Any) -> int:
    from pytest_hokmdb.backup.physical import restore_to_moment
    from pytest_hokmdb.errors import ConfigError

    if args.backup_file or args.dry_run:
        raise ConfigError(
            "--backup-file and --dry-run do not combine with a point-in-time target: pgBackRest picks the newest "
            "backup before the target, and --verify-only is the dry run",
            hint="drop --backup-file; add --verify-only to inspect the recovered copy without swapping it in",
        )
    loaded = load_config(args.environment, args.config_path)
    result = await restore_to_moment(loaded, target, verify_only=args.verify_only, smoke=not args.no_smoke)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return 0
    print(result.recovered_to)
    if result.smoke is not None:
        print(f"smoke suite on the copy: {'passed' if result.smoke['passed'] else 'FAILED'} {result.smoke['summary']}")
    if result.swapped:
        print(f"swapped in; the previous data directory is kept at {result.previous_data_dir}")
        print(f"  next: take a new full backup (python database/backup.py --environment {args.environment} --type full)")
    for note in result.notes:
        print(f"note: {note}")
    return 0


async def cmd_restore(args: argparse.Namespace) -> int:
    from pytest_hokmdb.backup import restore_and_swap
    from pytest_hokmdb.errors import ConfigError

    target = _recovery_target(args)
    if target is not None:
        return await cmd_restore_moment(args, target)
    if args.verify_only:
        raise ConfigError("--verify-only needs a point-in-time target", hint="for a logical backup use --dry-run")
    if not args.backup_file:
        raise ConfigError(
            "restore needs --backup-file (a logical backup) or a point-in-time target "
            "(--point-in-time, --target-lsn, --target-name)"
        )
    loaded = load_config(args.environment, args.config_path)
    result = await restore_and_swap(loaded, args.backup_file, dry_run=args.dry_run, smoke_before_swap=not args.no_smoke)
    from pytest_hokmdb.report.metrics import export_configured, restore_registry

    for problem in export_configured(loaded, lambda: restore_registry(
            loaded.config.environment, backup_id=result.backup_id, duration_s=result.duration_s, swapped=result.swapped),
            name="hokmdb_restore"):
        print(f"warning: metrics not exported: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    elif result.dry_run:
        print(f"dry run: backup {result.backup_id} restored and verified; {result.database} was not touched")
    else:
        print(f"restored backup {result.backup_id} into {result.database}; previous database kept as {result.previous_database}")
    return 0


async def cmd_emergency(args: argparse.Namespace) -> int:
    from pytest_hokmdb.backup.emergency import emergency

    loaded = load_config(args.environment, args.config_path)
    result = await emergency(loaded, args.reason)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        state = "restored and validated" if result.ok else "FAILED"
        print(f"emergency rollback of {args.environment}: {state} (backup {result.backup_id or '-'})")
        for problem in result.problems:
            print(f"  - {problem}")
    if result.ok:
        return 0
    if result.restore is not None and result.restore.swapped:
        return int(ExitCode.CHECKS_FAILED)  # restored, but the smoke suite found problems
    return int(ExitCode.ROLLBACK_FAILED)


async def cmd_maintenance_off(args: argparse.Namespace) -> int:
    from pytest_hokmdb.db import connect
    from pytest_hokmdb.deploy import maintenance
    from pytest_hokmdb.deploy.lock import lock_holders
    from pytest_hokmdb.deploy.options import DeployOptions
    from pytest_hokmdb.deploy.orchestrator import resolve_deploy_target

    loaded = load_config(args.environment, args.config_path)
    # The role the deploy ran as: it set the connection limit, so it may restore it.
    target, _ = await resolve_deploy_target(loaded, DeployOptions(environment=args.environment, dry_run=True))
    conn = await connect(target.writable())
    try:
        holders = await lock_holders(conn)
        done = await maintenance.switch_off_left_on(conn, deploy_running=holders[0].describe() if holders else None)
    finally:
        await conn.close()
    print(done.replace("<env>", args.environment))
    return 0


def _positional_forms(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The runbooks' own forms, resolved to the options before anything runs: ``emergency
    production "reason"`` and ``restore --environment E FILE``. Ambiguity is a usage error."""
    if args.command == "emergency":
        words = list(args.words)
        if len(words) == 2 and words[0] in ENVIRONMENTS:
            if args.environment not in (None, words[0]):
                p.error(f"emergency: the environment is given twice ({args.environment} and {words[0]})")
            args.environment = words[0]
            words = words[1:]
        if len(words) == 1 and words[0] in ENVIRONMENTS and args.environment is None:
            p.error(f'emergency {words[0]}: the reason is missing: emergency {words[0]} "reason"')
        if len(words) != 1:
            p.error('emergency: give one reason, quoted: emergency --environment E "reason" (or emergency E "reason")')
        if args.environment is None:
            p.error('emergency: which environment? emergency --environment E "reason" (or emergency E "reason")')
        args.reason = words[0]
    if args.command == "restore" and args.backup is not None:
        if args.backup_file is not None and args.backup_file != args.backup:
            p.error(f"restore: the backup is given twice ({args.backup_file} and {args.backup})")
        args.backup_file = args.backup


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    _positional_forms(p, args)
    setup_logging(getattr(args, "verbose", False))

    def run() -> Any:
        if args.command == "list-backups":
            return cmd_list(args)
        if args.command == "cleanup":
            return cmd_cleanup(args)
        if args.command == "restore":
            return cmd_restore(args)
        if args.command == "emergency":
            return cmd_emergency(args)
        if args.command == "maintenance-off":
            return cmd_maintenance_off(args)
        if args.command == "migration":
            try:
                from pytest_hokmdb.cli.rollback_migration import run_migration
            except ImportError:
                print("error: migration rollback is not available in this build (pytest_hokmdb.deploy)", file=sys.stderr)
                return int(ExitCode.CONFIG_ERROR)
            return run_migration(args)
        raise AssertionError(args.command)  # pragma: no cover

    run_cli(run)
