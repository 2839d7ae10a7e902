"""The check groups, in the order operators read them. One list per group: the smoke
modules, the ``DatabaseSmokeTests`` API and the scripts all take their checks from here."""

from __future__ import annotations

from pytest_hokmdb.checks import connection, health, integrity, performance, pool, schema, security
from pytest_hokmdb.checks.base import CheckFunction

GROUPS: dict[str, list[CheckFunction]] = {
    "connection": connection.CHECKS,
    "schema": schema.CHECKS,
    "security": security.CHECKS,
    "performance": performance.CHECKS,
    "pool": pool.CHECKS,
    "health": health.CHECKS,
    "integrity": integrity.CHECKS,
}
