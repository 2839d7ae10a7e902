"""Index ``game_participants(player_id)``, built CONCURRENTLY.

Why: "the games of a player" (profiles, stats, the integrity checks) otherwise scans the
whole table; the unique (game_id, player_id) index leads with the wrong column. The
table is written on every join of every game, so the index is built without blocking
writes: ``CREATE INDEX CONCURRENTLY``, which cannot run inside a transaction, hence the
autocommit block.

Safe to retry: the deploy's ``lock_timeout`` makes it give up quickly instead of queueing
behind a long transaction (and holding up everyone queued behind it); a failed concurrent build
leaves an INVALID index of the same name, which is dropped before building again, and an
index that was built but not recorded in alembic_version is kept (IF NOT EXISTS).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Read by the lock-safety lint (pytest_hokmdb.migration.lint): rules that do not apply here, and why.
hokmdb_lint_waivers = {
    "require-statement-timeout": (
        "a CONCURRENTLY build blocks neither reads nor writes, so its duration is not the risk; a "
        "statement_timeout would abort a long build on a big table and leave an INVALID index behind. "
        "The waits that do block others are bounded by the deploy's lock_timeout."
    ),
}

INDEX = "ix_game_participants_player_id"
TABLE = "game_participants"

# A failed CREATE INDEX CONCURRENTLY leaves its index behind, marked invalid.
INVALID_INDEX = f"""
    SELECT 1
    FROM pg_index AS i
    JOIN pg_class AS c ON c.oid = i.indexrelid
    WHERE c.relnamespace = current_schema()::regnamespace
      AND c.relname = '{INDEX}'
      AND NOT i.indisvalid
"""

# For ``alembic upgrade --sql``: the script cannot branch on the catalog, and DROP INDEX
# CONCURRENTLY cannot run inside DO, so it stops and tells the operator what to run.
REFUSE_INVALID_INDEX = f"""
DO $$
BEGIN
    IF EXISTS ({INVALID_INDEX}) THEN
        RAISE EXCEPTION 'revision 0008, index {INDEX} exists but is INVALID (a failed concurrent '
            'build); run DROP INDEX CONCURRENTLY {INDEX}; then this script again';
    END IF;
END
$$
"""


def upgrade() -> None:
    with op.get_context().autocommit_block():
        if context.is_offline_mode():
            op.execute(REFUSE_INVALID_INDEX)
        elif op.get_bind().scalar(sa.text(f"SELECT EXISTS ({INVALID_INDEX})")):
            op.drop_index(op.f(INDEX), table_name=TABLE, postgresql_concurrently=True, if_exists=True)
        op.create_index(op.f(INDEX), TABLE, ["player_id"], postgresql_concurrently=True, if_not_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(op.f(INDEX), table_name=TABLE, postgresql_concurrently=True, if_exists=True)
