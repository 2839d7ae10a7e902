"""Turn a loaded config into a ``Target``, starting the embedded cluster on demand.

For development and testing with no ``DB_HOST``, the database lives in hokmdb's own
cluster, started if needed. Creating (or aligning) the application role and database is
provisioning: only the explicit setup commands ask for it (``deploy.py --setup``,
``hokmdb cluster start``, ``hokmdb demo``, plain ``alembic upgrade``). A verification run
(``pytest smoke/``, ``smoke_tests.py``, the API) never does: an ``ALTER ROLE ... NOSUPERUSER``
before the security checks would repair the very thing they are about to judge.

With ``topology.local: "patroni"`` the environment's server is hokmdb's local Patroni cluster
(``cluster/patroni_topology.py``) instead of the embedded cluster: the target is its current
leader, found through Patroni's REST API as for a configured ``topology.patroni``, and the same
provisioning creates the roles and database there (on the leader; the replica follows).
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import asyncpg

from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.config.model import EmbeddedSettings
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.errors import ConnectionFailed
from pytest_hokmdb.redaction import register_secret

if TYPE_CHECKING:
    from pytest_hokmdb.cluster.patroni_topology import LocalPatroniTopology
    from pytest_hokmdb.cluster.topology import LocalTopology

log = logging.getLogger(__name__)


class LocalServer(Protocol):
    """A server hokmdb runs and provisions: the embedded cluster, or the local Patroni cluster
    (whose ``admin_connect_kwargs`` reach the current leader). Generated passwords are kept in
    its 0600 ``state_file``."""

    @property
    def state_file(self) -> Path: ...

    def admin_connect_kwargs(self, dbname: str = "postgres") -> dict[str, object]: ...


def embedded_cluster_for(loaded: LoadedConfig) -> EmbeddedCluster:
    """The environment's embedded cluster; with a ``physical`` section it archives its WAL
    into that pgBackRest stanza whenever hokmdb starts it."""
    settings = loaded.config.embedded or EmbeddedSettings()
    cluster = EmbeddedCluster(
        loaded.resolve(settings.data_dir),
        port=settings.port,
        bin_dir=settings.bin_dir,
        os_user=settings.os_user,
    )
    if loaded.config.physical is not None:
        from pytest_hokmdb.cluster.archive.server import archiving_cluster
        from pytest_hokmdb.cluster.archive.settings import resolve_setup

        setup = resolve_setup(loaded.config.physical, cluster=cluster, project_root=loaded.project_root)
        archiving_cluster(cluster, setup)
    return cluster


def local_patroni_for(loaded: LoadedConfig) -> LocalPatroniTopology | None:
    """The environment's local Patroni topology (``topology.local: "patroni"``), None in any
    other mode. It lives beside the embedded cluster's directory (``<dir>-patroni``), like the
    lighter mode's standby and PgBouncer, so the directory the server account can reach is
    the one ``EmbeddedCluster`` chose."""
    config = loaded.config
    if not config.uses_embedded or config.topology is None or config.topology.local != "patroni":
        return None
    from pytest_hokmdb.cluster.patroni_topology import LocalPatroniTopology

    settings = config.embedded or EmbeddedSettings()
    base = EmbeddedCluster(loaded.resolve(settings.data_dir), bin_dir=settings.bin_dir, os_user=settings.os_user).base_dir
    db = config.database
    return LocalPatroniTopology(base.with_name(base.name + "-patroni"), os_user=settings.os_user, bin_dir=settings.bin_dir,
                                pooler_roles=(db.user, db.monitor_user or EMBEDDED_MONITOR_USER))


def local_topology_for(loaded: LoadedConfig) -> LocalTopology | None:
    """``topology.local: true``: the embedded cluster as primary, its standby and the PgBouncer
    that admits the application and monitoring roles; None in any other mode."""
    config = loaded.config
    if not config.uses_embedded or config.topology is None or config.topology.local is not True:
        return None
    from pytest_hokmdb.cluster.topology import LocalTopology

    db = config.database
    return LocalTopology(embedded_cluster_for(loaded), pooler_roles=(db.user, db.monitor_user or EMBEDDED_MONITOR_USER))


def password_store(loaded: LoadedConfig) -> LocalServer:
    """Where the environment's generated role passwords are kept."""
    local = local_patroni_for(loaded)
    return local.patroni if local is not None else embedded_cluster_for(loaded)


