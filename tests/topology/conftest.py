"""Fixtures of the topology tests: the worker's shared topology, a test's own, and check contexts on them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import timedelta

import asyncpg
import pytest
from helpers import PROJECT_ROOT
from topology_support import TopologyEnv, build_topology, teardown

from pytest_hokmdb.checks.base import CheckContext
from pytest_hokmdb.config import load_config
from pytest_hokmdb.config.model import SmokeSettings
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.db.topology import Topology


@pytest.fixture(scope="session")
def topology_env() -> Iterator[TopologyEnv]:
    """The worker's shared topology: tests must leave it healthy (resume what they pause)."""
    env = build_topology(f"topo-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}")
    yield env
    teardown(env)


@pytest.fixture
def own_topology() -> Iterator[TopologyEnv]:
    """A topology of the test's own, for tests that break it for good (promotion)."""
    env = build_topology("topo-own")
    yield env
    teardown(env)


@pytest.fixture
async def topology_context() -> AsyncIterator:  # type: ignore[type-arg]
    opened: list[asyncpg.Connection] = []

    async def make(env: TopologyEnv, *, view: Topology | None = None, smoke: dict | None = None,  # type: ignore[type-arg]
                   target: Target | None = None) -> CheckContext:
        loaded = load_config("testing", environ={})
        config = loaded.config.model_copy(update={"smoke": SmokeSettings.model_validate(smoke or {})})
        target = target or env.primary
        conn = await asyncpg.connect(**target.asyncpg_kwargs())  # type: ignore[arg-type]
        monitor = await asyncpg.connect(**replace(env.monitor, port=target.port).asyncpg_kwargs())  # type: ignore[arg-type]
        opened.extend([conn, monitor])
        return CheckContext(conn=conn, target=target, config=config, project_root=PROJECT_ROOT, monitor=monitor,
                            topology=view if view is not None else env.view(), window=timedelta(days=7))

    yield make
    for conn in opened:
        if not conn.is_closed():
            await conn.close()
