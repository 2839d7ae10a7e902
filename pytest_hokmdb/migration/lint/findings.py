"""What the lint reports: its rules' names, findings, waivers and the result of one revision."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pytest_hokmdb.errors import HokmdbError
from pytest_hokmdb.migration.settings import Severity

WAIVERS_NAME = "hokmdb_lint_waivers"
# A reason is a sentence, not a shrug ("ok", "legacy"): at least this many words.
MIN_REASON_WORDS = 3

CONCURRENTLY_RULE = "concurrently-outside-autocommit-block"
LOCK_TIMEOUT_RULE = "require-lock-timeout"
RAISES_TIMEOUT_RULE = "raises-timeout"
UNBATCHED_RULE = "unbatched-data-change"
TIMEOUT_LEAK_RULE = "lock-timeout-not-reset"
WAIVER_RULE = "waiver-without-reason"
OFFLINE_RULE = "offline-sql-unavailable"
# Squawk rules replaced by the alembic-aware checks above (see the module docstring).
SUPERSEDED_SQUAWK_RULES = ("require-lock-timeout", "ban-concurrent-index-creation-in-transaction")
# alembic's bookkeeping table (the default; env.py may name another): its DDL and updates come
# from alembic, not from the revision.
VERSION_TABLE = "alembic_version"


class LintError(HokmdbError):
    """The lint itself could not run (squawk missing or broken), as opposed to a finding."""


class MigrationLintWarning(UserWarning):
    """A lint finding whose policy is ``warning``: shown in pytest's warnings summary, never
    failing. Filter it like any warning: ``-W ignore::pytest_hokmdb.migration.lint.MigrationLintWarning``."""


@dataclass(frozen=True)
class Finding:
    """One problem of one revision, with the severity the project's policy gives its rule."""

    revision: str
    rule: str
    severity: Severity
    message: str
    where: str
    help: str | None = None
    source: Literal["squawk", "hokmdb"] = "hokmdb"

    def render(self) -> str:
        text = f"revision {self.revision}: [{self.rule}] {self.message}\n    at {self.where}"
        if self.help:
            text += f"\n    fix: {self.help}"
        return text


@dataclass(frozen=True)
class Waived:
    finding: Finding
    reason: str


@dataclass
class RevisionLint:
    """Everything the lint learnt about one revision, for the test and its Allure report."""

    revision: str
    path: Path
    sql: str
    findings: list[Finding] = field(default_factory=list)
    waived: list[Waived] = field(default_factory=list)
    # "offline": alembic upgrade --sql; "online": recorded while upgrading a throwaway copy.
    rendered: Literal["offline", "online"] = "offline"

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def failure_message(self) -> str:
        lines = [
            f"revision {self.revision} ({self.path.name}) is not lock-safe: {len(self.errors)} finding(s)",
            *(f.render() for f in self.errors),
            (
                "Fix the revision, or if a finding does not apply to it, waive that rule for this revision "
                f"with a reason in {self.path.name}: {WAIVERS_NAME} = {{'<rule>': '<why it is safe here>'}}; "
                "to change a rule for the whole project, set it in [tool.hokmdb.migrations.lint.rules]."
            ),
        ]
        return "\n".join(lines)

    def report(self) -> str:
        """Plain-text summary for Allure: errors, warnings and what was waived and why."""
        parts = [f"revision {self.revision} ({self.path})"]
        for title, items in (("errors", self.errors), ("warnings", self.warnings)):
            parts.append(f"{title}: {len(items)}")
            parts.extend(f.render() for f in items)
        parts.append(f"waived: {len(self.waived)}")
        parts.extend(f"{w.finding.render()}\n    waived: {w.reason}" for w in self.waived)
        return "\n".join(parts)
