"""hokmdb: deploy and verify the Hokm game server's PostgreSQL database with pytest."""

import sys

__version__ = "0.1.0"


def version_line() -> str:
    """What ``hokmdb --version`` and the pytest header say: enough to file a bug report with."""
    return f"hokmdb {__version__} (pytest-hokmdb, Python {sys.version.split()[0]})"
