"""Performance checks: the application's hot queries stay fast and indexed, reads hit the cache.

Every hot query (``smoke.hot_queries``, by default the application profile's) is run with
realistic parameters (the profile's sampler picks them from the newest data), timed best of three, and planned with plain ``EXPLAIN``
(never ``ANALYZE``). Each query runs inside a ``READ ONLY`` transaction with its own
short statement timeout, so a misconfigured hot query can neither write nor keep a
production server busy for long: the gate's cost is bounded even when an index is gone.

Whether a plan *uses* its expected index is only judged on tables larger than
``smoke.large_table_rows``: on a small table the planner rightly prefers a sequential
scan, and failing a deploy for that would teach operators to ignore the gate. A missing
or invalid expected index fails on any size of database, so "an index was dropped" is
caught on a near-empty staging database too.

Both judge the revision the database is held to (``--target-revision``, else the code's
head): a hot query whose SQL reads what a later revision creates (``since``) is not run,
and an index a later revision creates (``index_since``) is not required, so a correct
rollback or restore to an older revision passes while anything that revision has is still
required. Ancestry comes from alembic's revision graph, never from comparing ids as text.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError

from pytest_hokmdb.checks.base import Category, CheckContext, CheckFunction, CheckResult, check, sample
from pytest_hokmdb.config.model import HotQuery
from pytest_hokmdb.config.profile import HotQueryConfigError, Samples
from pytest_hokmdb.migrate import alembic_config, script_directory

FEATURE = "Performance"
CATEGORY: Category = "performance regression"

_RUNS = 3
# A hot query is cancelled after this many times its limit (at least 1 s): a regression is
# obvious long before that, and a missing index must not turn the gate into a load test.
_RUN_TIMEOUT_FACTOR = 10
_MIN_RUN_TIMEOUT_MS = 1_000

_INT_TYPES = frozenset({"int2", "int4", "int8", "oid"})
_FLOAT_TYPES = frozenset({"float4", "float8"})
_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "name", "char", "citext"})
_TRUE = frozenset({"true", "t", "1", "yes", "on"})
_FALSE = frozenset({"false", "f", "0", "no", "off"})


@dataclass(frozen=True)
class PlanNode:
    node_type: str
    relation: str | None
    schema: str | None
    index: str | None
    rows: float
    cost: float

    def describe(self) -> str:
        text = self.node_type
        if self.index:
            text += f" using {self.index}"
        if self.relation:
            text += f" on {self.relation}"
        return text


@dataclass(frozen=True)
class ExpectedIndex:
    """The catalog's view of a hot query's expected index (absent when it does not exist)."""

    name: str
    exists: bool
    valid: bool = False
    schema: str | None = None
    table: str | None = None
    table_rows: float = -1.0


@dataclass
class HotQueryRun:
    """One hot query's timings, plan and verdict; ``problems`` is empty when it is healthy."""

    query: HotQuery
    args: list[Any] = field(default_factory=list)
    timings_ms: list[float] = field(default_factory=list)
    timed_out_ms: float | None = None
    plan: dict[str, Any] | None = None
    expected: ExpectedIndex | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def best_ms(self) -> float | None:
        return round(min(self.timings_ms), 3) if self.timings_ms else None

    @property
    def nodes(self) -> list[PlanNode]:
        return list(_walk(self.plan)) if self.plan else []

    @property
    def uses_expected_index(self) -> bool:
        names = self.query.expected_indexes
        return any(node.index in names for node in self.nodes)

    @property
    def plan_text(self) -> str:
        return render_plan(self.plan) if self.plan else f"(no plan: {self.error or 'not explained'})"


def _coerce(value: str, type_name: str, position: int, query: HotQuery) -> Any:
    """Turn a literal parameter from the config into what asyncpg expects for ``type_name``."""
    try:
        if type_name in _INT_TYPES:
            return int(value)
        if type_name in _FLOAT_TYPES:
            return float(value)
        if type_name == "numeric":
            return Decimal(value)
        if type_name == "bool":
            lowered = value.strip().lower()
            if lowered in _TRUE | _FALSE:
                return lowered in _TRUE
            raise ValueError(value)
    except (ValueError, ArithmeticError):
        raise HotQueryConfigError(
            f"hot query {query.name}: parameter ${position} {value!r} is not a valid {type_name}"
        ) from None
    if type_name in _TEXT_TYPES:
        return value
    raise HotQueryConfigError(
        f"hot query {query.name}: parameter ${position} has type {type_name}, which cannot be given "
        f"as a literal in smoke.hot_queries; cast it in the SQL (e.g. ${position}::text::{type_name})"
    )


