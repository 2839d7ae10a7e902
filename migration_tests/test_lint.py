"""hokmdb's own history through the suite's ``test_lint`` (``pytest_hokmdb/migration_suite/test_lint.py``).

Another project runs the same tests with ``pytest --hokmdb-migrations``; this repository
imports them so that ``pytest migration_tests/`` (and its per-file runs) keep working.
"""

from pytest_hokmdb.migration_suite.test_lint import *  # noqa: F403
