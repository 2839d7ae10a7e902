"""Backfill: keep ``card`` and ``card_suit``/``card_rank`` in step, and fill the old rows.

Why: 0005 added the columns; this revision makes them hold the truth without ever locking
``moves`` for longer than a batch. First a trigger (``moves_sync_card_*``) fills whichever
form a write leaves out, so both the game server that writes ``card`` and the release
that writes suit and rank work while the deploy runs. Then the existing rows are
converted in committed batches (``pytest_hokmdb.migration.online.backfill``: resumable,
idempotent, throttled). A row whose card does not parse stops the upgrade with an error
naming some of them, before any constraint is added. Last, the constraints arrive
``NOT VALID``: enforced for every new write at once, validated by 0007 without blocking.

Killed half-way, the next deploy runs this revision again: the trigger is replaced and the
backfill continues at the first row that still needs it. ``downgrade()`` removes the
constraints and the trigger; the filled columns go with 0005's downgrade.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from pytest_hokmdb.migration.online import backfill, check_once

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Only cards of this exact shape are converted; everything else is reported.
CARD_PATTERN = "^(10|[2-9JQKA])?[HDCS]$"


def split(card: str) -> tuple[str, str]:
    """SQL for (suit, rank) of the text card expression ``card``."""
    suit = (f"(CASE right({card}, 1) WHEN 'H' THEN 'hearts' WHEN 'D' THEN 'diamonds' WHEN 'C' THEN 'clubs' "
            "WHEN 'S' THEN 'spades' END)::card_suit")
    rank = (f"(CASE left({card}, -1) WHEN '' THEN NULL WHEN 'J' THEN 11 WHEN 'Q' THEN 12 WHEN 'K' THEN 13 "
            f"WHEN 'A' THEN 14 ELSE left({card}, -1)::smallint END)")
    return suit, rank


def join(suit: str, rank: str) -> str:
    """SQL for the text card of the ``suit``/``rank`` expressions."""
    return (f"(CASE {rank} WHEN 11 THEN 'J' WHEN 12 THEN 'Q' WHEN 13 THEN 'K' WHEN 14 THEN 'A' "
            f"ELSE coalesce({rank}::text, '') END || CASE {suit} WHEN 'hearts' THEN 'H' WHEN 'diamonds' THEN 'D' "
            "WHEN 'clubs' THEN 'C' WHEN 'spades' THEN 'S' END)")


_NEW_SUIT, _NEW_RANK = split("NEW.card")

# Whichever form a write leaves out is derived from the other; a write of both is kept.
SYNC_FUNCTION = f"""
CREATE OR REPLACE FUNCTION moves_sync_card() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.card IS DISTINCT FROM OLD.card AND NEW.card_suit IS NOT DISTINCT FROM OLD.card_suit
       AND NEW.card_rank IS NOT DISTINCT FROM OLD.card_rank THEN
        NEW.card_suit := NULL;  -- the card changed: derive suit and rank again below
        NEW.card_rank := NULL;
    ELSIF TG_OP = 'UPDATE' AND NEW.card IS NOT DISTINCT FROM OLD.card
       AND (NEW.card_suit IS DISTINCT FROM OLD.card_suit OR NEW.card_rank IS DISTINCT FROM OLD.card_rank)
       AND NEW.card_suit IS NOT NULL THEN
        NEW.card := NULL;  -- suit or rank changed: derive the card again below
    END IF;
    IF NEW.card IS NOT NULL AND NEW.card_suit IS NULL AND NEW.card ~ '{CARD_PATTERN}' THEN
        NEW.card_suit := {_NEW_SUIT};
        NEW.card_rank := {_NEW_RANK};
    ELSIF NEW.card IS NULL AND NEW.card_suit IS NOT NULL THEN
        NEW.card := {join("NEW.card_suit", "NEW.card_rank")};
    END IF;
    RETURN NEW;
END
$$
"""
# Two triggers on one function. The UPDATE one's WHEN clause keeps the backfill's own updates
# (an old-form row getting its suit and rank, card unchanged) out of plpgsql: one function
# call per row less over the whole table.
TRIGGERS = ("moves_sync_card_insert", "moves_sync_card_update")
SYNC_TRIGGERS = (
    "CREATE OR REPLACE TRIGGER moves_sync_card_insert BEFORE INSERT ON moves FOR EACH ROW "
    "EXECUTE FUNCTION moves_sync_card()",
    "CREATE OR REPLACE TRIGGER moves_sync_card_update BEFORE UPDATE ON moves FOR EACH ROW "
    "WHEN (NEW.card IS DISTINCT FROM OLD.card OR OLD.card_suit IS NOT NULL) EXECUTE FUNCTION moves_sync_card()",
)

_SUIT, _RANK = split("card")
SPLIT_CARDS = f"card_suit = {_SUIT}, card_rank = {_RANK}"

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
        RAISE EXCEPTION 'revision 0006 cannot split moves.card, % move(s) have a card that does not parse '
            'or does not fit their move_type, e.g. move ids %. A card_play needs rank 2-10/J/Q/K/A '
            'plus suit H/D/C/S (''10H''), a trump_selection the suit letter alone (''S''); '
            'fix or delete these moves and upgrade again', bad_count, examples;
    END IF;
END
$$
"""

# Enforced on every write from now on; 0007 validates the existing rows without blocking.
CONSTRAINTS = {
    "ck_moves_rank_range": "card_rank BETWEEN 2 AND 14",
    "ck_moves_rank_matches_type": "(move_type = 'trump_selection') = (card_rank IS NULL)",
    "ck_moves_card_suit_not_null": "card_suit IS NOT NULL",
}


def upgrade() -> None:
    op.execute(SYNC_FUNCTION)
    for trigger in SYNC_TRIGGERS:
        op.execute(trigger)
    backfill("moves", set_=SPLIT_CARDS, where=f"card_suit IS NULL AND card ~ '{CARD_PATTERN}'")
    # A read-only scan of the whole table: outside the transaction that takes the locks below,
    # and once per deploy, so a retry after a lock timeout goes straight to the constraints.
    check_once(REFUSE_UNPARSED)
    for name, condition in CONSTRAINTS.items():
        op.execute(f"ALTER TABLE moves ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID")


def downgrade() -> None:
    for name in reversed(CONSTRAINTS):
        op.execute(f"ALTER TABLE moves DROP CONSTRAINT {name}")
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER {trigger} ON moves")
    op.execute("DROP FUNCTION moves_sync_card()")
