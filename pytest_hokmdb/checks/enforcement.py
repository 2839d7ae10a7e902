"""Enforcement checks: the guarantees the schema appears to give are switched on.

A foreign key, a trigger or a permanent table looks the same in ``\\d`` whether or not it
still does its job. ``ALTER TABLE ... DISABLE TRIGGER ALL`` (left behind by a bulk load or
a hand-run repair) switches off the internal triggers that enforce foreign keys;
``session_replication_role = replica`` set for a database or role does the same for every
session that logs in; a rule can turn an ``INSERT`` into nothing; an ``UNLOGGED`` table
loses every row in a crash and never reaches a standby. None of these shows up in a schema
comparison, and each silently breaks the game's invariants (``../shared/hokm-domain.md``).

Everything is read from ``pg_catalog`` (readable by any role): cheap and read-only.
"""

from __future__ import annotations

from pytest_hokmdb.checks.base import CheckContext, CheckFunction, CheckResult, check, sample
from pytest_hokmdb.checks.schema import app_schema, qualified, quote_ident

FEATURE = "Enforcement"

_NOT_FIRING = """
SELECT c.relname AS table_name, t.tgname AS trigger_name, t.tgisinternal AS internal, t.tgenabled::text AS enabled,
       coalesce(k.conname, '') AS constraint_name, coalesce(pg_get_constraintdef(k.oid), '') AS constraint_def
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_constraint k ON k.oid = t.tgconstraint
WHERE n.nspname = $1 AND t.tgenabled IN ('D', 'R')
ORDER BY c.relname, t.tgname
"""


@check("enforcement.triggers_enabled", title="Every trigger fires, including those behind foreign keys",
       feature=FEATURE, category="data integrity", severity="critical")
async def triggers_enabled(ctx: CheckContext) -> CheckResult:
    """A foreign key is enforced by internal triggers; ``DISABLE TRIGGER ALL`` switches them
    off with the user triggers, and the constraint still shows as valid. A trigger set to
    fire only in replica mode (``ENABLE REPLICA TRIGGER``) does not fire in the game
    server's sessions either."""
    schema = await app_schema(ctx.conn)
    rows = await ctx.conn.fetch(_NOT_FIRING, schema)
    if not rows:
        return CheckResult.passed(f"every trigger in schema {schema} fires (foreign keys enforced)", measured=0, threshold=0)
    foreign_keys = sorted({f"{r['constraint_name']} on {r['table_name']}" for r in rows if r["internal"] and r["constraint_name"]})
    user = [f"{r['trigger_name']} on {r['table_name']}" + (" (replica only)" if r["enabled"] == "R" else "")
            for r in rows if not r["internal"]]
    tables = sorted({r["table_name"] for r in rows})
    problems = []
    if foreign_keys:
        problems.append(f"foreign keys not enforced (their internal triggers are disabled): {sample(foreign_keys)}")
    if user:
        problems.append(f"triggers that do not fire: {sample(user)}")
    fix = "; ".join(f"ALTER TABLE {qualified(schema, t)} ENABLE TRIGGER ALL" for t in tables)
    return CheckResult.failed(
        f"in schema {schema}, {'; '.join(problems)}. Rows written meanwhile were not checked: run {fix} (as the "
        "table owner), then find the rows that break the constraints (schema.no_unvalidated_constraints does not see "
        "them; re-adding a foreign key NOT VALID and validating it does)",
        measured=len(rows),
        threshold=0,
        evidence={"triggers not firing": "\n".join(
            f"{r['table_name']}.{r['trigger_name']} enabled={r['enabled']}"
            + (f" enforces {r['constraint_name']}: {r['constraint_def']}" if r["constraint_name"] else "") for r in rows) + "\n"},
    )


