"""Security checks: the application role is least-privileged and the server is configured safely.

The game server connects as one role (the session's ``current_user`` here). If that role
is a superuser, may create roles or databases, or owns the schema it writes to, then one
SQL injection in the game server can take the whole cluster, or drop every table. The
server-wide settings (password hashing, ``trust`` logins, TLS, who may create objects in
``public``) are checked here too because a deploy is when they silently regress.

Everything is read from the catalog and ``pg_settings``: cheap, read-only, and readable
by an unprivileged role, except ``pg_hba_file_rules``, which is read over the monitoring
connection (``database.monitor_user``); without one the check is "not verified" and, being a
blocker, fails the gate unless waived.
"""

from __future__ import annotations

import ipaddress

import asyncpg

from pytest_hokmdb.checks.base import CheckContext, CheckFunction, CheckResult, check, sample
from pytest_hokmdb.checks.schema import app_schema, qualified, quote_ident

FEATURE = "Security"
CATEGORY = "security"
OWNER_PLACEHOLDER = "<owner role>"

_MEMBER_OF_ROLES_WITH = """
SELECT r.rolname, r.rolname = current_user AS is_self
FROM pg_roles r
WHERE r.{attribute} AND pg_has_role(current_user, r.oid, 'MEMBER')
ORDER BY r.rolname = current_user DESC, r.rolname
"""


async def _role_attribute(ctx: CheckContext, attribute: str, keyword: str, consequence: str) -> CheckResult:
    """Fail when the session role has ``attribute``, or can ``SET ROLE`` to a role that has it.

    Role attributes are not inherited, but membership lets a role switch to the other one,
    so a member of a superuser role is one ``SET ROLE`` away from being superuser.
    """
    role = await ctx.conn.fetchval("SELECT current_user")
    is_super = await ctx.conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    rows = await ctx.conn.fetch(_MEMBER_OF_ROLES_WITH.format(attribute=attribute))
    direct = any(r["is_self"] for r in rows)
    # A superuser is "a member" of every role; only its own attribute is worth reporting.
    via = [] if is_super else [r["rolname"] for r in rows if not r["is_self"]]
    if not direct and not via:
        return CheckResult.passed(f"application role {role} does not have {keyword}", measured=False, threshold=False)
    problems, fixes = [], []
    if direct:
        problems.append(f"application role {role} has {keyword}")
        fixes.append(f"ALTER ROLE {quote_ident(role)} NO{keyword}")
    if via:
        problems.append(f"application role {role} is a member of {sample(via)}, which {'have' if len(via) > 1 else 'has'} "
                        f"{keyword} (one SET ROLE away)")
        fixes.extend(f"REVOKE {quote_ident(name)} FROM {quote_ident(role)}" for name in via)
    return CheckResult.failed(
        f"{'; '.join(problems)}: {consequence}. Run {'; '.join(fixes)} (as a superuser), and give the game server "
        "only the privileges it needs",
        measured=True,
        threshold=False,
        evidence={"roles with " + keyword: "\n".join(r["rolname"] for r in rows) + "\n"},
    )


@check("security.app_role_not_superuser", title="Application role is not a superuser", feature=FEATURE, category=CATEGORY, severity="blocker")
async def app_role_not_superuser(ctx: CheckContext) -> CheckResult:
    """A superuser bypasses every permission: one injection in the game server owns the cluster
    (and, through COPY ... PROGRAM, the server's operating system account)."""
    return await _role_attribute(
        ctx, "rolsuper", "SUPERUSER", "it bypasses every permission check and can run programs on the database server"
    )


@check("security.app_role_cannot_create_roles", title="Application role cannot create roles", feature=FEATURE, category=CATEGORY, severity="critical")
async def app_role_cannot_create_roles(ctx: CheckContext) -> CheckResult:
    """CREATEROLE can create and grant roles, including membership in the built-in
    ``pg_read_server_files`` / ``pg_execute_server_program``: close to superuser."""
    return await _role_attribute(
        ctx, "rolcreaterole", "CREATEROLE", "it can create logins and grant powerful built-in roles"
    )


@check("security.app_role_cannot_create_databases", title="Application role cannot create databases", feature=FEATURE, category=CATEGORY, severity="normal")
async def app_role_cannot_create_databases(ctx: CheckContext) -> CheckResult:
    """CREATEDB lets a compromised game server fill the disk with databases of its own."""
    return await _role_attribute(
        ctx, "rolcreatedb", "CREATEDB", "it can create databases, which is never part of the game server's job"
    )


_SCHEMA_OWNERSHIP = """
SELECT n.nspname AS schema, n.nspowner::regrole::text AS owner,
       current_database() AS db, d.datdba::regrole::text AS db_owner,
       coalesce(n.nspowner = to_regrole('pg_database_owner'), false) AS owned_by_db_owner,
       pg_has_role(current_user, n.nspowner, 'MEMBER') AS member_of_owner,
       pg_has_role(current_user, d.datdba, 'MEMBER') AS member_of_db_owner,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS is_super,
       current_user AS role
FROM pg_namespace n, pg_database d
WHERE n.nspname = $1 AND d.datname = current_database()
"""


