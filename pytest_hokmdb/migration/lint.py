"""Lock-safety lint of each alembic revision (item 6 of the migration suite).

Each revision is rendered to offline SQL on its own (``alembic upgrade <parent>:<rev> --sql``)
and linted twice over:

* by **squawk** (the ``squawk-cli`` package ships the binary), which knows PostgreSQL's lock
  levels statement by statement (an index built without CONCURRENTLY, ``ADD COLUMN ... NOT
  NULL`` without a default, a constraint validated under a write lock, ...);
* by the checks below, which need to know that the SQL came from *one alembic revision*:

  ``concurrently-outside-autocommit-block``
      ``CREATE/DROP INDEX CONCURRENTLY``, ``REINDEX ... CONCURRENTLY`` and ``DETACH PARTITION
      ... CONCURRENTLY`` refuse to run in a transaction, and alembic runs every revision in one
      unless the statement sits in ``op.get_context().autocommit_block()``. The signal is the
      offline SQL itself: alembic writes ``COMMIT`` before and ``BEGIN`` after an autocommit
      block, so a CONCURRENTLY statement between a ``BEGIN`` and its ``COMMIT`` is the bug,
      however the revision built it (a helper, a string constant, ``op.execute``). An env.py
      that renders offline SQL without transaction control hides that, so then the revision's
      source is read instead: a ``postgresql_concurrently=True`` call in ``upgrade()`` must be
      lexically inside ``with ...autocommit_block():``. Supersedes squawk's
      ``ban-concurrent-index-creation-in-transaction``, which only knows CREATE INDEX.
  ``require-lock-timeout``
      A revision that locks a table that existed before it (ALTER, an index, a foreign key
      *to* it, UPDATE/DELETE, DROP, ...) must set ``lock_timeout`` first; otherwise it queues
      behind any long transaction and every query on that table queues behind it. Tables the
      revision creates itself are invisible to other sessions until it commits, so they need
      none, and alembic's own ``alembic_version`` is not the project's business. Replaces
      squawk's rule of the same name, which counts a new table's index too. Only checked when
      ``require_lock_timeout`` is true.
  ``lock-timeout-not-reset``
      A session-level ``SET lock_timeout`` (or ``statement_timeout``) not reset by the end of
      the revision leaks into every later revision of the same ``alembic upgrade`` run, so
      those look protected in a full run and are not when deployed one at a time.
  ``waiver-without-reason``
      See waivers below.
  ``offline-sql-unavailable``
      The revision cannot be rendered offline (e.g. it queries the database unconditionally),
      so nothing of it can be linted.

Severity comes from the project's ``LintPolicy`` (``[tool.hokmdb.migrations.lint]``):
``error`` fails the revision's test, ``warning`` is reported and does not fail, ``ignored`` is
dropped. A revision may waive a rule for itself, with a reason, in its own file::

    hokmdb_lint_waivers = {
        "constraint-missing-not-valid": "moves is rewritten in a maintenance window anyway (see docstring)",
    }

A waiver whose reason is missing or too short to explain anything does not waive and is
itself a finding. Squawk reads a ``.squawk.toml`` in the project root (pg_version, ...).
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import Script, ScriptDirectory

from pytest_hokmdb.errors import ConfigError, HokmdbError
from pytest_hokmdb.migration.settings import MigrationSuiteSettings, Severity

__all__ = [
    "Finding",
    "LintError",
    "MigrationLintWarning",
    "MigrationLinter",
    "RevisionLint",
    "Statement",
    "Waived",
    "find_squawk",
    "split_statements",
]

WAIVERS_NAME = "hokmdb_lint_waivers"
# A reason is a sentence, not a shrug ("ok", "legacy"): at least this many words.
MIN_REASON_WORDS = 3

CONCURRENTLY_RULE = "concurrently-outside-autocommit-block"
LOCK_TIMEOUT_RULE = "require-lock-timeout"
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


# --------------------------------------------------------------------------- SQL statements


@dataclass(frozen=True)
class Statement:
    """One statement of a script: its text without comments, and 1-based lines it spans."""

    text: str
    start_line: int
    end_line: int

    @property
    def normalized(self) -> str:
        return " ".join(self.text.split())

    def snippet(self, limit: int = 160) -> str:
        text = self.normalized
        return text if len(text) <= limit else text[: limit - 3] + "..."


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def split_statements(sql: str) -> list[Statement]:
    """Split a script at top-level semicolons, respecting quotes, dollar quotes and comments.

    A hand-written scanner rather than a SQL parser: it only has to find statement
    boundaries and line numbers, and it must never choke on a DO block or a function body.
    """
    statements: list[Statement] = []
    buf: list[str] = []
    start_line: int | None = None
    line = 1
    i, n = 0, len(sql)

    def emit(end: int) -> None:
        nonlocal buf, start_line
        text = "".join(buf).strip()
        if text and start_line is not None:
            statements.append(Statement(text, start_line, end))
        buf, start_line = [], None

    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j == -1 else j
            continue
        if ch == "/" and sql.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            line += sql.count("\n", i, j)
            buf.append(" ")
            i = j
            continue
        if ch == ";":
            emit(line)
            i += 1
            continue
        if not ch.isspace() and start_line is None:
            start_line = line
        end = i + 1
        if ch in ("'", '"'):
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:
                        end += 2
                        continue
                    end += 1
                    break
                end += 1
        elif ch == "$":
            tag = _DOLLAR_TAG.match(sql, i)
            if tag:
                close = sql.find(tag.group(), tag.end())
                end = n if close == -1 else close + len(tag.group())
        chunk = sql[i:end]
        buf.append(chunk)
        line += chunk.count("\n")
        i = end
    emit(line)
    return statements


_IDENT = r'(?:"[^"]+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QUALIFIED = rf"{_IDENT}(?:\s*\.\s*{_IDENT})*"


def _name(qualified: str) -> str:
    """Compare tables by their last name component, unquoted (unquoted names fold to lower case)."""
    last = re.findall(_IDENT, qualified)[-1]
    return last[1:-1] if last.startswith('"') else last.lower()


_CREATE_TABLE = re.compile(
    rf"^CREATE\s+(?:(?:GLOBAL\s+|LOCAL\s+)?(?:TEMP|TEMPORARY|UNLOGGED)\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?({_QUALIFIED})",
    re.IGNORECASE,
)
_CREATE_INDEX = re.compile(
    rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?({_QUALIFIED}\s+)?ON\s+(?:ONLY\s+)?({_QUALIFIED})",
    re.IGNORECASE,
)
_REFERENCES = re.compile(rf"\bREFERENCES\s+({_QUALIFIED})", re.IGNORECASE)
_PARTITION_OF = re.compile(rf"\bPARTITION\s+OF\s+({_QUALIFIED})", re.IGNORECASE)
_TABLE_TARGET = re.compile(
    rf"^(?:ALTER\s+TABLE(?:\s+IF\s+EXISTS)?|UPDATE|DELETE\s+FROM|TRUNCATE(?:\s+TABLE)?|LOCK(?:\s+TABLE)?"
    rf"|VACUUM\s+FULL|CLUSTER)\s+(?:ONLY\s+)?({_QUALIFIED})",
    re.IGNORECASE,
)
_TRIGGER_ON = re.compile(
    rf"^CREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?TRIGGER\b.*?\bON\s+({_QUALIFIED})", re.IGNORECASE
)
_DROP_TABLES = re.compile(
    r"^DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(.+?)(?:\s+(?:CASCADE|RESTRICT))?$", re.IGNORECASE
)
_DROP_INDEXES = re.compile(
    r"^DROP\s+INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+EXISTS\s+)?(.+?)(?:\s+(?:CASCADE|RESTRICT))?$",
    re.IGNORECASE,
)
_INDEX_TARGET = re.compile(
    rf"^(?:ALTER\s+INDEX(?:\s+IF\s+EXISTS)?|REINDEX\s+(?:\(.*?\)\s*)?INDEX(?:\s+CONCURRENTLY)?)\s+({_QUALIFIED})",
    re.IGNORECASE,
)
_REINDEX_TABLE = re.compile(
    rf"^REINDEX\s+(?:\(.*?\)\s*)?TABLE\s+(?:CONCURRENTLY\s+)?({_QUALIFIED})", re.IGNORECASE
)
_CONCURRENTLY = re.compile(
    r"^(?:CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY|DROP\s+INDEX\s+CONCURRENTLY|REINDEX\b.*\bCONCURRENTLY"
    r"|ALTER\s+TABLE\b.*\bDETACH\s+PARTITION\b.*\bCONCURRENTLY)\b",
    re.IGNORECASE,
)
_BEGIN = re.compile(r"^(?:BEGIN|START\s+TRANSACTION)\b", re.IGNORECASE)
_END = re.compile(r"^(?:COMMIT|END|ROLLBACK|ABORT)\b(?!\s+PREPARED)", re.IGNORECASE)
_TIMEOUTS = ("lock_timeout", "statement_timeout")
_SET = re.compile(
    r"^SET\s+(SESSION\s+|LOCAL\s+)?(lock_timeout|statement_timeout)\s*(?:=|\bTO\b)\s*(.+)$", re.IGNORECASE
)
_RESET = re.compile(r"^RESET\s+(lock_timeout|statement_timeout|ALL)\b", re.IGNORECASE)
_SET_CONFIG = re.compile(
    r"^SELECT\s+(?:pg_catalog\s*\.\s*)?set_config\s*\(\s*'(lock_timeout|statement_timeout)'\s*,\s*'([^']*)'\s*,\s*(\w+)\s*\)",
    re.IGNORECASE,
)


def _disabled(value: str) -> bool:
    """``0`` (or DEFAULT, which we cannot know and so do not trust) means no timeout."""
    bare = value.strip().strip("'\"").strip().lower()
    return bare in ("0", "default", "") or bool(re.fullmatch(r"0+\s*(ms|s|min|h|d|us)?", bare))


def _split_names(names: str) -> list[str]:
    return [_name(part) for part in re.findall(_QUALIFIED, names)]


def _is_bookkeeping(stmt: Statement, version_table: str) -> bool:
    return bool(
        re.search(rf'\b"?{re.escape(version_table)}"?\b', stmt.normalized, re.IGNORECASE)
    ) and not re.match(
        r"^(?:DO|CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE))\b", stmt.normalized, re.IGNORECASE
    )


@dataclass
class _Timeouts:
    """lock_timeout/statement_timeout as the session sees them while the script runs."""

    session: dict[str, bool] = field(default_factory=dict)
    local: dict[str, bool] = field(default_factory=dict)

    def active(self, name: str) -> bool:
        return self.local.get(name, self.session.get(name, False))

    def apply(self, stmt: Statement, in_transaction: bool) -> bool:
        """Update from SET/RESET/set_config; True when the statement was one of those."""
        text = stmt.normalized
        if m := _SET.match(text):
            scope, name, value = (m.group(1) or "").strip().upper(), m.group(2).lower(), m.group(3)
            target = self.local if scope == "LOCAL" else self.session
            if scope == "LOCAL" and not in_transaction:
                return True  # SET LOCAL outside a transaction does nothing (PostgreSQL warns)
            target[name] = not _disabled(value)
            if target is self.session:
                self.local.pop(name, None)
            return True
        if m := _RESET.match(text):
            names = _TIMEOUTS if m.group(1).upper() == "ALL" else (m.group(1).lower(),)
            for name in names:
                self.session.pop(name, None)
                self.local.pop(name, None)
            return True
        if m := _SET_CONFIG.match(text):
            name, value, is_local = m.group(1).lower(), m.group(2), m.group(3).lower() == "true"
            if is_local and not in_transaction:
                return True
            (self.local if is_local else self.session)[name] = not _disabled(value)
            return True
        return False


@dataclass(frozen=True)
class _Lock:
    statement: Statement
    tables: tuple[str, ...]


def _locked_tables(
    stmt: Statement, created_tables: set[str], created_indexes: set[str], version_table: str
) -> list[str]:
    """Tables (or ``index <name>`` when only the index is known) that existed before the
    revision and that this statement locks; also records what the statement creates."""
    text = stmt.normalized
    if re.match(r"^(?:DO|CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE))\b", text, re.IGNORECASE):
        return []  # code: what it touches is decided at run time
    locked: list[str] = []
    if m := _CREATE_TABLE.match(text):
        created_tables.add(_name(m.group(1)))
        locked += [_name(r) for r in _REFERENCES.findall(text)]
        locked += [_name(p) for p in _PARTITION_OF.findall(text)]
    elif m := _CREATE_INDEX.match(text):
        if m.group(1):
            created_indexes.add(_name(m.group(1)))
        locked.append(_name(m.group(2)))
    elif m := _DROP_TABLES.match(text):
        locked += _split_names(m.group(1))
    elif m := _DROP_INDEXES.match(text):
        locked += [f"index {name}" for name in _split_names(m.group(1)) if name not in created_indexes]
    elif m := _INDEX_TARGET.match(text):
        name = _name(m.group(1))
        if name not in created_indexes:
            locked.append(f"index {name}")
    elif m := (_TABLE_TARGET.match(text) or _REINDEX_TABLE.match(text) or _TRIGGER_ON.match(text)):
        locked.append(_name(m.group(1)))
        if text.upper().startswith("ALTER TABLE"):
            locked += [_name(r) for r in _REFERENCES.findall(text)]
    seen: list[str] = []
    for table in locked:
        if table not in created_tables and table != version_table and table not in seen:
            seen.append(table)
    return seen


@dataclass
class _ScriptFacts:
    """What one pass over a revision's offline SQL establishes."""

    statements: list[Statement]
    has_transaction_control: bool
    concurrently_in_transaction: list[Statement]
    unprotected_locks: list[_Lock]
    leaked_timeouts: list[str]
    bookkeeping_lines: set[int]