_REPLICA_ROLE = """
SELECT coalesce(r.rolname, '(every role)') AS role_name, coalesce(d.datname, '(every database)') AS database_name, s.setting
FROM pg_db_role_setting rs
LEFT JOIN pg_roles r ON r.oid = rs.setrole
LEFT JOIN pg_database d ON d.oid = rs.setdatabase
CROSS JOIN LATERAL unnest(rs.setconfig) AS s(setting)
WHERE (rs.setdatabase = 0 OR d.datname = current_database())
  AND lower(s.setting) LIKE 'session_replication_role=%'
  AND lower(split_part(s.setting, '=', 2)) <> 'origin'
ORDER BY 2, 1
"""


@check("enforcement.replication_role_origin", title="Sessions enforce foreign keys and triggers (session_replication_role)",
       feature=FEATURE, category="data integrity", severity="critical")
async def replication_role_origin(ctx: CheckContext) -> CheckResult:
    """``session_replication_role = replica`` is for logical-replication appliers: it switches
    off foreign-key checks and ordinary triggers for the session. Set for a database or a
    role (or server-wide), every game-server session runs without them. Both what this
    session got and what any role would get in this database are read."""
    default = await ctx.conn.fetchrow(
        "SELECT reset_val, source FROM pg_settings WHERE name = 'session_replication_role'")
    rows = await ctx.conn.fetch(_REPLICA_ROLE)
    problems, fixes = [], []
    if default is not None and default["reset_val"] != "origin":
        problems.append(f"sessions start with session_replication_role = {default['reset_val']} (source: {default['source']})")
        if default["source"] in ("configuration file", "default"):
            fixes.append("remove session_replication_role from postgresql.conf (or ALTER SYSTEM RESET session_replication_role) "
                         "and SELECT pg_reload_conf()")
    for r in rows:
        problems.append(f"{r['setting']} is set for role {r['role_name']} in database {r['database_name']}")
        role = "ALL" if r["role_name"] == "(every role)" else quote_ident(r["role_name"])
        where = "" if r["database_name"] == "(every database)" else f" IN DATABASE {quote_ident(r['database_name'])}"
        fixes.append(f"ALTER ROLE {role}{where} RESET session_replication_role")
    if not problems:
        return CheckResult.passed("sessions run with session_replication_role = origin (foreign keys and triggers enforced)",
                                  measured="origin", threshold="origin")
    return CheckResult.failed(
        f"{'; '.join(problems)}: foreign keys and triggers are not enforced in those sessions. Run "
        f"{'; '.join(dict.fromkeys(fixes)) or 'the matching RESET'} (as a superuser); sessions already open keep the old "
        "value until they reconnect",
        measured=(default["reset_val"] if default is not None else None),
        threshold="origin",
        evidence={"session_replication_role settings": "\n".join(
            f"{r['role_name']} / {r['database_name']}: {r['setting']}" for r in rows) + "\n"},
    )


_RULES = """
SELECT c.relname AS table_name, r.rulename AS rule_name, r.is_instead AS instead, pg_get_ruledef(r.oid) AS definition
FROM pg_rewrite r
JOIN pg_class c ON c.oid = r.ev_class
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND r.rulename <> '_RETURN'
ORDER BY c.relname, r.rulename
"""


@check("enforcement.no_rules", title="No rewrite rule redirects writes to tables",
       feature=FEATURE, category="data integrity", severity="critical")
async def no_rules(ctx: CheckContext) -> CheckResult:
    """A rule (``CREATE RULE ... DO INSTEAD``) rewrites a statement before it runs: an
    ``INSERT`` into ``moves`` can become nothing, or go to another table, and the game
    server sees success. Migrations and the models never create them (views' ``_RETURN``
    rules are not counted)."""
    schema = await app_schema(ctx.conn)
    rows = await ctx.conn.fetch(_RULES, schema)
    if not rows:
        return CheckResult.passed(f"no rewrite rules on tables in schema {schema}", measured=0, threshold=0)
    names = [f"{r['rule_name']} on {r['table_name']}" + (" (DO INSTEAD)" if r["instead"] else "") for r in rows]
    fix = "; ".join(f"DROP RULE {quote_ident(r['rule_name'])} ON {qualified(schema, r['table_name'])}"
                    for r in rows)
    return CheckResult.failed(
        f"{len(rows)} rewrite rule{'s' if len(rows) != 1 else ''} in schema {schema}: {sample(names)}; statements on "
        f"{'these tables' if len({r['table_name'] for r in rows}) > 1 else 'this table'} do not do what they say. "
        f"Run {fix} (as the table owner) unless a migration created it on purpose (use a trigger instead)",
        measured=len(rows),
        threshold=0,
        evidence={"rules": "\n".join(r["definition"] for r in rows) + "\n"},
    )


