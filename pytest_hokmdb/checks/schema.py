"""Schema checks: the database is at the revision the code expects and looks like the models.

A deploy can "succeed" and still leave the schema wrong: a migration recorded but an
index missing (a failed ``CREATE INDEX CONCURRENTLY`` leaves an invalid one behind), a
hand-made hotfix column on production, a constraint added ``NOT VALID`` and never
validated. The game server then runs on a schema nobody reviewed. These checks read the
catalog only (``pg_catalog``, a handful of cheap queries, no table data, no alembic
online context), so they are safe and fast on a live production database.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import asyncpg
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError
from sqlalchemy.dialects import postgresql

from pytest_hokmdb.checks.base import CheckContext, CheckFunction, CheckResult, check, sample
from pytest_hokmdb.db.catalog import app_schema  # noqa: F401 - part of this module's API (security, deploy)
from pytest_hokmdb.errors import ConfigError, HokmdbError
from pytest_hokmdb.migrate import alembic_config, current_revision, head_revision, script_directory

FEATURE = "Schema"
CATEGORY = "schema drift"
DEPLOY_HINT = "run the deploy for this environment (database/deploy.py, or `alembic -x environment=NAME upgrade head`)"

# Tables the schema legitimately holds beyond the models: alembic's bookkeeping, and the
# tool's own tables (locks, run history), which are prefixed so they can never collide.
IGNORED_TABLES = frozenset({"alembic_version"})
TOOL_TABLE_PREFIX = "hokmdb_"

_DIALECT = postgresql.dialect()


# -- where the application lives -----------------------------------------------------------


def quote_ident(name: str) -> str:
    """Quote an identifier for a statement we print for the operator to run."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    """``schema.name``, each part quoted as needed, for a statement the operator runs."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


# -- schema revision ---------------------------------------------------------------------------


def _distance(script: ScriptDirectory, upper: str, lower: str) -> int | None:
    """How many revisions lie between ``lower`` and ``upper`` (None when ``lower`` is no ancestor)."""
    try:
        # iterate_revisions yields upper and everything below it down to, not including, lower.
        return len(list(script.iterate_revisions(upper, lower)))
    except (RevisionError, CommandError):
        return None


def _known(script: ScriptDirectory, revision: str) -> str | None:
    """The full id of ``revision`` in this code's history, or None when the code does not know it."""
    try:
        found = script.get_revision(revision)
    except (RevisionError, CommandError):
        return None
    return found.revision if found is not None else None


