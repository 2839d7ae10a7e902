"""Data fixtures per revision: rows before it runs, the rows expected after it.

A schema round-trip proves nothing about data: a data migration that loses or garbles
rows still leaves an identical catalog. So a project declares, in the file named by
``[tool.hokmdb.migrations] data_fixtures`` (a Python file, loaded by path), what its
revisions must do to data::

    from pytest_hokmdb.migration.fixtures import RevisionData, SeededData

    REVISION_DATA = [
        RevisionData(
            "0005",
            # inserted at 0005's parent, table by table in this order (parents first);
            # tables may be schema-qualified ("billing.invoices")
            before={
                "players": [{"id": 1, "username": "p", "display_name": "P"}],
                "moves": [{"id": 1, "player_id": 1, "card": "10H"}],
            },
            # after upgrading to 0005 each listed table holds exactly these rows,
            # compared on the columns the rows name (other columns are not compared)
            after={"moves": [{"id": 1, "card_suit": "hearts", "card_rank": 10}]},
            # then downgrade to the parent: the "before" tables must hold the "before"
            # rows again (set False for a downgrade that cannot restore data)
            downgrade_restores=True,
        ),
    ]

    # The same as a plain dict, if you prefer: {"0005": {"before": ..., "after": ...}}

    # Rows a revision needs to run at all (a data migration that reads a row): inserted at
    # its parent on *every* upgrade through it (round trips, one-command and stepwise
    # upgrades, templates), as pytest-alembic's before_revision_data.
    UPGRADE_PATH_DATA = {"0009": {"settings": [{"key": "season", "value": "1"}]}}

    SEEDED_DATA = [
        # a realistic data set at head survives head -> 0004 -> head unchanged, and
        # check() finds no broken invariant afterwards
        SeededData("seeded games", from_revision="0004", seed=seed_fn, check=check_fn),
    ]

``seed`` and ``check`` receive the throwaway database's libpq URL (with its password)
and may use any driver; ``check`` returns a list of problems (empty when all is well).
Values are compared with ``==`` as the driver returns them: enum labels and text as
``str``, integers as ``int``, ``numeric`` as ``Decimal``, timestamps as ``datetime``.
JSON columns take Python objects (the table is reflected, so types are known).

Why the rows are inserted at the parent through a reflected table: the parent's schema
is what production data looks like when the revision ships; reflecting it gives the
right types (JSON, enums, arrays) without the fixture author spelling them out.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from pytest_hokmdb.errors import ConfigError
from pytest_hokmdb.migration.history import History, MigrationFailure, Revision
from pytest_hokmdb.migration.runner import Stepper
from pytest_hokmdb.migration.settings import MigrationSuiteSettings

Rows = Mapping[str, Sequence[Mapping[str, Any]]]

_MAX_SHOWN_ROWS = 20


@dataclass(frozen=True)
class RevisionData:
    """Rows to insert before ``revision`` runs and the rows expected after it."""

    revision: str
    before: Rows = field(default_factory=dict)
    after: Rows = field(default_factory=dict)
    downgrade_restores: bool = True


@dataclass(frozen=True)
class SeededData:
    """A data set seeded at head that must survive head -> ``from_revision`` -> head."""

    name: str
    from_revision: str
    seed: Callable[[str], None]
    check: Callable[[str], list[str]] | None = None


@dataclass(frozen=True)
class DataFixtures:
    revision_data: tuple[RevisionData, ...] = ()
    seeded: tuple[SeededData, ...] = ()
    # {revision: rows}: inserted at the revision's parent on every upgrade through it.
    upgrade_path: Mapping[str, Rows] = field(default_factory=dict)

    def path_inserts(self) -> dict[str, Callable[[sa.Connection], None]]:
        """For ``runner.set_upgrade_path_data``: rows already there (a round trip passes a
        revision twice) are left as they are."""
        return {revision: (lambda connection, rows=rows: insert_rows(connection, rows, if_absent=True))
                for revision, rows in self.upgrade_path.items()}

    def unknown_revisions(self, history: History) -> list[str]:
        """Fixtures that name revisions the history does not have (a typo tests nothing)."""
        named = [(f"REVISION_DATA {d.revision!r}", d.revision) for d in self.revision_data]
        named += [(f"SEEDED_DATA {s.name!r} from_revision {s.from_revision!r}", s.from_revision) for s in self.seeded]
        named += [(f"UPGRADE_PATH_DATA {revision!r}", revision) for revision in self.upgrade_path]
        return [
            f"{what} is not a revision of the history ({', '.join(history.ids)})"
            for what, revision in named
            if revision not in history.by_id
        ]


def _revision_data(value: Any, path: Path) -> tuple[RevisionData, ...]:
    if isinstance(value, Mapping):
        try:
            return tuple(RevisionData(revision=str(rev), **spec) for rev, spec in value.items())
        except TypeError as exc:
            raise ConfigError(f"{path}: REVISION_DATA entries take before, after, downgrade_restores: {exc}") from None
    items = tuple(value)
    for item in items:
        if not isinstance(item, RevisionData):
            raise ConfigError(f"{path}: REVISION_DATA must hold RevisionData items (or be a dict), got {item!r}")
    return items


def load_data_fixtures(settings: MigrationSuiteSettings) -> DataFixtures:
    """The project's fixtures (none when ``data_fixtures`` is not set)."""
    if settings.data_fixtures is None:
        return DataFixtures()
    path = settings.resolve(settings.data_fixtures)
    if not path.is_file():
        raise ConfigError(f"[tool.hokmdb.migrations] data_fixtures: {path} does not exist")
    name = "hokmdb_data_fixtures_" + hashlib.sha1(str(path.resolve()).encode(), usedforsecurity=False).hexdigest()[:12]
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"[tool.hokmdb.migrations] data_fixtures: {path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception:
            del sys.modules[name]
            raise
    seeded = tuple(getattr(module, "SEEDED_DATA", ()))
    for item in seeded:
        if not isinstance(item, SeededData):
            raise ConfigError(f"{path}: SEEDED_DATA must hold SeededData items, got {item!r}")
    upgrade_path = getattr(module, "UPGRADE_PATH_DATA", {})
    if not isinstance(upgrade_path, Mapping) or not all(isinstance(rows, Mapping) for rows in upgrade_path.values()):
        raise ConfigError(f"{path}: UPGRADE_PATH_DATA must be a dict of revision -> {{table: [rows]}}")
    return DataFixtures(_revision_data(getattr(module, "REVISION_DATA", ()), path), seeded,
                        {str(revision): rows for revision, rows in upgrade_path.items()})


