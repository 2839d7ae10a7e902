"""Helpers for the topology tests (plain code; the fixtures are in conftest.py): a real
topology of a scratch primary, a streaming standby cloned from it with pg_basebackup, and
PgBouncer in transaction mode in front of it (``cluster/topology.py``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

import asyncpg

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.cluster.topology import LocalTopology
from pytest_hokmdb.db.resolve import provision_monitor
from pytest_hokmdb.db.scratch import admin_execute, start_throwaway_cluster
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.db.topology import Topology, local_view

DBNAME = "game"
MONITOR = "topo_monitor"


@dataclass
class TopologyEnv:
    cluster: EmbeddedCluster
    topology: LocalTopology
    monitor_password: str

    @property
    def primary(self) -> Target:
        return Target(environment="testing", host="127.0.0.1", port=self.cluster.port, dbname=DBNAME, user="postgres",
                      password=self.cluster.superuser_password, sslmode="disable", embedded=True)

    @property
    def monitor(self) -> Target:
        return replace(self.primary, user=MONITOR, password=self.monitor_password, read_only=True)

    def view(self, **limits: float | int) -> Topology:
        return local_view(self.topology, self.monitor, DBNAME, **limits)

    async def on_standby(self, sql: str) -> object:
        conn = await asyncpg.connect(host="127.0.0.1", port=self.topology.standby_port, user="postgres",
                                     password=self.cluster.superuser_password, database="postgres")
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    async def on_pooler_admin(self, sql: str) -> None:
        """PAUSE/RESUME on PgBouncer's console (simple protocol: asyncpg's execute without arguments)."""
        conn = await asyncpg.connect(host="127.0.0.1", port=self.topology.pooler_port, user="postgres",
                                     password=self.cluster.superuser_password, database="pgbouncer", statement_cache_size=0)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


def build_topology(label: str) -> TopologyEnv:
    cluster = start_throwaway_cluster(label)
    password = f"pw-{uuid.uuid4().hex}"

    async def prepare() -> None:
        await admin_execute(cluster, f"CREATE DATABASE {DBNAME}")
        conn = await asyncpg.connect(**cluster.admin_connect_kwargs(DBNAME))  # type: ignore[arg-type]
        try:
            await provision_monitor(conn, user=MONITOR, password=password)
        finally:
            await conn.close()

    run_sync(prepare())
    topology = LocalTopology(cluster, pooler_roles=(MONITOR,))
    try:
        topology.start()
    except BaseException:
        topology.destroy()
        cluster.destroy()
        raise
    return TopologyEnv(cluster, topology, password)


def teardown(env: TopologyEnv) -> None:
    try:
        env.topology.destroy()
    finally:
        env.cluster.destroy()