@check(
    "schema.at_expected_revision",
    title="Database is at the expected schema revision",
    feature=FEATURE,
    category=CATEGORY,
    severity="blocker",
)
async def at_expected_revision(ctx: CheckContext) -> CheckResult:
    """The code queries the schema of one revision; any other revision breaks it in ways no
    other check predicts, so this is the first thing an operator needs to know."""
    cfg = alembic_config(project_root=ctx.project_root)
    script = script_directory(cfg)
    try:
        code_head = head_revision(cfg)
    except HokmdbError as exc:
        return CheckResult.failed(f"the code's migration history is unusable: {exc.message}; fix the checkout before deploying")
    wanted = ctx.target_revision or code_head
    expected = code_head if wanted in ("head", "heads") else _known(script, wanted)
    source = "the code's alembic head" if ctx.target_revision is None else f"--target-revision {ctx.target_revision}"
    if expected is None:
        return CheckResult.failed(
            f"target revision {wanted!r} is not in this code's migration history (head {code_head}): "
            "check the --target-revision passed to the gate, or deploy the code that contains it",
            threshold=wanted,
        )
    current = await current_revision(ctx.conn)
    where = f"database {ctx.target.dbname} on {ctx.target.host}:{ctx.target.port}"
    evidence = {"revisions": f"expected ({source}): {expected}\ncode head: {code_head}\ndatabase: {current}\n"}
    if current is None:
        return CheckResult.failed(
            f"{where} has no recorded revision (alembic_version is missing or empty), {source} is {expected}: "
            f"the database was never migrated or the gate targets the wrong database; {DEPLOY_HINT}, "
            "or check database.name and the environment",
            measured=None,
            threshold=expected,
            evidence=evidence,
        )
    if current == expected:
        return CheckResult.passed(f"{where} is at revision {current} ({source})", measured=current, threshold=expected, evidence=evidence)
    if "," in current or _known(script, current) is None:
        return CheckResult.failed(
            f"{where} is at revision {current}, which this code does not know (expected {expected}, {source}): "
            "the database was migrated by newer or branched code; deploy the code that matches the database, "
            "or check that the right database was targeted",
            measured=current,
            threshold=expected,
            evidence=evidence,
        )
    behind = _distance(script, expected, current)
    if behind is not None:
        count = f"{behind} revision{'s' if behind != 1 else ''} behind"
        return CheckResult.failed(
            f"{where} is at revision {current}, {count} {expected} ({source}): the deploy did not run or stopped "
            f"part-way; {DEPLOY_HINT}, and check the deploy log for the failed revision",
            measured=current,
            threshold=expected,
            evidence=evidence,
        )
    ahead = _distance(script, current, expected)
    if ahead is not None:
        count = f"{ahead} revision{'s' if ahead != 1 else ''} ahead of"
        return CheckResult.failed(
            f"{where} is at revision {current}, {count} {expected} ({source}): the code being verified is older "
            "than the database; check the --target-revision and the deployed code version, or roll the database "
            f"back to {expected} deliberately (database/rollback.py)",
            measured=current,
            threshold=expected,
            evidence=evidence,
        )
    return CheckResult.failed(
        f"{where} is at revision {current}, on a different branch of the history than {expected} ({source}): "
        "merge the branches in the code and deploy the merge revision",
        measured=current,
        threshold=expected,
        evidence=evidence,
    )


# -- models vs catalog -------------------------------------------------------------------------

_TYPE_ALIASES: dict[str, str] = {
    "varchar": "character varying",
    "char": "character",
    "bpchar": "character",
    "int": "integer",
    "int4": "integer",
    "int2": "smallint",
    "int8": "bigint",
    "bool": "boolean",
    "float8": "double precision",
    "float4": "real",
    "decimal": "numeric",
    "timestamptz": "timestamp with time zone",
    "timestamp": "timestamp without time zone",
    "timetz": "time with time zone",
    "time": "time without time zone",
}


def normalise_type(name: str) -> str:
    """One spelling per type, so ``format_type()`` and SQLAlchemy's DDL compare equal.

    ``format_type`` says ``character varying(32)`` / ``timestamp with time zone``, the
    postgresql dialect says ``VARCHAR(32)`` / ``TIMESTAMP WITH TIME ZONE``; a type that
    differs after this is a real difference (``integer`` vs ``smallint``, a length).
    """
    text = " ".join(name.replace('"', "").lower().split())
    dims = 0
    while text.endswith("[]"):
        text, dims = text[:-2].rstrip(), dims + 1
    modifier = ""
    match = re.search(r"\(([^)]*)\)", text)
    if match:
        modifier = "(" + match.group(1).replace(" ", "") + ")"
        text = " ".join((text[: match.start()] + text[match.end() :]).split())
    if text == "float":
        # FLOAT(p): p <= 24 is real, anything else (or no p) double precision.
        precision = int(modifier[1:-1]) if modifier[1:-1].isdigit() else 53
        text, modifier = ("real" if precision <= 24 else "double precision"), ""
    text = _TYPE_ALIASES.get(text, text)
    if modifier and text.endswith(" time zone"):
        first, rest = text.split(" ", 1)
        text = f"{first}{modifier} {rest}"
    else:
        text += modifier
    return text + "[]" * dims


def model_type(column: sa.Column[object]) -> str:
    """The column's type as the models would create it on PostgreSQL, normalised."""
    return normalise_type(column.type.compile(dialect=_DIALECT))


_KIND = {"p": "primary key", "u": "unique constraint", "c": "check constraint", "f": "foreign key", "x": "exclusion constraint"}


