"""The check groups, in the order operators read them. One list per group: the smoke
modules, the ``DatabaseSmokeTests`` API and the scripts all take their checks from here.

The core groups know no application; the project's profile ([tool.hokmdb] profile) adds its
own checks, Hokm's data invariants filling the ``integrity`` group."""

from __future__ import annotations

from pathlib import Path

from pytest_hokmdb.checks import (
    connection,
    enforcement,
    health,
    performance,
    pool,
    schema,
    security,
    topology,
)
from pytest_hokmdb.checks.base import GATING_SEVERITIES, REGISTRY, CheckFunction
from pytest_hokmdb.config.model import SmokeSettings
from pytest_hokmdb.config.profile import project_profile

CORE_GROUPS: dict[str, list[CheckFunction]] = {
    "connection": connection.CHECKS,
    "schema": schema.CHECKS,
    "enforcement": enforcement.CHECKS,
    "security": security.CHECKS,
    "performance": performance.CHECKS,
    "pool": pool.CHECKS,
    "health": health.CHECKS,
    "topology": topology.CHECKS,
    "integrity": [],  # the application's data invariants: its profile's
}


def groups(project_root: Path) -> dict[str, list[CheckFunction]]:
    """The core groups plus the project's profile's checks (loaded, so registered, here)."""
    merged = {name: list(checks) for name, checks in CORE_GROUPS.items()}
    for name, checks in project_profile(project_root).load_checks().items():
        merged.setdefault(name, []).extend(checks)
    return merged


def waiver_problems(settings: SmokeSettings, project_root: Path) -> list[str]:
    """Waivers that name no check, or a check whose skip never fails the gate anyway."""
    groups(project_root)  # the profile's checks join REGISTRY when their module is imported
    problems = []
    for name in settings.waivers:
        spec = REGISTRY.get(name)
        if spec is None:
            known = ", ".join(sorted(n for n, s in REGISTRY.items() if s.severity in GATING_SEVERITIES))
            problems.append(f"smoke.waivers.{name}: no such check (waivable: {known})")
        elif spec.severity not in GATING_SEVERITIES:
            problems.append(f"smoke.waivers.{name}: a {spec.severity} check that cannot look is only skipped, "
                            "never failed; remove the waiver")
    return problems
