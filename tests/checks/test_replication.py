"""health.replication against a real streaming standby: a primary and a physical standby made
with pg_basebackup -R (password from a passfile, never on a command line), both started by
the project. Healthy: it passes naming the standby; replay paused while the primary writes:
it fails naming the standby and the WAL not replayed; standby stopped while one is expected:
it fails saying so."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import admin_fetchval, assert_status

from pytest_hokmdb.checks import health
from pytest_hokmdb.checks.base import CheckContext
from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.cluster.embedded import THROWAWAY_SETTINGS
from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase

ContextFactory = Callable[..., Awaitable[CheckContext]]
STANDBY_NAME = "hokm_standby_1"
REPLICATOR = "hokm_replicator"


@dataclass
class Pair:
    primary: EmbeddedCluster
    standby: EmbeddedCluster

    @property
    def db(self) -> ThrowawayDatabase:
        return ThrowawayDatabase("postgres", self.primary)


def _make_standby(primary: EmbeddedCluster, base: Path, password: str) -> EmbeddedCluster:
    standby = EmbeddedCluster(base, settings={**THROWAWAY_SETTINGS, "cluster_name": STANDBY_NAME, "hot_standby": "on"})
    standby.base_dir.mkdir(parents=True, exist_ok=True)
    standby.base_dir.chmod(0o755 if standby.user.switches else 0o700)
    passfile = standby.base_dir / ".pgpass"
    passfile.write_text(f"127.0.0.1:{primary.port}:*:{REPLICATOR}:{password}\n")
    passfile.chmod(0o600)
    if standby.user.switches:
        os.chown(passfile, standby.user.uid, standby.user.gid)
    standby._own(standby.data_dir)  # noqa: SLF001 - the server account owns the data directory
    standby._run([  # noqa: SLF001 - pg_basebackup runs as the server account, like initdb
        str(standby.bin_dir / "pg_basebackup"), "-D", str(standby.data_dir), "-h", "127.0.0.1", "-p", str(primary.port),
        "-U", REPLICATOR, "-R", "--checkpoint=fast", "--wal-method=stream", "--no-sync",
        "-d", f"passfile={passfile} application_name={STANDBY_NAME}",
    ])
    # The standby has the primary's roles: the same superuser password.
    state = json.loads(primary.state_file.read_text())
    standby.state_file.write_text(json.dumps({"superuser_password": state["superuser_password"]}))
    standby.state_file.chmod(0o600)
    standby.start()
    return standby



async def _attached(primary: EmbeddedCluster, want: bool) -> None:
    for _ in range(400):
        count = await admin_fetchval(primary, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
        if bool(count) == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the standby did not {'attach' if want else 'detach'} within 20 s")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    from pytest_hokmdb.aio import run_sync

    base = tmp_path_factory.mktemp("replication")
    primary = EmbeddedCluster(base / "primary", settings=dict(THROWAWAY_SETTINGS))
    primary.start()
    password = "repl-Yq3-secret"
    run_sync(admin_fetchval(primary, f"CREATE ROLE {REPLICATOR} LOGIN REPLICATION PASSWORD '{password}'"))
    standby = None
    try:
        standby = _make_standby(primary, base / "standby", password)
        run_sync(_attached(primary, True))
        yield Pair(primary, standby)
    finally:
        if standby is not None:
            standby.destroy()
        primary.destroy()


async def test_a_streaming_standby_passes_with_its_name(pair: Pair, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(pair.db, read_only=True, smoke={"expected_replicas": 1})
    result = await health.replication(ctx)
    assert_status(result, "passed")
    assert f"1 replica(s) streaming ({STANDBY_NAME} at 127.0.0.1/32: streaming, async" in result.message


async def test_a_standby_that_stops_replaying_fails_naming_it_and_the_wal_behind(pair: Pair, check_context_factory: ContextFactory) -> None:
    await admin_fetchval(pair.standby, "SELECT pg_wal_replay_pause()")
    try:
        await admin_fetchval(pair.primary, "CREATE TABLE IF NOT EXISTS churn AS SELECT g, md5(g::text) AS pad FROM generate_series(1, 20000) g")
        await admin_fetchval(pair.primary, "INSERT INTO churn SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
        ctx = await check_context_factory(pair.db, read_only=True, smoke={"expected_replicas": 1, "max_replication_lag_bytes": 100_000})
        result = None
        for _ in range(100):  # until the standby's feedback shows the paused replay position
            result = await health.replication(ctx)
            if result.status == "failed":
                break
            await asyncio.sleep(0.05)
        assert result is not None
        assert_status(result, "failed")
        assert f"replica {STANDBY_NAME} at 127.0.0.1/32 has" in result.message
        assert "bytes of WAL not replayed, over 100000 (smoke.max_replication_lag_bytes)" in result.message
        assert "pg_is_wal_replay_paused()" in result.message
    finally:
        await admin_fetchval(pair.standby, "SELECT pg_wal_replay_resume()")


async def test_a_stopped_standby_fails_when_one_is_expected(pair: Pair, check_context_factory: ContextFactory) -> None:
    pair.standby.stop()
    try:
        await _attached(pair.primary, False)
        ctx = await check_context_factory(pair.db, read_only=True, smoke={"expected_replicas": 1})
        result = await health.replication(ctx)
        assert_status(result, "failed")
        assert "no replica is attached, 1 expected (smoke.expected_replicas)" in result.message
    finally:
        pair.standby.start()
        await _attached(pair.primary, True)


async def test_the_replication_password_is_in_no_process_listing(pair: Pair) -> None:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes()
        except OSError:
            continue
        assert b"repl-Yq3-secret" not in text, cmdline