@dataclass
class SchemaShape:
    """Tables, columns, indexes and constraints of one schema, keyed for comparison."""

    columns: dict[str, dict[str, tuple[str, bool]]] = field(default_factory=dict)  # table -> column -> (type, not null)
    indexes: dict[str, set[str]] = field(default_factory=dict)  # table -> index names (not backing a constraint)
    constraints: dict[str, dict[str, str]] = field(default_factory=dict)  # table -> name -> kind code
    extensions: set[str] = field(default_factory=set)
    enums: dict[str, list[str]] = field(default_factory=dict)  # type name -> labels in order


def expected_shape(metadata: sa.MetaData) -> SchemaShape:
    """What the models say the application schema holds (the models declare no schema of their own)."""
    shape = SchemaShape()
    for table in metadata.sorted_tables:
        shape.columns[table.name] = {c.name: (model_type(c), not c.nullable) for c in table.columns}
        shape.indexes[table.name] = {str(i.name) for i in table.indexes if i.name is not None}
        kinds: dict[str, str] = {}
        for constraint in table.constraints:
            if constraint.name is None:
                continue
            if isinstance(constraint, sa.PrimaryKeyConstraint):
                if not constraint.columns:
                    continue
                kinds[str(constraint.name)] = "p"
            elif isinstance(constraint, sa.UniqueConstraint):
                kinds[str(constraint.name)] = "u"
            elif isinstance(constraint, sa.CheckConstraint):
                kinds[str(constraint.name)] = "c"
            elif isinstance(constraint, sa.ForeignKeyConstraint):
                kinds[str(constraint.name)] = "f"
        shape.constraints[table.name] = kinds
        for column in table.columns:
            if isinstance(column.type, sa.Enum) and column.type.name:
                shape.enums[column.type.name] = list(column.type.enums)
    declared = metadata.info.get("extensions") or ()
    names: Iterable[str] = declared.keys() if isinstance(declared, Mapping) else declared
    shape.extensions = {str(n) for n in names}
    return shape


_LIVE_COLUMNS = """
SELECT c.relname AS table_name, a.attname AS column_name,
       format_type(a.atttypid, a.atttypmod) AS data_type, a.attnotnull AS not_null
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname, a.attnum
"""

# Indexes that back a constraint are compared as constraints, the rest as indexes.
_LIVE_INDEXES = """
SELECT t.relname AS table_name, ic.relname AS index_name
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = $1 AND t.relkind IN ('r', 'p') AND NOT t.relispartition
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid
                  AND k.contype IN ('p', 'u', 'x'))
"""

_LIVE_CONSTRAINTS = """
SELECT t.relname AS table_name, k.conname AS constraint_name, k.contype::text AS kind
FROM pg_constraint k
JOIN pg_class t ON t.oid = k.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = $1 AND k.contype IN ('p', 'u', 'c', 'f', 'x') AND NOT t.relispartition
"""

_LIVE_ENUMS = """
SELECT t.typname AS type_name, array_agg(e.enumlabel ORDER BY e.enumsortorder) AS labels
FROM pg_type t
JOIN pg_enum e ON e.enumtypid = t.oid
WHERE t.typname = ANY($1::text[]) AND pg_type_is_visible(t.oid)
GROUP BY t.typname
"""


def _ignored(table: str) -> bool:
    return table in IGNORED_TABLES or table.startswith(TOOL_TABLE_PREFIX)


async def live_shape(conn: asyncpg.Connection, schema: str, enum_names: Iterable[str]) -> SchemaShape:
    """What the catalog says the schema holds: a few cheap catalog queries, no table data."""
    shape = SchemaShape()
    for row in await conn.fetch(_LIVE_COLUMNS, schema):
        if _ignored(row["table_name"]):
            continue
        table = shape.columns.setdefault(row["table_name"], {})
        if row["column_name"] is not None:
            table[row["column_name"]] = (normalise_type(row["data_type"]), bool(row["not_null"]))
    for row in await conn.fetch(_LIVE_INDEXES, schema):
        if not _ignored(row["table_name"]):
            shape.indexes.setdefault(row["table_name"], set()).add(row["index_name"])
    for row in await conn.fetch(_LIVE_CONSTRAINTS, schema):
        if not _ignored(row["table_name"]):
            shape.constraints.setdefault(row["table_name"], {})[row["constraint_name"]] = row["kind"]
    shape.extensions = {r["extname"] for r in await conn.fetch("SELECT extname FROM pg_extension")}
    for row in await conn.fetch(_LIVE_ENUMS, sorted(enum_names)):
        shape.enums[row["type_name"]] = list(row["labels"])
    return shape


