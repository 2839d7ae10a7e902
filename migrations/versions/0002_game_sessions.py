"""Games and who sits in them, with the game_status and card_suit enum types.

Why: a game and its four seats are the unit the server creates and reads together.
The enum types are created with the first tables that use them so that this revision's
downgrade can drop them again and leave nothing behind.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out here rather than imported from the models: a revision must keep meaning
# what it meant when it shipped, whatever the models say later.
game_status = postgresql.ENUM(
    "waiting", "active", "completed", "abandoned", name="game_status", create_type=False
)
card_suit = postgresql.ENUM("hearts", "diamonds", "clubs", "spades", name="card_suit", create_type=False)


def upgrade() -> None:
    # Give up rather than queue behind a long transaction (and stall every query queued behind us).
    op.execute("SET LOCAL lock_timeout = '1s'")
    bind = op.get_bind()
    game_status.create(bind, checkfirst=False)
    card_suit.create(bind, checkfirst=False)

    op.create_table(
        "game_sessions",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("room_code", sa.String(16), nullable=False),
        sa.Column("status", game_status, server_default="waiting", nullable=False),
        sa.Column("hakem_player_id", sa.BigInteger, nullable=True),
        sa.Column("trump_suit", card_suit, nullable=True),
        sa.Column("current_round", sa.SmallInteger, server_default=sa.text("0"), nullable=False),
        sa.Column("game_state", postgresql.JSONB, server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("team1_score", sa.SmallInteger, server_default=sa.text("0"), nullable=False),
        sa.Column("team2_score", sa.SmallInteger, server_default=sa.text("0"), nullable=False),
        sa.Column("winning_team", sa.SmallInteger, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_game_sessions")),
        sa.ForeignKeyConstraint(
            ["hakem_player_id"], ["players.id"], name=op.f("fk_game_sessions_hakem_player_id_players")
        ),
        sa.CheckConstraint("team1_score >= 0", name=op.f("ck_game_sessions_team1_score_nonneg")),
        sa.CheckConstraint("team2_score >= 0", name=op.f("ck_game_sessions_team2_score_nonneg")),
        sa.CheckConstraint("winning_team IN (1, 2)", name=op.f("ck_game_sessions_winning_team_valid")),
    )
    op.create_index(op.f("ix_game_sessions_status_created_at"), "game_sessions", ["status", "created_at"])
    op.create_index(op.f("ix_game_sessions_room_code"), "game_sessions", ["room_code"])

    op.create_table(
        "game_participants",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("game_id", sa.BigInteger, nullable=False),
        sa.Column("player_id", sa.BigInteger, nullable=False),
        sa.Column("seat", sa.SmallInteger, nullable=False),
        sa.Column("team", sa.SmallInteger, nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_game_participants")),
        sa.ForeignKeyConstraint(
            ["game_id"],
            ["game_sessions.id"],
            name=op.f("fk_game_participants_game_id_game_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["player_id"], ["players.id"], name=op.f("fk_game_participants_player_id_players")
        ),
        sa.UniqueConstraint("game_id", "seat", name=op.f("uq_game_participants_game_id_seat")),
        sa.UniqueConstraint("game_id", "player_id", name=op.f("uq_game_participants_game_id_player_id")),
        sa.CheckConstraint("seat BETWEEN 0 AND 3", name=op.f("ck_game_participants_seat_range")),
        sa.CheckConstraint("team IN (1, 2)", name=op.f("ck_game_participants_team_valid")),
    )


def downgrade() -> None:
    # Give up rather than queue behind a long transaction (and stall every query queued behind us).
    op.execute("SET LOCAL lock_timeout = '1s'")
    op.drop_table("game_participants")
    op.drop_index(op.f("ix_game_sessions_room_code"), table_name="game_sessions")
    op.drop_index(op.f("ix_game_sessions_status_created_at"), table_name="game_sessions")
    op.drop_table("game_sessions")
    bind = op.get_bind()
    card_suit.drop(bind, checkfirst=False)
    game_status.drop(bind, checkfirst=False)