@check("security.app_role_not_schema_owner", title="Application role does not own its schema", feature=FEATURE, category=CATEGORY, severity="critical")
async def app_role_not_schema_owner(ctx: CheckContext) -> CheckResult:
    """The owner of a schema can drop any table in it and alter its privileges; the game
    server only needs to read and write rows, so a separate role should own the schema.

    Since PostgreSQL 15, ``public`` is owned by ``pg_database_owner``, a stand-in for
    whoever owns the database: owning the database therefore means owning ``public``.
    """
    schema = await app_schema(ctx.conn)
    row = await ctx.conn.fetchrow(_SCHEMA_OWNERSHIP, schema)
    if row is None:
        return CheckResult.failed(f"schema {schema} does not exist in database {await ctx.conn.fetchval('SELECT current_database()')}; check the deploy")
    role, owner, db, db_owner = row["role"], row["owner"], row["db"], row["db_owner"]
    evidence = {"ownership": f"schema {schema} owner: {owner}\ndatabase {db} owner: {db_owner}\napplication role: {role}\n"}
    how: str | None
    fix: str
    if owner == role:
        how = f"application role {role} owns schema {schema}"
        fix = f"ALTER SCHEMA {quote_ident(schema)} OWNER TO {OWNER_PLACEHOLDER}"
    elif row["owned_by_db_owner"] and db_owner == role:
        how = (f"schema {schema} is owned by pg_database_owner, i.e. by the owner of database {db}, "
               f"and application role {role} owns database {db}")
        fix = f"ALTER DATABASE {quote_ident(db)} OWNER TO {OWNER_PLACEHOLDER}, or ALTER SCHEMA {quote_ident(schema)} OWNER TO {OWNER_PLACEHOLDER}"
    elif row["is_super"]:
        how = f"application role {role} is a superuser and so acts as the owner of every schema, {schema} included"
        fix = f"ALTER ROLE {quote_ident(role)} NOSUPERUSER (see security.app_role_not_superuser)"
    elif row["owned_by_db_owner"] and row["member_of_db_owner"]:
        how = (f"schema {schema} is owned by pg_database_owner, i.e. by the owner of database {db}, {db_owner}, "
               f"and application role {role} is a member of {db_owner}")
        fix = f"REVOKE {quote_ident(db_owner)} FROM {quote_ident(role)}"
    elif row["member_of_owner"]:
        how = f"application role {role} is a member of {owner}, which owns schema {schema}"
        fix = f"REVOKE {quote_ident(owner)} FROM {quote_ident(role)}"
    else:
        how = None
        fix = ""
    effective_owner = f"{owner} (owner of database {db}: {db_owner})" if row["owned_by_db_owner"] else owner
    if how is None:
        return CheckResult.passed(
            f"schema {schema} is owned by {effective_owner}, not by application role {role}", measured=False, threshold=False, evidence=evidence
        )
    if ctx.settings.app_role_may_own_schema:
        return CheckResult.passed(f"{how}; allowed by smoke.app_role_may_own_schema", measured=True, evidence=evidence)
    return CheckResult.failed(
        f"{how}: the game server could drop or alter every table in {schema}. Fix: {fix}, where {OWNER_PLACEHOLDER} is a "
        f"separate role that owns the schema and runs the migrations; grant {role} only USAGE on {schema} and the table "
        "privileges it needs. If this is intended, set smoke.app_role_may_own_schema",
        measured=True,
        threshold=False,
        evidence=evidence,
    )


_OWNED_BY_APP = """
SELECT kind, name FROM (
    SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view'
                          WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' ELSE 'relation' END AS kind,
           n.nspname || '.' || c.relname AS name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
    UNION ALL
    SELECT 'function', n.nspname || '.' || p.proname || '()' FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE p.proowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION ALL
    SELECT 'type', n.nspname || '.' || t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE t.typowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) AND t.typtype IN ('e', 'd', 'c', 'r', 'm')
      AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION ALL
    SELECT 'schema', nspname FROM pg_namespace
    WHERE nspowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) AND nspname NOT LIKE 'pg_temp%'
      AND nspname NOT LIKE 'pg_toast_temp%'
    UNION ALL
    SELECT 'database', datname FROM pg_database WHERE datname = current_database()
      AND datdba = (SELECT oid FROM pg_roles WHERE rolname = current_user)
) owned ORDER BY kind, name
"""


@check("security.app_role_owns_no_objects", title="Application role owns no table, sequence, function or type",
       feature=FEATURE, category=CATEGORY, severity="critical")
async def app_role_owns_no_objects(ctx: CheckContext) -> CheckResult:
    """An object's owner can drop it, alter it and grant it away, whatever its grants say: a
    game server role that owns a table (because it ran the migration that created it) can drop
    the table through a single injected statement. The owner role owns; the game reads and
    writes through grants (README "The three roles")."""
    role = await ctx.conn.fetchval("SELECT current_user")
    rows = await ctx.conn.fetch(_OWNED_BY_APP)
    owned = [f"{r['kind']} {r['name']}" for r in rows]
    evidence = {"owned by the application role": "\n".join(owned)} if owned else {}
    if not owned:
        return CheckResult.passed(f"application role {role} owns no object in this database", measured=0, threshold=0)
    if ctx.settings.app_role_may_own_schema:
        return CheckResult.passed(f"application role {role} owns {len(owned)} object(s); allowed by "
                                  "smoke.app_role_may_own_schema (a single-role setup)", measured=len(owned), evidence=evidence)
    return CheckResult.failed(
        f"application role {role} owns {len(owned)} object(s): {sample(owned)}. It can drop or alter them whatever its "
        f"grants say. Hand them to the owner role: REASSIGN OWNED BY {quote_ident(role)} TO {OWNER_PLACEHOLDER} (as a "
        "superuser), run migrations as the owner (database.owner_user), and grant the application role DML only",
        measured=len(owned), threshold=0, evidence=evidence,
    )


