"""``DatabaseSmokeTests``: the smoke checks as a Python API, for the operators' own tooling.

    results = await DatabaseSmokeTests("production").test_security_config()
    if not results["passed"]: ...

Backed by the very check functions the pytest suite runs (``checks.catalog``), so the
two front doors can never disagree.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pytest_hokmdb.checks.base import CheckResult
from pytest_hokmdb.config import LoadedConfig, load_config
from pytest_hokmdb.db import Target, resolve_target
from pytest_hokmdb.errors import ConfigError


class DatabaseSmokeTests:
    def __init__(
        self,
        environment: str,
        *,
        config_path: str | Path | None = None,
        target_revision: str | None = None,
        full_scan: bool = False,
    ) -> None:
        self.loaded: LoadedConfig = load_config(environment, config_path)
        from pytest_hokmdb.checks.catalog import waiver_problems

        problems = waiver_problems(self.loaded.config.smoke, self.loaded.project_root)
        if problems:
            raise ConfigError(f"{self.loaded.path}: " + "; ".join(problems))
        self.environment = environment
        self.target_revision = target_revision
        self.full_scan = full_scan
        self._target: Target | None = None

    async def target(self) -> Target:
        if self._target is None:
            self._target = await resolve_target(self.loaded)
        return self._target

    async def run_group(self, group: str) -> dict[str, Any]:
        from pytest_hokmdb.checks.catalog import groups
        from pytest_hokmdb.checks.direct import run_checks

        known = groups(self.loaded.project_root)
        if group not in known:
            raise ValueError(f"unknown check group {group!r}; choose from {', '.join(known)}")
        started = time.monotonic()
        results: list[CheckResult] = await run_checks(self.loaded, await self.target(), known[group],
                                                      target_revision=self.target_revision, full_scan=self.full_scan)
        return summarize(group, self.environment, results, time.monotonic() - started)

    async def test_basic_connection(self) -> dict[str, Any]:
        return await self.run_group("connection")

    async def test_schema(self) -> dict[str, Any]:
        return await self.run_group("schema")

    async def test_enforcement(self) -> dict[str, Any]:
        return await self.run_group("enforcement")

    async def test_security_config(self) -> dict[str, Any]:
        return await self.run_group("security")

    async def test_performance_baseline(self) -> dict[str, Any]:
        return await self.run_group("performance")

    async def test_connection_pool(self) -> dict[str, Any]:
        return await self.run_group("pool")

    async def test_health(self) -> dict[str, Any]:
        return await self.run_group("health")

    async def test_topology(self) -> dict[str, Any]:
        return await self.run_group("topology")

    async def test_data_integrity(self) -> dict[str, Any]:
        return await self.run_group("integrity")

    async def run_all(self) -> dict[str, Any]:
        from pytest_hokmdb.checks.catalog import groups as check_groups

        groups = {name: await self.run_group(name) for name in check_groups(self.loaded.project_root)}
        return {
            "environment": self.environment,
            "passed": all(g["passed"] for g in groups.values()),
            "groups": groups,
        }


def summarize(group: str, environment: str, results: list[CheckResult], seconds: float) -> dict[str, Any]:
    failed = [r for r in results if r.status == "failed"]
    statuses = {r.status for r in results}
    status = "failed" if failed else ("skipped" if statuses == {"skipped"} else "passed")
    return {
        "group": group,
        "environment": environment,
        "status": status,
        "passed": not failed,
        "duration_s": round(seconds, 3),
        "checks": [r.to_dict() for r in results],
        "failures": [r.message for r in failed],
        "waived": [{"check": r.check, **r.waiver} for r in results if r.waiver is not None],
    }
