#!/usr/bin/env python3
"""Deploy the schema: move a database to the target alembic revision and prove it with pytest.

    python database/deploy.py --environment development --setup
    python database/deploy.py --environment staging --backup-before-deploy --maintenance-mode
    python database/deploy.py --environment production --approve
    python database/deploy.py --environment staging --dry-run
"""

import sys

try:
    from pytest_hokmdb.cli.deploy import main
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("error: hokmdb is not installed for this Python\n  hint: run `make install` and use .venv/bin/python")

if __name__ == "__main__":
    main()