def _analyse(sql: str, version_table: str = VERSION_TABLE) -> _ScriptFacts:
    statements = split_statements(sql)
    in_transaction = False
    has_tx = False
    timeouts = _Timeouts()
    created_tables: set[str] = set()
    created_indexes: set[str] = set()
    concurrent_in_tx: list[Statement] = []
    unprotected: list[_Lock] = []
    bookkeeping: set[int] = set()
    for stmt in statements:
        text = stmt.normalized
        if _BEGIN.match(text):
            in_transaction = has_tx = True
            continue
        if _END.match(text):
            in_transaction = False
            timeouts.local.clear()
            continue
        if timeouts.apply(stmt, in_transaction):
            continue
        if _is_bookkeeping(stmt, version_table):
            bookkeeping.update(range(stmt.start_line, stmt.end_line + 1))
            continue
        if _CONCURRENTLY.match(text) and in_transaction:
            concurrent_in_tx.append(stmt)
        tables = _locked_tables(stmt, created_tables, created_indexes, version_table)
        if tables and not timeouts.active("lock_timeout"):
            unprotected.append(_Lock(stmt, tuple(tables)))
    leaked = sorted(name for name, on in timeouts.session.items() if on)
    return _ScriptFacts(statements, has_tx, concurrent_in_tx, unprotected, leaked, bookkeeping)