_DDL_PATHS = """
SELECT 'CREATE on schema ' || nspname AS path FROM pg_namespace
WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%'
  AND has_schema_privilege(current_user, oid, 'CREATE')
UNION ALL
SELECT 'CREATE on database ' || current_database() WHERE has_database_privilege(current_user, current_database(), 'CREATE')
UNION ALL
SELECT privilege || ' on table ' || n.nspname || '.' || c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN unnest(ARRAY['TRUNCATE', 'TRIGGER', 'REFERENCES']) AS privilege
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND (privilege <> 'TRUNCATE' OR NOT $1) AND has_table_privilege(current_user, c.oid, privilege)
ORDER BY 1
"""


@check("security.app_role_cannot_run_ddl", title="Application role cannot create objects or truncate tables",
       feature=FEATURE, category=CATEGORY, severity="critical")
async def app_role_cannot_run_ddl(ctx: CheckContext) -> CheckResult:
    """DDL from the game's role is how a bug or an injection becomes a schema change: CREATE
    in a schema (or the database) lets it add objects it then owns; TRUNCATE empties a table
    in one statement, past row-level triggers; TRIGGER and REFERENCES change how others' writes
    behave. The application needs none of them."""
    role = await ctx.conn.fetchval("SELECT current_user")
    paths = [r["path"] for r in await ctx.conn.fetch(_DDL_PATHS, ctx.settings.app_role_may_truncate)]
    evidence = {"privileges beyond DML": "\n".join(paths)} if paths else {}
    if not paths:
        return CheckResult.passed(f"application role {role} can only read and write rows", measured=0, threshold=0)
    if ctx.settings.app_role_may_own_schema:
        return CheckResult.passed(f"application role {role} holds {len(paths)} privilege(s) beyond DML; allowed by "
                                  "smoke.app_role_may_own_schema (a single-role setup)", measured=len(paths), evidence=evidence)
    return CheckResult.failed(
        f"application role {role} holds {len(paths)} privilege(s) beyond reading and writing rows: {sample(paths)}. "
        f"Revoke them (e.g. REVOKE CREATE ON SCHEMA public FROM {quote_ident(role)}, PUBLIC; REVOKE TRUNCATE, TRIGGER, "
        f"REFERENCES ON ALL TABLES IN SCHEMA public FROM {quote_ident(role)}); if truncating on purpose, set "
        "smoke.app_role_may_truncate",
        measured=len(paths), threshold=0, evidence=evidence,
    )


@check("security.password_encryption_scram", title="Passwords are hashed with SCRAM", feature=FEATURE, category=CATEGORY, severity="normal")
async def password_encryption_scram(ctx: CheckContext) -> CheckResult:
    """MD5 password hashes are replayable and deprecated; every password set while the server
    says ``md5`` is stored that way. Read the configured value (``reset_val``), not this
    session's, because a session can ``SET`` its own."""
    row = await ctx.conn.fetchrow("SELECT reset_val, source FROM pg_settings WHERE name = 'password_encryption'")
    value = row["reset_val"] if row else None
    where = f"server {ctx.target.host}:{ctx.target.port}"
    if value == "scram-sha-256":
        return CheckResult.passed(f"password_encryption is scram-sha-256 on {where}", measured=value, threshold="scram-sha-256")
    return CheckResult.failed(
        f"password_encryption is {value or 'unknown'} on {where} (source: {row['source'] if row else 'n/a'}), so new "
        "passwords are stored as weak MD5 hashes: set password_encryption = 'scram-sha-256' in postgresql.conf "
        "(or ALTER SYSTEM) and SELECT pg_reload_conf(), remove any per-role or per-database override, "
        "then set the passwords again so they are re-hashed",
        measured=value,
        threshold="scram-sha-256",
    )


_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_HOST_TYPES = ("host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc")


