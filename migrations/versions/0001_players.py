"""Players and their preferences.

Why: every other table points at a player, so accounts come first. Preferences live in
their own table (keyed by the player) because they change often and are read only by
the client settings screen, not by the leaderboard queries that scan ``players``.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "players",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("username", sa.String(32), nullable=False),
        sa.Column("email", sa.String(255), nullable=True),
        sa.Column("display_name", sa.String(64), nullable=False),
        sa.Column("rating", sa.Integer, server_default=sa.text("1000"), nullable=False),
        sa.Column("total_games", sa.Integer, server_default=sa.text("0"), nullable=False),
        sa.Column("wins", sa.Integer, server_default=sa.text("0"), nullable=False),
        sa.Column("losses", sa.Integer, server_default=sa.text("0"), nullable=False),
        sa.Column("is_active", sa.Boolean, server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_players")),
        sa.UniqueConstraint("username", name=op.f("uq_players_username")),
        sa.UniqueConstraint("email", name=op.f("uq_players_email")),
        sa.CheckConstraint("rating BETWEEN 0 AND 3000", name=op.f("ck_players_rating_range")),
        sa.CheckConstraint("total_games >= 0", name=op.f("ck_players_total_games_nonneg")),
        sa.CheckConstraint("wins >= 0", name=op.f("ck_players_wins_nonneg")),
        sa.CheckConstraint("losses >= 0", name=op.f("ck_players_losses_nonneg")),
    )
    op.create_index(op.f("ix_players_rating_desc"), "players", [sa.text("rating DESC")])

    op.create_table(
        "user_preferences",
        sa.Column("player_id", sa.BigInteger, nullable=False),
        sa.Column("language", sa.String(8), server_default="en", nullable=False),
        sa.Column("sound_enabled", sa.Boolean, server_default=sa.text("true"), nullable=False),
        sa.Column("card_style", sa.String(32), server_default="classic", nullable=False),
        sa.Column("settings", postgresql.JSONB, server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("player_id", name=op.f("pk_user_preferences")),
        sa.ForeignKeyConstraint(
            ["player_id"],
            ["players.id"],
            name=op.f("fk_user_preferences_player_id_players"),
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("user_preferences")
    op.drop_index(op.f("ix_players_rating_desc"), table_name="players")
    op.drop_table("players")
