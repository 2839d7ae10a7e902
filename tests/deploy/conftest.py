"""Fixtures of the deploy tests: a database owned by a non-superuser deploy role (as on a real
server, where the application role owns its schema in development/testing), a config
directory pointing ``--environment testing`` at it, and copies of the project with extra
test-only revisions. Shared code lives in ``deploy_support``."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from deploy_support import DeployEnv, build_deploy_template, make_deploy_env, make_project

from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.fixtures.throwaway import drop_database


@pytest.fixture(scope="session")
def deploy_template(hokmdb_cluster: EmbeddedCluster) -> str:
    """A seeded database at head, owned (with everything in it) by the deploy role."""
    return build_deploy_template(hokmdb_cluster)


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
        env = make_deploy_env(hokmdb_cluster, None if empty else deploy_template, tmp_path / f"env{next(counter)}",
                              tmp_path, monkeypatch, snapshot_cache, **overrides)
        made.append(env.db.name)
        return env

    yield make
    for name in made:
        drop_database(hokmdb_cluster, name)


@pytest.fixture
def deploy_env(deploy_env_factory: Callable[..., DeployEnv]) -> DeployEnv:
    return deploy_env_factory()


@pytest.fixture
def project_factory(tmp_path: Path) -> Callable[..., Path]:
    return lambda revisions, **kw: make_project(tmp_path, revisions, **kw)


