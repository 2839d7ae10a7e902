"""Pytest hooks that complete an Allure results directory (registered as its own
``pytest11`` entry point, so it works in any suite that uses ``--alluredir``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.fixtures.state import session_state
from pytest_hokmdb.report.allure_meta import git_commit, write_allure_metadata


async def _server_facts(loaded) -> tuple[str, str, str]:  # type: ignore[no-untyped-def]
    """Server version, alembic revision and the redacted target; 'unavailable' when unreachable."""
    from pytest_hokmdb.db import connect, resolve_target
    from pytest_hokmdb.errors import HokmdbError
    from pytest_hokmdb.migrate import current_revision

    try:
        target = await resolve_target(loaded, start=False)
    except HokmdbError:
        return "unavailable", "unavailable", "unavailable"
    try:
        conn = await connect(target)
    except HokmdbError:
        return "unreachable", "unknown", target.dsn()
    try:
        version = await conn.fetchval("SHOW server_version")
        revision = await current_revision(conn) or "none"
    finally:
        await conn.close()
    return str(version), revision, target.dsn()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    alluredir = getattr(config.option, "allure_report_dir", None)
    if not alluredir or hasattr(config, "workerinput"):
        return
    state = session_state(config)
    properties = {"environment": state.environment or "none", "code_commit": git_commit(Path(str(config.rootpath)))}
    if state.loaded is not None:
        version, revision, target = run_sync(_server_facts(state.loaded))
        properties.update(server_version=version, alembic_revision=revision, target=target)
    write_allure_metadata(Path(alluredir), properties)
