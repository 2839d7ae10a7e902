"""Is the application role least-privileged, and is the server configured safely?"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_hokmdb.checks import security
from pytest_hokmdb.checks.base import CheckContext, CheckFunction, CheckResult, spec_of


@pytest.mark.parametrize("check", security.CHECKS, ids=lambda c: spec_of(c).name)
async def test_security(check: CheckFunction, hokmdb_check_context: CheckContext, hokmdb_check: Callable[[CheckResult], None]) -> None:
    hokmdb_check(await check(hokmdb_check_context))