def runs_local_server(loaded: LoadedConfig, target: Target) -> bool:
    """The target is a server hokmdb set up (embedded or local Patroni): its roles are hokmdb's."""
    return target.embedded or local_patroni_for(loaded) is not None


def local_superuser(loaded: LoadedConfig, target: Target) -> Target | None:
    """The superuser of the server hokmdb runs for the environment (the embedded cluster, or
    the local Patroni cluster's current leader); None for a server hokmdb does not run."""
    if not runs_local_server(loaded, target):
        return None
    superuser = password_store(loaded).admin_connect_kwargs()
    return replace(target, host=str(superuser["host"]), port=int(superuser["port"]),  # type: ignore[call-overload]
                   user=str(superuser["user"]), password=str(superuser["password"]), read_only=False)


def _stored_password(cluster: LocalServer, user: str) -> str | None:
    """The password setup generated for ``user`` and kept in the cluster's state file, if any."""
    state = json.loads(cluster.state_file.read_text()) if cluster.state_file.is_file() else {}
    password = state.get("app_passwords", {}).get(user)
    if password is not None:
        register_secret(password)
    return password


def _app_password(cluster: LocalServer, user: str, configured: str | None) -> str:
    """The configured password, else one generated once and kept in the cluster's state file (0600)."""
    if configured:
        return configured
    state = json.loads(cluster.state_file.read_text())
    passwords: dict[str, str] = state.setdefault("app_passwords", {})
    if user not in passwords:
        passwords[user] = secrets.token_urlsafe(24)
        cluster.state_file.write_text(json.dumps(state, indent=2))
        cluster.state_file.chmod(0o600)
    register_secret(passwords[user])
    return passwords[user]


EMBEDDED_MONITOR_USER = "hokm_monitor"
EMBEDDED_OWNER_USER = "hokm_owner"
# What the application role gets on the owner's objects: rows, never structure (no TRUNCATE,
# REFERENCES or TRIGGER), now and for every object the owner creates later.
APP_GRANTS = (
    "GRANT CONNECT ON DATABASE {db} TO {app}",
    "GRANT USAGE ON SCHEMA public TO {app}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app}",
    "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {app}",
    "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}",
    "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {app}",
    "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
)
# What the monitoring role needs beyond pg_monitor (README "Monitoring connection").
MONITOR_GRANTS = (
    "GRANT pg_monitor TO {role}",
    "GRANT SELECT ON pg_catalog.pg_hba_file_rules TO {role}",
    "GRANT EXECUTE ON FUNCTION pg_catalog.pg_hba_file_rules() TO {role}",
)


async def provision_monitor(conn: asyncpg.Connection, *, user: str, password: str) -> None:
    """Create (or align) the read-only monitoring role: pg_monitor plus the documented grants.

    ``conn`` must be connected to the application's database: privileges on catalog views
    such as ``pg_hba_file_rules`` are kept per database."""
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", user)
    verb = "ALTER" if exists else "CREATE"
    await conn.execute(await conn.fetchval(
        f"SELECT format('{verb} ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', $1::text, $2::text)",
        user, password,
    ))
    await conn.execute(await conn.fetchval("SELECT format('ALTER ROLE %I SET default_transaction_read_only = on', $1::text)", user))
    await grant_monitor(conn, user)


async def grant_monitor(conn: asyncpg.Connection, user: str) -> None:
    """``MONITOR_GRANTS`` to the existing role ``user`` in the database ``conn`` is connected
    to (as a superuser: the catalog's objects are the bootstrap superuser's to grant).

    Setup runs it through ``provision_monitor``; a copy restored without ACLs (``pg_restore
    --no-acl``, the scratch copy of ``--restore-from-backup``) needs it again, because the
    privileges on catalog views such as ``pg_hba_file_rules`` are kept per database."""
    role = await conn.fetchval("SELECT format('%I', $1::text)", user)
    for grant in MONITOR_GRANTS:
        await conn.execute(grant.format(role=role))


