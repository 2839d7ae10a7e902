"""Is the target the primary, do the standbys follow it, do slots hold back WAL, and do PgBouncer's pools serve?"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_hokmdb.checks import topology
from pytest_hokmdb.checks.base import CheckContext, CheckFunction, CheckResult, spec_of


@pytest.mark.parametrize("check", topology.CHECKS, ids=lambda c: spec_of(c).name)
async def test_topology(check: CheckFunction, hokmdb_check_context: CheckContext, hokmdb_check: Callable[[CheckResult], None]) -> None:
    hokmdb_check(await check(hokmdb_check_context))
