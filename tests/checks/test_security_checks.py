"""The security checks pass for a least-privileged application role on a sanely configured
server, and fail, naming the role, setting or line and the fix, when one thing is broken.

Each test gets its own database and its own pair of roles (unique names, as roles are
cluster-wide): a NOLOGIN owner that owns the database, as in production, and a LOGIN
application role with only USAGE and table privileges. Tests that change server-wide
settings of the worker's shared cluster restore them in ``finally``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from helpers import APP_PASSWORD, APP_USER, TlsCluster, assert_status, cluster_of_its_own, run_statements

from pytest_hokmdb.checks import security
from pytest_hokmdb.cluster.embedded import THROWAWAY_SETTINGS
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase


@dataclass(frozen=True)
class AppRole:
    db: ThrowawayDatabase
    name: str
    owner: str
    password: str


@pytest.fixture
async def app_role(hokmdb_fresh_db: ThrowawayDatabase) -> AsyncIterator[AppRole]:
    """A production-shaped pair of roles on a fresh database (see the module docstring)."""
    db = hokmdb_fresh_db
    suffix = uuid.uuid4().hex[:10]
    owner, app, password = f"hokm_owner_{suffix}", f"hokm_app_{suffix}", secrets.token_urlsafe(18)
    await run_statements(
        db,
        f"CREATE ROLE {owner} NOLOGIN",
        f"CREATE ROLE {app} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{password}'",
        f'ALTER DATABASE "{db.name}" OWNER TO {owner}',
        f'GRANT CONNECT ON DATABASE "{db.name}" TO {app}',
        f"GRANT USAGE ON SCHEMA public TO {app}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {app}",
    )
    try:
        yield AppRole(db, app, owner, password)
    finally:
        # Roles outlive databases: hand back what they own, drop their grants, then the roles.
        await run_statements(
            db,
            f"REASSIGN OWNED BY {owner}, {app} TO postgres",
            f"DROP OWNED BY {owner}, {app}",
            f"DROP ROLE {app}",
            f"DROP ROLE {owner}",
        )


async def _as_app(check_context_factory, role: AppRole, **kwargs):  # type: ignore[no-untyped-def]
    return await check_context_factory(role.db, user=role.name, password=role.password, **kwargs)


async def _wait_for_setting(db: ThrowawayDatabase, name: str, value: str) -> None:
    """pg_reload_conf() only signals the postmaster; wait until new sessions see the value."""
    for _ in range(200):
        conn = await asyncpg.connect(db.dsn)
        try:
            if await conn.fetchval("SELECT reset_val FROM pg_settings WHERE name = $1", name) == value:
                return
        finally:
            await conn.close()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} did not become {value!r} after pg_reload_conf()")


# -- role attributes ---------------------------------------------------------------------------


async def test_app_role_attributes_pass_for_a_least_privileged_role(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    ctx = await _as_app(check_context_factory, app_role)
    for check in (security.app_role_not_superuser, security.app_role_cannot_create_roles, security.app_role_cannot_create_databases):
        result = await check(ctx)
        assert result.status == "passed", result.message
        assert app_role.name in result.message


async def test_superuser_app_role_fails(hokmdb_fresh_db: ThrowawayDatabase, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await security.app_role_not_superuser(await check_context_factory(hokmdb_fresh_db))
    assert result.status == "failed"
    assert "application role postgres has SUPERUSER" in result.message
    assert "ALTER ROLE postgres NOSUPERUSER" in result.message


async def test_member_of_a_superuser_role_fails(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    admin = f"{app_role.owner}_su"
    await run_statements(app_role.db, f"CREATE ROLE {admin} NOLOGIN SUPERUSER", f"GRANT {admin} TO {app_role.name}")
    try:
        result = await security.app_role_not_superuser(await _as_app(check_context_factory, app_role))
    finally:
        await run_statements(app_role.db, f"DROP ROLE {admin}")
    assert result.status == "failed"
    assert f"application role {app_role.name} is a member of {admin}, which has SUPERUSER" in result.message
    assert f"REVOKE {admin} FROM {app_role.name}" in result.message


@pytest.mark.parametrize(
    ("attribute", "check"),
    [("CREATEROLE", security.app_role_cannot_create_roles), ("CREATEDB", security.app_role_cannot_create_databases)],
)
async def test_app_role_with_attribute_fails(app_role: AppRole, check_context_factory, attribute: str, check) -> None:  # type: ignore[no-untyped-def]
    await run_statements(app_role.db, f"ALTER ROLE {app_role.name} {attribute}")
    result = await check(await _as_app(check_context_factory, app_role))
    assert result.status == "failed"
    assert f"application role {app_role.name} has {attribute}" in result.message
    assert f"ALTER ROLE {app_role.name} NO{attribute}" in result.message


# -- schema ownership --------------------------------------------------------------------------


async def test_schema_owned_by_a_separate_owner_passes(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await security.app_role_not_schema_owner(await _as_app(check_context_factory, app_role))
    assert result.status == "passed", result.message
    assert f"owned by pg_database_owner (owner of database {app_role.db.name}: {app_role.owner})" in result.message


async def test_app_role_owning_the_database_owns_public(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(app_role.db, f'ALTER DATABASE "{app_role.db.name}" OWNER TO {app_role.name}')
    result = await security.app_role_not_schema_owner(await _as_app(check_context_factory, app_role))
    assert result.status == "failed"
    assert "schema public is owned by pg_database_owner, i.e. by the owner of database" in result.message
    assert f"application role {app_role.name} owns database {app_role.db.name}" in result.message
    assert f"ALTER DATABASE {app_role.db.name} OWNER TO <owner role>" in result.message


async def test_app_role_owning_the_schema_directly_fails(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(app_role.db, f"ALTER SCHEMA public OWNER TO {app_role.name}")
    result = await security.app_role_not_schema_owner(await _as_app(check_context_factory, app_role))
    assert result.status == "failed"
    assert f"application role {app_role.name} owns schema public" in result.message
    assert "ALTER SCHEMA public OWNER TO <owner role>" in result.message


async def test_app_role_member_of_the_database_owner_fails(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(app_role.db, f"GRANT {app_role.owner} TO {app_role.name}")
    result = await security.app_role_not_schema_owner(await _as_app(check_context_factory, app_role))
    assert result.status == "failed"
    assert f"application role {app_role.name} is a member of {app_role.owner}" in result.message
    assert f"REVOKE {app_role.owner} FROM {app_role.name}" in result.message


async def test_schema_ownership_allowed_by_setting_passes_and_says_so(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(app_role.db, f"ALTER SCHEMA public OWNER TO {app_role.name}")
    ctx = await _as_app(check_context_factory, app_role, smoke={"app_role_may_own_schema": True})
    result = await security.app_role_not_schema_owner(ctx)
    assert result.status == "passed"
    assert f"{app_role.name} owns schema public; allowed by smoke.app_role_may_own_schema" in result.message


# -- password_encryption -----------------------------------------------------------------------


async def test_password_encryption_scram_passes(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    ctx = await _as_app(check_context_factory, app_role)
    # A session may weaken its own value; the check reads what the server is configured with.
    await ctx.conn.execute("SET password_encryption = 'md5'")
    result = await security.password_encryption_scram(ctx)
    assert result.status == "passed", result.message


async def test_password_encryption_md5_on_the_server_fails(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    db = app_role.db
    await run_statements(db, "ALTER SYSTEM SET password_encryption = 'md5'", "SELECT pg_reload_conf()")
    try:
        await _wait_for_setting(db, "password_encryption", "md5")
        ctx = await _as_app(check_context_factory, app_role)
        await ctx.conn.execute("SET password_encryption = 'scram-sha-256'")
        result = await security.password_encryption_scram(ctx)
    finally:
        await run_statements(db, "ALTER SYSTEM RESET password_encryption", "SELECT pg_reload_conf()")
        await _wait_for_setting(db, "password_encryption", "scram-sha-256")
    assert result.status == "failed"
    assert "password_encryption is md5" in result.message
    assert "set password_encryption = 'scram-sha-256'" in result.message


# -- pg_hba.conf -------------------------------------------------------------------------------


async def _hba_file(db: ThrowawayDatabase) -> Path:
    conn = await asyncpg.connect(db.dsn)
    try:
        return Path(await conn.fetchval("SHOW hba_file"))
    finally:
        await conn.close()


async def test_no_remote_trust_passes_on_the_default_hba(hokmdb_fresh_db: ThrowawayDatabase, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await security.no_remote_trust_auth(await check_context_factory(hokmdb_fresh_db))
    assert result.status == "passed", result.message


async def test_remote_trust_rule_fails_and_local_ones_do_not(hokmdb_fresh_db: ThrowawayDatabase, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    hba = await _hba_file(hokmdb_fresh_db)
    original, stat = hba.read_text(), hba.stat()
    extra = [
        "host all all 127.0.0.1/32 trust",
        "host all all samehost trust",
        "host all all ::1/128 trust",
        "host all all 0.0.0.0/0 trust",
    ]
    try:
        # The view reads the file as it is now: no reload, so the running server is never affected.
        hba.write_text(original.rstrip("\n") + "\n" + "\n".join(extra) + "\n")
        os.chown(hba, stat.st_uid, stat.st_gid)
        result = await security.no_remote_trust_auth(await check_context_factory(hokmdb_fresh_db))
    finally:
        hba.write_text(original)
        os.chown(hba, stat.st_uid, stat.st_gid)
    line = len(original.rstrip("\n").splitlines()) + len(extra)
    assert result.status == "failed"
    assert result.measured == 1
    assert f"line {line}: host all all 0.0.0.0/0 trust" in result.message
    assert "127.0.0.1/32" not in result.message and "samehost" not in result.message and "::1" not in result.message
    assert "scram-sha-256" in result.message


async def test_hba_check_is_not_verified_and_fails_when_the_role_may_not_read_the_rules(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    """The normal case on production: the application role may not read pg_hba_file_rules. A
    blocker that could not look fails the gate, naming the monitoring connection as the fix."""
    result = await security.no_remote_trust_auth(await _as_app(check_context_factory, app_role))
    assert result.status == "failed" and result.verified is False
    assert result.message.startswith("not verified: cannot inspect pg_hba.conf")
    assert f"role {app_role.name} may not read pg_hba_file_rules" in result.message
    assert "configure the monitoring connection (database.monitor_user" in result.message
    assert "GRANT SELECT ON pg_catalog.pg_hba_file_rules TO <monitor role>" in result.message
    assert '"security.no_remote_trust_auth": {"reason": "..."}' in result.message


async def test_a_waiver_with_a_reason_accepts_the_unverified_blocker_and_says_so(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    reason = "managed server: pg_hba is the provider's, reviewed in ticket OPS-12"
    ctx = await _as_app(check_context_factory, app_role, smoke={"waivers": {"security.no_remote_trust_auth": {"reason": reason}}})
    result = await security.no_remote_trust_auth(ctx)
    assert result.status == "skipped" and result.verified is False
    assert result.waiver == {"reason": reason}
    assert result.message.startswith(f"waived (smoke.waivers, blocker): {reason}. Not verified: cannot inspect pg_hba.conf")
    expired = await _as_app(check_context_factory, app_role, smoke={
        "waivers": {"security.no_remote_trust_auth": {"reason": reason, "expires": "2020-01-31"}}})
    result = await security.no_remote_trust_auth(expired)
    assert result.status == "failed" and result.waiver is None
    assert "The waiver in smoke.waivers expired on 2020-01-31" in result.message


async def test_hba_check_runs_over_the_monitoring_connection(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    """With a monitoring role (pg_monitor + the documented grants), a trust rule is found although
    the application role itself may not read the rules."""
    from helpers import grant_monitor_role

    await grant_monitor_role(app_role.db, "hokm_monitor_t", "monitor-pw-Zx81")
    ctx = await _as_app(check_context_factory, app_role, monitor=("hokm_monitor_t", "monitor-pw-Zx81"))
    assert (await security.no_remote_trust_auth(ctx)).status == "passed"
    hba = await _hba_file(app_role.db)
    original, stat = hba.read_text(), hba.stat()
    try:
        hba.write_text(original.rstrip("\n") + "\nhost all all 0.0.0.0/0 trust\n")
        os.chown(hba, stat.st_uid, stat.st_gid)
        result = await security.no_remote_trust_auth(ctx)
    finally:
        hba.write_text(original)
        os.chown(hba, stat.st_uid, stat.st_gid)
    assert result.status == "failed" and result.verified
    assert "host all all 0.0.0.0/0 trust" in result.message


async def test_hba_check_runs_for_a_role_granted_the_rules(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(
        app_role.db,
        f"GRANT SELECT ON pg_catalog.pg_hba_file_rules TO {app_role.name}",
        f"GRANT EXECUTE ON FUNCTION pg_catalog.pg_hba_file_rules() TO {app_role.name}",
    )
    result = await security.no_remote_trust_auth(await _as_app(check_context_factory, app_role))
    assert result.status == "passed", result.message


# -- CREATE on public --------------------------------------------------------------------------


async def test_public_cannot_create_passes_by_default(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await security.public_cannot_create_in_schema(await _as_app(check_context_factory, app_role))
    assert result.status == "passed", result.message


async def test_public_create_granted_fails(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(app_role.db, "GRANT CREATE ON SCHEMA public TO PUBLIC")
    result = await security.public_cannot_create_in_schema(await _as_app(check_context_factory, app_role))
    assert result.status == "failed"
    assert "every role (PUBLIC) may create objects in schema public" in result.message
    assert "REVOKE CREATE ON SCHEMA public FROM PUBLIC" in result.message


# -- server ssl --------------------------------------------------------------------------------


async def test_ssl_not_required_passes(hokmdb_fresh_db: ThrowawayDatabase, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await security.server_ssl_enabled(await check_context_factory(hokmdb_fresh_db))
    assert result.status == "passed", result.message
    assert "TLS not required on testing" in result.message


async def test_ssl_off_where_required_fails(hokmdb_fresh_db: ThrowawayDatabase, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await security.server_ssl_enabled(await check_context_factory(hokmdb_fresh_db, environment="staging"))
    assert result.status == "failed"
    assert "ssl is off" in result.message and "TLS is required on staging" in result.message
    assert "ssl = on" in result.message


@dataclass(frozen=True)
class _TlsDb:
    """Just enough of a ThrowawayDatabase for check_context_factory: where to connect."""

    target: Target


async def test_ssl_on_where_required_passes(tls_cluster: TlsCluster, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    target = Target(
        environment="staging", host="127.0.0.1", port=tls_cluster.port, dbname=tls_cluster.dbname,
        user=APP_USER, password=APP_PASSWORD, sslmode="verify-full", sslrootcert=tls_cluster.ca_file,
    )
    result = await security.server_ssl_enabled(await check_context_factory(_TlsDb(target), environment="staging"))
    assert result.status == "passed", result.message
    assert "ssl = on" in result.message


# -- log_connections ---------------------------------------------------------------------------


async def test_log_connections_not_configured_is_skipped(hokmdb_fresh_db: ThrowawayDatabase, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await security.log_connections(await check_context_factory(hokmdb_fresh_db))
    assert result.status == "skipped"
    assert "not configured" in result.message


async def test_log_connections_as_configured_passes(hokmdb_fresh_db: ThrowawayDatabase, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await security.log_connections(await check_context_factory(hokmdb_fresh_db, smoke={"log_connections": False}))
    assert result.status == "passed", result.message


async def test_log_connections_mismatch_fails(hokmdb_fresh_db: ThrowawayDatabase, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await security.log_connections(await check_context_factory(hokmdb_fresh_db, smoke={"log_connections": True}))
    assert result.status == "failed"
    assert "log_connections is off" in result.message and "expected on (smoke.log_connections)" in result.message


# -- least privilege: owns nothing, no DDL -------------------------------------------------------


async def test_a_dml_only_app_role_owns_nothing_and_cannot_run_ddl(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    ctx = await _as_app(check_context_factory, app_role)
    owns = await security.app_role_owns_no_objects(ctx)
    assert owns.status == "passed", owns.message
    assert f"application role {app_role.name} owns no object" in owns.message
    ddl = await security.app_role_cannot_run_ddl(ctx)
    assert ddl.status == "passed", ddl.message
    assert f"application role {app_role.name} can only read and write rows" in ddl.message


async def test_an_app_role_that_owns_a_table_and_a_function_fails_naming_them(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    """What happens when the game's role ran the migration: it owns what it created."""
    await run_statements(
        app_role.db,
        f"ALTER TABLE players OWNER TO {app_role.name}",
        "CREATE FUNCTION public.score_bonus() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        f"ALTER FUNCTION public.score_bonus() OWNER TO {app_role.name}",
    )
    result = await security.app_role_owns_no_objects(await _as_app(check_context_factory, app_role))
    assert result.status == "failed", result.message
    assert f"application role {app_role.name} owns " in result.message
    assert "table public.players" in result.message and "function public.score_bonus()" in result.message
    assert f"REASSIGN OWNED BY {app_role.name} TO <owner role>" in result.message
    allowed = await security.app_role_owns_no_objects(
        await _as_app(check_context_factory, app_role, smoke={"app_role_may_own_schema": True}))
    assert allowed.status == "passed" and "allowed by smoke.app_role_may_own_schema" in allowed.message