async def ensure_statement_stats(conn: asyncpg.Connection) -> bool:
    """``CREATE EXTENSION pg_stat_statements`` where ``conn`` is (a superuser's, in the
    maintenance database ``postgres``: its view shows every database's statements, and the
    application's schema stays exactly what its migrations build). True when the server
    preloads the library and the extension is there."""
    if "pg_stat_statements" not in (await conn.fetchval("SELECT current_setting('shared_preload_libraries')") or ""):
        return False
    await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return True


async def _login_role(conn: asyncpg.Connection, user: str, password: str) -> None:
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", user)
    verb = "ALTER" if exists else "CREATE"
    # format() quotes identifier and literal server-side; nothing is spliced by hand.
    statement = await conn.fetchval(
        f"SELECT format('{verb} ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', $1::text, $2::text)",
        user,
        password,
    )
    await conn.execute(statement)


async def provision(cluster: LocalServer, *, dbname: str, user: str, password: str,
                    monitor: tuple[str, str] | None = None, owner: tuple[str, str] | None = None) -> None:
    """Create (or align) the roles and the database; idempotent.

    With ``owner``: the owner role owns the database and everything in it, and ``user`` (the
    application role) gets DML through grants and default privileges. A database from before
    the split (the application role owned it) is handed over: ``REASSIGN OWNED``. Without it,
    ``user`` owns the database (the single-role setup)."""
    owner_name = owner[0] if owner else user
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        # Which statements ran, for the deploy's expand/contract evidence (deploy/transitions.py).
        await ensure_statement_stats(conn)
        await _login_role(conn, user, password)
        if owner is not None:
            await _login_role(conn, owner[0], owner[1])
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", dbname):
            statement = await conn.fetchval("SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $2::text)", dbname, owner_name)
            await conn.execute(statement)
    finally:
        await conn.close()
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs(dbname))  # type: ignore[arg-type]
    try:
        if owner is not None:
            quoted = await conn.fetchrow("SELECT format('%I', $1::text) AS app, format('%I', $2::text) AS owner, "
                                         "format('%I', $3::text) AS db", user, owner[0], dbname)
            assert quoted is not None
            owns = await conn.fetchval(
                "SELECT (SELECT count(*) FROM pg_class c WHERE c.relowner = r.oid) + "
                "(SELECT count(*) FROM pg_proc p WHERE p.proowner = r.oid) + "
                "(SELECT count(*) FROM pg_database d WHERE d.datdba = r.oid AND d.datname = current_database()) "
                "FROM pg_roles r WHERE r.rolname = $1", user)
            if owns:
                log.info("handing %d object(s) the application role %s owns over to %s", owns, user, owner[0])
                await conn.execute(f"ALTER DATABASE {quoted['db']} OWNER TO {quoted['owner']}")
                await conn.execute(f"REASSIGN OWNED BY {quoted['app']} TO {quoted['owner']}")
            for grant in APP_GRANTS:
                await conn.execute(grant.format(app=quoted["app"], owner=quoted["owner"], db=quoted["db"]))
        if monitor is not None:
            await provision_monitor(conn, user=monitor[0], password=monitor[1])
    finally:
        await conn.close()


def patroni_leader(rest_urls: list[str], *, unreachable_hint: str | None = None) -> tuple[str, int]:
    """The running leader's host and port, as Patroni reports it (``topology.patroni``, or the
    local Patroni topology)."""
    from pytest_hokmdb.cluster.patroni import cluster_members

    members = cluster_members(rest_urls)
    if members is None:
        raise ConnectionFailed(f"no Patroni REST API answered ({', '.join(rest_urls)})",
                               hint=unreachable_hint or "check topology.patroni.rest_urls and that Patroni runs on the members")
    leader = next((m for m in members if m.role in ("leader", "standby_leader") and m.state == "running"), None)
    if leader is None:
        listed = ", ".join(f"{m.name} {m.role} {m.state}" for m in members) or "no members"
        raise ConnectionFailed(f"Patroni reports no running leader ({listed}): a failover may be in progress",
                               hint="wait for `patronictl list` to show a leader, then run again")
    return leader.host, leader.port


