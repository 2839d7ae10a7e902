"""The shape of the history: one head, documented revisions, downgrades that do something.

These read the revision files only (no database), so they fail in milliseconds on the
commonest review mistakes: an unmerged branch, a missing docstring, ``downgrade(): pass``.
"""

from __future__ import annotations

import pytest

from pytest_hokmdb.migration.history import (
    History,
    MigrationFailure,
    Revision,
    docstring_problem,
    downgrade_problem,
    head_problem,
    irreversible_problems,
)


def test_history_has_one_head(migration_history: History) -> None:
    problem = head_problem(migration_history)
    if problem:
        raise MigrationFailure(problem)


def test_revision_has_a_docstring(revision: Revision) -> None:
    problem = docstring_problem(revision)
    if problem:
        raise MigrationFailure(problem)


def test_revision_has_a_real_downgrade(revision: Revision, migration_history: History) -> None:
    if migration_history.is_irreversible(revision.id):
        pytest.skip(f"revision {revision.id} is listed as irreversible in [tool.hokmdb.migrations]")
    problem = downgrade_problem(revision)
    if problem:
        raise MigrationFailure(problem)


def test_irreversible_list_names_revisions(migration_history: History) -> None:
    problems = irreversible_problems(migration_history)
    if problems:
        raise MigrationFailure("\n".join(problems))
