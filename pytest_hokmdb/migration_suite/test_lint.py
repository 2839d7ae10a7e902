"""Lock-safety lint: every revision's offline SQL, linted on its own (squawk + alembic-level checks).

One test per revision (ids are the revision ids), so a report says which revision is not
safe to deploy on a live database. Error findings fail the test with the rule, the SQL line
and what to do; warning findings pass but appear in pytest's warnings summary (as
``MigrationLintWarning``) and, like the waivers and the linted SQL, in the Allure report.
Which project is linted (``--migrations-project``, default the rootdir, see conftest.py) and
the policy per rule come from its ``[tool.hokmdb.migrations]`` (see
``pytest_hokmdb.migration.lint``). Needs no database unless a revision cannot be rendered offline
(then its SQL is recorded online, see ``pytest_hokmdb.migration.capture``).
"""

from __future__ import annotations

import warnings

import allure
import pytest

from pytest_hokmdb.migration.capture import online_sql
from pytest_hokmdb.migration.history import History, Revision
from pytest_hokmdb.migration.lint import MigrationLinter, MigrationLintWarning
from pytest_hokmdb.migration.runner import state_before
from pytest_hokmdb.migration.settings import MigrationSuiteSettings


@pytest.fixture(scope="module")
def migration_linter(migration_settings: MigrationSuiteSettings, migration_history: History) -> MigrationLinter:
    """One linter per module (per xdist worker), on the history's script directory (its
    revision files are imported once per process)."""
    return MigrationLinter(migration_settings, script=migration_history.script)


@allure.feature("Migration verification")
@allure.story("Lock-safety lint")
def test_revision_is_lock_safe(migration_linter: MigrationLinter, revision: Revision, migration_history: History,
                               request: pytest.FixtureRequest) -> None:
    """``revision`` is parametrized by the plugin over the history, with the revision ids as
    test ids. Offline SQL needs no database; only a revision that cannot be rendered offline
    gets a throwaway copy at its parent, upgraded while its SQL is recorded."""
    lint_revision = revision.id

    def recorded() -> str:
        database = request.getfixturevalue("migration_database")(state_before(revision))
        return online_sql(migration_history, database.url, revision.id)

    result = migration_linter.lint(lint_revision, online=recorded)
    allure.dynamic.title(f"revision {lint_revision} is lock-safe")
    allure.attach(
        result.report(), name=f"lint findings {lint_revision}", attachment_type=allure.attachment_type.TEXT
    )
    if result.sql:
        allure.attach(
            result.sql,
            name=f"{result.rendered} SQL {lint_revision}",
            attachment_type=allure.attachment_type.TEXT,
            extension="sql",
        )
    for finding in result.warnings:
        warnings.warn(MigrationLintWarning(finding.render()), stacklevel=1)
    if result.errors:
        pytest.fail(result.failure_message(), pytrace=False)
