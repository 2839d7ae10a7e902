"""Websocket connections and performance metrics.

Why: operational data, not game data. Connections let the server find a player's live
sockets (and survive the deletion of the game they were in: ``game_id`` is SET NULL);
metrics are a plain time series read per metric name over a time range.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Give up rather than queue behind a long transaction (and stall every query queued behind us).
    op.execute("SET LOCAL lock_timeout = '1s'")
    op.create_table(
        "websocket_connections",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("connection_id", sa.Uuid, nullable=False),
        sa.Column("player_id", sa.BigInteger, nullable=False),
        sa.Column("game_id", sa.BigInteger, nullable=True),
        sa.Column("client_ip", postgresql.INET, nullable=True),
        sa.Column(
            "connected_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disconnected_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_websocket_connections")),
        sa.UniqueConstraint("connection_id", name=op.f("uq_websocket_connections_connection_id")),
        sa.ForeignKeyConstraint(
            ["player_id"],
            ["players.id"],
            name=op.f("fk_websocket_connections_player_id_players"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["game_id"],
            ["game_sessions.id"],
            name=op.f("fk_websocket_connections_game_id_game_sessions"),
            ondelete="SET NULL",
        ),
    )
    op.create_index(op.f("ix_websocket_connections_player_id"), "websocket_connections", ["player_id"])

    op.create_table(
        "performance_metrics",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("metric_name", sa.String(64), nullable=False),
        sa.Column("value", sa.Double, nullable=False),
        sa.Column("unit", sa.String(16), nullable=True),
        sa.Column("tags", postgresql.JSONB, server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_performance_metrics")),
    )
    op.create_index(
        op.f("ix_performance_metrics_metric_name_recorded_at"),
        "performance_metrics",
        ["metric_name", "recorded_at"],
    )


def downgrade() -> None:
    # Give up rather than queue behind a long transaction (and stall every query queued behind us).
    op.execute("SET LOCAL lock_timeout = '1s'")
    op.drop_index(op.f("ix_performance_metrics_metric_name_recorded_at"), table_name="performance_metrics")
    op.drop_table("performance_metrics")
    op.drop_index(op.f("ix_websocket_connections_player_id"), table_name="websocket_connections")
    op.drop_table("websocket_connections")
