"""Lock-safety lint of each alembic revision (item 6 of the migration suite).

Each revision is rendered to offline SQL on its own (``alembic upgrade <parent>:<rev> --sql``)
and linted twice over:

* by **squawk** (the ``squawk-cli`` package ships the binary), which knows PostgreSQL's lock
  levels statement by statement (an index built without CONCURRENTLY, ``ADD COLUMN ... NOT
  NULL`` without a default, a constraint validated under a write lock, ...);
* by the checks below, which need to know that the SQL came from *one alembic revision*:

  ``concurrently-outside-autocommit-block``
      ``CREATE/DROP INDEX CONCURRENTLY``, ``REINDEX ... CONCURRENTLY`` and ``DETACH PARTITION
      ... CONCURRENTLY`` refuse to run in a transaction, and alembic runs every revision in one
      unless the statement sits in ``op.get_context().autocommit_block()``. The signal is the
      offline SQL itself: alembic writes ``COMMIT`` before and ``BEGIN`` after an autocommit
      block, so a CONCURRENTLY statement between a ``BEGIN`` and its ``COMMIT`` is the bug,
      however the revision built it (a helper, a string constant, ``op.execute``). An env.py
      that renders offline SQL without transaction control hides that, so then the revision's
      source is read instead: a ``postgresql_concurrently=True`` call in ``upgrade()`` must be
      lexically inside ``with ...autocommit_block():``. Supersedes squawk's
      ``ban-concurrent-index-creation-in-transaction``, which only knows CREATE INDEX.
  ``require-lock-timeout``
      A revision that locks a table that existed before it (ALTER, an index, a foreign key
      *to* it, UPDATE/DELETE, DROP, ...) must set ``lock_timeout`` first; otherwise it queues
      behind any long transaction and every query on that table queues behind it. Tables the
      revision creates itself are invisible to other sessions until it commits, so they need
      none, and alembic's own ``alembic_version`` is not the project's business. Replaces
      squawk's rule of the same name, which counts a new table's index too. Only checked when
      ``require_lock_timeout`` is true (off by default: hokmdb's deploy sets lock_timeout for
      every statement, so projects it deploys do not repeat it per revision).
  ``raises-timeout``
      A revision that sets ``lock_timeout`` or ``statement_timeout`` above the deploy's budget
      (``max_lock_timeout_ms`` / ``max_statement_timeout_ms``; a deploy checks against its own
      environment's values), or switches one off, makes every query queued behind its locks
      wait that long. A revision may lower them, never raise them without a waiver.
  ``unbatched-data-change``
      An ``UPDATE``/``DELETE`` of a table that existed before the revision, inside the
      revision: every row stays locked until it commits. The online way is a backfill in a
      revision of its own (``pytest_hokmdb.migration.online.backfill``), whose offline SQL
      carries the ``-- hokmdb:backfill`` marker and is not flagged.
  ``lock-timeout-not-reset``
      A session-level ``SET lock_timeout`` (or ``statement_timeout``) not reset by the end of
      the revision leaks into every later revision of the same ``alembic upgrade`` run, so
      those look protected in a full run and are not when deployed one at a time.
  ``waiver-without-reason``
      See waivers below.
  ``offline-sql-unavailable``
      The revision cannot be rendered offline (e.g. it queries the database unconditionally,
      or env.py has no offline mode) and, in the migration suite, recording its SQL while it
      upgrades a throwaway copy failed too (``migration/capture.py``): nothing of it can be
      linted. The deploy's pre-flight lints offline only.

Severity comes from the project's ``LintPolicy`` (``[tool.hokmdb.migrations.lint]``):
``error`` fails the revision's test, ``warning`` is reported and does not fail, ``ignored`` is
dropped. A revision may waive a rule for itself, with a reason, in its own file::

    hokmdb_lint_waivers = {
        "ban-drop-column": "contract phase: the release that stopped reading it is live (see docstring)",
    }

A waiver whose reason is missing or too short to explain anything does not waive and is
itself a finding. Squawk reads a ``.squawk.toml`` in the project root (pg_version, ...).
"""

from __future__ import annotations

from pytest_hokmdb.migration.lint.findings import (
    CONCURRENTLY_RULE,
    LOCK_TIMEOUT_RULE,
    OFFLINE_RULE,
    TIMEOUT_LEAK_RULE,
    WAIVER_RULE,
    WAIVERS_NAME,
    Finding,
    LintError,
    MigrationLintWarning,
    RevisionLint,
    Waived,
)
from pytest_hokmdb.migration.lint.linter import MigrationLinter
from pytest_hokmdb.migration.lint.sql import Statement, split_statements
from pytest_hokmdb.migration.lint.squawk import find_squawk

__all__ = [
    "CONCURRENTLY_RULE",
    "LOCK_TIMEOUT_RULE",
    "OFFLINE_RULE",
    "TIMEOUT_LEAK_RULE",
    "WAIVER_RULE",
    "WAIVERS_NAME",
    "Finding",
    "LintError",
    "MigrationLintWarning",
    "MigrationLinter",
    "RevisionLint",
    "Statement",
    "Waived",
    "find_squawk",
    "split_statements",
]