_NOT_PERMANENT = """
SELECT c.relname AS name, c.relkind::text AS kind
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relpersistence = 'u' AND c.relkind IN ('r', 'p', 'S', 'm')
ORDER BY c.relname
"""

_KINDS = {"r": "table", "p": "partitioned table", "S": "sequence", "m": "materialized view"}


@check("enforcement.tables_logged", title="Tables and sequences are logged (crash-safe, replicated)",
       feature=FEATURE, category="infrastructure", severity="critical")
async def tables_logged(ctx: CheckContext) -> CheckResult:
    """An ``UNLOGGED`` table is truncated by crash recovery and is empty on every standby
    and in every physical backup; an unlogged sequence restarts. Fast for scratch data,
    fatal for players and games."""
    schema = await app_schema(ctx.conn)
    rows = await ctx.conn.fetch(_NOT_PERMANENT, schema)
    if not rows:
        return CheckResult.passed(f"every table and sequence in schema {schema} is logged", measured=0, threshold=0)
    names = [f"{_KINDS.get(r['kind'], r['kind'])} {r['name']}" for r in rows]
    fix = "; ".join(
        f"ALTER {'SEQUENCE' if r['kind'] == 'S' else 'TABLE'} {qualified(schema, r['name'])} SET LOGGED"
        for r in rows if r["kind"] in ("r", "p", "S"))
    return CheckResult.failed(
        f"{len(rows)} unlogged relation{'s' if len(rows) != 1 else ''} in schema {schema}: {sample(names)}. A crash "
        "empties them, standbys and physical backups never have their rows. Run "
        f"{fix or 'a rebuild as permanent objects'} (it rewrites the table under an ACCESS EXCLUSIVE lock: in a "
        "maintenance window on a large table)",
        measured=len(rows),
        threshold=0,
        evidence={"unlogged": "\n".join(names) + "\n"},
    )


_RLS_WITHOUT_POLICY = """
SELECT c.relname AS table_name, c.relforcerowsecurity AS forced
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relrowsecurity
  AND NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid)
ORDER BY c.relname
"""


@check("enforcement.row_security_has_policies", title="No table has row-level security on without a policy",
       feature=FEATURE, category="data integrity", severity="critical")
async def row_security_has_policies(ctx: CheckContext) -> CheckResult:
    """Row-level security with no policy denies everything to every role that neither owns
    the table nor bypasses RLS: the game server's reads return no rows and its writes fail,
    while the owner (and so every migration and test run as the owner) sees nothing wrong."""
    schema = await app_schema(ctx.conn)
    rows = await ctx.conn.fetch(_RLS_WITHOUT_POLICY, schema)
    if not rows:
        return CheckResult.passed(f"no table in schema {schema} has row-level security without a policy",
                                  measured=0, threshold=0)
    names = [r["table_name"] + (" (forced, even for its owner)" if r["forced"] else "") for r in rows]
    fix = "; ".join(f"ALTER TABLE {qualified(schema, r['table_name'])} DISABLE ROW LEVEL SECURITY" for r in rows)
    return CheckResult.failed(
        f"row-level security is on without any policy for {sample(names)} in schema {schema}: every role but the "
        f"owner (and roles with BYPASSRLS) reads no rows and cannot write. Run {fix} (as the owner), or create the "
        "policies the migration meant to create",
        measured=len(rows),
        threshold=0,
    )


