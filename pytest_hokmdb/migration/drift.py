"""Models versus migrations: do the SQLAlchemy models describe the schema at head?

Three views, because each one is blind where the next one looks:

* ``autogenerate_drift``: alembic's own comparison, run *inside env.py* (as ``alembic
  check`` does) so that the project's ``include_object``, ``compare_type`` and
  ``compare_server_default`` choices apply; a difference is rendered as the ``op.``
  calls ``alembic revision --autogenerate`` would write, which is also the fix.
* ``check_constraint_drift`` and ``enum_drift``: what autogenerate cannot compare.
  CHECK texts are normalised by PostgreSQL itself: each model CHECK is added to the
  migrated table as ``NOT VALID`` inside a transaction that is rolled back, and
  ``pg_get_constraintdef`` of both is compared, so spelling (``BETWEEN`` vs ``>= AND <=``
  parentheses, casts) cannot cause false alarms.
* ``model_module_problems``: a model module that the metadata's module never imports
  contributes its tables only when something else happens to import it first, so
  autogenerate in env.py would propose dropping them. Checked in a fresh interpreter,
  because in the test process any earlier import would hide the problem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.runtime.migration import MigrationContext

from pytest_hokmdb.migration.runner import Stepper
from pytest_hokmdb.migration.settings import MigrationSuiteSettings


def autogenerate_drift(stepper: Stepper, metadata: sa.MetaData) -> str:
    """The operations autogenerate would generate against ``metadata`` ('' when none)."""
    rendered: list[str] = []

    def inspect(heads: Any, context: MigrationContext) -> list[Any]:
        script = produce_migrations(context, metadata)
        # env.py's process_revision_directives hook sees (and may edit or veto) the
        # operations, as it does in `alembic check` and `alembic revision --autogenerate`.
        directives = [script]
        hook = context.opts.get("process_revision_directives")
        if hook:
            hook(context, heads, directives)
        for directive in directives:
            if directive.upgrade_ops is not None and not directive.upgrade_ops.is_empty():
                # Without migration_context: given one, alembic 1.20 looks for target_metadata in
                # the render options and refuses to render. The default dialect renders the same ops.
                rendered.append(render_python_code(directive.upgrade_ops))
        return []  # nothing to run: env.py only had to configure the context

    stepper.run_env(inspect)
    stepper.connection.rollback()
    return "\n".join(rendered)


# --- CHECK constraints and enum labels -------------------------------------------------------


def _constraint_name(constraint: sa.CheckConstraint, dialect: Any) -> str | None:
    """The name the DDL would use (naming conventions applied), unquoted; None if unnamed."""
    if constraint.name is None:
        return None  # unnamed and no naming convention: format_constraint asserts on it (SQLAlchemy 2.x)
    try:
        name = dialect.identifier_preparer.format_constraint(constraint)
    except sa.exc.SQLAlchemyError:
        return None
    if not name:
        return None
    if name.startswith('"') and name.endswith('"'):
        name = name[1:-1].replace('""', '"')
    return str(name)


_MIGRATED_CHECKS = """
    SELECT n.nspname, c.relname, con.conname, pg_get_constraintdef(con.oid)
    FROM pg_constraint AS con
    JOIN pg_class AS c ON c.oid = con.conrelid
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE con.contype = 'c' AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
"""

_PROBE = "hokmdb_probe_"


def check_constraint_drift(connection: sa.Connection, metadata: sa.MetaData) -> list[str]:
    """Differences between the models' CHECK constraints and the migrated ones, per table."""
    dialect = connection.dialect
    preparer = dialect.identifier_preparer
    problems: list[str] = []
    try:
        default_schema = connection.exec_driver_sql("SELECT current_schema()").scalar_one()
        probes: dict[str, tuple[str, str, str | None]] = {}
        for table in metadata.tables.values():
            schema = table.schema or default_schema
            qualified = f"{preparer.quote_schema(schema)}.{preparer.quote(table.name)}"
            if connection.exec_driver_sql(f"SELECT to_regclass('{qualified.replace(chr(39), chr(39) * 2)}')").scalar() is None:
                continue  # a missing table is autogenerate's finding, reported there
            for constraint in table.constraints:
                if not isinstance(constraint, sa.CheckConstraint):
                    continue
                sqltext = str(constraint.sqltext.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
                probe = f"{_PROBE}{len(probes)}"
                savepoint = connection.begin_nested()
                try:
                    connection.exec_driver_sql(
                        f"ALTER TABLE {qualified} ADD CONSTRAINT {probe} CHECK ({sqltext}) NOT VALID"
                    )
                    savepoint.commit()
                except sa.exc.DBAPIError as exc:
                    savepoint.rollback()
                    problems.append(
                        f"table {table.fullname}: the models' CHECK {_constraint_name(constraint, dialect) or ''} "
                        f"({sqltext}) does not even apply to the migrated table: {getattr(exc, 'orig', exc)}"
                    )
                    continue
                probes[probe] = (schema, table.name, _constraint_name(constraint, dialect))
        rows = connection.exec_driver_sql(_MIGRATED_CHECKS).all()
    finally:
        connection.rollback()  # the probes were never meant to stay

    migrated: dict[tuple[str, str], dict[str, str]] = {}
    from_models: dict[tuple[str, str], list[tuple[str | None, str]]] = {}
    for schema, table_name, name, definition in rows:
        if name in probes:
            probe_schema, probe_table, model_name = probes[name]
            from_models.setdefault((probe_schema, probe_table), []).append(
                (model_name, definition.removesuffix(" NOT VALID"))
            )
        else:
            migrated.setdefault((schema, table_name), {})[name] = definition.removesuffix(" NOT VALID")

    model_tables = {(t.schema or default_schema, t.name) for t in metadata.tables.values()}
    for key in sorted(model_tables):
        in_db = dict(migrated.get(key, {}))
        where = f"table {key[0]}.{key[1]}"
        unnamed: list[str] = []
        for name, definition in from_models.get(key, []):
            if name is None:
                unnamed.append(definition)
            elif name not in in_db:
                problems.append(f"{where}: CHECK {name} {definition} is in the models but not in the migrated schema")
            else:
                actual = in_db.pop(name)
                if actual != definition:
                    problems.append(
                        f"{where}: CHECK {name} differs; the models say {definition}, the migrations made {actual}"
                    )
        for definition in unnamed:
            match = next((n for n, d in in_db.items() if d == definition), None)
            if match is None:
                problems.append(f"{where}: an unnamed CHECK {definition} of the models is not in the migrated schema")
            else:
                in_db.pop(match)
        for name, definition in sorted(in_db.items()):
            problems.append(f"{where}: CHECK {name} {definition} is in the migrated schema but not in the models")
    return problems


_MIGRATED_ENUMS = """
    SELECT n.nspname, t.typname, array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
    FROM pg_type AS t
    JOIN pg_namespace AS n ON n.oid = t.typnamespace
    JOIN pg_enum AS e ON e.enumtypid = t.oid
    GROUP BY n.nspname, t.typname
"""


def enum_drift(connection: sa.Connection, metadata: sa.MetaData) -> list[str]:
    """Native enum types the models use whose labels (or their order) differ from the database's."""
    try:
        default_schema = connection.exec_driver_sql("SELECT current_schema()").scalar_one()
        migrated = {(schema, name): list(labels) for schema, name, labels in connection.exec_driver_sql(_MIGRATED_ENUMS)}
    finally:
        connection.rollback()
    wanted: dict[tuple[str, str], tuple[list[str], str]] = {}
    for table in metadata.tables.values():
        for column in table.columns:
            kind = column.type
            if isinstance(kind, sa.Enum) and kind.native_enum and kind.name:
                schema = kind.schema or table.schema or default_schema
                wanted.setdefault((schema, kind.name), (list(kind.enums), f"{table.name}.{column.name}"))
    problems: list[str] = []
    for (schema, name), (labels, used_by) in sorted(wanted.items()):
        actual = migrated.get((schema, name))
        if actual is None:
            problems.append(f"enum type {schema}.{name} (used by {used_by} in the models) does not exist after the migrations")
        elif actual != labels:
            problems.append(
                f"enum type {schema}.{name}: the models list {labels}, the migrated type has {actual}"
            )
    return problems


# --- model modules ----------------------------------------------------------------------------

_MODULE_PROBE = r"""
import importlib, json, sys
import sqlalchemy as sa

def tables_of(module):
    for value in list(vars(module).values()):
        if isinstance(value, sa.Table):
            yield value
        elif isinstance(value, type) and value.__module__ == module.__name__:
            table = getattr(value, "__table__", None)
            if isinstance(table, sa.Table):
                yield table

module_name, _, attribute = sys.argv[1].partition(":")
metadata = importlib.import_module(module_name)
for part in attribute.split("."):
    metadata = getattr(metadata, part)
known = set(metadata.tables)
report = {}
for name in sys.argv[2:]:
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        continue
    added = sorted(set(metadata.tables) - known)
    known |= set(added)
    own = sorted({t.fullname for t in tables_of(module) if t.metadata is metadata})
    report[name] = {"added": added, "own": own}
print(json.dumps(report))
"""


def model_module_problems(settings: MigrationSuiteSettings) -> list[str]:
    """Each model module imports, contributes tables to the metadata, and is imported by
    the metadata's own module (so env.py sees its tables without help)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(settings.root), *sys.path])
    result = subprocess.run(
        [sys.executable, "-c", _MODULE_PROBE, settings.metadata, *settings.model_modules],
        cwd=settings.root,
        env=env,
        check=False,  # a failure is reported below, with the interpreter's stderr
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        return [f"metadata {settings.metadata} cannot be loaded in a fresh interpreter: {result.stderr.strip()[-1500:]}"]
    report: dict[str, dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    problems: list[str] = []
    for name in settings.model_modules:
        entry = report[name]
        if "error" in entry:
            problems.append(f"model module {name} cannot be imported: {entry['error']}")
        elif entry["added"]:
            problems.append(
                f"model module {name} is not imported by the metadata's module ({settings.metadata}): its tables "
                f"{', '.join(entry['added'])} join the metadata only when {name} is imported explicitly, so env.py "
                f"and autogenerate do not see them; import {name} where the metadata is defined"
            )
        elif not entry["own"]:
            problems.append(
                f"model module {name} contributes no tables to {settings.metadata} (do its models use another "
                "MetaData or declarative base?)"
            )
    return problems
