"""Autovacuum is a colleague, not a blocker: a real autovacuum worker holding the table a
revision needs, on a cluster of the test's own whose autovacuum wakes every second.

PostgreSQL cancels an ordinary autovacuum once a lock request has waited ``deadlock_timeout``
on it. With the shipped ``lock_timeout`` (1 s) equal to the default ``deadlock_timeout`` (1 s),
every attempt of the deploy gave up at the moment that help was due, and the 5k-game run of
issue 31 ran out of its retry budget behind ``autovacuum: VACUUM ANALYZE public.moves``.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import DeployEnv, build_deploy_template, make_deploy_env

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.cluster.embedded import THROWAWAY_SETTINGS

PROBE_0009 = (
    "0009", "Comment on performance_metrics: a SHARE UPDATE EXCLUSIVE lock, which an autovacuum of it holds too.",
    "op.execute(\"COMMENT ON TABLE performance_metrics IS 'probe 0009'\")",
    "op.execute('COMMENT ON TABLE performance_metrics IS NULL')",
)


@pytest.fixture
def autovacuum_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snapshot_cache: Path) -> Iterator[tuple[DeployEnv, EmbeddedCluster]]:
    cluster = EmbeddedCluster(Path(tempfile.gettempdir()) / f"hokmdb-autovac-{uuid.uuid4().hex[:10]}",
                              settings={**THROWAWAY_SETTINGS, "autovacuum_naptime": "1s"})
    cluster.start()
    try:
        template = build_deploy_template(cluster)
        # The shipped lock_timeout, equal to PostgreSQL's default deadlock_timeout (1 s).
        env = make_deploy_env(cluster, template, tmp_path / "env", tmp_path, monkeypatch, snapshot_cache,
                              database__lock_timeout_ms=1000, deploy__lock_retry_budget_s=6.0)
        yield env, cluster
    finally:
        cluster.destroy()


async def _slow_autovacuum_on_performance_metrics(env: DeployEnv) -> int:
    """Fill the table, leave a few dead rows, make its autovacuum crawl (100 ms per page) and
    wait until a worker is on it; return the worker's pid."""
    conn = await env.connect()
    try:
        await conn.execute("INSERT INTO performance_metrics (metric_name, value) "
                           "SELECT 'probe', g FROM generate_series(1, 60000) g")
        await conn.execute("ALTER TABLE performance_metrics SET (autovacuum_vacuum_threshold = 0, "
                           "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_cost_delay = 100, "
                           "autovacuum_vacuum_cost_limit = 1)")
        await conn.execute("DELETE FROM performance_metrics WHERE id IN (SELECT id FROM performance_metrics LIMIT 50)")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pid = await conn.fetchval("SELECT pid FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' "
                                      "AND query LIKE '%performance_metrics%'")
            if pid:
                return int(pid)
            await asyncio.sleep(0.2)
        raise AssertionError("no autovacuum worker started on performance_metrics within 60 s")
    finally:
        await conn.close()


async def _still_running(env: DeployEnv, pid: int) -> bool:
    conn = await env.connect()
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE "
                                        "'%performance_metrics%'", pid))
    finally:
        await conn.close()


def test_a_revision_waits_long_enough_for_postgresql_to_cancel_the_autovacuum_in_its_way(autovacuum_env, project_factory) -> None:  # type: ignore[no-untyped-def]
    env, _cluster = autovacuum_env
    env.use_project(project_factory([PROBE_0009]))
    pid = run_sync(_slow_autovacuum_on_performance_metrics(env))
    assert run_sync(_still_running(env, pid))  # it crawls: without being cancelled it would hold the table for minutes
    done = env.script("--target-revision", "0009")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert run_sync(env.revision()) == "0009"
    assert "autovacuum: VACUUM" in output and "so that PostgreSQL cancels it" in output, output
    assert "waits up to 1500 ms (deadlock_timeout + margin)" in output, output
    assert not run_sync(_still_running(env, pid))