async def _require_provisioned(cluster: LocalServer, *, environment: str, dbname: str, user: str, location: Path,
                               where: str = "embedded cluster", setup: str = "cluster") -> None:
    """Name a missing role or database (read-only catalog look-up): the server itself only
    says "password authentication failed" for a role that does not exist."""
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        has_role = await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", user)
        has_db = await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", dbname)
    finally:
        await conn.close()
    missing = ([f"role {user!r}"] if not has_role else []) + ([f"database {dbname!r}"] if not has_db else [])
    if missing:
        raise ConnectionFailed(
            f"{' and '.join(missing)} {'do' if len(missing) > 1 else 'does'} not exist on the {where} of {environment} "
            f"({location})",
            hint=f"verification never creates them; set the environment up with `python database/deploy.py --environment "
            f"{environment} --setup` (or `hokmdb {setup} start --environment {environment}`)",
        )


async def resolve_target(loaded: LoadedConfig, *, start: bool = True, provision_embedded: bool = False) -> Target:
    """The target for ``loaded``; staging and production are read-only sessions.

    ``provision_embedded`` (setup commands only) creates or aligns the embedded cluster's
    application role and database; without it a missing role or database is reported by the
    connection with the setup command to run. With ``topology.local: "patroni"`` the same holds
    for the local Patroni cluster, whose leader is the target.
    """
    target = await _resolve_target(loaded, start=start, provision_embedded=provision_embedded)
    # The monitoring role can tell, when the server refuses this role's password, whether the
    # password expired (db/connect.py); an environment without one keeps the plain message.
    monitor = await resolve_monitor_target(loaded, target)
    return target if monitor is None else replace(target, witness=replace(monitor, witness=None))


async def _resolve_target(loaded: LoadedConfig, *, start: bool, provision_embedded: bool) -> Target:
    config = loaded.config
    db = config.database
    common = dict(
        environment=config.environment,
        dbname=db.name,
        user=db.user,
        read_only=config.is_protected,
        connect_timeout_s=db.connect_timeout_s,
        statement_timeout_ms=db.statement_timeout_ms,
        lock_timeout_ms=db.lock_timeout_ms,
        application_name=db.application_name,
    )
    if not config.uses_embedded:
        host, port = db.host or "127.0.0.1", db.port
        if config.topology is not None and config.topology.patroni is not None:
            host, port = patroni_leader(config.topology.patroni.rest_urls)
        return Target(
            host=host,
            port=port,
            password=db.password.get_secret_value() if db.password else None,
            address_origin=loaded.origin("database.host", "database.port"),
            password_origin=loaded.origin("database.password"),
            sslmode=db.sslmode,
            sslrootcert=loaded.resolve(db.sslrootcert) if db.sslrootcert else None,
            **common,  # type: ignore[arg-type]
        )
    local = local_patroni_for(loaded)
    if local is not None:
        return await _local_patroni_target(loaded, local, start=start, provision_roles=provision_embedded, common=common)
    cluster = embedded_cluster_for(loaded)
    if start:
        cluster.start()
    password = _app_password(cluster, db.user, db.password.get_secret_value() if db.password else None)
    if start and provision_embedded:
        await _provision_local(loaded, cluster, password)
    elif start:
        await _require_provisioned(cluster, environment=config.environment, dbname=db.name, user=db.user,
                                   location=cluster.data_dir)
    return Target(
        host=cluster.host,
        port=cluster.port,
        password=password,
        sslmode="disable",
        embedded=True,
        **common,  # type: ignore[arg-type]
    )