# --- rows in and out ---------------------------------------------------------------------------


def _table(connection: sa.Connection, qualified: str) -> sa.Table:
    schema, _, name = qualified.rpartition(".")
    try:
        with warnings.catch_warnings():
            # SQLAlchemy reflects a NOT VALID check constraint (an expand phase) with options
            # its own Table() then cannot place; the rows are all that is read here.
            warnings.filterwarnings("ignore", message="Can't validate argument 'dialect_options'", category=sa.exc.SAWarning)
            return sa.Table(name, sa.MetaData(), schema=schema or None, autoload_with=connection)
    except sa.exc.NoSuchTableError:
        raise MigrationFailure(f"table {qualified} does not exist") from None


def _has_key(table: sa.Table) -> bool:
    """A primary key, unique constraint or unique index: what ON CONFLICT can detect."""
    return bool(table.primary_key.columns) or any(isinstance(c, sa.UniqueConstraint) for c in table.constraints) \
        or any(index.unique for index in table.indexes)


def _present(connection: sa.Connection, table: sa.Table, row: Mapping[str, Any]) -> bool:
    match = sa.and_(*(table.c[column].is_not_distinct_from(value) for column, value in row.items()))
    return connection.execute(sa.select(sa.literal(1)).select_from(table).where(match).limit(1)).first() is not None


def insert_rows(connection: sa.Connection, rows: Rows, *, if_absent: bool = False) -> None:
    """Insert ``rows`` table by table, in the given order, and commit (``if_absent``: a row
    that conflicts with one already there is skipped).

    Fixture rows usually carry explicit ids (children must point at them); the sequences
    behind identity/serial columns are then moved past them, so a data migration that
    inserts into the same table does not collide with the fixture's ids.
    """
    try:
        for qualified, table_rows in rows.items():
            if not table_rows:
                continue
            table = _table(connection, qualified)
            statement = postgresql.insert(table).on_conflict_do_nothing() if if_absent else table.insert()
            if if_absent and not _has_key(table):
                # No key for ON CONFLICT to find an existing row by: a row is there when one
                # equals it on every column it names.
                table_rows = [r for r in table_rows if not _present(connection, table, r)]
                if not table_rows:
                    continue
            connection.execute(statement, [dict(r) for r in table_rows])
            preparer = connection.dialect.identifier_preparer
            for column in sorted({c for row in table_rows for c in row}):
                sequence = connection.execute(
                    sa.select(sa.func.pg_get_serial_sequence(preparer.format_table(table), column))
                ).scalar()
                if sequence is not None:
                    connection.execute(
                        sa.select(sa.func.setval(sa.cast(sequence, postgresql.REGCLASS), sa.func.max(table.c[column])))
                    )
        connection.commit()
    except BaseException:
        connection.rollback()
        raise


def _render(row: Mapping[str, Any], columns: Sequence[str]) -> str:
    return "{" + ", ".join(f"{c}: {row.get(c)!r}" for c in columns) + "}"