def _null(not_null: bool) -> str:
    return "NOT NULL" if not_null else "nullable"


def diff_shapes(expected: SchemaShape, live: SchemaShape) -> list[str]:
    """Readable drift items, models first: what is missing or different, then what is extra."""
    items: list[str] = []
    for name in sorted(expected.extensions - live.extensions):
        items.append(f"missing extension {name}")
    for name, labels in sorted(expected.enums.items()):
        if name not in live.enums:
            items.append(f"missing enum type {name}")
        elif live.enums[name] != labels:
            items.append(f"enum type {name} has values {live.enums[name]}, models say {labels}")
    for table, columns in expected.columns.items():
        if table not in live.columns:
            items.append(f"missing table {table}")
            continue
        live_columns = live.columns[table]
        for column, (data_type, not_null) in columns.items():
            if column not in live_columns:
                items.append(f"missing column {table}.{column} ({data_type})")
                continue
            live_type, live_not_null = live_columns[column]
            if live_type != data_type:
                items.append(f"column {table}.{column} is {live_type}, models say {data_type}")
            if live_not_null != not_null:
                items.append(f"column {table}.{column} is {_null(live_not_null)}, models say {_null(not_null)}")
        for column in live_columns.keys() - columns.keys():
            items.append(f"unexpected column {table}.{column} ({live_columns[column][0]})")
        live_indexes = live.indexes.get(table, set())
        for index in sorted(expected.indexes.get(table, set()) - live_indexes):
            items.append(f"missing index {index} on {table}")
        for index in sorted(live_indexes - expected.indexes.get(table, set())):
            items.append(f"unexpected index {index} on {table}")
        wanted, present = expected.constraints.get(table, {}), live.constraints.get(table, {})
        for name, kind in sorted(wanted.items()):
            if name not in present:
                items.append(f"missing {_KIND[kind]} {name} on {table}")
            elif present[name] != kind:
                items.append(f"{name} on {table} is a {_KIND.get(present[name], present[name])}, models say {_KIND[kind]}")
        for name in sorted(present.keys() - wanted.keys()):
            items.append(f"unexpected {_KIND.get(present[name], present[name])} {name} on {table}")
    for table in sorted(live.columns.keys() - expected.columns.keys()):
        count = len(live.columns[table])
        items.append(f"unexpected table {table} ({count} column{'s' if count != 1 else ''})")
    return items


@check(
    "schema.matches_models",
    title="Schema matches the models (no drift)",
    feature=FEATURE,
    category=CATEGORY,
    severity="critical",
)
async def matches_models(ctx: CheckContext) -> CheckResult:
    """The revision number only says which migrations ran; this says what the schema *is*.
    Hand-made hotfixes, half-applied migrations and lost indexes all show up here."""
    if ctx.target_revision not in (None, "head", "heads"):
        cfg = alembic_config(project_root=ctx.project_root)
        # Resolved through alembic, so an abbreviated id of the head still means the head.
        if _known(script_directory(cfg), ctx.target_revision) != head_revision(cfg):
            # A rollback or a restore to an earlier moment is held to its own revision; the
            # models describe head, so compare with what that revision's migrations build.
            return await _matches_revision(ctx, ctx.target_revision)
    from pytest_hokmdb.migration.settings import load_settings

    try:
        metadata = load_settings(ctx.project_root).load_metadata()
    except ConfigError as exc:
        return CheckResult.failed(f"the schema cannot be compared with the models: {exc.message}")
    if metadata is None:
        # metadata = false: the project has no models, so what its migrations build at head is
        # the schema it should have.
        head = head_revision(alembic_config(project_root=ctx.project_root))
        return await _matches_revision(
            ctx, head, intro=f"the project has no models (metadata = false), and the schema differs from what its "
            f"migrations build at head {head}",
            advice="If the database is behind, deploy; if someone changed it by hand, turn the change into a migration "
            "(or revert it)",
        )
    schema = await app_schema(ctx.conn)
    expected = expected_shape(metadata)
    live = await live_shape(ctx.conn, schema, expected.enums.keys())
    items = diff_shapes(expected, live)
    tables = len(expected.columns)
    if not items:
        return CheckResult.passed(
            f"schema {schema} matches the models: {tables} tables with their columns, indexes and constraints",
            measured=0,
            threshold=0,
        )
    return CheckResult.failed(
        f"schema {schema} differs from the models in {len(items)} place{'s' if len(items) != 1 else ''}: "
        f"{'; '.join(items[:8])}{f' (and {len(items) - 8} more)' if len(items) > 8 else ''}. "
        "If the database is behind, deploy; if someone changed it by hand, "
        "turn the change into a migration (or revert it) so code, models and database agree again",
        measured=len(items),
        threshold=0,
        evidence={"schema drift": "\n".join(items) + "\n"},
    )


