"""Can the gate reach the database at all, and is it a server we support?"""

from __future__ import annotations

import time

import asyncpg

from pytest_hokmdb.db import Target, connect

MIN_SERVER_VERSION_NUM = 150000


async def test_connects_within_timeout(hokmdb_target: Target) -> None:
    started = time.monotonic()
    conn = await connect(hokmdb_target)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    elapsed = time.monotonic() - started
    assert elapsed < hokmdb_target.connect_timeout_s, (
        f"connecting to {hokmdb_target.dsn()} took {elapsed:.2f}s, over the {hokmdb_target.connect_timeout_s:g}s timeout"
    )


async def test_server_version_is_supported(hokmdb_conn: asyncpg.Connection) -> None:
    version_num = int(await hokmdb_conn.fetchval("SHOW server_version_num"))
    version = await hokmdb_conn.fetchval("SHOW server_version")
    assert version_num >= MIN_SERVER_VERSION_NUM, f"server runs PostgreSQL {version}; hokmdb needs 15 or newer"