def compare_rows(connection: sa.Connection, expected: Rows) -> list[str]:
    """For each table, a description of how its rows differ from ``expected`` (per listed
    column, as a multiset: order does not matter, duplicates do)."""
    problems: list[str] = []
    try:
        for qualified, wanted in expected.items():
            columns = list(dict.fromkeys(c for row in wanted for c in row))
            table = _table(connection, qualified)
            missing_columns = [c for c in columns if c not in table.c]
            if missing_columns:
                problems.append(f"table {qualified} has no column {', '.join(missing_columns)}")
                continue
            selected = [table.c[c] for c in columns] or [sa.literal_column("1")]
            actual = [dict(row._mapping) for row in connection.execute(sa.select(*selected))]
            unmatched = list(actual)
            missing: list[Mapping[str, Any]] = []
            for row in wanted:
                probe = {c: row.get(c) for c in columns}
                index = next((i for i, got in enumerate(unmatched) if all(got.get(c) == probe[c] for c in columns)), None)
                if index is None:
                    missing.append(probe)
                else:
                    unmatched.pop(index)
            if missing or unmatched:
                header = (
                    f"table {qualified}: {len(actual)} row(s), {len(wanted)} expected; "
                    f"{len(missing)} expected row(s) missing (-), {len(unmatched)} unexpected (+):"
                )
                lines = [header]
                lines += [f"  - {_render(r, columns)}" for r in missing[:_MAX_SHOWN_ROWS]]
                lines += [f"  + {_render(r, columns)}" for r in unmatched[:_MAX_SHOWN_ROWS]]
                if len(missing) + len(unmatched) > 2 * _MAX_SHOWN_ROWS:
                    lines.append("  ...")
                problems.append("\n".join(lines))
    finally:
        connection.rollback()
    return problems


def run_revision_data(stepper: Stepper, revision: Revision, data: RevisionData, *, reversible: bool) -> None:
    """On a database at ``revision``'s parent: insert ``before``, upgrade, compare ``after``;
    then (if the revision is reversible and ``downgrade_restores``) downgrade and compare
    ``before`` again."""
    insert_rows(stepper.connection, data.before)
    stepper.upgrade(revision.id)
    problems = compare_rows(stepper.connection, data.after)
    if problems:
        raise MigrationFailure(
            f"{revision.label}: after the upgrade the data is not what its data fixture expects:\n" + "\n".join(problems)
        )
    if not (reversible and data.downgrade_restores):
        return
    stepper.downgrade(revision.parent_target)
    problems = compare_rows(stepper.connection, data.before)
    if problems:
        raise MigrationFailure(
            f"{revision.label}: its downgrade (to {revision.parent_target}) does not restore the rows inserted "
            "before it ran:\n" + "\n".join(problems)
        )


# --- whole tables, for seeded data ---------------------------------------------------------------

_USER_TABLES = """
    SELECT format('%I.%I', n.nspname, c.relname)
    FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
      AND c.oid IS DISTINCT FROM to_regclass({version})
"""


def table_contents(stepper: Stepper) -> dict[str, list[str]]:
    """Every user table's rows as sorted text (the version table excluded)."""
    connection = stepper.connection
    version = "'" + stepper.version_table.replace("'", "''") + "'"
    try:
        tables = [row[0] for row in connection.exec_driver_sql(_USER_TABLES.format(version=version))]
        return {
            table: sorted(row[0] for row in connection.exec_driver_sql(f"SELECT t::text FROM {table} AS t"))
            for table in tables
        }
    finally:
        connection.rollback()


def contents_diff(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[str]:
    """Per table, which rows were lost (-) or appeared/changed (+)."""
    problems: list[str] = []
    for table in sorted(set(before) | set(after)):
        if table not in after:
            problems.append(f"table {table} ({len(before[table])} rows) is gone")
            continue
        if table not in before:
            problems.append(f"table {table} appeared")
            continue
        lost = _multiset_minus(before[table], after[table])
        gained = _multiset_minus(after[table], before[table])
        if lost or gained:
            header = (
                f"table {table}: {len(before[table])} rows before, {len(after[table])} after; "
                f"{len(lost)} lost or changed (-), {len(gained)} new or changed (+):"
            )
            lines = [header]
            lines += [f"  - {row}" for row in lost[:_MAX_SHOWN_ROWS]]
            lines += [f"  + {row}" for row in gained[:_MAX_SHOWN_ROWS]]
            problems.append("\n".join(lines))
    return problems


def _multiset_minus(a: list[str], b: list[str]) -> list[str]:
    remaining: dict[str, int] = {}
    for row in b:
        remaining[row] = remaining.get(row, 0) + 1
    out: list[str] = []
    for row in a:
        if remaining.get(row, 0):
            remaining[row] -= 1
        else:
            out.append(row)
    return out


def seeded_round_trip(stepper: Stepper, history: History, seeded: SeededData) -> None:
    """At head with seeded data: downgrade to ``from_revision``, upgrade to head; every
    table must hold exactly the rows it held before."""
    head = ", ".join(history.head_state)
    before = table_contents(stepper)
    stepper.downgrade(seeded.from_revision)
    stepper.upgrade(history.head_target)
    problems = contents_diff(before, table_contents(stepper))
    if problems:
        raise MigrationFailure(
            f"{seeded.name}: the seeded data does not survive head ({head}) -> {seeded.from_revision} -> head; "
            f"the revisions after {seeded.from_revision} lose or change rows:\n" + "\n".join(problems)
        )
