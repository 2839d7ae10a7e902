"""Fixtures for the project's own tests: a TLS-enabled cluster and config directories
that point the plugin's environments at throwaway databases."""

from __future__ import annotations

import itertools
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import trustme
from helpers import (
    APP_PASSWORD,
    APP_USER,
    PROJECT_ROOT,
    LiveTarget,
    TlsCluster,
    grant_monitor_role,
    write_config_dir,
)
from sqlalchemy.engine import URL

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.cluster.embedded import THROWAWAY_SETTINGS
from pytest_hokmdb.db import provision
from pytest_hokmdb.migrate import upgrade


@pytest.fixture(scope="session")
def tls_cluster() -> Iterator[TlsCluster]:
    """A throwaway cluster serving TLS with a certificate for 127.0.0.1 from a test CA,
    holding an application role (non-superuser) and a database at head."""
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    base = Path(tempfile.gettempdir()) / f"hokmdb-tls-{uuid.uuid4().hex[:10]}"
    cluster = EmbeddedCluster(base, settings=dict(THROWAWAY_SETTINGS))
    cluster.init()
    cert, key = cluster.data_dir / "server.crt", cluster.data_dir / "server.key"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    for path in (cert, key):
        path.chmod(0o600)
        if cluster.user.switches:
            os.chown(path, cluster.user.uid, cluster.user.gid)
    cluster.ssl_files = (cert, key)
    cluster.start()
    ca_file = base / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ca_file.chmod(0o644)
    dbname = "hokm_staging"
    run_sync(provision(cluster, dbname=dbname, user=APP_USER, password=APP_PASSWORD))
    # Migrations run as the application role, which owns the database, as on a real server.
    app_url = URL.create("postgresql+asyncpg", APP_USER, APP_PASSWORD, cluster.host, cluster.port, dbname)
    upgrade(app_url, "head")
    try:
        yield TlsCluster(cluster, ca_file, dbname)
    finally:
        cluster.destroy()


