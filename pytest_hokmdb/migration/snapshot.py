"""A full catalog snapshot of a database, read from ``pg_catalog``, and a readable diff.

Why not alembic's autogenerate comparison: it only sees what SQLAlchemy can reflect.
A downgrade that forgets a trigger, a function, a grant, an enum label, a sequence or an
index's ``WHERE`` clause leaves a trace that autogenerate never reports. Here every kind
of object a migration can create is rendered by PostgreSQL itself (``pg_get_indexdef``,
``pg_get_constraintdef``, ``pg_get_functiondef``, ``pg_get_triggerdef``,
``pg_get_viewdef``, ACLs as text), so two snapshots are equal exactly when the schemas are.

What is left out, and why:

* alembic's version table (by default ``alembic_version``), its columns, constraints
  and indexes: it is bookkeeping, and alembic itself leaves the (empty) table behind
  after ``downgrade base``; the revision it records is checked separately.
* column order: a downgrade that re-adds a dropped column can only append it, and
  order changes nothing a query can observe through column names.
* OIDs, sizes, statistics and sequence values: they differ between equal schemas.
* roles and database-level settings: they belong to the cluster, not to the schema
  in this database.

Every object is one ``(key, detail)`` pair in its section, sorted, so a snapshot is a
plain value: compare with ``==``, show with ``diff``.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy.util import await_only

# The schemas a migration can own: everything but PostgreSQL's own.
_USER_SCHEMA = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"


def _sections(version_table: str) -> dict[str, str]:
    """One query per kind of object, each selecting ``(key text, detail text)``.

    ``to_regclass`` resolves the version table the way alembic does (search_path), and
    is NULL before the table exists, which ``IS DISTINCT FROM`` handles.
    """
    version = f"(SELECT to_regclass({_literal(version_table)}))"  # a scalar subquery: evaluated once
    return {
        "schema": f"""
            SELECT n.nspname, concat_ws(' ', 'owner=' || pg_get_userbyid(n.nspowner), 'acl=' || n.nspacl::text,
                                        'comment=' || {_comment('pg_namespace', 'n.oid')})
            FROM pg_namespace AS n WHERE {_USER_SCHEMA}
        """,
        "extension": """
            SELECT e.extname, concat_ws(' ', 'version=' || e.extversion, 'schema=' || n.nspname)
            FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace
        """,
        "relation": f"""
            SELECT format('%s.%s', n.nspname, c.relname),
                   concat_ws(' ', 'kind=' || c.relkind::text, 'persistence=' || c.relpersistence::text,
                             'owner=' || pg_get_userbyid(c.relowner), 'acl=' || c.relacl::text,
                             'options=' || c.reloptions::text,
                             CASE WHEN c.relrowsecurity THEN 'row-level-security' END,
                             CASE WHEN c.relforcerowsecurity THEN 'force-row-level-security' END,
                             'replica-identity=' || c.relreplident::text,
                             'partition-key=' || pg_get_partkeydef(c.oid),
                             'partition-bound=' || pg_get_expr(c.relpartbound, c.oid),
                             'comment=' || {_comment('pg_class', 'c.oid')})
            FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
            WHERE {_USER_SCHEMA} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
              AND c.oid IS DISTINCT FROM {version} AND NOT {_extension_member("pg_class", "c.oid")}
        """,
        "column": f"""
            SELECT format('%s.%s.%s', n.nspname, c.relname, a.attname),
                   concat_ws(' ', format_type(a.atttypid, a.atttypmod),
                             CASE WHEN a.attnotnull THEN 'NOT NULL' ELSE 'NULL' END,
                             CASE WHEN a.attgenerated = '' THEN 'default=' || pg_get_expr(d.adbin, d.adrelid) END,
                             CASE WHEN a.attgenerated <> '' THEN 'generated=' || pg_get_expr(d.adbin, d.adrelid) END,
                             'identity=' || nullif(a.attidentity::text, ''),
                             CASE WHEN a.attcollation <> t.typcollation THEN 'collation=' || co.collname END,
                             'acl=' || a.attacl::text,
                             'options=' || a.attoptions::text,
                             'comment=' || {_comment('pg_class', 'c.oid', 'a.attnum')})
            FROM pg_attribute AS a
            JOIN pg_class AS c ON c.oid = a.attrelid
            JOIN pg_namespace AS n ON n.oid = c.relnamespace
            JOIN pg_type AS t ON t.oid = a.atttypid
            LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            LEFT JOIN pg_collation AS co ON co.oid = a.attcollation
            WHERE {_USER_SCHEMA} AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
              AND a.attnum > 0 AND NOT a.attisdropped AND c.oid IS DISTINCT FROM {version}
              AND NOT {_extension_member("pg_class", "c.oid")}
        """,
        "index": f"""
            SELECT format('%s.%s', n.nspname, ci.relname),
                   concat_ws(' ', pg_get_indexdef(i.indexrelid),
                             CASE WHEN NOT i.indisvalid THEN 'INVALID' END,
                             CASE WHEN i.indisclustered THEN 'CLUSTERED' END,
                             CASE WHEN i.indisreplident THEN 'REPLICA-IDENTITY' END,
                             'comment=' || {_comment('pg_class', 'i.indexrelid')})
            FROM pg_index AS i
            JOIN pg_class AS ci ON ci.oid = i.indexrelid
            JOIN pg_namespace AS n ON n.oid = ci.relnamespace
            WHERE {_USER_SCHEMA} AND i.indrelid IS DISTINCT FROM {version}
              AND NOT {_extension_member("pg_class", "i.indrelid")}
        """,
        "constraint": f"""
            SELECT format('%s.%s %s', n.nspname, coalesce(rel.relname, typ.typname), con.conname),
                   concat_ws(' ', pg_get_constraintdef(con.oid),
                             'comment=' || {_comment('pg_constraint', 'con.oid')})
            FROM pg_constraint AS con
            JOIN pg_namespace AS n ON n.oid = con.connamespace
            LEFT JOIN pg_class AS rel ON rel.oid = con.conrelid
            LEFT JOIN pg_type AS typ ON typ.oid = con.contypid
            WHERE {_USER_SCHEMA} AND con.conrelid IS DISTINCT FROM {version}
              AND NOT {_extension_member("pg_class", "con.conrelid")} AND NOT {_extension_member("pg_type", "con.contypid")}
        """,
        "sequence": f"""
            SELECT format('%s.%s', n.nspname, c.relname),
                   concat_ws(' ', format_type(s.seqtypid, NULL), 'start=' || s.seqstart,
                             'increment=' || s.seqincrement, 'min=' || s.seqmin, 'max=' || s.seqmax,
                             'cache=' || s.seqcache, CASE WHEN s.seqcycle THEN 'CYCLE' END,
                             'owned-by=' || (
                                 SELECT format('%s.%s', oc.relname, oa.attname)
                                 FROM pg_depend AS dep
                                 JOIN pg_class AS oc ON oc.oid = dep.refobjid
                                 JOIN pg_attribute AS oa ON oa.attrelid = dep.refobjid AND oa.attnum = dep.refobjsubid
                                 WHERE dep.classid = 'pg_class'::regclass AND dep.objid = c.oid
                                   AND dep.refclassid = 'pg_class'::regclass AND dep.deptype IN ('a', 'i')
                                 LIMIT 1))
            FROM pg_sequence AS s
            JOIN pg_class AS c ON c.oid = s.seqrelid
            JOIN pg_namespace AS n ON n.oid = c.relnamespace
            WHERE {_USER_SCHEMA} AND NOT {_extension_member("pg_class", "c.oid")}
        """,
        # Enum, domain, range, composite and base types; not the row types of tables,
        # array types or multiranges, which come and go with the type they belong to.
        "type": f"""
            SELECT format('%s.%s', n.nspname, t.typname),
                   concat_ws(' ', 'kind=' || t.typtype::text,
                             CASE t.typtype
                                 WHEN 'e' THEN 'labels=' || (
                                     SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                                     FROM pg_enum AS e WHERE e.enumtypid = t.oid)
                                 WHEN 'd' THEN 'base=' || format_type(t.typbasetype, t.typtypmod)
                                     || CASE WHEN t.typnotnull THEN ' NOT NULL' ELSE '' END
                                     || coalesce(' default=' || t.typdefault, '')
                                 WHEN 'r' THEN 'subtype=' || (
                                     SELECT format_type(r.rngsubtype, NULL) FROM pg_range AS r WHERE r.rngtypid = t.oid)
                             END,
                             'owner=' || pg_get_userbyid(t.typowner), 'acl=' || t.typacl::text,
                             'comment=' || {_comment('pg_type', 't.oid')})
            FROM pg_type AS t JOIN pg_namespace AS n ON n.oid = t.typnamespace
            WHERE {_USER_SCHEMA} AND t.typtype::text <> 'm'
              AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class AS c WHERE c.oid = t.typrelid) = 'c')
              AND NOT EXISTS (SELECT 1 FROM pg_type AS el WHERE el.typarray = t.oid)
              AND NOT {_extension_member("pg_type", "t.oid")}
        """,
        "function": f"""
            SELECT format('%s.%s(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)),
                   concat_ws(E'\\n', concat_ws(' ', 'kind=' || p.prokind::text, 'owner=' || pg_get_userbyid(p.proowner),
                                               'acl=' || p.proacl::text,
                                               'comment=' || {_comment('pg_proc', 'p.oid')}),
                             CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END)
            FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
            WHERE {_USER_SCHEMA} AND NOT {_extension_member("pg_proc", "p.oid")}
        """,
        "trigger": f"""
            SELECT format('%s.%s %s', n.nspname, c.relname, tg.tgname),
                   concat_ws(' ', pg_get_triggerdef(tg.oid), 'enabled=' || tg.tgenabled::text)
            FROM pg_trigger AS tg
            JOIN pg_class AS c ON c.oid = tg.tgrelid
            JOIN pg_namespace AS n ON n.oid = c.relnamespace
            WHERE {_USER_SCHEMA} AND NOT tg.tgisinternal AND NOT {_extension_member("pg_class", "c.oid")}
        """,
        "event-trigger": """
            SELECT e.evtname, concat_ws(' ', e.evtevent, 'function=' || e.evtfoid::regproc::text,
                                        'enabled=' || e.evtenabled::text, 'tags=' || e.evttags::text)
            FROM pg_event_trigger AS e
        """,
        "view": f"""
            SELECT format('%s.%s', n.nspname, c.relname), pg_get_viewdef(c.oid, true)
            FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
            WHERE {_USER_SCHEMA} AND c.relkind IN ('v', 'm') AND NOT {_extension_member("pg_class", "c.oid")}
        """,
        "rule": f"""
            SELECT format('%s.%s %s', r.schemaname, r.tablename, r.rulename), r.definition
            FROM pg_rules AS r JOIN pg_namespace AS n ON n.nspname = r.schemaname
            WHERE {_USER_SCHEMA} AND NOT {_extension_member("pg_class", "format('%I.%I', r.schemaname, r.tablename)::regclass")}
        """,
        "policy": f"""
            SELECT format('%s.%s %s', p.schemaname, p.tablename, p.policyname),
                   concat_ws(' ', p.permissive, p.cmd, 'roles=' || p.roles::text,
                             'using=' || p.qual, 'with-check=' || p.with_check)
            FROM pg_policies AS p JOIN pg_namespace AS n ON n.nspname = p.schemaname
            WHERE {_USER_SCHEMA}
        """,
        "statistics": f"""
            SELECT format('%s.%s', n.nspname, s.stxname), pg_get_statisticsobjdef(s.oid)
            FROM pg_statistic_ext AS s JOIN pg_namespace AS n ON n.oid = s.stxnamespace
            WHERE {_USER_SCHEMA}
        """,
        "default-privilege": """
            SELECT format('%s %s %s', pg_get_userbyid(d.defaclrole), coalesce(n.nspname, '*'), d.defaclobjtype),
                   d.defaclacl::text
            FROM pg_default_acl AS d LEFT JOIN pg_namespace AS n ON n.oid = d.defaclnamespace
        """,
    }


def _comment(catalog: str, oid: str, subid: str = "0") -> str:
    """The object's comment, as ``obj_description``/``col_description`` give it, read as an
    indexed subquery: those are SQL functions whose per-row call costs several times more,
    and a snapshot calls them once per column, index, relation and constraint."""
    return (
        f"(SELECT dsc.description FROM pg_description AS dsc WHERE dsc.objoid = {oid}"
        f" AND dsc.classoid = '{catalog}'::regclass AND dsc.objsubid = {subid})"
    )


def _extension_member(catalog: str, oid: str) -> str:
    """Objects an extension created come and go with it (the extension itself is listed)."""
    return (
        f"EXISTS (SELECT 1 FROM pg_depend AS dep WHERE dep.classid = '{catalog}'::regclass"
        f" AND dep.objid = {oid} AND dep.deptype = 'e')"
    )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


SECTIONS: tuple[str, ...] = tuple(_sections("alembic_version"))


@dataclass(frozen=True)
class CatalogSnapshot:
    """Every schema object of a database as sorted ``(key, detail)`` pairs per section."""

    sections: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    # What the version table recorded when the snapshot was taken with ``heads_of``;
    # bookkeeping, not schema, so it takes no part in comparisons.
    heads: tuple[str, ...] | None = field(default=None, compare=False)

    def lines(self) -> list[str]:
        """One line per object (multi-line details such as function bodies indented below it)."""
        rendered: list[str] = []
        for name, items in self.sections:
            for key, detail in items:
                first, *rest = (detail or "").splitlines() or [""]
                rendered.append(f"{name} {key}: {first}".rstrip())
                rendered.extend(f"        {line}" for line in rest)
        return rendered

    def diff(self, other: CatalogSnapshot, *, before: str = "before", after: str = "after") -> str:
        """A unified diff from ``self`` to ``other``; empty when they are equal."""
        if self == other:
            return ""
        return "\n".join(
            difflib.unified_diff(self.lines(), other.lines(), fromfile=before, tofile=after, n=1, lineterm="")
        )


@functools.lru_cache(maxsize=32)
def _one_query(version_table: str, heads_of: str | None) -> str:
    """Every section in one statement: one round trip instead of one per kind of object,
    which is a fifth of the cost of a snapshot (round trips through the async driver
    add up when a suite takes three snapshots per revision)."""
    parts = [
        f"(SELECT {_literal(name)}, x.k::text, x.d::text FROM ({query}) AS x(k, d))"
        for name, query in _sections(version_table).items()
    ]
    if heads_of is not None:
        parts.append(f"(SELECT '', version_num::text, '' FROM {heads_of})")
    return " UNION ALL ".join(parts)


# Per DBAPI connection (its ``info``): the snapshot statements asyncpg has prepared on it.
_PREPARED_KEY = "hokmdb_snapshot_statements"


def _fetch(connection: Any, query: str) -> Iterable[Sequence[Any]]:
    """The query's rows, through a statement prepared once per connection when the driver
    is asyncpg (the suite's own connections).

    Why not ``exec_driver_sql``: SQLAlchemy's asyncpg dialect forgets every prepared
    statement after any DDL, and a round trip runs DDL between its three snapshots, so the
    server parsed and planned this 16-part query (about 4 ms at 200 revisions, as long as
    running it) every time. A statement of our own keeps its plan (the server re-plans it
    by itself should something it reads change shape), and it runs in whatever transaction
    the connection is in, as ``exec_driver_sql`` would."""
    dbapi_connection = getattr(connection, "connection", None)
    raw = getattr(dbapi_connection, "driver_connection", None)
    if not isinstance(raw, asyncpg.Connection):
        return connection.exec_driver_sql(query)  # type: ignore[no-any-return]
    prepared: dict[str, Any] = dbapi_connection.info.setdefault(_PREPARED_KEY, {})  # type: ignore[union-attr]
    statement = prepared.get(query)
    if statement is None:
        statement = prepared[query] = await_only(raw.prepare(query))
    return await_only(statement.fetch())  # type: ignore[no-any-return]


def take_snapshot(
    connection: Any, *, version_table: str = "alembic_version", heads_of: str | None = None
) -> CatalogSnapshot:
    """Read the snapshot on a SQLAlchemy ``Connection`` (sync, e.g. the one an
    ``AsyncConnection.run_sync`` hands over). Reads in its own transaction and rolls it
    back, so the connection is left outside any transaction for the next alembic command.

    ``heads_of``: a version table known to exist (quoted, schema-qualified if need be)
    whose rows are read in the same statement into ``CatalogSnapshot.heads``.
    """
    found: dict[str, list[tuple[str, str]]] = {name: [] for name in SECTIONS}
    heads: list[str] = []
    try:
        for section, key, detail in _fetch(connection, _one_query(version_table, heads_of)):
            if section:
                found[section].append((str(key), detail or ""))
            else:
                heads.append(str(key))
    finally:
        connection.rollback()
    sections = tuple((name, tuple(sorted(items))) for name, items in found.items())
    return CatalogSnapshot(sections, tuple(sorted(heads)) if heads_of is not None else None)
