"""The check wrapper: every way a check can go wrong ends as a result, never a traceback."""

from __future__ import annotations

from dataclasses import replace

from pytest_hokmdb.checks.base import CheckContext, CheckResult, check
from pytest_hokmdb.db import connect


@check("test.sleeps", title="Sleeps past the timeout", feature="Test", category="infrastructure")
async def _sleeps(ctx: CheckContext) -> CheckResult:
    await ctx.conn.execute("SELECT pg_sleep(5)")
    return CheckResult.passed("woke up")


@check("test.missing_view", title="Reads a view this server lacks", feature="Test", category="infrastructure")
async def _missing_view(ctx: CheckContext) -> CheckResult:
    await ctx.conn.fetch("SELECT * FROM pg_stat_no_such_view")
    return CheckResult.passed("read it")


@check("test.broken_sql", title="Runs broken SQL", feature="Test", category="infrastructure")
async def _broken_sql(ctx: CheckContext) -> CheckResult:
    await ctx.conn.fetch("SELEC 1")
    return CheckResult.passed("ran it")


@check("test.reconnects", title="Opens its own connection", feature="Test", category="infrastructure")
async def _reconnects(ctx: CheckContext) -> CheckResult:
    conn = await connect(ctx.target)
    await conn.close()
    return CheckResult.passed("connected")


async def test_statement_timeout_fails_the_check_with_the_limit(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    ctx = await check_context_factory(hokmdb_fresh_db, smoke={"check_statement_timeout_ms": 200})
    result = await _sleeps(ctx)
    assert result.status == "failed" and result.check == "test.sleeps"
    assert "did not finish within 200 ms (statement timeout)" in result.message
    assert "raise smoke.check_statement_timeout_ms (now 200) in the testing environment's config " \
        "(database/config/testing.json unless --db-config names another)" in result.message
    assert result.duration_s < 2
    assert await ctx.conn.fetchval("SHOW statement_timeout") != "200ms"  # reset afterwards


async def test_missing_catalog_view_is_a_skip_with_reason(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await _missing_view(await check_context_factory(hokmdb_fresh_db))
    assert result.status == "skipped"
    assert "this server has no pg_stat_no_such_view" in result.message


async def test_unexpected_database_error_fails_the_check(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await _broken_sql(await check_context_factory(hokmdb_fresh_db))
    assert result.status == "failed"
    assert result.message.startswith("Runs broken SQL: could not run: PostgresSyntaxError")


async def test_unreachable_target_fails_the_check_with_the_redacted_target(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    ctx = await check_context_factory(hokmdb_fresh_db)
    ctx.target = replace(ctx.target, port=1)
    result = await _reconnects(ctx)
    assert result.status == "failed"
    assert "cannot connect to postgresql://postgres:***@127.0.0.1:1/" in result.message
    assert "connection refused" in result.message
