"""Contract: ``card_suit``/``card_rank`` are the card; ``moves.card`` goes.

Deploy this once the game server release that reads and writes suit and rank is live (the
trigger of 0006 keeps ``card`` right for the old release until then). Each step takes the
weakest lock that does it:

* ``VALIDATE CONSTRAINT`` scans ``moves`` under SHARE UPDATE EXCLUSIVE, each committed on its
  own (an autocommit block): reads and writes go on, and a retry does not scan again;
* ``SET NOT NULL`` on ``card_suit`` finds the validated ``card_suit IS NOT NULL`` check and
  skips its own scan (PostgreSQL 12+), so its ACCESS EXCLUSIVE lock lasts milliseconds,
  like dropping the helper check, the trigger and the column (catalog changes only).

``downgrade()`` has the same shape backwards: ``card`` comes back nullable with the trigger,
is filled in committed batches, and becomes NOT NULL through a validated check; every step
is idempotent, so a downgrade killed half-way runs again from the start.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import context, op

from pytest_hokmdb.migration.online import backfill

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Read by the lock-safety lint: the contract phase is where a column is dropped.
hokmdb_lint_waivers = {
    "ban-drop-column": "contract phase of 0005-0007: the game server release that reads card_suit/card_rank is "
    "live before this deploys, and 0006's trigger kept card right until then (README 'Writing an online revision')",
    "ban-drop-constraint": "ck_moves_card_suit_not_null only existed to let SET NOT NULL skip its scan; the NOT NULL "
    "column constraint that replaces it guarantees the same",
    "ban-drop-function": "moves_sync_card served only the transition of 0005-0007; once card is dropped nothing "
    "calls it",
    "prefer-robust-stmts": "the VALIDATE CONSTRAINTs run outside a transaction on purpose (each commits on its own) "
    "and are safe to run again: validating a valid constraint does nothing",
}


def _backfill_revision():  # type: ignore[no-untyped-def]
    """0006's module: the trigger and the constraints are defined once, there."""
    return context.script.get_revision("0006").module


def upgrade() -> None:
    with op.get_context().autocommit_block():
        # Each validation scans moves and commits on its own; a retry after a lock timeout
        # below finds them valid and skips the scans.
        for name in _backfill_revision().CONSTRAINTS:
            op.execute(f"ALTER TABLE moves VALIDATE CONSTRAINT {name}")
    op.execute("ALTER TABLE moves ALTER COLUMN card_suit SET NOT NULL")
    op.execute("ALTER TABLE moves DROP CONSTRAINT ck_moves_card_suit_not_null")
    for trigger in _backfill_revision().TRIGGERS:
        op.execute(f"DROP TRIGGER {trigger} ON moves")
    op.execute("DROP FUNCTION moves_sync_card()")
    op.drop_column("moves", "card")


def downgrade() -> None:
    previous = _backfill_revision()
    op.execute("ALTER TABLE moves ADD COLUMN IF NOT EXISTS card varchar(3)")
    op.execute(previous.SYNC_FUNCTION)
    for trigger in previous.SYNC_TRIGGERS:
        op.execute(trigger)
    op.execute("ALTER TABLE moves ALTER COLUMN card_suit DROP NOT NULL")
    # 0006 left the checks NOT VALID; so does this downgrade (dropped and added again, at once).
    for name, condition in previous.CONSTRAINTS.items():
        op.execute(f"ALTER TABLE moves DROP CONSTRAINT IF EXISTS {name}")
        op.execute(f"ALTER TABLE moves ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID")
    op.execute("ALTER TABLE moves DROP CONSTRAINT IF EXISTS ck_moves_card_not_null")
    op.execute("ALTER TABLE moves ADD CONSTRAINT ck_moves_card_not_null CHECK (card IS NOT NULL) NOT VALID")
    backfill("moves", set_=f"card = {previous.join('card_suit', 'card_rank')}", where="card IS NULL")
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE moves VALIDATE CONSTRAINT ck_moves_card_not_null")
    op.execute("ALTER TABLE moves ALTER COLUMN card SET NOT NULL")
    op.execute("ALTER TABLE moves DROP CONSTRAINT ck_moves_card_not_null")
