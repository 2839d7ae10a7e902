"""Is the server free of stuck sessions, lock waits, wraparound risk, lagging replicas, bloat and exhausted sequences?"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_hokmdb.checks import health
from pytest_hokmdb.checks.base import CheckContext, CheckFunction, CheckResult, spec_of


@pytest.mark.parametrize("check", health.CHECKS, ids=lambda c: spec_of(c).name)
async def test_health(check: CheckFunction, hokmdb_check_context: CheckContext, hokmdb_check: Callable[[CheckResult], None]) -> None:
    hokmdb_check(await check(hokmdb_check_context))
