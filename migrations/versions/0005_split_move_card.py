"""Data migration: split ``moves.card`` into ``card_suit`` and ``card_rank``.

Why: as one text column ('10H', 'AS', or 'S' alone for a trump selection) a card could
hold anything that fits in three characters, and every trick-winner computation had to
parse it. As an enum suit plus a numeric rank (11=J, 12=Q, 13=K, 14=A; NULL for a trump
selection) the database rejects impossible cards and ranks compare as integers.

The rows are converted in SQL, inside this revision's transaction. Anything that does
not parse (or whose rank does not fit its move_type) stops the upgrade with an error
naming some of the offending move ids, before any constraint is added or the old column
is dropped, so the transaction rolls back and nothing is lost. ``downgrade()`` rebuilds
``card`` from suit and rank exactly, so the pair of revisions round-trips the data.

Note for large databases: this rewrites every row of ``moves`` under an ACCESS EXCLUSIVE
lock, in one transaction; schedule it in a maintenance window. The game server release
that reads ``card_suit``/``card_rank`` must be live before this revision runs: the old
``card`` column is dropped here.

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

# Read by the lock-safety lint: this revision rewrites moves under ACCESS EXCLUSIVE by design.
hokmdb_lint_waivers = {
    "adding-not-nullable-field": "scans moves under the ACCESS EXCLUSIVE lock the data rewrite already holds; "
    "scheduled in a maintenance window (see docstring)",
    "constraint-missing-not-valid": "validated under the same ACCESS EXCLUSIVE lock as the rewrite, in the "
    "maintenance window; NOT VALID would only add a second pass",
    "ban-drop-column": "moves.card is replaced by card_suit/card_rank in this same revision; the game server "
    "release that reads the new columns must be live before this deploys (see the docstring)",
}

# The type itself belongs to revision 0002; this revision only uses it.
card_suit = postgresql.ENUM("hearts", "diamonds", "clubs", "spades", name="card_suit", create_type=False)

# Only rows that match this exact shape are converted; everything else is reported.
CARD_PATTERN = "^(10|[2-9JQKA])?[HDCS]$"

SPLIT_CARDS = f"""
UPDATE moves SET
    card_suit = (CASE right(card, 1)
        WHEN 'H' THEN 'hearts' WHEN 'D' THEN 'diamonds' WHEN 'C' THEN 'clubs' WHEN 'S' THEN 'spades'
    END)::card_suit,
    card_rank = CASE left(card, -1)
        WHEN '' THEN NULL
        WHEN 'J' THEN 11 WHEN 'Q' THEN 12 WHEN 'K' THEN 13 WHEN 'A' THEN 14
        ELSE left(card, -1)::smallint
    END
WHERE card ~ '{CARD_PATTERN}'
"""

# Runs in SQL (not Python) so that it also works when the revision is rendered offline.
REFUSE_UNPARSED = """
DO $$
DECLARE
    bad_count bigint;
    examples text;
BEGIN
    SELECT count(*) INTO bad_count
    FROM moves
    WHERE card_suit IS NULL OR (move_type = 'trump_selection') <> (card_rank IS NULL);
    IF bad_count > 0 THEN
        SELECT string_agg(format('%s (%s %L)', id, move_type, card), ', ' ORDER BY id) INTO examples
        FROM (
            SELECT id, move_type, card
            FROM moves
            WHERE card_suit IS NULL OR (move_type = 'trump_selection') <> (card_rank IS NULL)
            ORDER BY id
            LIMIT 5
        ) AS bad;
        -- The advice is part of the message, not a HINT: drivers and alembic show the message.
        RAISE EXCEPTION 'revision 0005 cannot split moves.card, % move(s) have a card that does not parse '
            'or does not fit their move_type, e.g. move ids %. A card_play needs rank 2-10/J/Q/K/A '
            'plus suit H/D/C/S (''10H''), a trump_selection the suit letter alone (''S''); '
            'fix or delete these moves and upgrade again', bad_count, examples;
    END IF;
END
$$
"""

JOIN_CARDS = """
UPDATE moves SET card =
    CASE card_rank
        WHEN 11 THEN 'J' WHEN 12 THEN 'Q' WHEN 13 THEN 'K' WHEN 14 THEN 'A'
        ELSE coalesce(card_rank::text, '')
    END
    || CASE card_suit
        WHEN 'hearts' THEN 'H' WHEN 'diamonds' THEN 'D' WHEN 'clubs' THEN 'C' WHEN 'spades' THEN 'S'
    END
"""


def upgrade() -> None:
    # Give up rather than queue behind a long transaction (and stall every query queued behind us).
    op.execute("SET LOCAL lock_timeout = '1s'")
    op.add_column("moves", sa.Column("card_suit", card_suit, nullable=True))
    op.add_column("moves", sa.Column("card_rank", sa.SmallInteger, nullable=True))
    op.execute(SPLIT_CARDS)
    op.execute(REFUSE_UNPARSED)
    op.alter_column("moves", "card_suit", existing_type=card_suit, nullable=False)
    op.create_check_constraint(op.f("ck_moves_rank_range"), "moves", "card_rank BETWEEN 2 AND 14")
    op.create_check_constraint(
        op.f("ck_moves_rank_matches_type"), "moves", "(move_type = 'trump_selection') = (card_rank IS NULL)"
    )
    op.drop_column("moves", "card")


def downgrade() -> None:
    # Give up rather than queue behind a long transaction (and stall every query queued behind us).
    op.execute("SET LOCAL lock_timeout = '1s'")
    op.add_column("moves", sa.Column("card", sa.String(3), nullable=True))
    op.execute(JOIN_CARDS)
    op.alter_column("moves", "card", existing_type=sa.String(3), nullable=False)
    op.drop_constraint(op.f("ck_moves_rank_matches_type"), "moves", type_="check")
    op.drop_constraint(op.f("ck_moves_rank_range"), "moves", type_="check")
    op.drop_column("moves", "card_rank")
    op.drop_column("moves", "card_suit")