def resolve_args(query: HotQuery, samples: Samples, param_types: list[str]) -> list[Any]:
    if len(query.params) != len(param_types):
        raise HotQueryConfigError(
            f"hot query {query.name}: the SQL takes {len(param_types)} parameter(s) but "
            f"{len(query.params)} are configured"
        )
    args: list[Any] = []
    for position, (raw, type_name) in enumerate(zip(query.params, param_types), start=1):
        if raw.startswith("$sample_"):
            args.append(samples.value(raw))
        else:
            args.append(_coerce(raw, type_name, position, query))
    return args


# -- plans ------------------------------------------------------------------------------


def _walk(plan: dict[str, Any]) -> Iterator[PlanNode]:
    yield PlanNode(
        node_type=str(plan.get("Node Type", "?")),
        relation=plan.get("Relation Name"),
        schema=plan.get("Schema"),
        index=plan.get("Index Name"),
        rows=float(plan.get("Plan Rows", 0)),
        cost=float(plan.get("Total Cost", 0)),
    )
    for child in plan.get("Plans", []) or []:
        yield from _walk(child)


def render_plan(plan: dict[str, Any], depth: int = 0) -> str:
    """An EXPLAIN-like text tree from the JSON plan, for evidence an operator can read."""
    node = next(_walk({k: v for k, v in plan.items() if k != "Plans"}))
    indent = "      " * depth
    line = f"{indent}{'->  ' if depth else ''}{node.describe()}  (cost={node.cost:.2f} rows={node.rows:.0f})"
    details = []
    for key in ("Index Cond", "Filter", "Sort Key", "Hash Cond", "Join Filter", "One-Time Filter"):
        if key in plan:
            value = plan[key]
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            details.append(f"{indent}{'      ' if depth else '  '}{key}: {text}")
    children = [render_plan(child, depth + 1) for child in plan.get("Plans", []) or []]
    return "\n".join([line, *details, *children])


async def explain(conn: asyncpg.Connection, sql: str, args: list[Any]) -> dict[str, Any]:
    """Plain ``EXPLAIN (FORMAT JSON, VERBOSE)``: plans the query with the bound values, runs nothing."""
    raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON, VERBOSE) {sql}", *args)
    document = json.loads(raw) if isinstance(raw, str) else raw
    plan: dict[str, Any] = document[0]["Plan"]
    return plan


async def lookup_index(conn: asyncpg.Connection, name: str) -> ExpectedIndex:
    row = await conn.fetchrow(
        """
        SELECT i.indisvalid AS valid, n.nspname AS schema, t.relname AS table_name, t.reltuples AS table_rows
        FROM pg_index i
        JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE i.indexrelid = to_regclass($1)
        """,
        name,
    )
    if row is None:
        return ExpectedIndex(name=name, exists=False)
    return ExpectedIndex(
        name=name,
        exists=True,
        valid=bool(row["valid"]),
        schema=row["schema"],
        table=row["table_name"],
        table_rows=float(row["table_rows"]),
    )


async def table_rows(conn: asyncpg.Connection, schema: str | None, relation: str) -> float:
    """pg_class.reltuples (the planner's estimate; -1 when never vacuumed or analyzed)."""
    if schema:
        value = await conn.fetchval(
            "SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = $2",
            schema,
            relation,
        )
    else:
        value = await conn.fetchval("SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)", relation)
    return float(value) if value is not None else -1.0


# -- running one hot query -----------------------------------------------------------


def _run_timeout_ms(query: HotQuery, check_timeout_ms: int) -> int:
    return int(min(check_timeout_ms, max(_MIN_RUN_TIMEOUT_MS, query.max_ms * _RUN_TIMEOUT_FACTOR)))


