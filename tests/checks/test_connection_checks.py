"""Every connection check fails for its own reason against a real server: a refused port and
a slow handshake (connect_time), an unencrypted session where TLS is required (tls), a server
older than the configured minimum (server_version), a slow network (latency). The slow
handshake and the slow network are a real TCP proxy on 127.0.0.1 that delays every packet."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from types import SimpleNamespace

import asyncpg
from helpers import APP_PASSWORD, APP_USER, TlsCluster, assert_status

from pytest_hokmdb.checks import connection
from pytest_hokmdb.checks.base import CheckContext
from pytest_hokmdb.db import Target
from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase

ContextFactory = Callable[..., Awaitable[CheckContext]]


@contextlib.asynccontextmanager
async def delaying_proxy(port: int, delay_s: float) -> AsyncIterator[int]:
    """A TCP proxy to 127.0.0.1:``port`` that holds every chunk ``delay_s`` each way; yields its port."""
    tasks: set[asyncio.Task[None]] = set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                await asyncio.sleep(delay_s)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", port)
        for coro in (pump(client_reader, server_writer), pump(server_reader, client_writer)):
            task = asyncio.ensure_future(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _through(ctx: CheckContext, port: int) -> CheckContext:
    """The same context, its target and session going through ``port``."""
    target = replace(ctx.target, port=port)
    return replace(ctx, target=target, conn=await asyncpg.connect(**target.asyncpg_kwargs()))


# -- connection.connect_time ----------------------------------------------------------------------


async def test_connect_time_passes_on_a_local_server(hokmdb_fresh_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    result = await connection.connect_time(await check_context_factory(hokmdb_fresh_db))
    assert_status(result, "passed")
    assert result.message.startswith("connected to postgresql://postgres:***@127.0.0.1:")


async def test_connect_time_fails_on_a_refused_port_naming_the_target(hokmdb_fresh_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(hokmdb_fresh_db)
    ctx.target = replace(ctx.target, port=1)
    result = await connection.connect_time(ctx)
    assert_status(result, "failed")
    assert "cannot connect to postgresql://postgres:***@127.0.0.1:1/" in result.message
    assert "connection refused (is the server running on that host and port?)" in result.message


async def test_connect_time_fails_on_a_slow_handshake(hokmdb_fresh_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(hokmdb_fresh_db, smoke={"max_connect_s": 0.2})
    async with delaying_proxy(hokmdb_fresh_db.cluster.port, 0.1) as port:
        ctx.target = replace(ctx.target, port=port)
        result = await connection.connect_time(ctx)
    assert_status(result, "failed")
    assert f"connecting to postgresql://postgres:***@127.0.0.1:{port}/" in result.message
    assert "over the 0.2s limit (smoke.max_connect_s)" in result.message
    assert result.measured > 0.2


# -- connection.tls -----------------------------------------------------------------------------


async def test_tls_fails_where_required_on_an_unencrypted_session(hokmdb_fresh_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(hokmdb_fresh_db, environment="staging")
    result = await connection.tls_in_use(ctx)
    assert_status(result, "failed")
    assert "this staging session is not encrypted (pg_stat_ssl.ssl = false)" in result.message
    assert "set database.sslmode to verify-full" in result.message


async def test_tls_passes_on_a_verified_tls_session(tls_cluster: TlsCluster, check_context_factory: ContextFactory) -> None:
    target = Target(environment="staging", host="127.0.0.1", port=tls_cluster.port, dbname=tls_cluster.dbname, user=APP_USER,
                    password=APP_PASSWORD, sslmode="verify-full", sslrootcert=tls_cluster.ca_file)
    ctx = await check_context_factory(SimpleNamespace(target=target), environment="staging")
    result = await connection.tls_in_use(ctx)
    assert_status(result, "passed")
    assert result.message.startswith("session encrypted with TLSv1.3")


# -- connection.server_version ---------------------------------------------------------------------


async def test_server_version_fails_below_the_configured_minimum(hokmdb_fresh_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ok = await connection.server_version(await check_context_factory(hokmdb_fresh_db))
    assert_status(ok, "passed")
    result = await connection.server_version(await check_context_factory(hokmdb_fresh_db, smoke={"min_server_version_num": 990000}))
    assert_status(result, "failed")
    assert f"server runs PostgreSQL {ok.message.removeprefix('PostgreSQL ')}" in result.message
    assert "hokmdb needs >= 990000 (smoke.min_server_version_num)" in result.message


# -- connection.latency ------------------------------------------------------------------------------


async def test_latency_fails_on_a_slow_network(hokmdb_fresh_db: ThrowawayDatabase, check_context_factory: ContextFactory) -> None:
    ctx = await check_context_factory(hokmdb_fresh_db, smoke={"max_latency_ms": 20})
    assert_status(await connection.latency(ctx), "passed")
    async with delaying_proxy(hokmdb_fresh_db.cluster.port, 0.02) as port:
        slow = await _through(ctx, port)
        try:
            result = await connection.latency(slow)
        finally:
            await slow.conn.close()
    assert_status(result, "failed")
    assert "median round trip of SELECT 1 is" in result.message and "over the 20 ms limit (smoke.max_latency_ms)" in result.message
    assert result.measured >= 40



async def test_connection_hints_name_the_config_keys_and_variables_the_address_came_from(hokmdb_fresh_db: ThrowawayDatabase) -> None:
    """Staging reads DB_HOST_STAGING, not DB_HOST: an operator told to check DB_HOST checks the
    wrong variable. A server that does not speak TLS (this cluster) where staging requires it,
    and a port nobody listens on, each name the config file and its variables."""
    import pytest

    from pytest_hokmdb.config import load_config
    from pytest_hokmdb.db.connect import connect
    from pytest_hokmdb.db.resolve import resolve_target
    from pytest_hokmdb.errors import ConnectionFailed

    for port, expected in ((hokmdb_fresh_db.cluster.port, "; and database.sslmode (verify-full): the server may not speak TLS"),
                           (1, "is the server running on that host and port? They come from ")):
        loaded = load_config("staging", environ={"DB_HOST_STAGING": "127.0.0.1", "DB_PORT": str(port),
                                                 "DB_PASSWORD_STAGING": "staging-secret-1"})
        target = await resolve_target(loaded)
        with pytest.raises(ConnectionFailed) as caught:
            await connect(target)
        message = str(caught.value)
        assert expected in message, message
        assert f"database.host and database.port in {loaded.path} (from $DB_HOST_STAGING, $DB_PORT)" in message, message
        assert "staging-secret-1" not in message
