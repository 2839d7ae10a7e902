"""Root conftest: shared by tests/, smoke/ and migration_tests/.

The hokmdb plugin itself is loaded through its ``pytest11`` entry point; this file only
enables pytester, which the project's own tests use to run pytest inside pytest
(``pytest_plugins`` is honoured only in the root conftest).
"""

pytest_plugins = ("pytester",)
