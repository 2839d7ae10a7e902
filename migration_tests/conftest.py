"""The header the suite prints under ``--hokmdb-migrations``, for this repository's own
``pytest migration_tests/`` (the suite's tests imported into ``migration_tests``)."""

import pytest

from pytest_hokmdb.migration_suite.plugin import describe_project


def pytest_report_header(config: pytest.Config) -> str:
    return describe_project(config)