def _network(address: str, netmask: str | None) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network a pg_hba address matches; None for keywords and host names.

    The view gives a CIDR rule as address plus netmask (``::1`` / ``ffff:...:ffff``), and
    ``ipaddress`` accepts a netmask only for IPv4, so the prefix length is counted here.
    """
    try:
        ip = ipaddress.ip_address(address)
        prefix = int(ipaddress.ip_address(netmask)).bit_count() if netmask else ip.max_prefixlen
        return ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    except ValueError:
        return None


def is_local_address(address: str | None, netmask: str | None) -> bool:
    """True when a pg_hba address can only match connections from this machine."""
    if address is None or address in ("samehost", "localhost"):
        return True
    network = _network(address, netmask)
    if network is None:
        return False  # all, samenet, or a host name: may be anywhere
    return any(network.version == lo.version and network.subnet_of(lo) for lo in _LOOPBACK)  # type: ignore[arg-type]


def _describe_rule(row: asyncpg.Record) -> str:
    address = row["address"] or ""
    if row["netmask"]:
        network = _network(address, row["netmask"])
        address = str(network) if network is not None else f"{address} {row['netmask']}"
    return (f"line {row['line_number']}: {row['type']} {','.join(row['database'] or [])} "
            f"{','.join(row['user_name'] or [])} {address} {row['auth_method']}")


@check("security.no_remote_trust_auth", title="No trust authentication for remote hosts", feature=FEATURE, category=CATEGORY, severity="blocker")
async def no_remote_trust_auth(ctx: CheckContext) -> CheckResult:
    """A ``trust`` rule for a network address lets anyone who can reach the port log in as
    any role, the superuser included, without a password.

    ``pg_hba_file_rules`` shows the file as it is now, which is what the server uses after
    its next reload, so a bad edit is caught before it takes effect too.
    """
    # The application role may not read pg_hba_file_rules (superuser only by default): this
    # check runs over the monitoring connection when the environment has one.
    conn = ctx.observer
    role = await conn.fetchval("SELECT current_user")
    readable = await conn.fetchval(
        "SELECT has_table_privilege('pg_catalog.pg_hba_file_rules', 'SELECT') "
        "AND has_function_privilege('pg_catalog.pg_hba_file_rules()', 'EXECUTE')"
    )
    if not readable:
        grants = (f"GRANT SELECT ON pg_catalog.pg_hba_file_rules TO {quote_ident(role)}; "
                  f"GRANT EXECUTE ON FUNCTION pg_catalog.pg_hba_file_rules() TO {quote_ident(role)}")
        how = (f"as a superuser run: {grants}" if ctx.monitor is not None
               else f"{ctx.monitor_hint()}, with {grants.replace(quote_ident(role), '<monitor role>')}")
        return CheckResult.skipped(f"cannot inspect pg_hba.conf: role {role} may not read pg_hba_file_rules; {how}")
    rows = await conn.fetch(
        "SELECT line_number, type, database, user_name, address, netmask, auth_method, error "
        "FROM pg_catalog.pg_hba_file_rules ORDER BY line_number"
    )
    errors = [f"line {r['line_number']}: {r['error']}" for r in rows if r["error"]]
    offending = [
        r for r in rows
        if not r["error"] and r["auth_method"] == "trust" and r["type"] in _HOST_TYPES
        and not is_local_address(r["address"], r["netmask"])
    ]
    evidence = {"pg_hba_file_rules": "\n".join(_describe_rule(r) if not r["error"] else f"line {r['line_number']}: ERROR {r['error']}" for r in rows) + "\n"}
    where = f"server {ctx.target.host}:{ctx.target.port}"
    error_note = (f" pg_hba.conf also has {len(errors)} invalid line(s) ({sample(errors, 3)}); the server keeps its "
                  "previously loaded rules until they are fixed.") if errors else ""
    if offending:
        described = [_describe_rule(r) for r in offending]
        return CheckResult.failed(
            f"pg_hba.conf on {where} lets remote clients log in without a password: {sample(described, 5)}. "
            "Change the method of these lines to scram-sha-256 (or delete them), then SELECT pg_reload_conf()." + error_note,
            measured=len(offending),
            threshold=0,
            evidence=evidence,
        )
    if errors:
        return CheckResult.failed(
            f"no remote trust rules in pg_hba.conf on {where}, but the file does not load:{error_note} "
            "Fix the lines and SELECT pg_reload_conf()",
            measured=0,
            threshold=0,
            evidence=evidence,
        )
    return CheckResult.passed(f"no trust rules for remote addresses in pg_hba.conf on {where} ({len(rows)} rules)", measured=0, threshold=0, evidence=evidence)


_PUBLIC_CREATE = """
SELECT n.nspname AS schema
FROM pg_namespace n
WHERE n.nspname = ANY($1::text[])
  AND EXISTS (SELECT 1 FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
              WHERE a.grantee = 0 AND a.privilege_type = 'CREATE')
ORDER BY n.nspname
"""


@check("security.public_cannot_create_in_schema", title="PUBLIC cannot create objects in the application schema", feature=FEATURE, category=CATEGORY, severity="critical")
async def public_cannot_create_in_schema(ctx: CheckContext) -> CheckResult:
    """If every role may CREATE in ``public`` (the default before PostgreSQL 15), any login can
    plant a function or table that shadows the application's (CVE-2018-1058)."""
    schemas = sorted({"public", await app_schema(ctx.conn)})
    rows = await ctx.conn.fetch(_PUBLIC_CREATE, schemas)
    if not rows:
        return CheckResult.passed(f"PUBLIC has no CREATE privilege on {', '.join(schemas)}", measured=False, threshold=False)
    names = [r["schema"] for r in rows]
    fix = "; ".join(f"REVOKE CREATE ON SCHEMA {quote_ident(name)} FROM PUBLIC" for name in names)
    return CheckResult.failed(
        f"every role (PUBLIC) may create objects in schema {', '.join(names)} of database {ctx.target.dbname}: any login can "
        f"plant functions or tables that shadow the application's. Run {fix} (as the schema owner)",
        measured=True,
        threshold=False,
    )