async def run_hot_query(
    conn: asyncpg.Connection,
    query: HotQuery,
    samples: Samples,
    *,
    runs: int = _RUNS,
    timed: bool = True,
    check_timeout_ms: int = 5_000,
) -> HotQueryRun:
    """Plan (plain EXPLAIN) and, if ``timed``, run ``query`` up to ``runs`` times in a READ ONLY
    transaction. Never raises for the query's own faults: they land in ``run.error``.

    ``problems`` is left for the caller to judge (thresholds live in the settings)."""
    run = HotQueryRun(query=query)
    run_timeout = _run_timeout_ms(query, check_timeout_ms)
    try:
        async with conn.transaction(readonly=True):
            await conn.execute(f"SET LOCAL statement_timeout = {run_timeout}")
            statement = await conn.prepare(query.sql)
            run.args = resolve_args(query, samples, [t.name for t in statement.get_parameters()])
            run.plan = await explain(conn, query.sql, run.args)
        if query.expected_indexes:
            # Judge the acceptable index the plan chose, else the first one listed.
            used = next((n.index for n in run.nodes if n.index in query.expected_indexes), None)
            run.expected = await lookup_index(conn, used or query.expected_indexes[0])
    except HotQueryConfigError as exc:
        run.error = str(exc)
        return run
    except asyncpg.ReadOnlySQLTransactionError:
        run.error = f"hot query {query.name} writes; smoke.hot_queries may only hold read-only SELECTs"
        return run
    except asyncpg.QueryCanceledError:
        run.error = f"hot query {query.name} could not even be planned within {run_timeout} ms"
        return run
    except asyncpg.PostgresError as exc:
        run.error = f"hot query {query.name} fails: {type(exc).__name__}: {exc}"
        return run
    if not timed:
        return run
    for _ in range(runs):
        try:
            async with conn.transaction(readonly=True):
                await conn.execute(f"SET LOCAL statement_timeout = {run_timeout}")
                statement = await conn.prepare(query.sql)
                started = time.perf_counter()
                await statement.fetch(*run.args)
                run.timings_ms.append((time.perf_counter() - started) * 1000)
        except asyncpg.QueryCanceledError:
            # Slow beyond doubt: repeating it would only load the server.
            run.timed_out_ms = run_timeout
            break
        except asyncpg.ReadOnlySQLTransactionError:
            run.error = f"hot query {query.name} writes; smoke.hot_queries may only hold read-only SELECTs"
            break
        except asyncpg.PostgresError as exc:
            run.error = f"hot query {query.name} fails: {type(exc).__name__}: {exc}"
            break
    return run


def judge(run: HotQueryRun, large_table_rows: int) -> list[str]:
    """The offences of one run against its limit and its expected index (empty: healthy)."""
    query = run.query
    problems: list[str] = []
    if run.error:
        return [run.error]
    if run.timed_out_ms is not None:
        problems.append(f"{query.name} took over {run.timed_out_ms:.0f} ms and was cancelled (limit {query.max_ms:g} ms)")
    elif run.best_ms is not None and run.best_ms > query.max_ms:
        problems.append(f"{query.name} took {run.best_ms:.1f} ms (limit {query.max_ms:g} ms)")
    expected = run.expected
    if expected is None:
        return problems
    if not expected.exists:
        problems.append(
            f"{query.name} does not use {expected.name}, which does not exist: {_scans_text(run, None)}; "
            "recreate the index in a new migration (see docs/schema.md)"
        )
    elif not expected.valid:
        problems.append(
            f"{query.name}: index {expected.name} on {expected.table} is INVALID (a failed CREATE INDEX "
            "CONCURRENTLY?); DROP INDEX CONCURRENTLY it and build it again"
        )
    elif not run.uses_expected_index:
        if expected.table_rows > large_table_rows:
            problems.append(
                f"{query.name} does not use {expected.name}: {_scans_text(run, expected.table)} "
                f"({expected.table} has ~{expected.table_rows:.0f} rows); run ANALYZE {expected.table} "
                "and compare the plan with the migration that created the index"
            )
        else:
            run.notes.append(
                f"{query.name} does not use {expected.name}, but {expected.table} has only "
                f"~{max(expected.table_rows, 0):.0f} rows (<= smoke.large_table_rows {large_table_rows}): "
                "a sequential scan is the right plan there"
            )
    return problems


def _scans_text(run: HotQueryRun, table: str | None) -> str:
    scans = [n for n in run.nodes if n.relation is not None and (table is None or n.relation == table)]
    if not scans and table is not None:
        return f"the plan does not read {table} at all"
    return ", ".join(n.describe() for n in scans) or "no table scans"


