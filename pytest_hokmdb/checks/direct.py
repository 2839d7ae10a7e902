"""Run checks without pytest: the context the smoke suite's fixtures build, built once for a
list of checks. The ``DatabaseSmokeTests`` API and the incident runbook call this, so a check
run from Python or from a runbook sees exactly what it sees under pytest."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from pytest_hokmdb.checks.base import CheckContext, CheckFunction, CheckResult
from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.db import Target, connect, resolve_monitor_target
from pytest_hokmdb.db.topology import resolve_topology
from pytest_hokmdb.errors import HokmdbError


async def run_checks(loaded: LoadedConfig, target: Target, checks: Iterable[CheckFunction], *,
                     target_revision: str | None = None, full_scan: bool = False) -> list[CheckResult]:
    """Each check's result, in order, over one application connection and (where the config
    names one) one monitoring connection; a monitoring connection that fails is passed on to
    the checks that need it, which then say they could not look."""
    conn = await connect(target)
    monitor, monitor_error = None, None
    try:
        monitor_target = await resolve_monitor_target(loaded, target)
        if monitor_target is not None:
            try:
                monitor = await connect(monitor_target)
            except HokmdbError as exc:
                monitor_error = f"the monitoring connection failed: {exc}"
        settings = loaded.config.smoke
        ctx = CheckContext(
            conn=conn,
            target=target,
            config=loaded.config,
            project_root=loaded.project_root,
            target_revision=target_revision,
            window=None if full_scan else timedelta(days=settings.integrity_window_days),
            monitor=monitor,
            monitor_error=monitor_error,
            topology=resolve_topology(loaded, target, monitor_target),
        )
        return [await check(ctx) for check in checks]
    finally:
        await conn.close()
        if monitor is not None:
            await monitor.close()