@check("security.server_ssl_enabled", title="Server has TLS enabled where required", feature=FEATURE, category=CATEGORY, severity="critical")
async def server_ssl_enabled(ctx: CheckContext) -> CheckResult:
    """Without ``ssl = on`` no client can encrypt, whatever its sslmode says; game traffic and
    passwords' SCRAM exchanges would cross the network in clear."""
    value = await ctx.conn.fetchval("SELECT setting FROM pg_settings WHERE name = 'ssl'")
    where = f"server {ctx.target.host}:{ctx.target.port}"
    if not ctx.config.ssl_required:
        return CheckResult.passed(f"TLS not required on {ctx.config.environment} (ssl = {value} on {where})", measured=value)
    if value == "on":
        return CheckResult.passed(f"ssl = on on {where}", measured=value, threshold="on")
    return CheckResult.failed(
        f"ssl is {value} on {where}, but TLS is required on {ctx.config.environment}: set ssl = on with ssl_cert_file "
        "and ssl_key_file in postgresql.conf, SELECT pg_reload_conf(), and use hostssl lines in pg_hba.conf",
        measured=value,
        threshold="on",
    )


def _as_bool(value: str | None) -> bool:
    """``log_connections`` is a boolean up to PostgreSQL 17 and a list of aspects from 18 on."""
    text = (value or "").strip().lower()
    return text not in ("", "off", "false", "no", "0")


@check("security.log_connections", title="Connection logging is as configured", feature=FEATURE, category=CATEGORY, severity="minor")
async def log_connections(ctx: CheckContext) -> CheckResult:
    """Connection logs are how an incident is traced back to a client; a deploy or a new
    parameter group can turn them off without anyone noticing."""
    expected = ctx.settings.log_connections
    if expected is None:
        return CheckResult.skipped("log_connections is not checked: not configured (set smoke.log_connections to true or false)")
    value = await ctx.conn.fetchval("SELECT setting FROM pg_settings WHERE name = 'log_connections'")
    actual = _as_bool(value)
    wanted = "on" if expected else "off"
    where = f"server {ctx.target.host}:{ctx.target.port}"
    if actual == expected:
        return CheckResult.passed(f"log_connections is {value} on {where}, as configured", measured=actual, threshold=expected)
    return CheckResult.failed(
        f"log_connections is {value or 'off'} on {where}, expected {wanted} (smoke.log_connections): set log_connections = "
        f"{wanted} in postgresql.conf (or ALTER SYSTEM) and SELECT pg_reload_conf() (applies to new connections), "
        "or change smoke.log_connections",
        measured=actual,
        threshold=expected,
    )


_SERVER_ACCESS_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program")

_SERVER_ACCESS = """
SELECT r.rolname AS role_name, p.rolname AS predefined, r.rolname = current_user AS is_self
FROM pg_roles r
CROSS JOIN pg_roles p
WHERE r.rolcanlogin AND NOT r.rolsuper AND p.rolname = ANY($1::text[])
  AND pg_has_role(r.oid, p.oid, 'MEMBER')
ORDER BY r.rolname = current_user DESC, r.rolname, p.rolname
"""


@check("security.no_server_file_or_program_access", title="No login role may read or write server files or run programs",
       feature=FEATURE, category=CATEGORY, severity="critical")
async def no_server_file_or_program_access(ctx: CheckContext) -> CheckResult:
    """Members of ``pg_read_server_files``, ``pg_write_server_files`` or
    ``pg_execute_server_program`` can ``COPY ... FROM/TO`` any file the server account can
    reach, or ``COPY ... PROGRAM`` a shell command on the database host: a way out of the
    database for whoever holds that login. Every role that can log in is read (superusers,
    who can do this anyway, are the superuser checks' business)."""
    rows = await ctx.conn.fetch(_SERVER_ACCESS, list(_SERVER_ACCESS_ROLES))
    if not rows:
        return CheckResult.passed(
            f"no login role (superusers aside) is a member of {', '.join(_SERVER_ACCESS_ROLES)}", measured=0, threshold=0)
    grants: dict[str, list[str]] = {}
    for r in rows:
        grants.setdefault(r["role_name"], []).append(r["predefined"])
    names = [f"{role} ({', '.join(predefined)})" for role, predefined in grants.items()]
    fixes = "; ".join(f"REVOKE {p} FROM {quote_ident(role)}" for role, predefined in grants.items() for p in predefined)
    return CheckResult.failed(
        f"{len(grants)} login role{'s' if len(grants) != 1 else ''} can reach the database host's files or run programs "
        f"on it: {sample(names)}. Run {fixes} (as a superuser; if the grant comes through another role, revoke that "
        "membership instead)",
        measured=len(grants),
        threshold=0,
        evidence={"members": "\n".join(f"{r['role_name']} -> {r['predefined']}" for r in rows) + "\n"},
    )


