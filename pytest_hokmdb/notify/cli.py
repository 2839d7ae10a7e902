"""``hokmdb notify``: send one notification from a shell step (the CI pipeline's last job).

    hokmdb notify --environment production --event pipeline --status failure --link "$RUN_URL"

The webhook URL and SMTP password come from the environment's config (``SLACK_WEBHOOK_*``
and friends), never from the command line. ``--status success`` is ``info``,
``cancelled`` ``warning``, ``failure`` ``critical`` on production and ``warning`` elsewhere;
the config's ``notify_on_*``/``critical_alerts`` decide whether it goes out. Exit 0 even when
delivery fails (the problems are printed): a notification never fails a pipeline. Exit 2 for
a configuration error.

Wiring (``pytest_hokmdb/cli/main.py``)::

    from pytest_hokmdb.notify.cli import add_notify_parser, run_notify
    add_notify_parser(sub)                                   # in _parser()
    if args.command == "notify": run_cli(lambda: run_notify(args))   # in main()
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from pytest_hokmdb.config import ENVIRONMENTS, load_config
from pytest_hokmdb.notify import Notification, send
from pytest_hokmdb.redaction import redact

STATUSES = ("success", "failure", "cancelled", "skipped")


def add_notify_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("notify", help="send a notification (webhook/email) per the environment's config")
    p.add_argument("--environment", required=True, choices=ENVIRONMENTS)
    p.add_argument("--config", dest="config_path", default=None, metavar="PATH")
    p.add_argument("--event", default="pipeline", help="what happened, e.g. pipeline, deploy")
    p.add_argument("--status", required=True, choices=STATUSES)
    p.add_argument("--link", default=None, help="a URL with the details (the CI run)")
    p.add_argument("--title", default=None)
    p.add_argument("--text", default="")
    return p


def severity_for(status: str, environment: str) -> str:
    if status in ("success", "skipped"):
        return "info"
    if status == "failure":
        return "critical" if environment == "production" else "warning"
    return "warning"


def run_notify(args: argparse.Namespace) -> int:
    # Only the notifications section is read: the database's secrets need not be present.
    loaded = load_config(args.environment, args.config_path, stand_in_missing=True)  # ConfigError -> exit 2
    fields = {"status": args.status}
    if args.link:
        fields["details"] = args.link
    note = Notification(
        event=f"{args.event}.{args.status}",
        environment=args.environment,
        title=args.title or f"{args.event} {args.status} on {args.environment}",
        text=args.text or (f"{args.event}: {args.status}" + (f" ({args.link})" if args.link else "")),
        severity=severity_for(args.status, args.environment),  # type: ignore[arg-type]
        fields=fields,
    )
    problems = asyncio.run(send(loaded.config, note))
    for problem in problems:
        print(f"warning: notification not delivered: {redact(problem)}", file=sys.stderr)
    return 0
