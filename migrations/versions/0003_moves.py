"""Moves of a game and per-player game statistics, with the move_type enum type.

Why: moves are the replayable history of a game (the integrity checks rebuild tricks
from them); statistics summarise a finished game per player so profile pages need not
replay it. At this revision a move's card is still one text column (``'10H'``, or the
suit letter alone for a trump selection); revision 0005 splits it into suit and rank.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

move_type = postgresql.ENUM("trump_selection", "card_play", name="move_type", create_type=False)


def upgrade() -> None:
    # Give up rather than queue behind a long transaction (and stall every query queued behind us).
    op.execute("SET LOCAL lock_timeout = '1s'")
    move_type.create(op.get_bind(), checkfirst=False)

    op.create_table(
        "moves",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("game_id", sa.BigInteger, nullable=False),
        sa.Column("player_id", sa.BigInteger, nullable=False),
        sa.Column("sequence_number", sa.Integer, nullable=False),
        sa.Column("hand_number", sa.SmallInteger, nullable=False),
        sa.Column("trick_number", sa.SmallInteger, nullable=False),
        sa.Column("move_type", move_type, nullable=False),
        sa.Column("card", sa.String(3), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_moves")),
        sa.ForeignKeyConstraint(
            ["game_id"], ["game_sessions.id"], name=op.f("fk_moves_game_id_game_sessions"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["player_id"], ["players.id"], name=op.f("fk_moves_player_id_players")),
        # Also the index behind "moves of a game in order".
        sa.UniqueConstraint("game_id", "sequence_number", name=op.f("uq_moves_game_id_sequence_number")),
        sa.CheckConstraint("sequence_number > 0", name=op.f("ck_moves_sequence_positive")),
        sa.CheckConstraint("hand_number >= 1", name=op.f("ck_moves_hand_positive")),
        sa.CheckConstraint("trick_number BETWEEN 0 AND 13", name=op.f("ck_moves_trick_range")),
    )

    op.create_table(
        "player_game_stats",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("game_id", sa.BigInteger, nullable=False),
        sa.Column("player_id", sa.BigInteger, nullable=False),
        sa.Column("team", sa.SmallInteger, nullable=False),
        sa.Column("tricks_won", sa.Integer, server_default=sa.text("0"), nullable=False),
        sa.Column("hands_won", sa.Integer, server_default=sa.text("0"), nullable=False),
        sa.Column("hands_as_hakem", sa.Integer, server_default=sa.text("0"), nullable=False),
        sa.Column("points_scored", sa.Integer, server_default=sa.text("0"), nullable=False),
        sa.Column("is_winner", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_player_game_stats")),
        sa.ForeignKeyConstraint(
            ["game_id"],
            ["game_sessions.id"],
            name=op.f("fk_player_game_stats_game_id_game_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["player_id"], ["players.id"], name=op.f("fk_player_game_stats_player_id_players")
        ),
        sa.UniqueConstraint("game_id", "player_id", name=op.f("uq_player_game_stats_game_id_player_id")),
        sa.CheckConstraint("team IN (1, 2)", name=op.f("ck_player_game_stats_team_valid")),
    )
    op.create_index(op.f("ix_player_game_stats_player_id"), "player_game_stats", ["player_id"])


def downgrade() -> None:
    # Give up rather than queue behind a long transaction (and stall every query queued behind us).
    op.execute("SET LOCAL lock_timeout = '1s'")
    op.drop_index(op.f("ix_player_game_stats_player_id"), table_name="player_game_stats")
    op.drop_table("player_game_stats")
    op.drop_table("moves")
    move_type.drop(op.get_bind(), checkfirst=False)