_DEFINER_FUNCTIONS = """
SELECT n.nspname AS schema, p.proname AS name, pg_get_function_identity_arguments(p.oid) AS args,
       pg_get_userbyid(p.proowner) AS owner,
       coalesce(has_function_privilege('public', p.oid, 'EXECUTE'), false) AS public_execute
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.prosecdef
  AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
  AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) AS c WHERE c LIKE 'search_path=%')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


@check("security.definer_functions_pin_search_path", title="SECURITY DEFINER functions fix their search_path",
       feature=FEATURE, category=CATEGORY, severity="critical")
async def definer_functions_pin_search_path(ctx: CheckContext) -> CheckResult:
    """A ``SECURITY DEFINER`` function runs with its owner's rights but resolves names
    through the caller's ``search_path``: a caller who can create an object earlier on
    that path (a table or an operator named like one the function uses) runs code as the
    owner. PostgreSQL's documentation says to set ``search_path`` on every such function.
    Functions of extensions are their maintainers' (not listed)."""
    rows = await ctx.conn.fetch(_DEFINER_FUNCTIONS)
    if not rows:
        return CheckResult.passed("every SECURITY DEFINER function sets its own search_path", measured=0, threshold=0)
    names = [f"{r['schema']}.{r['name']}({r['args']}) owned by {r['owner']}"
             + (", executable by PUBLIC" if r["public_execute"] else "") for r in rows]
    fixes = "; ".join(
        f"ALTER FUNCTION {quote_ident(r['schema'])}.{quote_ident(r['name'])}({r['args']}) SET search_path = "
        f"pg_catalog, {quote_ident(r['schema'])}, pg_temp" for r in rows[:10])
    return CheckResult.failed(
        f"{len(rows)} SECURITY DEFINER function{'s' if len(rows) != 1 else ''} without a fixed search_path: "
        f"{sample(names)}; whoever can create objects on a caller's search_path can run code with the owner's "
        f"rights. Run {fixes} (as the owner; pg_temp last keeps temporary objects from shadowing), and REVOKE "
        "EXECUTE ... FROM PUBLIC where only the application should call it",
        measured=len(rows),
        threshold=0,
        evidence={"definer functions": "\n".join(names) + "\n"},
    )


_EXPIRING_LOGINS = """
SELECT rolname AS role_name, rolvaliduntil AS valid_until, rolvaliduntil < now() AS expired,
       rolname = current_user AS is_self
FROM pg_roles
WHERE rolcanlogin AND rolvaliduntil IS NOT NULL AND rolvaliduntil < now() + make_interval(secs => $1)
ORDER BY rolvaliduntil
"""


@check("security.login_passwords_not_expiring", title="No login role's password has expired or expires soon",
       feature=FEATURE, category=CATEGORY, severity="critical")
async def login_passwords_not_expiring(ctx: CheckContext) -> CheckResult:
    """``VALID UNTIL`` ends a role's password logins at that moment, with no warning to
    anyone: when it is the application role's, the game server's next connection fails and
    every new game with it; the monitoring role's, the gate goes blind. Every role that can
    log in is read (``pg_roles``, readable by any role); the window is
    ``smoke.password_expiry_days``."""
    days = ctx.settings.password_expiry_days
    window = f"{days:g} day{'' if days == 1 else 's'}"
    rows = await ctx.conn.fetch(_EXPIRING_LOGINS, days * 86400)
    if not rows:
        return CheckResult.passed(f"no login role's password expires within {window} (smoke.password_expiry_days)",
                                  measured=0, threshold=days)
    names = [f"{r['role_name']}{' (this session)' if r['is_self'] else ''} "
             f"{'expired' if r['expired'] else 'expires'} {r['valid_until']:%Y-%m-%d %H:%M %Z}" for r in rows]
    fixes = "; ".join(f"ALTER ROLE {quote_ident(r['role_name'])} VALID UNTIL 'infinity'" for r in rows[:10])
    return CheckResult.failed(
        f"{len(rows)} login role{'s' if len(rows) != 1 else ''} whose password has expired or expires within {window} "
        f"(smoke.password_expiry_days): {sample(names)}. Password logins stop at that moment. Rotate the password "
        f"(and the clients' copies) and set a new expiry, or run {fixes} (as a superuser or a role with CREATEROLE)",
        measured=len(rows),
        threshold=days,
        evidence={"expiring logins": "\n".join(names) + "\n"},
    )


_PUBLIC_TABLE_PRIVILEGES = """
SELECT c.relname AS name, c.relkind::text AS kind, string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type) AS privileges
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL aclexplode(c.relacl) AS a
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND a.grantee = 0
  -- An extension's own objects with the privileges it ships (pg_stat_statements' views are
  -- readable by PUBLIC and show each role only its own statements): not the application's grant.
  AND NOT EXISTS (SELECT 1 FROM pg_init_privs ip WHERE ip.classoid = 'pg_class'::regclass AND ip.objoid = c.oid
                  AND ip.objsubid = 0 AND ip.privtype = 'e' AND ip.initprivs = c.relacl)
GROUP BY c.relname, c.relkind
ORDER BY c.relname
"""


@check("security.no_public_table_privileges", title="PUBLIC holds no privilege on the application's tables",
       feature=FEATURE, category=CATEGORY, severity="critical")
