"""Helpers shared by the project's tests (plain functions and constants, no fixtures)."""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from pytest_hokmdb.cluster import EmbeddedCluster

PROJECT_ROOT = Path(__file__).resolve().parents[1]
APP_USER = "hokm_app"
APP_PASSWORD = "Xq7-app-secret-9Lm2"  # a known value, so tests can prove it never leaks


@dataclass(frozen=True)
class TlsCluster:
    cluster: EmbeddedCluster
    ca_file: Path
    dbname: str

    @property
    def port(self) -> int:
        return self.cluster.port


def write_config_dir(directory: Path, environment: str, **overrides: object) -> Path:
    """Copy the shipped config for ``environment`` into ``directory`` with overrides applied."""
    directory.mkdir(parents=True, exist_ok=True)
    data = json.loads((PROJECT_ROOT / "database" / "config" / f"{environment}.json").read_text())
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = directory / f"{environment}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


@dataclass(frozen=True)
class LiveTarget:
    """A seeded throwaway database reached the way production is: as a non-superuser
    application role with DML grants that owns nothing, through a config directory."""

    db: Any
    role: str
    password: str
    config_dir: Path
    env: dict[str, str]


async def run_statements(db: Any, *statements: str) -> None:
    """Run statements on a throwaway database as the cluster superuser, one at a time
    (some, like CREATE INDEX CONCURRENTLY, may not run inside a transaction)."""
    conn = await asyncpg.connect(db.dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def assert_status(result: Any, status: str) -> None:
    """A check's status, with its message when it is not the expected one."""
    assert result.status == status, f"expected {status}, got {result.status}: {result.message}"


async def fetch_one(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def server_age_s(dsn: str, at_least: float) -> float:
    """The server's age in seconds, once it is at least ``at_least`` (waits until then): for
    tests that need a server older than an age a check requires (no assertion on time)."""
    import asyncio

    conn = await asyncpg.connect(dsn)
    try:
        sql = "SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8"
        while (age := float(await conn.fetchval(sql))) < at_least:
            await asyncio.sleep(at_least - age)
        return age
    finally:
        await conn.close()


async def grant_monitor_role(db, role: str, password: str) -> None:  # type: ignore[no-untyped-def]
    """A monitoring role exactly as the setup commands create one (pg_monitor + documented grants)."""
    from pytest_hokmdb.db.resolve import provision_monitor

    conn = await asyncpg.connect(db.dsn)
    try:
        await provision_monitor(conn, user=role, password=password)
    finally:
        await conn.close()


async def admin_fetchval(cluster: Any, sql: str, dbname: str = "postgres") -> object:
    """One statement as a cluster's superuser; its first value."""
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs(dbname))
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


@contextmanager
def cluster_of_its_own(name: str, dbname: str, settings: dict[str, str]) -> Iterator[Any]:
    """A throwaway cluster for tests that change what is cluster-wide (server settings, roles,
    subscriptions) or need settings only a restart applies; one database in it. Destroyed after."""
    from pytest_hokmdb.fixtures.throwaway import create_database

    cluster = EmbeddedCluster(Path(tempfile.gettempdir()) / f"hokmdb-{name}-{uuid.uuid4().hex[:10]}", settings=settings)
    cluster.start()
    try:
        yield create_database(cluster, dbname)
    finally:
        cluster.destroy()


def process_environ(pid: int) -> dict[str, str]:
    """A process's environment as the kernel holds it (what a superuser's COPY FROM PROGRAM reads)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
