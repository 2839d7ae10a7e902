"""Are the guarantees the schema appears to give switched on: triggers (and the foreign keys
they enforce), no rewrite rules, sessions not in replica mode, permanent tables?"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_hokmdb.checks import enforcement
from pytest_hokmdb.checks.base import CheckContext, CheckFunction, CheckResult, spec_of


@pytest.mark.parametrize("check", enforcement.CHECKS, ids=lambda c: spec_of(c).name)
async def test_enforcement(check: CheckFunction, hokmdb_check_context: CheckContext, hokmdb_check: Callable[[CheckResult], None]) -> None:
    hokmdb_check(await check(hokmdb_check_context))
