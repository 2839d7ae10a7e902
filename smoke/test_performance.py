"""Are the game server's hot queries fast and indexed, and are reads served from the cache?"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_hokmdb.checks import performance
from pytest_hokmdb.checks.base import CheckContext, CheckFunction, CheckResult, spec_of


@pytest.mark.parametrize("check", performance.CHECKS, ids=lambda c: spec_of(c).name)
async def test_performance(check: CheckFunction, hokmdb_check_context: CheckContext, hokmdb_check: Callable[[CheckResult], None]) -> None:
    hokmdb_check(await check(hokmdb_check_context))
