"""The linter: renders each revision offline, runs squawk and the alembic-aware rules, and
applies the project's policy and the revision's waivers."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy.engine import make_url

from pytest_hokmdb.errors import ConfigError
from pytest_hokmdb.migrate import installed_postgresql_driver
from pytest_hokmdb.migration.envpy import no_file_config, run_env_py
from pytest_hokmdb.migration.history import resolve_script_location, script_parents, single_upgrade_step
from pytest_hokmdb.migration.lint.findings import (
    CONCURRENTLY_RULE,
    LOCK_TIMEOUT_RULE,
    OFFLINE_RULE,
    RAISES_TIMEOUT_RULE,
    SUPERSEDED_SQUAWK_RULES,
    TIMEOUT_LEAK_RULE,
    UNBATCHED_RULE,
    VERSION_TABLE,
    WAIVER_RULE,
    Finding,
    RevisionLint,
    Waived,
)
from pytest_hokmdb.migration.lint.source import (
    _read_source,
    _SourceFacts,
)
from pytest_hokmdb.migration.lint.sql import (
    _analyse,
)
from pytest_hokmdb.migration.lint.squawk import (
    _run_squawk,
    _squawk_message,
    find_squawk,
)
from pytest_hokmdb.migration.settings import MigrationSuiteSettings


def _is_postgresql(url: str | None) -> bool:
    try:
        return bool(url) and make_url(str(url)).get_backend_name() == "postgresql"
    except Exception:  # noqa: BLE001 - a placeholder or interpolated URL is not a PostgreSQL one
        return False


class MigrationLinter:
    """Lints the revisions of the alembic project that ``settings`` points at.

    One ScriptDirectory is loaded once and reused for every revision, so the cost per
    revision is one run of env.py (offline) and one squawk process.
    """

    def __init__(
        self, settings: MigrationSuiteSettings, *, squawk: Path | None = None,
        budgets: tuple[int, int] | None = None, script: ScriptDirectory | None = None,
    ) -> None:
        """``budgets``: the deploying environment's (lock_timeout_ms, statement_timeout_ms),
        which a revision may not raise (0: that timeout is off, so nothing raises it);
        default: the lint policy's ``max_*_timeout_ms``. ``script``: the project's script
        directory when the caller has loaded it already (the migration suite's history), so
        the revision files are not imported a second time."""
        self.settings = settings
        self.policy = settings.lint
        if budgets is not None:
            lock_ms, statement_ms = budgets
            self.policy = self.policy.model_copy(update={
                "max_lock_timeout_ms": lock_ms or None, "max_statement_timeout_ms": statement_ms or None})
        self.squawk = squawk or find_squawk()
        self._script: ScriptDirectory | None = script
        self._version_table = VERSION_TABLE

    # -- alembic

    def config(self, output_buffer: io.StringIO | None = None) -> Config:
        ini = self.settings.resolve(self.settings.alembic_ini)
        if not ini.is_file():
            raise ConfigError(
                f"alembic configuration {ini} does not exist",
                hint="set alembic_ini in [tool.hokmdb.migrations] of the project's pyproject.toml",
            )
        cfg = Config(str(ini), output_buffer=output_buffer)
        # Ask env.py (if it cares, as hokmdb's does) not to reconfigure logging from the ini.
        cfg.attributes["hokmdb_programmatic"] = True
        if self.settings.script_location is not None:
            cfg.set_main_option("script_location", str(self.settings.resolve(self.settings.script_location)))
        else:
            cfg.set_main_option("script_location", resolve_script_location(cfg, self.settings, ini))
        if not _is_postgresql(cfg.get_main_option("sqlalchemy.url")):
            # Offline rendering only needs the dialect; the stock env.py reads it from here. The
            # ini's own URL may name another database (optuna ships sqlite:///alembic.db, buildbot
            # alembic's driver:// placeholder): rendered for SQLite, batch operations would be
            # linted as the copy-and-move SQL PostgreSQL never runs, or not rendered at all.
            cfg.set_main_option("sqlalchemy.url", f"{installed_postgresql_driver()}://")
        return cfg

    @property
    def script(self) -> ScriptDirectory:
        if self._script is None:
            self._script = ScriptDirectory.from_config(self.config())
        return self._script

    def revisions(self) -> list[str]:
        """Revision ids from base to head(s)."""
        return [s.revision for s in reversed(list(self.script.walk_revisions("base", "heads")))]

    def offline_sql(self, revision: str) -> str:
        """``alembic upgrade <parent(s)>:<revision> --sql``, rendered with the shared script directory.

        ``alembic.command.upgrade`` would build a new ScriptDirectory (re-importing every
        revision file) per call, which makes linting N revisions cost N squared imports; this
        does what it does with the one loaded here (``ScriptDirectory._upgrade_revs`` is the
        step list ``command.upgrade`` itself uses)."""
        script = self.script
        rev = script.get_revision(revision)
        if rev is None:
            raise ConfigError(f"revision {revision} is not in the alembic history")
        parents = script_parents(rev)
        start: str | tuple[str, ...] = (parents[0] if len(parents) == 1 else parents) if parents else "base"
        buffer = io.StringIO()
        cfg = self.config(output_buffer=buffer)

        def steps(_heads: Any, _context: Any) -> Any:
            return single_upgrade_step(script, rev, parents) or script._upgrade_revs(rev.revision, start)

        with EnvironmentContext(
            cfg, script, fn=steps, as_sql=True, starting_rev=start, destination_rev=rev.revision, tag=None
        ) as env, no_file_config():
            run_env_py(script)
            self._version_table = env.get_context().version_table or VERSION_TABLE
        return buffer.getvalue()

    def offline_downgrade_sql(self, revision: str) -> str:
        """``alembic downgrade <revision>:<parent> --sql``: what undoing ``revision`` runs."""
        script = self.script
        rev = script.get_revision(revision)
        if rev is None:
            raise ConfigError(f"revision {revision} is not in the alembic history")
        parents = script_parents(rev)
        if len(parents) > 1:
            raise ConfigError(f"revision {revision} is a merge point; undo its branches one by one")
        below = parents[0] if parents else "base"
        buffer = io.StringIO()
        cfg = self.config(output_buffer=buffer)

        def steps(_heads: Any, _context: Any) -> Any:
            return script._downgrade_revs(below, rev.revision)

        with EnvironmentContext(
            cfg, script, fn=steps, as_sql=True, starting_rev=rev.revision, destination_rev=below, tag=None
        ), no_file_config():
            run_env_py(script)
        return buffer.getvalue()

    def undo_problems(self, revision: str) -> list[str]:
        """Why undoing ``revision`` could not be done online (empty: it can): declared
        irreversible, not renderable, or a data change inside the downgrade's transaction."""
        if revision in self.settings.irreversible:
            return [f"revision {revision} is declared irreversible ([tool.hokmdb.migrations] irreversible)"]
        try:
            sql = self.offline_downgrade_sql(revision)
        except Exception as exc:  # noqa: BLE001 - a downgrade that cannot even be rendered is no safety net
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return [f"revision {revision}'s downgrade cannot be rendered to check it ({first})"]
        facts = _analyse(sql, self._version_table)
        return [
            f"revision {revision}'s downgrade changes the rows of {c.tables[0]} in one statement inside its transaction "
            f"({c.statement.snippet(70)})"
            for c in facts.unbatched_changes
        ]

    # -- linting

    def lint(self, revision: str, *, online: Callable[[], str] | None = None) -> RevisionLint:
        """Lint ``revision``'s offline SQL; where it cannot be rendered offline (an env.py
        without offline mode, a revision that queries the database), the SQL ``online()``
        records while the revision upgrades a throwaway copy (the migration suite passes it)."""
        rev = self.script.get_revision(revision)
        if rev is None:
            raise ConfigError(f"revision {revision} is not in the alembic history")
        path = Path(rev.path)
        source = _read_source(path)
        raw: list[Finding] = []
        rendered = "offline"
        try:
            sql = self.offline_sql(revision)
        except Exception as exc:  # noqa: BLE001 - any failure of env.py/the revision offline is this finding
            sql, offline_error = "", f"{type(exc).__name__}: {exc}"
            if online is not None:
                try:
                    sql, rendered = online(), "online"
                except Exception as online_exc:  # noqa: BLE001 - reported with the offline reason
                    offline_error += f"; recording it online failed too: {type(online_exc).__name__}: {online_exc}"
            if not sql:
                raw.append(
                    self._finding(
                        revision,
                        OFFLINE_RULE,
                        f"cannot be rendered as SQL ({offline_error}), so it cannot be linted",
                        f"alembic upgrade {self._start_label(rev)}:{revision} --sql",
                        "in offline mode (context.is_offline_mode()) do not query the database; emit SQL instead",
                    )
                )
        if sql:
            raw += self._check_sql(rev, sql, source, label="offline SQL" if rendered == "offline" else "recorded SQL")
        raw += [
            self._finding(revision, WAIVER_RULE, problem, f"{path}:{line}", "write the reason as a sentence")
            for _rule, problem, line in source.waiver_problems
        ]
        result = RevisionLint(revision=revision, path=path, sql=sql, rendered=rendered)
        for finding in raw:
            if finding.severity == "ignored":
                continue
            reason = source.waivers.get(finding.rule) if finding.rule != WAIVER_RULE else None
            if reason:
                result.waived.append(Waived(finding, reason))
            else:
                result.findings.append(finding)
        return result

    def _start_label(self, rev: Script) -> str:
        return ",".join(script_parents(rev)) or "base"

    def _finding(
        self,
        revision: str,
        rule: str,
        message: str,
        where: str,
        help: str | None = None,
        source: Literal["squawk", "hokmdb"] = "hokmdb",
    ) -> Finding:
        return Finding(revision, rule, self.policy.severity(rule), message, where, help, source)

    def _check_sql(self, rev: Script, sql: str, source: _SourceFacts, *, label: str = "offline SQL") -> list[Finding]:
        revision = rev.revision
        facts = _analyse(sql, self._version_table)
        by_line = {line: s for s in facts.statements for line in range(s.start_line, s.end_line + 1)}
        findings: list[Finding] = []

        sql_lines = sql.splitlines()

        def where(line: int) -> str:
            """The line itself, and the statement it belongs to when that starts elsewhere."""
            stmt = by_line.get(line)
            if stmt is None:
                return f"{label} line {line}"
            if stmt.start_line == line:
                return f"{label} line {line}: {stmt.snippet()}"
            text = sql_lines[line - 1].strip() if 0 < line <= len(sql_lines) else ""
            return f"{label} line {line}: {text} (in: {stmt.snippet(70)})"

        for item in _run_squawk(self.squawk, sql, f"{revision}.sql", self.settings.root):
            line = int(item.get("line", 0)) + 1  # squawk counts lines from 0
            if line in facts.bookkeeping_lines or item.get("rule_name") in SUPERSEDED_SQUAWK_RULES:
                continue
            message, help_text = _squawk_message(item)
            findings.append(
                self._finding(revision, str(item.get("rule_name")), message, where(line), help_text, "squawk")
            )

        if facts.has_transaction_control:
            for stmt in facts.concurrently_in_transaction:
                findings.append(
                    self._finding(
                        revision,
                        CONCURRENTLY_RULE,
                        "runs a CONCURRENTLY statement inside the revision's transaction, where PostgreSQL "
                        "refuses it",
                        where(stmt.start_line),
                        "wrap it in `with op.get_context().autocommit_block():`",
                    )
                )
        else:
            for line in source.concurrently_outside_block:
                findings.append(
                    self._finding(
                        revision,
                        CONCURRENTLY_RULE,
                        "uses postgresql_concurrently=True outside an autocommit block (env.py renders no "
                        "transaction control offline, so the source was checked)",
                        f"{rev.path}:{line}",
                        "wrap it in `with op.get_context().autocommit_block():`",
                    )
                )

        if self.policy.require_lock_timeout and facts.unprotected_locks:
            first = facts.unprotected_locks[0]
            tables = sorted({t for lock in facts.unprotected_locks for t in lock.tables})
            more = len(facts.unprotected_locks) - 1
            findings.append(
                self._finding(
                    revision,
                    LOCK_TIMEOUT_RULE,
                    f"locks existing table(s) {', '.join(tables)} without a lock_timeout "
                    f"({len(facts.unprotected_locks)} statement(s)); it would queue behind any long transaction "
                    "and every query on those tables would queue behind it",
                    where(first.statement.start_line) + (f" (and {more} more)" if more else ""),
                    f"begin upgrade() with op.execute(\"SET LOCAL lock_timeout = '{self.policy.max_lock_timeout_ms or 1000:g}ms'\") "
                    "(in an autocommit block: SET lock_timeout ... then RESET lock_timeout), no more than the "
                    "deploy's own; deploys by hokmdb set it for every statement",
                )
            )

        for change in facts.unbatched_changes:
            table = change.tables[0]
            findings.append(
                self._finding(
                    revision,
                    UNBATCHED_RULE,
                    f"changes the rows of existing table {table} in one statement inside the revision: every row it "
                    "touches stays locked until the revision commits (with any ACCESS EXCLUSIVE lock the revision took), "
                    "which on a large table stalls every writer for as long as the whole table takes",
                    where(change.statement.start_line),
                    "make it an online backfill in a revision of its own: backfill(table, set_=..., where=<rows that "
                    "still need it>) from pytest_hokmdb.migration.online, committed in batches, after an expand "
                    "revision (nullable columns, a trigger for new writes) and before a contract revision "
                    "(README \"Writing an online revision\")",
                )
            )

        limits = {"lock_timeout": self.policy.max_lock_timeout_ms, "statement_timeout": self.policy.max_statement_timeout_ms}
        for setting in facts.timeout_settings:
            limit = limits.get(setting.name)
            if limit is None or 0 < setting.ms <= limit:
                continue
            raised = "switches it off (0)" if setting.ms == 0 else f"sets it to {setting.value}"
            findings.append(
                self._finding(
                    revision,
                    RAISES_TIMEOUT_RULE,
                    f"raises {setting.name}: {raised}, above the deploy's {limit:g} ms; every query queued "
                    f"behind this revision's locks would wait that long",
                    where(setting.statement.start_line),
                    f"remove the SET: the deploy sets {setting.name} for every statement (a revision may only lower "
                    "it); if this revision truly needs longer, waive the rule with the reason",
                )
            )

        for name in facts.leaked_timeouts:
            findings.append(
                self._finding(
                    revision,
                    TIMEOUT_LEAK_RULE,
                    f"sets {name} for the session and does not reset it, so it leaks into every later revision "
                    "of the same upgrade run",
                    f"offline SQL of revision {revision}",
                    f"use SET LOCAL {name} inside the transaction, or RESET {name} at the end (try/finally)",
                )
            )
        return findings