# --------------------------------------------------------------------------- revision source


@dataclass(frozen=True)
class _SourceFacts:
    waivers: dict[str, str]
    waiver_problems: list[tuple[str, str, int]]  # (rule, problem, line)
    concurrently_outside_block: list[int]  # lines in upgrade()


def _is_autocommit_with(node: ast.With | ast.AsyncWith) -> bool:
    for item in node.items:
        call = item.context_expr
        if isinstance(call, ast.Call):
            func = call.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "autocommit_block":
                return True
    return False


def _concurrent_calls_outside_block(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[int]:
    lines: list[int] = []

    def visit(node: ast.AST, inside: bool) -> None:
        if isinstance(node, (ast.With, ast.AsyncWith)) and _is_autocommit_with(node):
            inside = True
        if isinstance(node, ast.Call) and not inside:
            for kw in node.keywords:
                if (
                    kw.arg == "postgresql_concurrently"
                    and isinstance(kw.value, ast.Constant)
                    and kw.value.value is True
                ):
                    lines.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    for stmt in function.body:
        visit(stmt, False)
    return lines


def _read_source(path: Path) -> _SourceFacts:
    tree = ast.parse(path.read_text(), filename=str(path))
    waivers: dict[str, str] = {}
    problems: list[tuple[str, str, int]] = []
    concurrent: list[int] = []
    for node in tree.body:
        target_value: tuple[ast.expr, ast.expr | None] | None = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target_value = (node.targets[0], node.value)
        elif isinstance(node, ast.AnnAssign):
            target_value = (node.target, node.value)
        if target_value and isinstance(target_value[0], ast.Name) and target_value[0].id == WAIVERS_NAME:
            value = target_value[1]
            try:
                literal: Any = ast.literal_eval(value) if value is not None else None
            except (ValueError, TypeError, SyntaxError):
                literal = None
            if not isinstance(literal, dict):
                problems.append(
                    ("*", f"{WAIVERS_NAME} must be a literal dict of rule name -> reason", node.lineno)
                )
                continue
            for rule, reason in literal.items():
                if not isinstance(rule, str):
                    problems.append((str(rule), "a waiver's key must be the rule's name", node.lineno))
                elif not isinstance(reason, str) or len(reason.split()) < MIN_REASON_WORDS:
                    problem = (
                        f"the waiver of {rule!r} has no reason ({reason!r}); say why the rule does not apply "
                        f"to this revision, in at least {MIN_REASON_WORDS} words"
                    )
                    problems.append((rule, problem, node.lineno))
                else:
                    waivers[rule] = reason.strip()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "upgrade":
            concurrent = _concurrent_calls_outside_block(node)
    return _SourceFacts(waivers, problems, concurrent)


# --------------------------------------------------------------------------- squawk


def find_squawk() -> Path:
    """The squawk binary: ``HOKMDB_SQUAWK`` when set (a squawk installed elsewhere), else next
    to this interpreter (``pip install squawk-cli`` in a venv puts it there, and it may not be
    on PATH when the venv is not activated), else on PATH."""
    chosen = os.environ.get("HOKMDB_SQUAWK", "").strip()
    if chosen:
        path = Path(chosen)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise LintError(
            f"squawk is not installed at HOKMDB_SQUAWK={chosen} (no executable file there), so revisions cannot be linted",
            hint=f"point HOKMDB_SQUAWK at the squawk binary, or unset it to use the one `{sys.executable} -m pip install squawk-cli` installs",
        )
    candidates = [Path(sys.executable).parent / "squawk", Path(sys.prefix) / "bin" / "squawk"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("squawk")
    if found:
        return Path(found)
    raise LintError(
        "squawk is not installed, so revisions cannot be linted",
        hint=f"{sys.executable} -m pip install squawk-cli",
    )


def _run_squawk(squawk: Path, sql: str, filename: str, cwd: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        # Superseded rules are dropped afterwards rather than passed as --exclude, so that an
        # exclusion list in the project's .squawk.toml is not overridden.
        [str(squawk), "--reporter", "json", "--stdin-filepath", filename],
        check=False,  # exit 1 means findings; judged below
        input=sql,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    # Exit 0: clean, 1: findings; anything else (or output that is not JSON) is squawk failing.
    out = proc.stdout.strip()
    if proc.returncode in (0, 1) and (out.startswith("[") or not out):
        try:
            data = json.loads(out) if out else []
        except json.JSONDecodeError:
            data = None
        if isinstance(data, list):
            return data
    raise LintError(
        f"squawk failed on {filename} (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[:2000]}"
    )


def _squawk_message(item: dict[str, Any]) -> tuple[str, str | None]:
    """squawk 2.x has ``message``/``help``; 1.x had ``messages: [{Note: ...}, {Help: ...}]``."""
    if "message" in item:
        return str(item["message"]), item.get("help")
    notes, helps = [], []
    for entry in item.get("messages") or []:
        if isinstance(entry, dict):
            notes += [str(v) for k, v in entry.items() if k.lower() != "help"]
            helps += [str(v) for k, v in entry.items() if k.lower() == "help"]
    return ("; ".join(notes) or str(item.get("rule_name")), "; ".join(helps) or None)


# --------------------------------------------------------------------------- the linter


def _parents(rev: Script) -> tuple[str, ...]:
    down = rev.down_revision
    if down is None:
        return ()
    return (down,) if isinstance(down, str) else tuple(down)


class MigrationLinter:
    """Lints the revisions of the alembic project that ``settings`` points at.

    One ScriptDirectory is loaded once and reused for every revision, so the cost per
    revision is one run of env.py (offline) and one squawk process.
    """

    def __init__(self, settings: MigrationSuiteSettings, *, squawk: Path | None = None) -> None:
        self.settings = settings
        self.policy = settings.lint
        self.squawk = squawk or find_squawk()
        self._script: ScriptDirectory | None = None
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
        if not cfg.get_main_option("sqlalchemy.url"):
            # Offline rendering only needs the dialect; the stock env.py reads it from here.
            cfg.set_main_option("sqlalchemy.url", "postgresql://")
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
        parents = _parents(rev)
        start: str | tuple[str, ...] = (parents[0] if len(parents) == 1 else parents) if parents else "base"
        buffer = io.StringIO()
        cfg = self.config(output_buffer=buffer)

        def steps(_heads: Any, _context: Any) -> Any:
            return script._upgrade_revs(rev.revision, start)

        with EnvironmentContext(
            cfg, script, fn=steps, as_sql=True, starting_rev=start, destination_rev=rev.revision, tag=None
        ) as env:
            script.run_env()
            self._version_table = env.get_context().version_table or VERSION_TABLE
        return buffer.getvalue()

    # -- linting

    def lint(self, revision: str) -> RevisionLint:
        rev = self.script.get_revision(revision)
        if rev is None:
            raise ConfigError(f"revision {revision} is not in the alembic history")
        path = Path(rev.path)
        source = _read_source(path)
        raw: list[Finding] = []
        try:
            sql = self.offline_sql(revision)
        except Exception as exc:  # noqa: BLE001 - any failure of env.py/the revision offline is this finding
            sql = ""
            raw.append(
                self._finding(
                    revision,
                    OFFLINE_RULE,
                    f"cannot be rendered as offline SQL ({type(exc).__name__}: {exc}), so it cannot be linted",
                    f"alembic upgrade {self._start_label(rev)}:{revision} --sql",
                    "in offline mode (context.is_offline_mode()) do not query the database; emit SQL instead",
                )
            )
        if sql:
            raw += self._check_sql(rev, sql, source)
        raw += [
            self._finding(revision, WAIVER_RULE, problem, f"{path}:{line}", "write the reason as a sentence")
            for _rule, problem, line in source.waiver_problems
        ]
        result = RevisionLint(revision=revision, path=path, sql=sql)
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
        return ",".join(_parents(rev)) or "base"

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

    def _check_sql(self, rev: Script, sql: str, source: _SourceFacts) -> list[Finding]:
        revision = rev.revision
        facts = _analyse(sql, self._version_table)
        by_line = {line: s for s in facts.statements for line in range(s.start_line, s.end_line + 1)}
        findings: list[Finding] = []

        sql_lines = sql.splitlines()

        def where(line: int) -> str:
            """The line itself, and the statement it belongs to when that starts elsewhere."""
            stmt = by_line.get(line)
            if stmt is None:
                return f"offline SQL line {line}"
            if stmt.start_line == line:
                return f"offline SQL line {line}: {stmt.snippet()}"
            text = sql_lines[line - 1].strip() if 0 < line <= len(sql_lines) else ""
            return f"offline SQL line {line}: {text} (in: {stmt.snippet(70)})"

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
                    "begin upgrade() with op.execute(\"SET LOCAL lock_timeout = '5s'\") (in an autocommit block: "
                    "SET lock_timeout ... then RESET lock_timeout)",
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

