"""Can the game server fill its connection pool, recover a dropped connection, and still find spare slots?"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_hokmdb.checks import pool
from pytest_hokmdb.checks.base import CheckContext, CheckFunction, CheckResult, spec_of


@pytest.mark.parametrize("check", pool.CHECKS, ids=lambda c: spec_of(c).name)
async def test_pool(check: CheckFunction, hokmdb_check_context: CheckContext, hokmdb_check: Callable[[CheckResult], None]) -> None:
    hokmdb_check(await check(hokmdb_check_context))