def _plans_evidence(runs: list[HotQueryRun]) -> dict[str, str]:
    evidence: dict[str, str] = {}
    for run in runs:
        timings = ", ".join(f"{t:.2f}" for t in run.timings_ms) or "not run"
        header = f"-- {run.query.name}  params={run.args}  timings_ms=[{timings}]  limit={run.query.max_ms:g} ms\n"
        evidence[f"plan: {run.query.name}"] = header + run.plan_text
    return evidence


# -- checks -----------------------------------------------------------------------------


@dataclass
class HeldQueries:
    """The hot queries as the revision the database is held to serves them."""

    revision: str  # for messages: the --target-revision, or "head"
    queries: list[HotQuery] = field(default_factory=list)  # to run; an index not created yet is dropped
    without_index: set[str] = field(default_factory=set)  # queries whose index arrives after the revision
    notes: list[str] = field(default_factory=list)

    @property
    def need_samples(self) -> bool:
        return any(p.startswith("$sample_") for q in self.queries for p in q.params)


def queries_at_revision(ctx: CheckContext) -> HeldQueries:
    """The hot queries as the held revision (``--target-revision`` or the code's head) should
    serve them. Raises HotQueryConfigError for a ``since``/``index_since`` the code does not know."""
    held = ctx.target_revision
    result = HeldQueries(revision=held or "head")
    for query in ctx.hot_queries:
        if query.since and not _includes(ctx.project_root, held, query.since, query.name, "since"):
            result.notes.append(f"{query.name} is not run: it reads what revision {query.since} creates, after {held} "
                                "(the revision this database is held to)")
            continue
        if query.index_since and not _includes(ctx.project_root, held, query.index_since, query.name, "index_since"):
            result.notes.append(f"{query.name}: {', '.join(query.expected_indexes)} arrives with revision {query.index_since}, "
                                f"after {held} (the revision this database is held to), so it is not required")
            query = query.model_copy(update={"expected_index": None})
            result.without_index.add(query.name)
        result.queries.append(query)
    return result


def _includes(project_root: Path, held: str | None, since: str, name: str, key: str) -> bool:
    found = revision_includes(project_root, held, since)
    if found is None:
        raise HotQueryConfigError(
            f"smoke.hot_queries {name}: {key} {since!r} is not a revision in this code's migration history; "
            "name the alembic revision that creates it (see migrations/versions/)"
        )
    return found


@functools.lru_cache(maxsize=256)
def revision_includes(project_root: Path, held: str | None, since: str) -> bool | None:
    """Whether ``since`` is ``held`` or one of its ancestors in the alembic history: alembic walks
    the graph down from ``held`` (branch-safe), never a comparison of ids as text. ``None`` when
    the code does not know ``since``. A ``held`` it does not know counts as including everything,
    so nothing is excused (schema.at_expected_revision names the unknown revision)."""
    script = script_directory(alembic_config(project_root=project_root))
    try:
        wanted = script.get_revision(since)
    except (CommandError, RevisionError):
        return None
    if wanted is None:
        return None
    top = held if held not in (None, "head", "heads") else "heads"
    try:
        return any(rev.revision == wanted.revision for rev in script.iterate_revisions(top, "base"))
    except (CommandError, RevisionError):
        return True


async def _held_samples(ctx: CheckContext, held: HeldQueries, title: str) -> Samples | CheckResult:
    """Samples when a held query takes one; at a revision whose queries take none (before the
    tables exist) nothing is sampled, so the application tables are not read."""
    if not held.need_samples:
        return Samples({}, f"no hot query held to {held.revision} takes a sample")
    return await _samples_or_skip(ctx, title)


async def _indexes_only(ctx: CheckContext, queries: list[HotQuery], held_notes: list[str]) -> CheckResult:
    """An empty database has no plans worth timing; its expected indexes must still be there."""
    problems, present = [], []
    for query in queries:
        for name in query.expected_indexes[:1]:
            index = await lookup_index(ctx.conn, name)
            if not index.exists:
                problems.append(f"{query.name}: its index {name} does not exist; recreate it in a new migration (see docs/schema.md)")
            elif not index.valid:
                problems.append(f"{query.name}: index {name} is INVALID; DROP INDEX CONCURRENTLY it and build it again")
            else:
                present.append(name)
    if problems:
        return CheckResult.failed("; ".join(problems) + f" ({ctx.profile.no_data}, so the queries were not timed)")
    note = f"; {'; '.join(held_notes)}" if held_notes else ""
    return CheckResult.passed(
        f"{ctx.profile.no_data}, so the {len(queries)} hot queries were not timed; their {len(present)} expected index(es) "
        f"exist and are valid{note}"
    )