async def no_public_table_privileges(ctx: CheckContext) -> CheckResult:
    """A grant to PUBLIC reaches every role of the cluster, present and future: the
    reporting login, a role made for another application, anyone a password leaks to.
    PostgreSQL grants nothing on tables to PUBLIC by default, so any such privilege was
    granted by hand or by a migration, and the role design (owner, application role,
    monitoring role) no longer says who can read or change the game's data."""
    schema = await app_schema(ctx.conn)
    rows = await ctx.conn.fetch(_PUBLIC_TABLE_PRIVILEGES, schema)
    if not rows:
        return CheckResult.passed(f"PUBLIC holds no privilege on tables, views or sequences in schema {schema}",
                                  measured=0, threshold=0)
    names = [f"{r['name']} ({r['privileges']})" for r in rows]
    fixes = "; ".join(
        f"REVOKE ALL ON {'SEQUENCE ' if r['kind'] == 'S' else ''}{qualified(schema, r['name'])} FROM PUBLIC"
        for r in rows[:10])
    return CheckResult.failed(
        f"every role of the cluster (PUBLIC) holds privileges on {len(rows)} object{'s' if len(rows) != 1 else ''} in "
        f"schema {schema}: {sample(names)}. Run {fixes} (as the owner), and grant what the application needs to its "
        "role instead",
        measured=len(rows),
        threshold=0,
        evidence={"PUBLIC privileges": "\n".join(names) + "\n"},
    )


_PUBLIC_SCHEMAS = """
SELECT n.nspname AS schema
FROM pg_namespace n
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND left(n.nspname, 3) <> 'pg_'
  AND EXISTS (SELECT 1 FROM aclexplode(n.nspacl) a WHERE a.grantee = 0 AND a.privilege_type = 'USAGE')
ORDER BY 1
"""

_PUBLIC_FUNCTIONS = """
SELECT n.nspname AS schema, p.proname AS name, pg_get_function_identity_arguments(p.oid) AS args,
       p.prokind::text AS kind, p.prosecdef AS definer, pg_get_userbyid(p.proowner) AS owner
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = ANY($1::text[])
  AND p.prokind IN ('f', 'p')
  AND p.prorettype NOT IN ('pg_catalog.trigger'::regtype, 'pg_catalog.event_trigger'::regtype)
  AND (p.proacl IS NULL  -- never granted or revoked: PostgreSQL's default, EXECUTE to PUBLIC
       OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
ORDER BY 1, 2, 3
"""


@check("security.no_public_function_or_schema_access", title="PUBLIC may use only the declared schemas and functions",
       feature=FEATURE, category=CATEGORY)
async def no_public_function_or_schema_access(ctx: CheckContext) -> CheckResult:
    """PostgreSQL grants ``EXECUTE`` on every new function to PUBLIC, so a function a
    migration adds is callable by every role of the cluster wherever PUBLIC may use its
    schema: a reporting login can run the function that credits a player's score. The
    project's baseline is ``smoke.public_schemas`` (default ``public``) and
    ``smoke.public_functions`` (``schema.name``); beyond it, a grant to PUBLIC fails.
    Trigger functions (callable only as triggers) and extensions' functions (their
    maintainers') are not counted."""
    settings = ctx.settings
    schemas = [r["schema"] for r in await ctx.conn.fetch(_PUBLIC_SCHEMAS)]
    extra_schemas = [s for s in schemas if s not in settings.public_schemas]
    functions = await ctx.conn.fetch(_PUBLIC_FUNCTIONS, schemas)
    extra_functions = [r for r in functions if f"{r['schema']}.{r['name']}" not in settings.public_functions]
    if not extra_schemas and not extra_functions:
        listed = f"; {len(functions)} declared in smoke.public_functions" if functions else ""
        return CheckResult.passed(
            f"PUBLIC may use schemas {', '.join(schemas) or 'none'} (smoke.public_schemas) and execute no undeclared "
            f"function in them{listed}", measured=0, threshold=0)
    problems, fixes = [], []
    if extra_schemas:
        problems.append(f"PUBLIC may use schema(s) {', '.join(extra_schemas)} (USAGE), beyond smoke.public_schemas")
        fixes.extend(f"REVOKE USAGE ON SCHEMA {quote_ident(s)} FROM PUBLIC" for s in extra_schemas)
    if extra_functions:
        names = [f"{r['schema']}.{r['name']}({r['args']})" + (" (SECURITY DEFINER)" if r["definer"] else "")
                 for r in extra_functions]
        problems.append(f"every role of the cluster may execute {len(extra_functions)} function(s): {sample(names)}")
        fixes.extend(f"REVOKE EXECUTE ON {'PROCEDURE' if r['kind'] == 'p' else 'FUNCTION'} "
                     f"{quote_ident(r['schema'])}.{quote_ident(r['name'])}({r['args']}) FROM PUBLIC"
                     for r in extra_functions[:10])
        owners = sorted({r["owner"] for r in extra_functions})
        fixes.append("grant EXECUTE to the application role instead, and ALTER DEFAULT PRIVILEGES FOR ROLE "
                     f"{', '.join(quote_ident(o) for o in owners)} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC so new "
                     "functions start closed")
    return CheckResult.failed(
        f"{'; '.join(problems)}. Run {'; '.join(fixes)} (as the owner), or declare what is meant to be public in "
        "smoke.public_schemas / smoke.public_functions",
        measured=len(extra_schemas) + len(extra_functions), threshold=0,
        evidence={"PUBLIC access": "\n".join([f"schema {s}" for s in schemas]
                                             + [f"function {r['schema']}.{r['name']}({r['args']})" for r in functions]) + "\n"},
    )


