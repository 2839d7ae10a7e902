"""A revision's SQL, recorded while it upgrades a throwaway database.

The lint reads offline SQL (``alembic upgrade --sql``) when it can: that needs an env.py
with an offline mode and revisions that do not query the database. Where offline rendering
fails, the suite records what the revision actually sends: it upgrades a copy of the
database at the revision's parent and records every statement executed in the process
(any engine: a stock env.py opens its own), with the transaction boundaries alembic drew
(``BEGIN;``/``COMMIT;``, which the lint needs for ``CONCURRENTLY`` and long locks).
Parameters are inlined as literals, so squawk parses what PostgreSQL ran.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from pytest_hokmdb.migration.history import History
from pytest_hokmdb.migration.runner import with_stepper


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _inline(statement: str, parameters: Any) -> str:
    """``statement`` with its bound parameters written in (pyformat, format or ``$n``)."""
    if not parameters:
        return statement
    if isinstance(parameters, Sequence) and parameters and isinstance(parameters[0], Mapping | Sequence) \
            and not isinstance(parameters[0], str):
        parameters = parameters[0]  # executemany: the first row shows the statement's shape
    if isinstance(parameters, Mapping):
        return re.sub(r"%\((\w+)\)s", lambda m: _literal(parameters.get(m.group(1))), statement)
    values = list(parameters)
    if "$1" in statement:
        return re.sub(r"\$(\d+)", lambda m: _literal(values[int(m.group(1)) - 1]) if int(m.group(1)) <= len(values)
                      else m.group(0), statement)
    pending = iter(values)
    return re.sub(r"%s", lambda _m: _literal(next(pending, None)), statement)


@contextmanager
def recording() -> Iterator[list[str]]:
    """Every statement any engine of this process executes, while the block runs."""
    lines: list[str] = []
    # A transaction is written when its connection first runs a statement: the suite's own
    # connection may begin one and roll it back unused while env.py migrates on a connection
    # of its own. Written eagerly, those BEGINs made "BEGIN; BEGIN;", which squawk reads as a
    # nested transaction (transaction-nesting) in every recorded revision.
    pending: set[int] = set()

    def on_execute(conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        text = statement.strip()
        if id(conn) in pending:
            pending.discard(id(conn))
            lines.append("BEGIN;")
        lines.append(_inline(text, parameters).rstrip().rstrip(";") + ";")

    def on_begin(conn: Any) -> None:
        pending.add(id(conn))

    def ending(word: str) -> Callable[[Any], None]:
        def on_end(conn: Any) -> None:
            if id(conn) in pending:
                pending.discard(id(conn))  # nothing of the revision's ran in it
            else:
                lines.append(f"{word};")
        return on_end

    listeners: list[tuple[str, Callable[..., None]]] = [
        ("before_cursor_execute", on_execute), ("begin", on_begin), ("commit", ending("COMMIT")),
        ("rollback", ending("ROLLBACK"))]
    for name, fn in listeners:
        event.listen(Engine, name, fn)
    try:
        yield lines
    finally:
        for name, fn in listeners:
            event.remove(Engine, name, fn)


def online_sql(history: History, url: Any, revision: str) -> str:
    """Upgrade the database at ``url`` (at ``revision``'s parent) to ``revision`` and return
    the SQL it ran. The database is left at ``revision``: pass a throwaway copy."""

    def upgrade(stepper: Any) -> str:
        with recording() as lines:
            stepper.upgrade(revision)
        # Drop the empty transactions alembic opens to read its version table.
        text = "\n".join(lines)
        return re.sub(r"BEGIN;\n(?:SELECT [^\n]*;\n)*COMMIT;\n?", "", text + "\n").strip() + "\n"

    return with_stepper(history, url, upgrade)