@pytest.fixture
def staging_env(tls_cluster: TlsCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config directory whose staging (and production) point at the TLS cluster."""
    config_dir = tmp_path / "config"
    for environment in ("staging", "production"):
        write_config_dir(config_dir, environment, database__sslrootcert=str(tls_cluster.ca_file), database__name=tls_cluster.dbname)
    monkeypatch.setenv("DB_HOST_STAGING", "127.0.0.1")
    monkeypatch.setenv("DB_HOST_PRODUCTION", "127.0.0.1")
    monkeypatch.setenv("DB_PORT", str(tls_cluster.port))
    monkeypatch.setenv("DB_USER", APP_USER)
    monkeypatch.setenv("DB_PASSWORD_STAGING", APP_PASSWORD)
    monkeypatch.setenv("DB_PASSWORD_PRODUCTION", APP_PASSWORD)
    monkeypatch.delenv("HOKMDB_ENVIRONMENT", raising=False)
    return config_dir


@pytest.fixture(autouse=True)
def _isolated_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A developer's own .env.database must not change what the tests see."""
    monkeypatch.setenv("HOKMDB_ENV_FILE", str(tmp_path / "no-such.env"))


# -- shared by the check tests ---------------------------------------------------------

SEEDED_TEMPLATE = "hokmdb_template_seeded"


@pytest.fixture(scope="session")
def seeded_template(hokmdb_cluster: EmbeddedCluster, hokmdb_template: str) -> str:
    """A template at head holding a small, rule-abiding seed (built once per worker)."""
    import asyncpg

    from hokm_profile.seed import seed
    from pytest_hokmdb.fixtures.throwaway import create_database

    db = create_database(hokmdb_cluster, SEEDED_TEMPLATE, hokmdb_template)

    async def fill() -> None:
        conn = await asyncpg.connect(db.dsn)
        try:
            await seed(conn, players=60, games=120, random_seed=7, clear=False)
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    run_sync(fill())
    run_sync(_admin_sql(hokmdb_cluster, f"ALTER DATABASE {SEEDED_TEMPLATE} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"))
    return SEEDED_TEMPLATE


async def _admin_sql(cluster: EmbeddedCluster, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(**cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def seeded_db(hokmdb_database_factory, seeded_template: str):  # type: ignore[no-untyped-def]
    """A fresh copy of the seeded template for one test (a ThrowawayDatabase)."""
    return hokmdb_database_factory(seeded_template)


@pytest.fixture
async def check_context_factory():  # type: ignore[no-untyped-def]
    """Build a CheckContext on a throwaway database, with smoke thresholds overridable:

        ctx = await check_context_factory(db, environment="staging", smoke={"max_latency_ms": 1})
        ctx = await check_context_factory(db, user="hokm_app", password="...")   # connect as another role

    Connections it opens are closed at teardown, on the session loop that opened them.
    """
    from dataclasses import replace
    from datetime import timedelta

    import asyncpg

    from pytest_hokmdb.checks.base import CheckContext
    from pytest_hokmdb.config import load_config
    from pytest_hokmdb.config.model import SmokeSettings

    opened: list[asyncpg.Connection] = []

    async def make(db, *, environment: str = "testing", smoke: dict | None = None, user: str | None = None,  # type: ignore[no-untyped-def]
                   password: str | None = None, read_only: bool = False, window=None, target_revision: str | None = None,
                   monitor: tuple[str, str] | None = None):
        loaded = load_config("testing", environ={})
        # Checks are tested against the product's defaults, not one environment's choices.
        settings = SmokeSettings.model_validate(smoke or {})
        config = loaded.config.model_copy(update={"smoke": settings, "environment": environment})
        target = replace(db.target, environment=environment, read_only=read_only)
        if user is not None:
            target = replace(target, user=user, password=password)
        conn = await asyncpg.connect(**target.asyncpg_kwargs())
        opened.append(conn)
        monitor_conn = None
        if monitor is not None:
            monitor_target = replace(db.target, user=monitor[0], password=monitor[1], read_only=True)
            monitor_conn = await asyncpg.connect(**monitor_target.asyncpg_kwargs())
            opened.append(monitor_conn)
        return CheckContext(
            monitor=monitor_conn,
            conn=conn,
            target=target,
            config=config,
            project_root=PROJECT_ROOT,
            target_revision=target_revision,
            window=window if window is not None else timedelta(days=settings.integrity_window_days),
        )

    yield make
    for conn in opened:
        if not conn.is_closed():
            await conn.close()


_role_counter = itertools.count(1)


async def grant_app_role(db, role: str, password: str) -> None:  # type: ignore[no-untyped-def]
    conn = await asyncpg.connect(db.dsn)
    try:
        await conn.execute(
            await conn.fetchval(
                "SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', $1::text, $2::text)",
                role,
                password,
            )
        )
        await conn.execute(f'GRANT CONNECT ON DATABASE "{db.name}" TO "{role}"')
        await conn.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
        await conn.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"')
        await conn.execute(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
        await conn.execute(f'GRANT pg_monitor TO "{role}"')
    finally:
        await conn.close()


@pytest.fixture
async def live_target(seeded_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LiveTarget]:  # type: ignore[no-untyped-def]
    """``--environment testing`` pointed at a healthy seeded database as an app role. The roles
    are dropped afterwards: login roles are cluster-wide, and one a test left SUPERUSER would
    fail ``security.privileged_login_roles`` in every later smoke run on this worker's cluster."""
    role = f"app_{os.getpid()}_{next(_role_counter)}"
    password = f"pw-{uuid.uuid4().hex}"
    await grant_app_role(seeded_db, role, password)
    monitor_role, monitor_password = f"mon_{os.getpid()}_{next(_role_counter)}", f"pw-{uuid.uuid4().hex}"
    await grant_monitor_role(seeded_db, monitor_role, monitor_password)
    config_dir = tmp_path / "config"
    write_config_dir(config_dir, "testing")
    env = {
        "DB_HOST": seeded_db.cluster.host,
        "DB_PORT": str(seeded_db.cluster.port),
        "DB_NAME": seeded_db.name,
        "DB_USER": role,
        "DB_PASSWORD_TEST": password,
        # The monitoring connection, as an operator configures it (README "Monitoring connection").
        "DB_MONITOR_USER": monitor_role,
        "DB_MONITOR_PASSWORD_TEST": monitor_password,
        "HOKMDB_ENV_FILE": str(tmp_path / "no-such.env"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield LiveTarget(seeded_db, role, password, config_dir, env)
    conn = await asyncpg.connect(seeded_db.dsn)
    try:
        for name in (role, monitor_role):
            await conn.execute(f'ALTER ROLE "{name}" NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS')
        await conn.execute(f'DROP OWNED BY "{role}", "{monitor_role}"')
        try:  # a grant the test made in another database keeps the role; it can no longer log in
            await conn.execute(f'DROP ROLE "{role}", "{monitor_role}"')
        except asyncpg.DependentObjectsStillExistError:
            pass
    finally:
        await conn.close()


@pytest.fixture
def embedded(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A development environment on an embedded cluster of the test's own (not created yet:
    the test's setup command creates it), with the product's strict smoke defaults; yields
    ``(config_dir, env, cluster)``. The cluster is destroyed afterwards."""
    from helpers import write_config_dir

    config_dir = tmp_path / "config"
    write_config_dir(config_dir, "development", embedded__data_dir=str(tmp_path / "cluster"), smoke={},
                     deploy__log_dir=str(tmp_path / "logs"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DB_") and k != "HOKMDB_ENVIRONMENT"}
    env["HOKMDB_ENV_FILE"] = str(tmp_path / "env.database")  # none yet: only what the test writes
    cluster = EmbeddedCluster(tmp_path / "cluster")
    yield config_dir, env, cluster
    cluster.destroy()
