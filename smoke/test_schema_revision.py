"""Is the database at the revision the code expects?"""

from __future__ import annotations

import asyncpg
from alembic.config import Config

from pytest_hokmdb.migrate import current_revision, head_revision


async def test_database_is_at_alembic_head(hokmdb_conn: asyncpg.Connection, hokmdb_alembic_config: Config) -> None:
    expected = head_revision(hokmdb_alembic_config)
    current = await current_revision(hokmdb_conn)
    assert current == expected, (
        f"database is at revision {current or 'none (no alembic_version table)'}, the code expects {expected}: "
        "run database/deploy.py for this environment, or check that the right database was targeted"
    )
