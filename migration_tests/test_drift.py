"""hokmdb's own history through the suite's ``test_drift`` (``pytest_hokmdb/migration_suite/test_drift.py``).

Another project runs the same tests with ``pytest --hokmdb-migrations``; this repository
imports them so that ``pytest migration_tests/`` (and its per-file runs) keep working.
"""

from pytest_hokmdb.migration_suite.test_drift import *  # noqa: F403