async def _matches_revision(ctx: CheckContext, held: str, intro: str | None = None, advice: str | None = None) -> CheckResult:
    """The live catalog against a scratch database migrated to ``held`` (cached per revision):
    the same comparison deploy.py's pre-flight drift check makes, from the same code."""
    from dataclasses import replace

    from pytest_hokmdb.migration.reference import check_drift

    script = script_directory(alembic_config(project_root=ctx.project_root))
    revision = _known(script, held)
    if revision is None:
        return CheckResult.failed(f"revision {held!r} (--target-revision) is not in this code's migration history, "
                                  "so the schema cannot be compared with it")
    drift = await check_drift(replace(ctx.target, read_only=True), ctx.project_root, script, revision)
    if not drift.checked:
        return CheckResult.skipped(f"could not build what revision {held} looks like to compare with: {drift.reason}")
    if drift.items:
        items = drift.items
        return CheckResult.failed(
            (intro or f"this database is held to revision {held} (--target-revision), and its schema differs from what "
             f"{held} builds")
            + f" ({drift.reference}) in {len(items)} place{'s' if len(items) != 1 else ''}: "
            f"{'; '.join(items[:8])}{f' (and {len(items) - 8} more)' if len(items) > 8 else ''}. "
            + (advice or "The rollback or restore left it broken, or someone changed it by hand"),
            measured=len(items), threshold=0, evidence={"schema drift": "\n".join(items) + "\n"},
        )
    return CheckResult.passed(f"schema matches what revision {held} builds ({drift.reference})", measured=0, threshold=0)


# -- leftovers of failed or partial DDL --------------------------------------------------------

_INVALID_INDEXES = """
SELECT ic.relname AS index_name, t.relname AS table_name, i.indisready AS ready,
       (SELECT p.pid FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid LIMIT 1) AS building_pid,
       pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
WHERE n.nspname = $1 AND NOT i.indisvalid
ORDER BY t.relname, ic.relname
"""


@check(
    "schema.no_invalid_indexes",
    title="No invalid indexes",
    feature=FEATURE,
    category=CATEGORY,
    severity="critical",
)
async def no_invalid_indexes(ctx: CheckContext) -> CheckResult:
    """A failed ``CREATE INDEX CONCURRENTLY`` leaves an index that the planner never uses but
    every write still maintains: the slow query it was meant to fix stays slow, writes get
    slower, and a unique one rejects rows without protecting anything."""
    schema = await app_schema(ctx.conn)
    rows = await ctx.conn.fetch(_INVALID_INDEXES, schema)
    if not rows:
        return CheckResult.passed(f"no invalid indexes in schema {schema}", measured=0, threshold=0)
    names = [f"{r['index_name']} on {r['table_name']}" for r in rows]
    building = [f"{r['index_name']} (pid {r['building_pid']})" for r in rows if r["building_pid"] is not None]
    fix = "; ".join(f"DROP INDEX CONCURRENTLY {qualified(schema, r['index_name'])}" for r in rows if r["building_pid"] is None)
    message = (
        f"{len(rows)} invalid index{'es' if len(rows) != 1 else ''} in schema {schema}: {sample(names)}. "
        "Such an index is left by a failed CREATE INDEX CONCURRENTLY (or REINDEX CONCURRENTLY); queries do not use it "
        "but writes still pay for it."
    )
    if fix:
        message += f" Run {fix}; then rebuild it (rerun the migration that creates it, or CREATE INDEX CONCURRENTLY again)"
        message += " after fixing the cause (for a unique index, the duplicate rows)."
    if building:
        message += f" Still being built right now: {sample(building)}; wait for the build to finish and rerun the gate."
    return CheckResult.failed(
        message,
        measured=len(rows),
        threshold=0,
        evidence={"invalid indexes": "\n".join(r["definition"] + ("" if r["ready"] else "  -- not ready") for r in rows) + "\n"},
    )


