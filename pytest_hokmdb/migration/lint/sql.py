"""Offline SQL of one revision, split into statements and read for what it locks, in which
transaction, under which timeouts (the alembic-aware rules need these facts)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pytest_hokmdb.migration.lint.findings import (
    VERSION_TABLE,
)


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
_DATA_CHANGE = re.compile(rf"^(?:UPDATE|DELETE\s+FROM)\s+(?:ONLY\s+)?({_QUALIFIED})", re.IGNORECASE)
BACKFILL_MARKER = "-- hokmdb:backfill"  # pytest_hokmdb.migration.online renders its UPDATE after this line
_TABLE_TARGET = re.compile(
    rf"^(?:ALTER\s+TABLE(?:\s+IF\s+EXISTS)?|UPDATE|DELETE\s+FROM|TRUNCATE(?:\s+TABLE)?|LOCK(?:\s+TABLE)?"
    rf"|VACUUM\s+FULL|CLUSTER|COMMENT\s+ON\s+TABLE)\s+(?:ONLY\s+)?({_QUALIFIED})",
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


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "min": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}


def timeout_ms(value: str) -> float | None:
    """A timeout setting in milliseconds; ``0`` for "no timeout", ``None`` when unknowable (DEFAULT)."""
    bare = value.strip().strip("'\"").strip().lower()
    if bare in ("default", ""):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?", bare)
    if not m:
        return None
    return float(m.group(1)) * _UNITS_MS[m.group(2) or "ms"]


@dataclass(frozen=True)
class TimeoutSetting:
    """A SET of lock_timeout/statement_timeout in a revision, with its value in ms (0: none)."""

    statement: Statement
    name: str
    value: str
    ms: float


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
    settings: list[TimeoutSetting] = field(default_factory=list)

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
            self._record(stmt, name, value)
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
            self._record(stmt, name, value)
            return True
        return False

    def _record(self, stmt: Statement, name: str, value: str) -> None:
        ms = timeout_ms(value)
        if ms is not None:
            self.settings.append(TimeoutSetting(stmt, name, value.strip(), ms))


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
    timeout_settings: list[TimeoutSetting] = field(default_factory=list)
    unbatched_changes: list[_Lock] = field(default_factory=list)


def _after_marker(lines: list[str], stmt: Statement) -> bool:
    before = stmt.start_line - 2
    return 0 <= before < len(lines) and lines[before].strip().startswith(BACKFILL_MARKER)


def _analyse(sql: str, version_table: str = VERSION_TABLE) -> _ScriptFacts:
    statements = split_statements(sql)
    lines = sql.splitlines()
    unbatched: list[_Lock] = []
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
        if (m := _DATA_CHANGE.match(text)) and _name(m.group(1)) in tables and not _after_marker(lines, stmt):
            unbatched.append(_Lock(stmt, (_name(m.group(1)),)))
    leaked = sorted(name for name, on in timeouts.session.items() if on)
    return _ScriptFacts(statements, has_tx, concurrent_in_tx, unprotected, leaked, bookkeeping, timeouts.settings,
                        unbatched)


def locked_tables(sql: str, version_table: str = VERSION_TABLE) -> list[str]:
    """Existing tables the offline SQL of a revision locks, in order of first use (indexes
    named without their table are left out): what the deploy looks at before it asks."""
    created_tables: set[str] = set()
    created_indexes: set[str] = set()
    seen: list[str] = []
    for stmt in split_statements(sql):
        if _BEGIN.match(stmt.normalized) or _END.match(stmt.normalized) or _is_bookkeeping(stmt, version_table):
            continue
        for table in _locked_tables(stmt, created_tables, created_indexes, version_table):
            if not table.startswith("index ") and table not in seen:
                seen.append(table.rpartition(".")[2])
    return seen


# Statements whose locks never conflict with the game's reads and writes (SHARE UPDATE
# EXCLUSIVE at most): their waits, for the lock and for older transactions' snapshots, hold
# nobody up, so the deploy lets them wait under their own budget (deploy.concurrent_wait_s).
_NEVER_BLOCKS_WRITES = re.compile(
    r"^(?:CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\b|DROP\s+INDEX\s+CONCURRENTLY\b|REINDEX\b.*\bCONCURRENTLY\b"
    r"|ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?[\w.\"]+\s+VALIDATE\s+CONSTRAINT\s+[\w\"]+$"
    r"|SELECT\b|ANALYZE\b|SET\s+(?:LOCAL\s+)?(?:lock_timeout|statement_timeout)\b)",
    re.IGNORECASE | re.DOTALL,
)
_WRITES = re.compile(r"\b(?:INSERT|UPDATE|DELETE|MERGE|ALTER|CREATE|DROP|TRUNCATE|LOCK|EXECUTE|COPY|GRANT|REVOKE|CALL)\b",
                     re.IGNORECASE)
_STRING = re.compile(r"'(?:[^']|'')*'")


def never_blocks_writes(sql: str, version_table: str = VERSION_TABLE) -> bool:
    """Whether every statement of a revision's offline SQL leaves the game's reads and writes
    alone: concurrent index builds and drops, constraint validations, reads, and ``DO`` blocks
    that only read and raise (their string literals aside). An empty revision does not count."""
    found = False
    for stmt in split_statements(sql):
        text = stmt.normalized
        if _BEGIN.match(text) or _END.match(text) or _is_bookkeeping(stmt, version_table):
            continue
        found = True
        if re.match(r"^DO\b", text, re.IGNORECASE):
            if _WRITES.search(_STRING.sub("''", text)):
                return False
            continue
        if not _NEVER_BLOCKS_WRITES.match(text):
            return False
    return found
