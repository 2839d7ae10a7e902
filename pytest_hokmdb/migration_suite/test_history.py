"""The shape of the history: one head, documented revisions, downgrades that do something.

These read the revision files only (no database), so they fail in milliseconds on the
commonest review mistakes: an unmerged branch, a missing docstring, ``downgrade(): pass``.

Each rule has an id and a severity (``[tool.hokmdb.migrations.rules]``, defaults in
``SUITE_RULES``): ``error`` fails the test, ``warning`` passes it with a
``MigrationLintWarning`` in pytest's warnings summary, ``ignored`` says nothing. A revision
waives a rule for itself, with a reason, in the same dict that waives lint rules
(``hokmdb_lint_waivers = {"revision-docstring": "why it does not apply here"}``); the test
is then skipped with that reason, so the waiver shows in every report.
"""

from __future__ import annotations

import warnings

import pytest

from pytest_hokmdb.migration.history import (
    History,
    MigrationFailure,
    Revision,
    docstring_problem,
    downgrade_problem,
    empty_history_problem,
    head_problem,
    irreversible_problems,
)
from pytest_hokmdb.migration.lint.findings import WAIVERS_NAME, MigrationLintWarning
from pytest_hokmdb.migration.lint.source import revision_waivers
from pytest_hokmdb.migration.runner import state_after, state_before, with_stepper


def _enforce(history: History, rule: str, problem: str | None, revision: Revision | None = None) -> None:
    """Apply the project's severity of ``rule`` (and ``revision``'s waiver) to ``problem``."""
    if not problem:
        return
    if revision is not None:
        reason = revision_waivers(revision.path).get(rule)
        if reason:
            pytest.skip(f"[{rule}] waived in {revision.path.name}: {reason}")
    severity = history.settings.rule_severity(rule)
    if severity == "ignored":
        return
    text = f"[{rule}] {problem}"
    if severity == "warning":
        warnings.warn(MigrationLintWarning(text), stacklevel=2)
        return
    how = f'[tool.hokmdb.migrations.rules] {rule} = "warning" (or "ignored")'
    if revision is not None:
        how += f", or waive it in {revision.path.name}: {WAIVERS_NAME} = {{{rule!r}: '<why>'}}"
    raise MigrationFailure(f"{text}\n(an error by the project's rules; to turn it down: {how})")


def test_history_has_one_head(migration_history: History) -> None:
    """Rules ``single-head`` and ``empty-history``."""
    if not migration_history.revisions:
        _enforce(migration_history, "empty-history", empty_history_problem(migration_history))
        return
    _enforce(migration_history, "single-head", head_problem(migration_history))


def test_revision_has_a_docstring(revision: Revision, migration_history: History) -> None:
    """Rule ``revision-docstring``."""
    _enforce(migration_history, "revision-docstring", docstring_problem(revision), revision)


def test_revision_has_a_real_downgrade(revision: Revision, migration_history: History,
                                       request: pytest.FixtureRequest) -> None:
    """Rule ``real-downgrade``. A ``pass`` downgrade is right when the upgrade leaves the
    schema as it found it (it only reads, or only checks data): asked of the database only
    then, so the rule costs nothing on the usual history."""
    exemption = migration_history.downgrade_exemption(revision.id)
    if exemption:
        pytest.skip(exemption)
    problem = downgrade_problem(revision)
    if problem and _changes_no_schema(request, migration_history, revision):
        return
    _enforce(migration_history, "real-downgrade", problem, revision)


def _changes_no_schema(request: pytest.FixtureRequest, history: History, revision: Revision) -> bool:
    templates = request.getfixturevalue("migration_templates")
    try:
        after = templates.snapshot(state_after(revision))
        before = templates.snapshot(state_before(revision))
        if before is None:  # a root revision: the catalog of an empty database
            empty = request.getfixturevalue("migration_database")(())
            before = with_stepper(history, empty.url, lambda stepper: stepper.snapshot())
    except MigrationFailure:
        return False  # the round trip reports why the revision cannot be applied
    return bool(before == after)


def test_irreversible_list_names_revisions(migration_history: History) -> None:
    problems = irreversible_problems(migration_history)
    if problems:
        raise MigrationFailure("\n".join(problems))