async def _provision_local(loaded: LoadedConfig, server: LocalServer, password: str) -> None:
    """The three roles and the database on a server hokmdb runs (setup commands only)."""
    db = loaded.config.database
    monitor_user = db.monitor_user or EMBEDDED_MONITOR_USER
    monitor_password = _app_password(server, monitor_user, db.monitor_password.get_secret_value() if db.monitor_password else None)
    owner_user = db.owner_user or EMBEDDED_OWNER_USER
    owner_password = _app_password(server, owner_user, db.owner_password.get_secret_value() if db.owner_password else None)
    await provision(server, dbname=db.name, user=db.user, password=password, monitor=(monitor_user, monitor_password),
                    owner=(owner_user, owner_password))


async def _local_patroni_target(loaded: LoadedConfig, local: LocalPatroniTopology, *, start: bool, provision_roles: bool,
                                common: dict[str, object]) -> Target:
    """The current leader of the environment's local Patroni cluster. Setup (``provision_roles``)
    starts its servers and provisions the roles on the leader; anything else never starts them
    (etcd and two nodes are the topology's to start), it says what to run."""
    config = loaded.config
    db = config.database
    start_hint = f"run `hokmdb topology start --environment {config.environment}`"
    if start and provision_roles:
        local.start_servers()
    elif not local.created():
        raise ConnectionFailed(f"the local Patroni topology of {config.environment} has not been set up ({local.base_dir})",
                               hint=start_hint)
    host, port = patroni_leader(local.rest_urls, unreachable_hint=f"the local Patroni topology is not running: {start_hint}")
    password = _app_password(local.patroni, db.user, db.password.get_secret_value() if db.password else None)
    if start and provision_roles:
        await _provision_local(loaded, local.patroni, password)
    elif start:
        await _require_provisioned(local.patroni, environment=config.environment, dbname=db.name, user=db.user,
                                   location=local.base_dir, where="local Patroni cluster", setup="topology")
    return Target(host=host, port=port, password=password, sslmode="disable", **common)  # type: ignore[arg-type]


async def resolve_owner_target(loaded: LoadedConfig, target: Target) -> Target:
    """The target migrations, seeding and deploys write through: the owner role
    (``database.owner_user``; on a server hokmdb runs, the ``hokm_owner`` its setup created),
    else the application role itself. Writable."""
    db = loaded.config.database
    user, password = db.owner_user, (db.owner_password.get_secret_value() if db.owner_password else None)
    if user is None and runs_local_server(loaded, target):
        user = EMBEDDED_OWNER_USER
        if password is None:
            password = _stored_password(password_store(loaded), user)
            if password is None:
                env = loaded.config.environment
                patroni = local_patroni_for(loaded) is not None
                raise ConnectionFailed(
                    f"the owner role {user} of the {'local Patroni' if patroni else 'embedded'} cluster of {env} has not "
                    "been created",
                    hint=f"run setup once: `python database/deploy.py --environment {env} --setup` "
                         f"(or `hokmdb {'topology' if patroni else 'cluster'} start --environment {env}`)",
                )
    if user is None:
        return target.writable()
    return replace(target, user=user, password=password, read_only=False)


def runs_ddl_as_app_role(loaded: LoadedConfig, target: Target) -> bool:
    """Whether migrations would run as the application role (no separate owner)."""
    owner = loaded.config.database.owner_user or (EMBEDDED_OWNER_USER if runs_local_server(loaded, target) else None)
    return owner is None or owner == loaded.config.database.user


async def resolve_monitor_target(loaded: LoadedConfig, target: Target) -> Target | None:
    """The monitoring connection's target (read-only, same server and database), or None
    when the environment has none. An embedded cluster's is the role its setup created."""
    db = loaded.config.database
    user, password = db.monitor_user, (db.monitor_password.get_secret_value() if db.monitor_password else None)
    if user is None and runs_local_server(loaded, target):
        user = EMBEDDED_MONITOR_USER
        if password is None:
            password = _stored_password(password_store(loaded), user)
            if password is None:
                return None
    if user is None:
        return None
    # Its witness, should the server refuse its password, is the role it watches.
    witness = replace(target, witness=None) if user != target.user else None
    return replace(target, user=user, password=password, read_only=True, application_name=f"{target.application_name}-monitor",
                   witness=witness)
