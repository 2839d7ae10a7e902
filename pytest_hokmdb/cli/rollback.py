"""``database/rollback.py``: restore a backup, roll back in an emergency, list and clean up backups.

    rollback.py restore --environment E --backup-file PATH|s3://...|ID|latest [--dry-run]
    rollback.py emergency --environment E "reason"
    rollback.py migration --environment E ...            (deploy orchestration)
    rollback.py list-backups [--environment E] [--json]
    rollback.py cleanup [--environment E] [--dry-run] [--days N] [--count N]

Exit codes: 0 done; 1 the smoke suite failed after an emergency restore; 2 configuration;
3 cannot connect; 7 backup/restore failed (the target was not touched); 11 emergency
rollback failed.
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
from pytest_hokmdb.errors import ExitCode

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

    restore = sub.add_parser("restore", help="restore a backup into a new database, verify it, then swap it in")
    _common(restore)
    restore.add_argument("--backup-file", required=True, metavar="PATH|s3://...|ID|latest")
    restore.add_argument("--dry-run", action="store_true", help="everything but the swap (the verified copy is dropped)")
    restore.add_argument("--no-smoke", action="store_true", help="skip the smoke suite on the copy before the swap")

    emergency = sub.add_parser("emergency", help="back to the newest verified backup, with a critical alert")
    _common(emergency)
    emergency.add_argument("reason", help="why: sent with the alert")

    try:
        from pytest_hokmdb.deploy.rollback_cli import add_migration_parser
    except ImportError:
        migration = sub.add_parser("migration", help="roll back alembic revisions (deploy orchestration; not installed)")
        migration.add_argument("rest", nargs=argparse.REMAINDER)
    else:
        add_migration_parser(sub)

    listing = sub.add_parser("list-backups", help="the backups, newest first")
    _common(listing, environment_required=False)

    cleanup = sub.add_parser("cleanup", help="delete backups past retention, leftovers and kept databases")
    _common(cleanup, environment_required=False)
    cleanup.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    cleanup.add_argument("--days", type=int, default=None, help="override backup.retention_days")
    cleanup.add_argument("--count", type=int, default=None, help="override backup.retention_count")
    cleanup.add_argument("--no-databases", action="store_true", help="leave kept and half-restored databases alone")
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
    from pytest_hokmdb.backup.records import list_backups

    records = []
    for loaded in _configs(args):
        records += list_backups(loaded, environment=loaded.config.environment)
    records.sort(key=lambda r: r.created_at, reverse=True)
    if args.json:
        print(json.dumps([r.summary() for r in records], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="backups, newest first")
    for column in ("id", "environment", "time", "revision", "size", "verified", "location"):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(r.id, r.environment, r.manifest.get("started_at", ""), r.revision or "-", _size(r.size), r.verified_label(), r.location)
    Console(width=200).print(table)
    if not records:
        print("no backups found")
    return 0


async def cmd_cleanup(args: argparse.Namespace) -> int:
    from pytest_hokmdb.backup.retention import plan_cleanup, run_cleanup

    code = 0
    output: list[dict[str, Any]] = []
    for loaded in _configs(args):
        environment = loaded.config.environment
        plan = await plan_cleanup(loaded, days=args.days, count=args.count, databases=not args.no_databases)
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


async def cmd_restore(args: argparse.Namespace) -> int:
    from pytest_hokmdb.backup import restore_and_swap

    loaded = load_config(args.environment, args.config_path)
    result = await restore_and_swap(loaded, args.backup_file, dry_run=args.dry_run, smoke_before_swap=not args.no_smoke)
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


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
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
        if args.command == "migration":
            try:
                from pytest_hokmdb.deploy.rollback_cli import run_migration
            except ImportError:
                print("error: migration rollback is not available in this build (pytest_hokmdb.deploy)", file=sys.stderr)
                return int(ExitCode.CONFIG_ERROR)
            return run_migration(args)
        raise AssertionError(args.command)  # pragma: no cover

    run_cli(run)
