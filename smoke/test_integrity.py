"""Do the application's data invariants hold (the profile's ``integrity`` checks; Hokm's come
from ../shared/hokm-domain.md)? Recent window by default; ``--full-scan`` for everything.
Each failure lists a few offending ids. Without a profile there are none to run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_hokmdb.checks.base import CheckContext, CheckFunction, CheckResult, spec_of
from pytest_hokmdb.checks.catalog import groups
from pytest_hokmdb.config import find_project_root

INVARIANTS = groups(find_project_root())["integrity"]


@pytest.mark.parametrize("check", INVARIANTS, ids=lambda c: spec_of(c).name)
async def test_integrity(check: CheckFunction, hokmdb_check_context: CheckContext, hokmdb_check: Callable[[CheckResult], None]) -> None:
    hokmdb_check(await check(hokmdb_check_context))
