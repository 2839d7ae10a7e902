"""The check groups, in the order operators read them. One list per group: the smoke
modules, the ``DatabaseSmokeTests`` API and the scripts all take their checks from here."""

from __future__ import annotations

from pytest_hokmdb.checks import connection, health, integrity, performance, pool, schema, security
from pytest_hokmdb.checks.base import GATING_SEVERITIES, REGISTRY, CheckFunction
from pytest_hokmdb.config.model import SmokeSettings

GROUPS: dict[str, list[CheckFunction]] = {
    "connection": connection.CHECKS,
    "schema": schema.CHECKS,
    "security": security.CHECKS,
    "performance": performance.CHECKS,
    "pool": pool.CHECKS,
    "health": health.CHECKS,
    "integrity": integrity.CHECKS,
}


def waiver_problems(settings: SmokeSettings) -> list[str]:
    """Waivers that name no check, or a check whose skip never fails the gate anyway."""
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
