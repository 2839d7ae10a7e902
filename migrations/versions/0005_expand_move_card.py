"""Expand: add ``moves.card_suit`` and ``moves.card_rank`` beside ``moves.card``.

Why: as one text column ('10H', 'AS', or 'S' alone for a trump selection) a card could
hold anything that fits in three characters, and every trick-winner computation had to
parse it. As an enum suit plus a numeric rank (11=J, 12=Q, 13=K, 14=A; NULL for a trump
selection) the database rejects impossible cards and ranks compare as integers.

The change is made online in three revisions (README "Writing an online revision"):

* **0005 (this one), expand**: two nullable columns without a default. PostgreSQL adds them
  to the catalog only; no row is rewritten, and the ACCESS EXCLUSIVE lock lasts
  milliseconds (bounded by the deploy's lock_timeout).
* **0006, backfill**: a trigger keeps both forms in step for every write from then on,
  and the existing rows are filled in small committed batches.
* **0007, contract**: once the game server reads and writes the new columns, the
  constraints are validated without blocking writes, ``card_suit`` becomes NOT NULL
  without a scan, and ``card`` is dropped.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The type itself belongs to revision 0002; this revision only uses it.
card_suit = postgresql.ENUM("hearts", "diamonds", "clubs", "spades", name="card_suit", create_type=False)


def upgrade() -> None:
    op.add_column("moves", sa.Column("card_suit", card_suit, nullable=True))
    op.add_column("moves", sa.Column("card_rank", sa.SmallInteger, nullable=True))


def downgrade() -> None:
    # A backfill of 0006 killed before it was recorded leaves its triggers behind; it reads
    # these columns, so it goes first (IF EXISTS: usually it is already gone).
    op.execute("DROP TRIGGER IF EXISTS moves_sync_card_insert ON moves")
    op.execute("DROP TRIGGER IF EXISTS moves_sync_card_update ON moves")
    op.execute("DROP FUNCTION IF EXISTS moves_sync_card()")
    op.drop_column("moves", "card_rank")
    op.drop_column("moves", "card_suit")