async def _samples_or_skip(ctx: CheckContext, title: str) -> Samples | CheckResult:
    profile = ctx.profile
    sampler = profile.load_sampler()
    if sampler is None:
        return Samples({}, f"profile {profile.name} has no sampler")
    try:
        samples = await sampler(ctx.conn)
    except asyncpg.QueryCanceledError as exc:
        return CheckResult.failed(f"{title}: picking sample rows timed out ({exc}); {profile.sample_hint}")
    if samples is None:
        return CheckResult.skipped(f"{title}: no data to sample ({profile.no_data}), so the plans would not be realistic")
    return samples


@check(
    "performance.hot_queries",
    title="Hot queries are fast and use their indexes",
    feature=FEATURE,
    category=CATEGORY,
    severity="critical",
)
async def hot_queries(ctx: CheckContext) -> CheckResult:
    """Each hot query is judged against the revision the database is held to: an index that
    a later revision creates is not expected after a rollback or a restore to an older one."""
    if not ctx.hot_queries:
        return CheckResult.skipped(f"hot queries: smoke.hot_queries is empty and profile {ctx.profile.name} declares none, "
                                   "so there is nothing to verify")
    try:
        held = queries_at_revision(ctx)
    except HotQueryConfigError as exc:
        return CheckResult.failed(f"hot queries: {exc}")
    held_notes = held.notes
    if not held.queries:
        return CheckResult.passed(f"no hot query applies to revision {held.revision}: {'; '.join(held_notes)}")
    samples = await _held_samples(ctx, held, "hot queries")
    if isinstance(samples, CheckResult):
        if samples.status == "skipped":  # no data yet: nothing to time, but the indexes can still be checked
            return await _indexes_only(ctx, held.queries, held_notes)
        return samples
    runs: list[HotQueryRun] = []
    for query in held.queries:
        run = await run_hot_query(ctx.conn, query, samples, check_timeout_ms=ctx.settings.check_statement_timeout_ms)
        run.problems = judge(run, ctx.settings.large_table_rows)
        runs.append(run)
    if runs:
        runs[0].notes.extend(held_notes)
    evidence = _plans_evidence(runs)
    evidence["samples"] = samples.describe()
    measured = {run.query.name: run.best_ms for run in runs}
    threshold = {run.query.name: run.query.max_ms for run in runs}
    offenders = [problem for run in runs for problem in run.problems]
    notes = [note for run in runs for note in run.notes]
    if offenders:
        return CheckResult.failed(
            "; ".join(offenders)
            + ". A slow hot query slows every request on the hot path: check the plans attached, recent migrations "
            "(a dropped or renamed index) and table statistics (ANALYZE)",
            measured=measured,
            threshold=threshold,
            evidence=evidence,
        )
    timings = ", ".join(f"{run.query.name} {run.best_ms:.1f} ms" for run in runs)
    return CheckResult.passed(
        f"{len(runs)} hot queries within their limits ({timings})" + (f"; {'; '.join(notes)}" if notes else ""),
        measured=measured,
        threshold=threshold,
        evidence=evidence,
    )


_STATISTICS_SQL = """
SELECT current_database() AS db, blks_hit, blks_read, stats_reset,
       current_setting('shared_buffers') AS shared_buffers,
       pg_postmaster_start_time() AS server_started, now() AS now,
       has_function_privilege('pg_catalog.pg_stat_file(text, boolean)', 'EXECUTE') AS may_stat_files
FROM pg_stat_database WHERE datname = current_database()
"""
# When CREATE DATABASE wrote the database's PG_VERSION (nothing rewrites it), wherever its
# tablespace is: the file sits in the directory of the database's pg_class. A separate query,
# run only with the privilege: PostgreSQL checks EXECUTE when it plans a call, taken or not.
_CREATED_SQL = """
SELECT (pg_catalog.pg_stat_file(regexp_replace(pg_relation_filepath('pg_catalog.pg_class'), '[^/]*$', 'PG_VERSION'),
                                true)).modification
"""


