"""Fixtures of the deploy tests: a database owned by a non-superuser deploy role (as on a real
server, where the application role owns its schema in development/testing), a config
directory pointing ``--environment testing`` at it, and copies of the project with extra
test-only revisions. Shared code lives in ``deploy_support``."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from deploy_support import (
    DEPLOY_PASSWORD,
    DEPLOY_ROLE,
    MONITOR_PASSWORD,
    MONITOR_ROLE,
    TEMPLATE,
    DeployEnv,
    admin,
    make_project,
    new_database,
)

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.fixtures.throwaway import drop_database


@pytest.fixture(scope="session")
def deploy_template(hokmdb_cluster: EmbeddedCluster) -> str:
    """A seeded database at head, owned (with everything in it) by the deploy role."""
    from sqlalchemy.engine import URL

    from hokm_profile.seed import seed
    from pytest_hokmdb.migrate import upgrade

    run_sync(admin(hokmdb_cluster, f"CREATE ROLE {DEPLOY_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{DEPLOY_PASSWORD}'"))
    run_sync(admin(hokmdb_cluster, f"GRANT pg_monitor TO {DEPLOY_ROLE}"))
    run_sync(admin(hokmdb_cluster, f"CREATE DATABASE {TEMPLATE} OWNER {DEPLOY_ROLE}"))
    # The monitoring role the gate uses, as an operator sets it up (grants copy with the template).
    run_sync(_monitor(hokmdb_cluster))
    run_sync(admin(hokmdb_cluster, f"ALTER SCHEMA public OWNER TO {DEPLOY_ROLE}", TEMPLATE))
    url = URL.create("postgresql+asyncpg", DEPLOY_ROLE, DEPLOY_PASSWORD, hokmdb_cluster.host, hokmdb_cluster.port, TEMPLATE)
    upgrade(url, "head")

    async def fill() -> None:
        conn = await asyncpg.connect(user=DEPLOY_ROLE, password=DEPLOY_PASSWORD, host=hokmdb_cluster.host, port=hokmdb_cluster.port, database=TEMPLATE)
        try:
            await seed(conn, players=40, games=60, random_seed=11, clear=False)
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    run_sync(fill())
    run_sync(admin(hokmdb_cluster, f"ALTER DATABASE {TEMPLATE} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"))
    return TEMPLATE


async def _monitor(cluster: EmbeddedCluster) -> None:
    from pytest_hokmdb.db.resolve import provision_monitor

    conn = await asyncpg.connect(**cluster.admin_connect_kwargs(TEMPLATE))  # type: ignore[arg-type]
    try:
        await provision_monitor(conn, user=MONITOR_ROLE, password=MONITOR_PASSWORD)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def snapshot_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Reference catalogs are built once per test run (shared by the xdist workers), never reused across runs."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = shared / "hokmdb-snapshot-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def deploy_env_factory(
    hokmdb_cluster: EmbeddedCluster, deploy_template: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snapshot_cache: Path
) -> Iterator[Callable[..., DeployEnv]]:
    made: list[str] = []
    counter = itertools.count(1)

    def make(*, empty: bool = False, **overrides: object) -> DeployEnv:
        db = new_database(hokmdb_cluster, None if empty else deploy_template)
        made.append(db.name)
        base = tmp_path / f"env{next(counter)}"
        env = {
            "DB_HOST": hokmdb_cluster.host,
            "DB_PORT": str(hokmdb_cluster.port),
            "DB_NAME": db.name,
            "DB_USER": DEPLOY_ROLE,
            "DB_PASSWORD_TEST": DEPLOY_PASSWORD,
            "DB_MONITOR_USER": MONITOR_ROLE,
            "DB_MONITOR_PASSWORD_TEST": MONITOR_PASSWORD,
            "HOKMDB_ENV_FILE": str(tmp_path / "no-such.env"),
            "HOKMDB_CACHE_DIR": str(snapshot_cache),
            "HOKMDB_DEPLOY_ACTOR": "tester",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("HOKMDB_PROJECT_ROOT", raising=False)
        monkeypatch.delenv("HOKMDB_DEPLOY_APPROVED", raising=False)
        deploy_env = DeployEnv(db, base / "config", env, base / "logs", monkeypatch)
        deploy_env.write_config(**overrides)
        return deploy_env

    yield make
    for name in made:
        drop_database(hokmdb_cluster, name)


@pytest.fixture
def deploy_env(deploy_env_factory: Callable[..., DeployEnv]) -> DeployEnv:
    return deploy_env_factory()


@pytest.fixture
def project_factory(tmp_path: Path) -> Callable[..., Path]:
    return lambda revisions, **kw: make_project(tmp_path, revisions, **kw)


