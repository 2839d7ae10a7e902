#!/usr/bin/env python3
"""Post-deploy smoke checks of a live database, run through pytest.

    python database/smoke_tests.py --environment production [--output result.json]

The same checks from Python, as the operators' runbooks write it (run from the checkout):

    from database.smoke_tests import DatabaseSmokeTests
    result = await DatabaseSmokeTests("production").test_health()
"""

import sys

try:
    from pytest_hokmdb.cli.smoke import main
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("error: hokmdb is not installed for this Python\n  hint: run `make install` and use .venv/bin/python")



def __getattr__(name: str) -> object:
    """``from database.smoke_tests import DatabaseSmokeTests``, as the operators' runbooks write
    it; imported on first use, so the command line does not pay for it."""
    if name == "DatabaseSmokeTests":
        from pytest_hokmdb.api import DatabaseSmokeTests

        return DatabaseSmokeTests
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