async def test_create_on_the_schema_and_truncate_fail_the_ddl_check(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(
        app_role.db,
        f"GRANT CREATE ON SCHEMA public TO {app_role.name}",
        f"GRANT TRUNCATE ON moves TO {app_role.name}",
    )
    result = await security.app_role_cannot_run_ddl(await _as_app(check_context_factory, app_role))
    assert result.status == "failed", result.message
    assert "CREATE on schema public" in result.message and "TRUNCATE on table public.moves" in result.message
    assert f"REVOKE CREATE ON SCHEMA public FROM {app_role.name}, PUBLIC" in result.message
    on_purpose = await security.app_role_cannot_run_ddl(
        await _as_app(check_context_factory, app_role, smoke={"app_role_may_truncate": True}))
    assert on_purpose.status == "failed"
    assert "TRUNCATE" not in on_purpose.message.split(". Revoke")[0] and "CREATE on schema public" in on_purpose.message
    # The check's verdict is real: the role can create a table, which it then owns.
    conn = await asyncpg.connect(**Target(environment="testing", host=app_role.db.cluster.host, port=app_role.db.cluster.port,
                                          dbname=app_role.db.name, user=app_role.name, password=app_role.password,
                                          sslmode="disable").asyncpg_kwargs())
    try:
        await conn.execute("CREATE TABLE public.smuggled (id int)")
    finally:
        await conn.close()


# -- privilege paths out of the database -------------------------------------------------------


async def test_no_login_role_with_server_file_or_program_access_passes(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    ctx = await check_context_factory(app_role.db, user=app_role.name, password=app_role.password)
    assert_status(await security.no_server_file_or_program_access(ctx), "passed")


async def test_program_access_through_a_group_role_fails_naming_the_login(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    """Granted to a NOLOGIN group the app role belongs to: the login is named, with the
    predefined role it reaches."""
    group = f"ops_{uuid.uuid4().hex[:8]}"
    await run_statements(app_role.db, f"CREATE ROLE {group} NOLOGIN", f"GRANT pg_execute_server_program TO {group}",
                         f"GRANT {group} TO {app_role.name}")
    try:
        ctx = await check_context_factory(app_role.db, user=app_role.name, password=app_role.password)
        result = await security.no_server_file_or_program_access(ctx)
        assert_status(result, "failed")
        assert f"1 login role can reach the database host's files or run programs on it: {app_role.name} " \
            "(pg_execute_server_program)" in result.message
        assert group not in result.message  # the NOLOGIN group is not a login
        assert f"REVOKE pg_execute_server_program FROM {app_role.name}" in result.message
        assert "revoke that membership instead" in result.message
    finally:
        await run_statements(app_role.db, f"DROP ROLE {group}")


async def test_definer_function_with_a_fixed_search_path_passes(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(
        app_role.db,
        "CREATE FUNCTION player_count() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
        "SET search_path = pg_catalog, public, pg_temp AS 'SELECT count(*) FROM public.players'",
    )
    ctx = await check_context_factory(app_role.db, user=app_role.name, password=app_role.password)
    assert_status(await security.definer_functions_pin_search_path(ctx), "passed")


async def test_definer_function_without_a_search_path_fails_naming_it(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(
        app_role.db,
        "CREATE FUNCTION ban_player(player_id bigint) RETURNS void LANGUAGE sql SECURITY DEFINER "
        "AS 'UPDATE players SET display_name = display_name WHERE id = player_id'",
    )
    ctx = await check_context_factory(app_role.db, user=app_role.name, password=app_role.password)
    result = await security.definer_functions_pin_search_path(ctx)
    assert_status(result, "failed")
    assert "1 SECURITY DEFINER function without a fixed search_path: public.ban_player(player_id bigint) owned by" \
        in result.message
    assert "executable by PUBLIC" in result.message
    assert "ALTER FUNCTION public.ban_player(player_id bigint) SET search_path = pg_catalog, public, pg_temp" in result.message


# -- authentication of every login role ----------------------------------------------------------


async def test_passwords_that_never_or_later_expire_pass(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(app_role.db, f"ALTER ROLE {app_role.name} VALID UNTIL '2999-01-01'")
    ctx = await check_context_factory(app_role.db, user=app_role.name, password=app_role.password)
    assert_status(await security.login_passwords_not_expiring(ctx), "passed")


async def test_an_expiring_app_password_and_an_expired_login_fail(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    other = f"reporting_{uuid.uuid4().hex[:8]}"
    await run_statements(app_role.db, f"ALTER ROLE {app_role.name} VALID UNTIL '{_in_days(3)}'",
                         f"CREATE ROLE {other} LOGIN PASSWORD 'x-{uuid.uuid4().hex}' VALID UNTIL '2001-01-01'")
    try:
        ctx = await check_context_factory(app_role.db, user=app_role.name, password=app_role.password)
        result = await security.login_passwords_not_expiring(ctx)
        assert_status(result, "failed")
        assert "2 login roles whose password has expired or expires within 14 days (smoke.password_expiry_days)" \
            in result.message
        assert f"{other} expired 2001-01-01" in result.message
        assert f"{app_role.name} (this session) expires " in result.message
        assert f"ALTER ROLE {app_role.name} VALID UNTIL 'infinity'" in result.message
        narrow = await check_context_factory(app_role.db, user=app_role.name, password=app_role.password,
                                             smoke={"password_expiry_days": 1})
        within_a_day = await security.login_passwords_not_expiring(narrow)
        assert f"1 login role whose password has expired or expires within 1 day (smoke.password_expiry_days): {other}" \
            in within_a_day.message
        assert app_role.name not in within_a_day.message
    finally:
        await run_statements(app_role.db, f"DROP ROLE {other}")


def _in_days(days: int) -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S+00")


async def test_public_holds_nothing_on_the_tables_at_head(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    ctx = await check_context_factory(app_role.db, user=app_role.name, password=app_role.password)
    assert_status(await security.no_public_table_privileges(ctx), "passed")


async def test_grants_to_public_fail_naming_objects_and_privileges(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    sequence = await _a_sequence(app_role)
    await run_statements(app_role.db, "GRANT SELECT, UPDATE ON moves TO PUBLIC", f"GRANT USAGE ON SEQUENCE {sequence} TO PUBLIC")
    ctx = await check_context_factory(app_role.db, user=app_role.name, password=app_role.password)
    result = await security.no_public_table_privileges(ctx)
    assert_status(result, "failed")
    assert "every role of the cluster (PUBLIC) holds privileges on 2 objects in schema public" in result.message
    assert "moves (SELECT, UPDATE)" in result.message and f"{sequence} (USAGE)" in result.message
    assert "REVOKE ALL ON public.moves FROM PUBLIC" in result.message
    assert f"REVOKE ALL ON SEQUENCE public.{sequence} FROM PUBLIC" in result.message


async def test_an_extensions_own_public_views_pass_until_someone_grants_more(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    """pg_stat_statements ships its views readable by PUBLIC (each role sees its own
    statements): not the application's grant. A grant beyond what it shipped is."""
    await run_statements(app_role.db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    ctx = await check_context_factory(app_role.db, user=app_role.name, password=app_role.password)
    assert_status(await security.no_public_table_privileges(ctx), "passed")
    await run_statements(app_role.db, "GRANT UPDATE ON pg_stat_statements_info TO PUBLIC")
    ctx = await check_context_factory(app_role.db, user=app_role.name, password=app_role.password)
    result = await security.no_public_table_privileges(ctx)
    assert_status(result, "failed")
    assert "pg_stat_statements_info (SELECT, UPDATE)" in result.message, result.message
    assert "pg_stat_statements (" not in result.message


async def _a_sequence(app_role: AppRole) -> str:
    import asyncpg

    conn = await asyncpg.connect(app_role.db.dsn)
    try:
        return str(await conn.fetchval(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'S' ORDER BY 1 LIMIT 1"))
    finally:
        await conn.close()


async def test_only_declared_schemas_and_no_function_are_public_at_head(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    # What must not count: a trigger function (callable only as a trigger) and an extension's functions.
    await run_statements(app_role.db, "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
                         "CREATE EXTENSION IF NOT EXISTS pgcrypto")
    result = await security.no_public_function_or_schema_access(
        await check_context_factory(app_role.db, user=app_role.name, password=app_role.password))
    assert_status(result, "passed")
    assert "PUBLIC may use schemas public (smoke.public_schemas) and execute no undeclared function in them" in result.message


async def test_public_execute_and_schema_usage_beyond_the_baseline_fail(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    db = app_role.db
    await run_statements(
        db,
        "CREATE FUNCTION award_points(integer, integer) RETURNS integer LANGUAGE sql AS 'SELECT $1 + $2'",
        "CREATE SCHEMA reporting",
        "GRANT USAGE ON SCHEMA reporting TO PUBLIC",
        "CREATE PROCEDURE reporting.rebuild_totals() LANGUAGE sql AS 'SELECT 1'",
        "CREATE FUNCTION reporting.closed(integer) RETURNS integer LANGUAGE sql AS 'SELECT $1'",
        "REVOKE EXECUTE ON FUNCTION reporting.closed(integer) FROM PUBLIC",
    )
    ctx = await check_context_factory(db, user=app_role.name, password=app_role.password)
    result = await security.no_public_function_or_schema_access(ctx)
    assert_status(result, "failed")
    assert "PUBLIC may use schema(s) reporting (USAGE), beyond smoke.public_schemas" in result.message
    assert ("every role of the cluster may execute 2 function(s): public.award_points(integer, integer), "
            "reporting.rebuild_totals()") in result.message
    assert "reporting.closed" not in result.message  # revoked from PUBLIC
    assert "REVOKE USAGE ON SCHEMA reporting FROM PUBLIC" in result.message
    assert "REVOKE EXECUTE ON FUNCTION public.award_points(integer, integer) FROM PUBLIC" in result.message
    assert "REVOKE EXECUTE ON PROCEDURE reporting.rebuild_totals() FROM PUBLIC" in result.message
    assert "ALTER DEFAULT PRIVILEGES FOR ROLE postgres REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC" in result.message
    declared = await security.no_public_function_or_schema_access(await check_context_factory(
        db, smoke={"public_schemas": ["public", "reporting"],
                   "public_functions": ["public.award_points", "reporting.rebuild_totals"]}))
    assert_status(declared, "passed")
    assert "2 declared in smoke.public_functions" in declared.message


async def test_an_md5_password_hash_fails_for_a_superuser_and_is_not_verified_otherwise(app_role: AppRole, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    legacy = f"legacy_reporter_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(app_role.db.dsn)
    try:
        await conn.execute("SET password_encryption = 'md5'")
        await conn.execute(f"CREATE ROLE {legacy} LOGIN PASSWORD '{secrets.token_urlsafe(12)}'")
    finally:
        await conn.close()
    try:
        result = await security.login_roles_scram_hashes(await check_context_factory(app_role.db))
        assert_status(result, "failed")
        assert f"1 login role(s) have an MD5 password hash: {legacy}" in result.message
        assert f"\\password {legacy} in psql" in result.message
        assert "change their pg_hba method from md5 to scram-sha-256" in result.message
        blind = await security.login_roles_scram_hashes(
            await check_context_factory(app_role.db, user=app_role.name, password=app_role.password))
        assert_status(blind, "skipped")  # severity normal: reported as not looked at, not gating
        assert f"only superusers may read pg_authid, and role {app_role.name} is not one" in blind.message
    finally:
        await run_statements(app_role.db, f"DROP ROLE {legacy}")
    assert_status(await security.login_roles_scram_hashes(await check_context_factory(app_role.db)), "passed")


@pytest.fixture(scope="module")
def own_cluster_db() -> Iterator[ThrowawayDatabase]:
    """A cluster of its own: which login roles exist is cluster-wide, and other tests create some."""
    with cluster_of_its_own("roles", "roles", dict(THROWAWAY_SETTINGS)) as db:
        yield db


async def test_only_declared_administrators_hold_administrative_attributes(own_cluster_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    db = own_cluster_db
    healthy = await security.privileged_login_roles(await check_context_factory(db))
    assert_status(healthy, "passed")
    assert "login roles with administrative attributes: postgres, all declared" in healthy.message
    await run_statements(db, "CREATE ROLE reporting_login LOGIN CREATEROLE BYPASSRLS",
                         "CREATE ROLE standby_login LOGIN REPLICATION", "CREATE ROLE admins NOLOGIN SUPERUSER")
    try:
        result = await security.privileged_login_roles(await check_context_factory(db))
        assert_status(result, "failed")
        assert ("1 login role(s) not declared as administrators hold administrative attributes: "
                "reporting_login (CREATEROLE, BYPASSRLS)") in result.message
        assert "ALTER ROLE reporting_login NOCREATEROLE NOBYPASSRLS" in result.message
        assert "standby_login" not in result.message and "admins" not in result.message  # REPLICATION only; NOLOGIN
        declared = await security.privileged_login_roles(
            await check_context_factory(db, smoke={"privileged_login_roles": ["postgres", "reporting_login"]}))
        assert_status(declared, "passed")
    finally:
        await run_statements(db, "DROP ROLE reporting_login", "DROP ROLE standby_login", "DROP ROLE admins")