@check(
    "performance.cache_hit_ratio",
    title="Reads are served from the buffer cache",
    feature=FEATURE,
    category=CATEGORY,
)
async def cache_hit_ratio(ctx: CheckContext) -> CheckResult:
    """Only statistics old enough to describe the workload are judged.

    A database's counters (``pg_stat_database``) began at the latest of three moments: the
    server's start, the database's statistics reset, and the database's creation. The first
    reads everything from disk once, and a restored copy's first reads are the restore's own
    (index builds, ANALYZE, row counts, amcheck: about 65% hits on a 230 MB copy), so until
    ``smoke.cache_hit_min_age_s`` has passed since that moment the ratio says how cold the
    cache was, not how the database serves the game, and the check is skipped, naming the age.

    PostgreSQL records no creation time in ``pg_database``, and a new database's
    ``stats_reset`` is empty, so a copy created on a server that has run for days would be
    judged on its restore alone. Hence every copy hokmdb restores (``--restore-from-backup``,
    ``rollback.py restore`` and ``emergency``, full backup verification) has its statistics
    reset once it is verified (``backup.pg.reset_statistics``): ``stats_reset`` then marks its
    birth for any role, and the restore's reads are gone from the ratio, so after the wait it is
    judged over the workload only. A session that may read the server's files (a superuser, or
    EXECUTE on ``pg_stat_file``) also sees the creation of a copy made by hand (CREATE
    DATABASE ... TEMPLATE, pg_restore): its ``PG_VERSION`` file is written then and never
    again (moving the database to another tablespace writes it anew: younger, so skipped
    longer, never judged early)."""
    row = await ctx.conn.fetchrow(_STATISTICS_SQL)
    if row is None:
        return CheckResult.skipped("cache hit ratio: pg_stat_database has no row for this database yet")
    created = await ctx.conn.fetchval(_CREATED_SQL) if row["may_stat_files"] else None
    hits, reads = int(row["blks_hit"]), int(row["blks_read"])
    total = hits + reads
    minimum_reads = ctx.settings.cache_hit_min_reads
    limit = ctx.settings.min_cache_hit_ratio
    db = row["db"]
    # (when, what happened then, what the message adds): the latest of them is when the counters began.
    starts = [(row["server_started"], "the server started", "")]
    if row["stats_reset"] is not None:
        starts.append((row["stats_reset"], f"database {db}'s statistics were reset",
                       " (pg_stat_reset(): hokmdb resets a copy it restores once the copy is verified)"))
    if created is not None:
        starts.append((created, f"database {db} was created", ""))
    began, started, why = max(starts, key=lambda start: start[0])
    age_s = (row["now"] - began).total_seconds()
    since = f"since {began:%Y-%m-%d %H:%M %Z} ({started})"
    min_age = ctx.settings.cache_hit_min_age_s
    if age_s < min_age:
        # A server started (or a database restored, or its statistics reset) moments ago reads
        # everything from disk once: its ratio says how cold the cache is, not how it serves the game.
        now = f" (now {hits / total:.1%} over {total} block reads)" if total else ""
        return CheckResult.skipped(
            f"cache hit ratio: {started} {age_s:.0f} s ago{why}, under smoke.cache_hit_min_age_s ({min_age:g} s): "
            f"a cold cache is no evidence{now}; the ratio is judged once the statistics are {min_age:g} s old",
            measured=round(age_s, 1),
            threshold=min_age,
        )
    if total < minimum_reads or total == 0:
        return CheckResult.skipped(
            f"cache hit ratio: database {db} has only {total} block reads {since}, fewer than "
            f"smoke.cache_hit_min_reads ({minimum_reads}); too few reads for the ratio to mean anything",
            measured=total,
            threshold=minimum_reads,
        )
    ratio = hits / total
    evidence = {"pg_stat_database": f"blks_hit={hits} blks_read={reads} {since} shared_buffers={row['shared_buffers']}"}
    if ratio < limit:
        return CheckResult.failed(
            f"cache hit ratio of database {db} is {ratio:.1%} ({hits} hits, {reads} reads {since}), "
            f"under the {limit:.0%} minimum (smoke.min_cache_hit_ratio): the working set does not fit in "
            f"shared_buffers ({row['shared_buffers']}) or something reads large tables from disk; look for "
            "sequential scans (performance.no_seq_scan_on_indexed_lookup) and consider raising shared_buffers",
            measured=round(ratio, 4),
            threshold=limit,
            evidence=evidence,
        )
    return CheckResult.passed(
        f"cache hit ratio of {db} is {ratio:.1%} over {total} block reads {since}",
        measured=round(ratio, 4),
        threshold=limit,
        evidence=evidence,
    )


