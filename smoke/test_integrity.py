"""Do the game's data invariants (../shared/hokm-domain.md) hold? Recent window by
default; ``--full-scan`` for everything. Each failure lists a few offending ids."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_hokmdb.checks import integrity
from pytest_hokmdb.checks.base import CheckContext, CheckFunction, CheckResult, spec_of


@pytest.mark.parametrize("check", integrity.CHECKS, ids=lambda c: spec_of(c).name)
async def test_integrity(check: CheckFunction, hokmdb_check_context: CheckContext, hokmdb_check: Callable[[CheckResult], None]) -> None:
    hokmdb_check(await check(hokmdb_check_context))