_ROW_SECURITY = """
SELECT c.relname AS table_name, c.relrowsecurity AS enabled, c.relforcerowsecurity AS forced,
       coalesce(string_agg(p.polname || ' (' || CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT'
                WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END
                || coalesce(' USING ' || pg_get_expr(p.polqual, p.polrelid), '')
                || coalesce(' WITH CHECK ' || pg_get_expr(p.polwithcheck, p.polrelid), '') || ')',
                '; ' ORDER BY p.polname), '') AS policies,
       count(p.oid) AS policy_count
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_policy p ON p.polrelid = c.oid
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND (c.relrowsecurity OR c.relname = ANY($2::text[]))
GROUP BY c.relname, c.relrowsecurity, c.relforcerowsecurity
ORDER BY c.relname
"""


@check("enforcement.row_security_as_declared", title="Row-level security is on exactly where the project declares it",
       feature=FEATURE, category="data integrity", severity="critical")
async def row_security_as_declared(ctx: CheckContext) -> CheckResult:
    """Policies filter rows silently: with row-level security on a table, the game server
    sees only the rows a policy lets through, and an ``INSERT`` a ``WITH CHECK`` rejects
    fails, while the owner (every migration, every test run as the owner) sees them all.
    The models cannot express it, so the project declares the tables meant to have it
    (``smoke.row_security_tables``): on elsewhere, or off on a declared table, fails."""
    schema = await app_schema(ctx.conn)
    declared = list(ctx.settings.row_security_tables)
    rows = await ctx.conn.fetch(_ROW_SECURITY, schema, declared)
    found = {r["table_name"] for r in rows}
    unexpected = [r for r in rows if r["enabled"] and r["table_name"] not in declared and r["policy_count"]]
    switched_off = [r for r in rows if not r["enabled"] and r["table_name"] in declared]
    missing = [t for t in declared if t not in found]
    problems, fixes = [], []
    if unexpected:
        problems.append("row-level security is on for table(s) the project does not declare, so the application "
                        "role sees only the rows these policies let through: " + "; ".join(
                            f"{r['table_name']}{' (forced, even for its owner)' if r['forced'] else ''} with policies "
                            f"{r['policies']}" for r in unexpected[:10]))
        fixes.append("; ".join(f"ALTER TABLE {qualified(schema, r['table_name'])} DISABLE ROW LEVEL SECURITY"
                               for r in unexpected[:10])
                     + " (as the owner) if it was switched on by hand, or add the table to smoke.row_security_tables "
                     "if the policies are the design")
    if switched_off:
        names = ", ".join(r["table_name"] for r in switched_off)
        problems.append(f"row-level security is off for {names}, declared in smoke.row_security_tables: every role "
                        "with a grant on it reads every row")
        fixes.append("; ".join(f"ALTER TABLE {qualified(schema, r['table_name'])} ENABLE ROW LEVEL SECURITY"
                               for r in switched_off))
    if missing:
        problems.append(f"smoke.row_security_tables names {', '.join(missing)}, not a table in schema {schema}")
        fixes.append("correct smoke.row_security_tables")
    evidence = {"row-level security": "\n".join(
        f"{r['table_name']} enabled={r['enabled']} forced={r['forced']} policies: {r['policies'] or 'none'}"
        for r in rows) + "\n"}
    if problems:
        return CheckResult.failed(f"in schema {schema}, {'; '.join(problems)}. Fix: {'; '.join(fixes)}",
                                  measured=len(unexpected) + len(switched_off) + len(missing), threshold=0,
                                  evidence=evidence)
    where = f"on for exactly {', '.join(declared)}" if declared else "off on every table"
    return CheckResult.passed(f"row-level security is {where} in schema {schema}, as smoke.row_security_tables declares",
                              measured=0, threshold=0, evidence=evidence)


CHECKS: list[CheckFunction] = [triggers_enabled, replication_role_origin, no_rules, tables_logged, row_security_has_policies,
                               row_security_as_declared]