_UNVALIDATED = """
SELECT k.conname AS constraint_name, t.relname AS table_name, k.contype::text AS kind,
       pg_get_constraintdef(k.oid) AS definition
FROM pg_constraint k
JOIN pg_class t ON t.oid = k.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = $1 AND NOT k.convalidated
ORDER BY t.relname, k.conname
"""


async def _left_not_valid_by_held_revision(ctx: CheckContext, names: list[str]) -> str | None:
    """The revision the database is held to (--target-revision, below head) when that
    revision's own migrations leave these constraints NOT VALID: the expand phase of an
    online change, which a later revision validates (0006 -> 0007). None otherwise, or when
    what the revision builds cannot be built to compare with (fail closed)."""
    from dataclasses import replace

    from pytest_hokmdb.migration.reference import check_drift

    if ctx.target_revision in (None, "head", "heads"):
        return None
    cfg = alembic_config(project_root=ctx.project_root)
    script = script_directory(cfg)
    revision = _known(script, ctx.target_revision)
    if revision is None or revision == head_revision(cfg):
        return None
    drift = await check_drift(replace(ctx.target, read_only=True), ctx.project_root, script, revision)
    if not drift.checked or any(f" {name}:" in item for item in drift.items for name in names):
        return None
    return revision


@check(
    "schema.no_unvalidated_constraints",
    title="No unvalidated (NOT VALID) constraints",
    feature=FEATURE,
    category=CATEGORY,
    severity="normal",
)
async def no_unvalidated_constraints(ctx: CheckContext) -> CheckResult:
    """``ADD CONSTRAINT ... NOT VALID`` is the online way to add a constraint, but until it is
    validated the rows already present may break it, and the planner cannot rely on it."""
    schema = await app_schema(ctx.conn)
    rows = await ctx.conn.fetch(_UNVALIDATED, schema)
    if not rows:
        return CheckResult.passed(f"every constraint in schema {schema} is validated", measured=0, threshold=0)
    names = [f"{r['constraint_name']} on {r['table_name']}" for r in rows]
    pending = await _left_not_valid_by_held_revision(ctx, [str(r["constraint_name"]) for r in rows])
    if pending:
        return CheckResult.passed(
            f"{len(rows)} constraint(s) in schema {schema} are NOT VALID ({sample(names)}), exactly as revision "
            f"{pending} builds them; the database is held there, below head, and a later revision validates them",
            measured=len(rows), threshold=0)
    fix = "; ".join(
        f"ALTER TABLE {qualified(schema, r['table_name'])} VALIDATE CONSTRAINT {quote_ident(r['constraint_name'])}" for r in rows
    )
    return CheckResult.failed(
        f"{len(rows)} constraint{'s' if len(rows) != 1 else ''} in schema {schema} "
        f"{'were' if len(rows) != 1 else 'was'} added NOT VALID and never validated: {sample(names)}; existing rows "
        f"may violate {'them' if len(rows) != 1 else 'it'}. Run {fix} (it does not block reads or writes of the table; "
        "if it fails, fix the offending rows first)",
        measured=len(rows),
        threshold=0,
        evidence={"unvalidated constraints": "\n".join(f"{r['table_name']}.{r['constraint_name']}: {r['definition']}" for r in rows) + "\n"},
    )


CHECKS: list[CheckFunction] = [at_expected_revision, matches_models, no_invalid_indexes, no_unvalidated_constraints]
