"""Scratch PostgreSQL: a throwaway cluster and databases in it, for whatever must never
touch a live environment (backup verification, the deploy's reference catalogs, tests).

Runtime code (backups, deploys) and the test fixtures both use these; the fixtures live a
layer above, in ``pytest_hokmdb.fixtures.throwaway``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

import asyncpg
from sqlalchemy.engine import URL

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.cluster.embedded import SUPERUSER, THROWAWAY_SETTINGS, sweep_orphan_clusters
from pytest_hokmdb.cluster.scratch import new_scratch_dir
from pytest_hokmdb.db.target import Target


@dataclass(frozen=True)
class ThrowawayDatabase:
    """A database of its own for one test. Connects as the cluster's superuser."""

    name: str
    cluster: EmbeddedCluster = field(repr=False)

    @property
    def target(self) -> Target:
        return Target(
            environment="testing",
            host=self.cluster.host,
            port=self.cluster.port,
            dbname=self.name,
            user=SUPERUSER,
            password=self.cluster.superuser_password,
            sslmode="disable",
            embedded=True,
        )

    @property
    def dsn(self) -> str:
        """URL with the password, for asyncpg.connect in tests (never print it; ``target.dsn()`` is redacted)."""
        password = quote(self.cluster.superuser_password, safe="")
        return f"postgresql://{SUPERUSER}:{password}@{self.cluster.host}:{self.cluster.port}/{self.name}"

    @property
    def url(self) -> URL:
        return self.target.sqlalchemy_url()


async def admin_execute(cluster: EmbeddedCluster, sql: str) -> None:
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_database(cluster: EmbeddedCluster, name: str, template: str | None = None) -> ThrowawayDatabase:
    clause = f" TEMPLATE {quote_ident(template)}" if template else ""
    run_sync(admin_execute(cluster, f"CREATE DATABASE {quote_ident(name)}{clause}"))
    return ThrowawayDatabase(name, cluster)


def drop_database(cluster: EmbeddedCluster, name: str) -> None:
    run_sync(admin_execute(cluster, f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)"))


def start_throwaway_cluster(label: str = "test") -> EmbeddedCluster:
    """A cluster in a tracked scratch directory (see ``cluster.scratch``); first, the clusters
    of processes that died without cleaning up are stopped and removed."""
    sweep_orphan_clusters()
    cluster = EmbeddedCluster(new_scratch_dir(label), settings=dict(THROWAWAY_SETTINGS))
    cluster.start()
    return cluster