_PRIVILEGED_LOGINS = """
SELECT rolname AS role_name,
       array_remove(ARRAY[CASE WHEN rolsuper THEN 'SUPERUSER' END, CASE WHEN rolcreaterole THEN 'CREATEROLE' END,
                          CASE WHEN rolcreatedb THEN 'CREATEDB' END, CASE WHEN rolbypassrls THEN 'BYPASSRLS' END],
                    NULL) AS attributes
FROM pg_roles
WHERE rolcanlogin AND (rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls)
ORDER BY rolname
"""


@check("security.privileged_login_roles", title="Only the declared administrators log in with administrative attributes",
       feature=FEATURE, category=CATEGORY)
async def privileged_login_roles(ctx: CheckContext) -> CheckResult:
    """The application role is judged by its own checks; this one reads every role that can
    log in (CIS 4.x): a reporting login made ``SUPERUSER`` for a one-off fix, a CI role with
    ``CREATEROLE`` (which can grant itself any non-superuser role) or ``BYPASSRLS``, is a
    second way into the cluster that no application check looks at. The administrators are
    declared in ``smoke.privileged_login_roles`` (default ``postgres``). ``REPLICATION``
    alone is what a standby's login needs and is not counted."""
    declared = set(ctx.settings.privileged_login_roles)
    rows = await ctx.conn.fetch(_PRIVILEGED_LOGINS)
    extra = [r for r in rows if r["role_name"] not in declared]
    if not extra:
        shown = ", ".join(r["role_name"] for r in rows) or "none"
        return CheckResult.passed(f"login roles with administrative attributes: {shown}, all declared in "
                                  "smoke.privileged_login_roles", measured=0, threshold=0)
    names = [f"{r['role_name']} ({', '.join(r['attributes'])})" for r in extra]
    fixes = "; ".join(f"ALTER ROLE {quote_ident(r['role_name'])} "
                      + " ".join(f"NO{a}" for a in r["attributes"]) for r in extra[:10])
    return CheckResult.failed(
        f"{len(extra)} login role(s) not declared as administrators hold administrative attributes: {sample(names)}. "
        f"Run {fixes} (as a superuser) unless the role administers the server, then add it to "
        "smoke.privileged_login_roles",
        measured=len(extra), threshold=0,
        evidence={"privileged logins": "\n".join(f"{r['role_name']}: {', '.join(r['attributes'])}" for r in rows) + "\n"},
    )


_MD5_LOGINS = "SELECT rolname FROM pg_catalog.pg_authid WHERE rolcanlogin AND rolpassword LIKE 'md5%' ORDER BY 1"


@check("security.login_roles_scram_hashes", title="No login role's password is stored as an MD5 hash",
       feature=FEATURE, category=CATEGORY)
async def login_roles_scram_hashes(ctx: CheckContext) -> CheckResult:
    """``password_encryption = scram-sha-256`` only changes how passwords set *from now on*
    are stored: a role whose password was set under ``md5`` keeps a replayable MD5 hash
    until its password is set again. Only ``pg_authid`` shows the hashes, and only
    superusers read it; hokmdb does not ask the monitoring role to read every password
    hash, so without a superuser connection this check says it could not look (severity
    normal: reported, not gating)."""
    for conn in dict.fromkeys((ctx.observer, ctx.conn)):
        if await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            rows = await conn.fetch(_MD5_LOGINS)
            break
    else:
        role = await ctx.conn.fetchval("SELECT current_user")
        return CheckResult.skipped(
            f"stored password hashes: only superusers may read pg_authid, and role {role} is not one. Check it as a "
            "superuser: SELECT rolname FROM pg_authid WHERE rolcanlogin AND rolpassword LIKE 'md5%' (or run the smoke "
            "suite as a superuser where that is acceptable, e.g. development)")
    if not rows:
        return CheckResult.passed("no login role has an MD5 password hash", measured=0, threshold=0)
    names = [r["rolname"] for r in rows]
    return CheckResult.failed(
        f"{len(names)} login role(s) have an MD5 password hash: {sample(names)}. MD5 hashes are replayable and "
        "cannot be upgraded in place: with password_encryption = 'scram-sha-256', set each password again "
        f"(\\password {names[0]} in psql, or ALTER ROLE ... PASSWORD from the secret store; never on a command line), "
        "then change their pg_hba method from md5 to scram-sha-256",
        measured=len(names), threshold=0,
    )


CHECKS: list[CheckFunction] = [
    app_role_not_superuser,
    app_role_cannot_create_roles,
    app_role_cannot_create_databases,
    app_role_not_schema_owner,
    app_role_owns_no_objects,
    app_role_cannot_run_ddl,
    password_encryption_scram,
    no_remote_trust_auth,
    public_cannot_create_in_schema,
    no_public_table_privileges,
    server_ssl_enabled,
    log_connections,
    no_server_file_or_program_access,
    definer_functions_pin_search_path,
    login_passwords_not_expiring,
    no_public_function_or_schema_access,
    login_roles_scram_hashes,
    privileged_login_roles,
]
