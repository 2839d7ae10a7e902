"""``database/backup.py``: take a backup (pg_dump -> age -> local directory or S3), verify it.

Made for cron: no prompts, plain log lines when not on a terminal, the backup's location
on stdout (``--json``: its summary), and an exit code to alert on: 0 stored and verified,
7 anything else (nothing that looks like a backup is left behind), 2 configuration.

    # production hourly, staging daily (crontab):
    0 * * * *  cd /srv/hokmdb && .venv/bin/python database/backup.py --environment production
    30 3 * * * cd /srv/hokmdb && .venv/bin/python database/backup.py --environment staging --verify full

Physical backups (environments with a ``physical`` section, pgBackRest): ``--type full|diff|incr``
takes one (the stanza is created and archiving checked first); ``--verify-repository`` runs
``pgbackrest verify`` and restores the newest backup into a copy that must pass the smoke suite.
With ``physical.backup_standby`` the data files are copied from the streaming standby (checked
first; no usable standby is exit 7, never a silent backup of the primary), and the output says so.

    0 2 * * 0  ... database/backup.py --environment production --type full
    0 2 * * 1-6 ... database/backup.py --environment production --type diff
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pytest_hokmdb.cli.common import run_cli, setup_logging
from pytest_hokmdb.config import ENVIRONMENTS, load_config
from pytest_hokmdb.errors import ExitCode


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="backup.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--environment", required=True, choices=ENVIRONMENTS)
    p.add_argument("--db-config", "--config", dest="config_path", default=None, metavar="PATH")
    p.add_argument("--verify", choices=("none", "quick", "full"), default=None, help="default: backup.verify_after_backup")
    p.add_argument("--destination", choices=("local", "s3"), default=None, help="default: s3 when a bucket is configured, else local")
    p.add_argument("--reason", default="manual", help="recorded in the manifest (e.g. cron, pre-deploy)")
    p.add_argument("--verify-existing", metavar="PATH|s3://...|ID|latest", default=None,
                   help="do not take a backup: verify this one (with --verify quick|full) and record the result")
    physical = p.add_mutually_exclusive_group()
    physical.add_argument("--type", choices=("full", "diff", "incr"), default=None,
                          help="take a physical (pgBackRest) backup of this type instead of a logical one")
    physical.add_argument("--verify-repository", action="store_true",
                          help="verify the pgBackRest repository and restore-and-smoke its newest backup")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)

    async def run() -> int:
        from pytest_hokmdb.backup import find_backup, take_backup, verify_backup

        loaded = load_config(args.environment, args.config_path)
        if args.type or args.verify_repository:
            return await _physical(loaded, args)
        if args.verify_existing:
            record = find_backup(loaded, args.verify_existing)
            depth = args.verify if args.verify in ("quick", "full") else "quick"
            result = await verify_backup(loaded, record, depth=depth)
            if result["passed"]:  # a verification restores the backup into a scratch database
                from pytest_hokmdb.report.metrics import restore_registry

                _export_metrics(loaded, lambda: restore_registry(loaded.config.environment, backup_id=record.id,
                                                                 duration_s=float(result.get("duration_s") or 0),
                                                                 swapped=False), "hokmdb_restore")
            if args.json:
                print(json.dumps({"backup": record.summary(), "verification": result}, indent=2))
            else:
                print(f"{record.location}: {depth} verification {'passed' if result['passed'] else 'FAILED'}")
                for problem in result["problems"]:
                    print(f"  - {problem}")
            return int(ExitCode.OK) if result["passed"] else int(ExitCode.BACKUP_ERROR)
        record = await take_backup(loaded, reason=args.reason, verify=args.verify, destination=args.destination)
        from pytest_hokmdb.report.metrics import backup_registry

        _export_metrics(loaded, lambda: backup_registry(loaded.config.environment, size_bytes=record.size,
                                                        verified=record.verified, revision=record.revision),
                        "hokmdb_backup")
        if args.json:
            print(json.dumps(record.summary(), indent=2))
        else:
            print(record.location)
        return int(ExitCode.OK)

    run_cli(run)


def _export_metrics(loaded: Any, build: Any, name: str) -> None:
    """As Prometheus metrics where the config's ``metrics`` says; a failing target is said on
    stderr and changes nothing about the backup."""
    from pytest_hokmdb.report.metrics import export_configured

    for problem in export_configured(loaded, build, name=name):
        print(f"warning: metrics not exported: {problem}", file=sys.stderr)


async def _physical(loaded: object, args: argparse.Namespace) -> int:
    from pytest_hokmdb.backup import physical

    if args.verify_repository:
        result = await physical.verify_repository(loaded)  # type: ignore[arg-type]
        if args.json:
            print(json.dumps(result, indent=2, default=str))
        else:
            print(f"pgBackRest repository, newest backup {result['backup']}: verification "
                  f"{'passed' if result['passed'] else 'FAILED'} ({result['repository']})")
            for problem in result["problems"]:
                print(f"  - {problem}")
        return int(ExitCode.OK) if result["passed"] else int(ExitCode.BACKUP_ERROR)
    backup = await physical.take_physical_backup(loaded, args.type, reason=args.reason)  # type: ignore[arg-type]
    source = physical.backup_source(loaded, backup.label)  # type: ignore[arg-type]
    if args.json:
        print(json.dumps({"id": backup.label, "kind": f"physical {backup.type}", "stopped_at": backup.stopped_at,
                          "lsn_stop": str(backup.lsn_stop), "size": backup.size, "repo_size": backup.repo_size,
                          "source": source}, indent=2, default=str))
    else:
        print(f"pgBackRest {backup.type} backup {backup.label} (from the {source})")
    return int(ExitCode.OK)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
