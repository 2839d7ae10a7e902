"""Pytest hooks that complete an Allure results directory (registered as its own
``pytest11`` entry point, so it works in any suite that uses ``--alluredir``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.fixtures.state import DATABASE_OVERRIDE_KEY, PORT_OVERRIDE_KEY, session_state
from pytest_hokmdb.report.allure_meta import git_commit, write_allure_metadata
from pytest_hokmdb.report.probe import probe_server


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    alluredir = getattr(config.option, "allure_report_dir", None)
    if not alluredir or hasattr(config, "workerinput"):
        return
    state = session_state(config)
    properties = {"environment": state.environment or "none", "code_commit": git_commit(Path(str(config.rootpath)))}
    if state.loaded is not None:
        # The same probe as the report header, so a --restore-from-backup run describes the
        # restored copy, not the configured database.
        facts = run_sync(probe_server(
            state.loaded,
            database=config.stash.get(DATABASE_OVERRIDE_KEY, None),
            port=config.stash.get(PORT_OVERRIDE_KEY, None),
        ))
        properties.update(
            server_version=facts.version or "unavailable",
            alembic_revision=facts.revision or "unknown",
            target=facts.target,
        )
    write_allure_metadata(Path(alluredir), properties)
