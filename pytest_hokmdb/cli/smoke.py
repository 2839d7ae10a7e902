"""``database/smoke_tests.py``: run the smoke suite through pytest and print a table.

Exit code 0 only when every check passed (skipped = not applicable, listed with its
reason); 1 when a check failed; 2 for configuration errors; 3 when the database cannot
be reached at all (checked before pytest starts, so the operator gets one line, not
thirty identical errors).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.cli.common import run_cli, setup_logging
from pytest_hokmdb.config import ENVIRONMENTS, load_config
from pytest_hokmdb.errors import ExitCode
from pytest_hokmdb.gate import GateResult, run_gate


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smoke_tests.py", description="Post-deploy checks of a live database, through pytest.")
    p.add_argument("--environment", required=True, choices=ENVIRONMENTS)
    p.add_argument("--db-config", "--config", dest="config_path", default=None, metavar="PATH")
    p.add_argument("--output", default=None, metavar="FILE", help="also write the JSON result here")
    p.add_argument("--target-revision", default=None, metavar="REV")
    p.add_argument("--full-scan", action="store_true", help="data-integrity checks over all data")
    p.add_argument("-k", dest="keyword", default=None, metavar="EXPR", help="only checks matching this pytest -k expression")
    p.add_argument("--alluredir", default=None, metavar="DIR", help="write Allure results")
    p.add_argument("--restore-from-backup", default=None, metavar="PATH|s3://...|latest", help="run against a scratch restore of this backup")
    p.add_argument("--keep-restored", action="store_true", help="keep the scratch database of --restore-from-backup")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


async def _preflight(loaded) -> None:  # type: ignore[no-untyped-def]
    from pytest_hokmdb.db import connect, resolve_target  # here, not at the top: --help stays quick

    conn = await connect(await resolve_target(loaded))
    await conn.close()


def render(result: GateResult, out=None) -> None:  # type: ignore[no-untyped-def]
    out = out if out is not None else sys.stdout  # looked up per call: a test may swap sys.stdout
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, width=max(shutil.get_terminal_size((140, 20)).columns, 120))
    table = Table(title=f"smoke checks on {result.document.get('environment', '?')}", show_lines=False)
    for column in ("check", "status", "ms", "measured / threshold", "message"):
        table.add_column(column, overflow="fold")
    style = {"passed": "green", "failed": "red", "error": "red", "skipped": "yellow", "waived": "magenta",
             "not verified": "red"}
    for test in result.tests:
        status = test.get("status") or test["outcome"]
        if test["outcome"] == "error":
            status = "error"
        elif test.get("waiver"):
            status = "waived"
        elif test.get("verified") is False:
            status = "not verified"
        measured = "" if test.get("measured") is None else f"{test['measured']} / {test.get('threshold')}"
        name = test.get("check") or test["nodeid"].split("::")[-1]
        table.add_row(name, f"[{style.get(status, 'white')}]{status}[/]", f"{test['duration_s'] * 1000:.0f}", measured, test.get("message", ""))
    console.print(table)
    summary = ", ".join(f"{v} {k}" for k, v in sorted(result.summary.items())) or "no checks ran"
    for waiver in result.document.get("waivers", []):
        until = f", until {waiver['expires']}" if waiver.get("expires") else ""
        console.print(f"waived: {waiver['check']} ({waiver['reason']}{until}) - not verified on this run")
    console.print(f"result: {'PASSED' if result.passed else 'FAILED'} ({summary}) in {result.document.get('duration_s', 0):.1f}s")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)

    def run() -> int:
        loaded = load_config(args.environment, args.config_path)
        from pytest_hokmdb.migrate import check_revision

        check_revision(args.target_revision, project_root=loaded.project_root)  # exit 2 before any connection
        run_sync(_preflight(loaded))
        extra: list[str] = []
        if args.target_revision:
            extra.append(f"--target-revision={args.target_revision}")
        if args.full_scan:
            extra.append("--full-scan")
        if args.keyword:
            extra += ["-k", args.keyword]
        if args.restore_from_backup:
            extra += [f"--restore-from-backup={args.restore_from_backup}"] + (["--keep-restored"] if args.keep_restored else [])
        if args.alluredir:
            extra.append(f"--alluredir={Path(args.alluredir).resolve()}")
        result = run_gate(loaded, "smoke", extra_args=extra)
        if not result.document:
            sys.stderr.write(result.output[-6000:])
            return int(ExitCode.CONFIG_ERROR) if result.exit_code in (2, 4) else int(ExitCode.CHECKS_FAILED)
        render(result)
        if args.output:
            Path(args.output).write_text(json.dumps(result.document, indent=2))
        return int(ExitCode.OK) if result.passed else int(ExitCode.CHECKS_FAILED)

    run_cli(run)
