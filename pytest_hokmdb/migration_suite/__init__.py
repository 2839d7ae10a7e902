"""The migration verification suite, shipped in the package so any alembic project runs it.

``pytest --hokmdb-migrations`` in a project's own repository collects these test modules
(``plugin.py`` adds them to the run), reading the alembic project at pytest's rootdir (or
``--hokmdb-migrations-project PATH``) as configured by its ``[tool.hokmdb.migrations]``.
Nothing is copied into the project. A repository may also import the tests into a module
of its own (``from pytest_hokmdb.migration_suite.test_history import *``), as hokmdb's
``migration_tests/`` does for its own history.
"""
