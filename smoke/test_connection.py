"""Can the gate reach the database, over TLS where required, on a supported server, quickly?"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_hokmdb.checks import connection
from pytest_hokmdb.checks.base import CheckContext, CheckFunction, CheckResult, spec_of


@pytest.mark.parametrize("check", connection.CHECKS, ids=lambda c: spec_of(c).name)
async def test_connection(check: CheckFunction, hokmdb_check_context: CheckContext, hokmdb_check: Callable[[CheckResult], None]) -> None:
    hokmdb_check(await check(hokmdb_check_context))
