"""Is the database at the expected revision, shaped like the models, with no broken DDL left behind?"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_hokmdb.checks import schema
from pytest_hokmdb.checks.base import CheckContext, CheckFunction, CheckResult, spec_of


@pytest.mark.parametrize("check", schema.CHECKS, ids=lambda c: spec_of(c).name)
async def test_schema(check: CheckFunction, hokmdb_check_context: CheckContext, hokmdb_check: Callable[[CheckResult], None]) -> None:
    hokmdb_check(await check(hokmdb_check_context))
