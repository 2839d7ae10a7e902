#!/usr/bin/env python3
"""Roll a database back: to a backup (restore, emergency), to an earlier revision
(migration), or manage the backups (list-backups, cleanup).

    python database/rollback.py restore --environment staging --backup-file F [--dry-run]
    python database/rollback.py emergency --environment production "reason"
    python database/rollback.py migration --environment staging --steps 1
    python database/rollback.py list-backups [--environment E] [--json]
    python database/rollback.py cleanup [--environment E] [--dry-run]
"""

import sys

try:
    from pytest_hokmdb.cli.rollback import main
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("error: hokmdb is not installed for this Python\n  hint: run `make install` and use .venv/bin/python")

if __name__ == "__main__":
    main()