@check(
    "performance.no_seq_scan_on_indexed_lookup",
    title="Hot queries do not scan large tables sequentially",
    feature=FEATURE,
    category=CATEGORY,
    severity="critical",
)
async def no_seq_scan_on_indexed_lookup(ctx: CheckContext) -> CheckResult:
    """Held to an older revision, a query whose index that revision does not create yet may
    scan: that is the plan the revision has, noted rather than failed (hot_queries notes it too)."""
    if not ctx.hot_queries:
        return CheckResult.skipped(f"sequential scan check: smoke.hot_queries is empty and profile {ctx.profile.name} "
                                   "declares none, so there is nothing to verify")
    try:
        held = queries_at_revision(ctx)
    except HotQueryConfigError as exc:
        return CheckResult.failed(f"sequential scan check: {exc}")
    samples = await _held_samples(ctx, held, "sequential scan check")
    if isinstance(samples, CheckResult):
        if samples.status == "skipped":
            # Nothing is large without data: a sequential scan cannot hurt yet (hot_queries
            # still checks that the indexes exist).
            return CheckResult.passed(f"{ctx.profile.no_data}, so no table is large enough for a sequential scan to matter")
        return samples
    large = ctx.settings.large_table_rows
    offenders: list[str] = []
    errors: list[str] = []
    unknown: list[str] = []
    excused: list[str] = []
    runs: list[HotQueryRun] = []
    sizes: dict[str, float] = {}
    for query in held.queries:
        run = await run_hot_query(
            ctx.conn, query, samples, timed=False, check_timeout_ms=ctx.settings.check_statement_timeout_ms
        )
        runs.append(run)
        if run.error:
            errors.append(run.error)
            continue
        for node in run.nodes:
            if node.node_type != "Seq Scan" or node.relation is None:
                continue
            key = f"{node.schema + '.' if node.schema else ''}{node.relation}"
            if key not in sizes:
                sizes[key] = await table_rows(ctx.conn, node.schema, node.relation)
            rows = sizes[key]
            if rows > large and query.name in held.without_index:
                excused.append(f"{query.name}: Seq Scan on {node.relation} (~{rows:.0f} rows)")
            elif rows > large:
                offenders.append(f"{query.name}: Seq Scan on {node.relation} (~{rows:.0f} rows)")
            elif rows < 0:
                unknown.append(f"{query.name}: Seq Scan on {node.relation} (never analyzed, size unknown)")
    evidence = _plans_evidence(runs)
    if offenders or errors:
        parts = []
        if offenders:
            parts.append(
                f"hot queries scan tables larger than {large} rows (smoke.large_table_rows) sequentially: "
                f"{sample(offenders)}. An index the query relies on is probably missing (dropped by a "
                "migration?) or the statistics are stale: compare the plans attached with docs/schema.md "
                "and run ANALYZE"
            )
        if errors:
            parts.append(f"hot queries that could not be planned: {sample(errors)}; fix smoke.hot_queries or the schema")
        return CheckResult.failed(
            ". ".join(parts),
            measured=len(offenders) + len(errors),
            threshold=0,
            evidence=evidence,
        )
    scanned = sorted(k for k, v in sizes.items() if 0 <= v <= large)
    detail = f"; small tables scanned sequentially, as they should be: {', '.join(scanned)}" if scanned else ""
    if unknown:
        detail += f"; not judged: {sample(unknown)} (run ANALYZE so pg_class.reltuples is known)"
    if excused:
        detail += (f"; held to {held.revision}, whose migrations do not create these queries' indexes yet, so a "
                   f"sequential scan is that revision's plan: {sample(excused)}")
    if held.notes:
        detail += f"; {'; '.join(held.notes)}"
    return CheckResult.passed(
        f"no hot query scans a table over {large} rows sequentially{detail}",
        measured=0,
        threshold=0,
        evidence=evidence,
    )


CHECKS: list[CheckFunction] = [hot_queries, cache_hit_ratio, no_seq_scan_on_indexed_lookup]
