"""Collect every test's outcome (and its check result, if it ran one) into one JSON file.

Check results travel in ``report.user_properties``, which pytest-xdist ships from the
workers to the controller, so the file is complete under ``-n auto`` too. Every string
passes through redaction before it is written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pytest_hokmdb.redaction import redact

CHECK_PROPERTY = "hokmdb_check"
FORMAT_VERSION = 1


def _short_message(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    text = report.longreprtext or ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    failure_lines = [line for line in lines if line.startswith("E ")]
    chosen = failure_lines[0][1:].strip() if failure_lines else (lines[-1] if lines else "")
    return chosen[:2000]


@dataclass
class JsonResult:
    path: Path | None  # None: collected for the metrics only, not written
    environment: str | None
    target: str | None
    started: float = field(default_factory=time.time)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, report: pytest.TestReport) -> None:
        # One entry per test: the call phase wins; a failing/skipping setup stands in for it.
        if report.when != "call" and report.passed:
            return
        if report.when == "teardown" and report.nodeid in self.entries and not report.failed:
            return
        check = dict(next((value for key, value in report.user_properties if key == CHECK_PROPERTY), {}))
        outcome = report.outcome if report.when == "call" else ("error" if report.failed else report.outcome)
        entry = {
            "nodeid": report.nodeid,
            "outcome": outcome,
            "duration_s": round(report.duration, 4),
            "check": check.get("check"),
            "status": check.get("status", outcome),
            "measured": check.get("measured"),
            "threshold": check.get("threshold"),
            "message": redact(check.get("message") or _short_message(report)),
        }
        if check.get("evidence"):
            entry["evidence"] = check["evidence"]
        if check.get("waiver"):
            entry["waiver"] = {k: redact(v) for k, v in check["waiver"].items()}
        if check and not check.get("verified", True):
            entry["verified"] = False
        self.entries[report.nodeid] = entry

    def write(self, exitstatus: int) -> dict[str, Any]:
        """The result document; written to ``path`` (atomically) when there is one."""
        counts: dict[str, int] = {}
        for entry in self.entries.values():
            counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
        document = {
            "format_version": FORMAT_VERSION,
            "environment": self.environment,
            "target": redact(self.target or ""),
            "started_at": datetime.fromtimestamp(self.started, UTC).isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "duration_s": round(time.time() - self.started, 3),
            "exitstatus": int(exitstatus),
            "summary": counts,
            # Every check accepted as unverifiable, with its reason: a waiver is never silent.
            "waivers": [{"check": e["check"], **e["waiver"]} for e in self.entries.values() if e.get("waiver")],
            "tests": list(self.entries.values()),
        }
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(self.path.suffix + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(document, indent=2, default=str))
            tmp.replace(self.path)
        return document
