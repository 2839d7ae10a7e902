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

The work is ``deploy.rollback.rollback_migration``; ``database/rollback.py``
(``pytest_hokmdb.cli.rollback``) registers the sub-command with
``add_migration_parser`` and runs it with ``run_migration``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from pytest_hokmdb.config import ENVIRONMENTS
from pytest_hokmdb.deploy.options import APPROVAL_ENV
from pytest_hokmdb.errors import HokmdbError
from pytest_hokmdb.redaction import redact


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
    from pytest_hokmdb.deploy.rollback import RollbackRequest, rollback_migration

    request = RollbackRequest(environment=args.environment, config_path=args.config_path, steps=args.steps,
                              revision=args.revision, approve=bool(args.approve), force=bool(args.force))
    try:
        outcome = asyncio.run(rollback_migration(request))
    except HokmdbError as exc:  # refused or misconfigured before anything ran
        print(f"error: {redact(exc.message)}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {redact(exc.hint)}", file=sys.stderr)
        return int(exc.exit_code)
    render(outcome, title="rollback")
    return outcome.exit_code
