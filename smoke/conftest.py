"""The post-deploy suite: ``pytest smoke/ --environment NAME``.

Every check here is read-only (the plugin makes staging and production sessions
read-only) and carries the ``smoke`` marker.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.smoke)
