#!/usr/bin/env python3
"""Post-deploy smoke checks of a live database, run through pytest.

    python database/smoke_tests.py --environment production [--output result.json]

The same checks from Python, as the operators' runbooks write it (run from the checkout):

    from database.smoke_tests import DatabaseSmokeTests
    result = await DatabaseSmokeTests("production").test_health()
"""

import sys

try:
    from pytest_hokmdb.api import DatabaseSmokeTests  # noqa: F401 - the operators' runbooks import it from here
    from pytest_hokmdb.cli.smoke import main
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("error: hokmdb is not installed for this Python\n  hint: run `make install` and use .venv/bin/python")

if __name__ == "__main__":
    main()
