#!/usr/bin/env python3
"""Take an encrypted, verified backup of an environment's database (cron-friendly).

    python database/backup.py --environment production [--verify quick|full|none] [--destination local|s3]
    python database/backup.py --environment staging --verify-existing latest --verify full
"""

import sys

try:
    from pytest_hokmdb.cli.backup import main
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("error: hokmdb is not installed for this Python\n  hint: run `make install` and use .venv/bin/python")

if __name__ == "__main__":
    main()
