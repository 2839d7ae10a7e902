"""hokmdb's own history through the suite's ``test_roundtrip`` (``pytest_hokmdb/migration_suite/test_roundtrip.py``).

Another project runs the same tests with ``pytest --hokmdb-migrations``; this repository
imports them so that ``pytest migration_tests/`` (and its per-file runs) keep working.
"""

from pytest_hokmdb.migration_suite.test_roundtrip import *  # noqa: F403
