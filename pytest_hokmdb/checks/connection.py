"""Connection checks: reachable in time, TLS where required, a supported server, latency."""

from __future__ import annotations

import statistics
import time

from pytest_hokmdb.checks.base import CheckContext, CheckFunction, CheckResult, check
from pytest_hokmdb.db import connect
from pytest_hokmdb.errors import ConnectionFailed

FEATURE = "Connection"


@check("connection.connect_time", title="Connects within the timeout", feature=FEATURE, category="infrastructure", severity="blocker")
async def connect_time(ctx: CheckContext) -> CheckResult:
    limit = ctx.settings.max_connect_s
    started = time.monotonic()
    try:
        conn = await connect(ctx.target)
    except ConnectionFailed as exc:
        return CheckResult.failed(exc.message + (f" ({exc.hint})" if exc.hint else ""), threshold=limit)
    elapsed = time.monotonic() - started
    await conn.close()
    if elapsed > limit:
        return CheckResult.failed(
            f"connecting to {ctx.target.dsn()} took {elapsed:.2f}s, over the {limit:g}s limit (smoke.max_connect_s)",
            measured=round(elapsed, 3),
            threshold=limit,
        )
    return CheckResult.passed(f"connected to {ctx.target.dsn()} in {elapsed * 1000:.0f} ms", measured=round(elapsed, 3), threshold=limit)


@check("connection.tls", title="TLS is in use where required", feature=FEATURE, category="security", severity="critical")
async def tls_in_use(ctx: CheckContext) -> CheckResult:
    row = await ctx.conn.fetchrow("SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    in_use = bool(row and row["ssl"])
    detail = f"{row['version']} {row['cipher']}" if in_use and row else "no TLS"
    if ctx.config.ssl_required and not in_use:
        return CheckResult.failed(
            f"this {ctx.config.environment} session is not encrypted (pg_stat_ssl.ssl = false); "
            "TLS is required here: set database.sslmode to verify-full and enable ssl on the server",
            measured=False,
            threshold=True,
        )
    if not ctx.config.ssl_required:
        return CheckResult.passed(f"TLS not required on {ctx.config.environment} (session: {detail})", measured=in_use)
    return CheckResult.passed(f"session encrypted with {detail}", measured=True, threshold=True)


@check("connection.server_version", title="Server version is supported", feature=FEATURE, category="infrastructure", severity="critical")
async def server_version(ctx: CheckContext) -> CheckResult:
    version_num = int(await ctx.conn.fetchval("SHOW server_version_num"))
    version = await ctx.conn.fetchval("SHOW server_version")
    minimum = ctx.settings.min_server_version_num
    if version_num < minimum:
        return CheckResult.failed(
            f"server runs PostgreSQL {version} (server_version_num {version_num}); hokmdb needs >= {minimum} "
            "(smoke.min_server_version_num): upgrade the server, or lower the setting if you accept the risk",
            measured=version_num,
            threshold=minimum,
        )
    return CheckResult.passed(f"PostgreSQL {version}", measured=version_num, threshold=minimum)


@check("connection.latency", title="Round-trip latency", feature=FEATURE, category="performance regression")
async def latency(ctx: CheckContext) -> CheckResult:
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        await ctx.conn.fetchval("SELECT 1")
        samples.append((time.perf_counter() - started) * 1000)
    median = round(statistics.median(samples), 3)
    limit = ctx.settings.max_latency_ms
    if median > limit:
        return CheckResult.failed(
            f"median round trip of SELECT 1 is {median:.1f} ms, over the {limit:g} ms limit (smoke.max_latency_ms)",
            measured=median,
            threshold=limit,
        )
    return CheckResult.passed(f"median round trip {median:.2f} ms", measured=median, threshold=limit)


CHECKS: list[CheckFunction] = [connect_time, tls_in_use, server_version, latency]
