"""SQLAlchemy models of the Hokm schema at head (contract: docs/schema.md).

The migrations in ``migrations/versions`` are the source of truth for what a deployed
database looks like; these models describe the same head so that code can query it with
types, and so that ``tests/test_migrations.py`` can prove, with alembic's autogenerate
comparison, that models and migrations have not drifted apart. Anything that changes
here therefore needs a new revision, and the other way round.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION: dict[str, str] = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
}

# Card ranks as stored in moves.card_rank: the pips keep their face value and the
# court cards continue the sequence, so "higher rank wins the trick" is plain integer order.
MIN_RANK = 2
JACK = 11
QUEEN = 12
KING = 13
ACE = 14

class GameStatus(enum.StrEnum):
    """Lifecycle of a game; only waiting -> active -> completed, or -> abandoned, is legal."""

    WAITING = "waiting"
    ACTIVE = "active"
    COMPLETED = "completed"
    ABANDONED = "abandoned"


class CardSuit(enum.StrEnum):
    """Spelled out in the database so ad-hoc SQL reads naturally (no H/D/C/S decoding)."""

    HEARTS = "hearts"
    DIAMONDS = "diamonds"
    CLUBS = "clubs"
    SPADES = "spades"


class MoveType(enum.StrEnum):
    """A hand starts with the hakem naming trump, which is recorded as a move like a card play."""

    TRUMP_SELECTION = "trump_selection"
    CARD_PLAY = "card_play"


def _pg_enum(enum_cls: type[enum.StrEnum], name: str) -> postgresql.ENUM:
    """Map a StrEnum onto an existing PostgreSQL type by *value*.

    ``create_type=False`` because the types belong to the migrations (revisions 0002 and
    0003 create and drop them); the models must never create or drop them on their own.
    """
    return postgresql.ENUM(
        enum_cls,
        name=name,
        create_type=False,
        values_callable=lambda members: [member.value for member in members],
    )


game_status_enum = _pg_enum(GameStatus, "game_status")
card_suit_enum = _pg_enum(CardSuit, "card_suit")
move_type_enum = _pg_enum(MoveType, "move_type")

NOW = sa.text("now()")
EMPTY_JSONB = sa.text("'{}'::jsonb")
ZERO = sa.text("0")
TRUE = sa.text("true")


class Base(DeclarativeBase):
    """Declarative base whose naming convention makes constraint names predictable,
    so migrations can refer to (and drop) them by name."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


metadata = Base.metadata


# BY DEFAULT (not ALWAYS) so seeding and restores may supply explicit ids.
IdentityPk = Annotated[int, mapped_column(sa.BigInteger, sa.Identity(always=False), primary_key=True)]


class Player(Base):
    """An account; the counters are denormalised from history for the leaderboard."""

    __tablename__ = "players"
    __table_args__ = (
        sa.CheckConstraint("rating BETWEEN 0 AND 3000", name="rating_range"),
        sa.CheckConstraint("total_games >= 0", name="total_games_nonneg"),
        sa.CheckConstraint("wins >= 0", name="wins_nonneg"),
        sa.CheckConstraint("losses >= 0", name="losses_nonneg"),
    )

    id: Mapped[IdentityPk]
    username: Mapped[str] = mapped_column(sa.String(32), unique=True)
    email: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    display_name: Mapped[str] = mapped_column(sa.String(64))
    rating: Mapped[int] = mapped_column(sa.Integer, server_default=sa.text("1000"))
    total_games: Mapped[int] = mapped_column(sa.Integer, server_default=ZERO)
    wins: Mapped[int] = mapped_column(sa.Integer, server_default=ZERO)
    losses: Mapped[int] = mapped_column(sa.Integer, server_default=ZERO)
    is_active: Mapped[bool] = mapped_column(sa.Boolean, server_default=TRUE)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=NOW)
    last_seen_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


# Declared outside the class because DESC needs the column object; the leaderboard reads
# players by rating from the top, which a descending index serves without a sort.
sa.Index("ix_players_rating_desc", Player.rating.desc())


class UserPreference(Base):
    """One row per player at most, so the player id itself is the key."""

    __tablename__ = "user_preferences"

    player_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("players.id", ondelete="CASCADE"), primary_key=True
    )
    language: Mapped[str] = mapped_column(sa.String(8), server_default="en")
    sound_enabled: Mapped[bool] = mapped_column(sa.Boolean, server_default=TRUE)
    card_style: Mapped[str] = mapped_column(sa.String(32), server_default="classic")
    settings: Mapped[dict[str, Any]] = mapped_column(postgresql.JSONB, server_default=EMPTY_JSONB)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=NOW)


class GameSession(Base):
    """A game to 7 points; ``game_state`` holds the server's opaque in-play state."""

    __tablename__ = "game_sessions"
    __table_args__ = (
        sa.CheckConstraint("team1_score >= 0", name="team1_score_nonneg"),
        sa.CheckConstraint("team2_score >= 0", name="team2_score_nonneg"),
        sa.CheckConstraint("winning_team IN (1, 2)", name="winning_team_valid"),
        # The lobby lists games by status, newest first.
        sa.Index("ix_game_sessions_status_created_at", "status", "created_at"),
        # Not unique: room codes are short and get reused once a game is over.
        sa.Index("ix_game_sessions_room_code", "room_code"),
    )

    id: Mapped[IdentityPk]
    room_code: Mapped[str] = mapped_column(sa.String(16))
    status: Mapped[GameStatus] = mapped_column(game_status_enum, server_default=GameStatus.WAITING.value)
    hakem_player_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("players.id"))
    trump_suit: Mapped[CardSuit | None] = mapped_column(card_suit_enum)
    current_round: Mapped[int] = mapped_column(sa.SmallInteger, server_default=ZERO)
    game_state: Mapped[dict[str, Any]] = mapped_column(postgresql.JSONB, server_default=EMPTY_JSONB)
    team1_score: Mapped[int] = mapped_column(sa.SmallInteger, server_default=ZERO)
    team2_score: Mapped[int] = mapped_column(sa.SmallInteger, server_default=ZERO)
    winning_team: Mapped[int | None] = mapped_column(sa.SmallInteger)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=NOW)
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class GameParticipant(Base):
    """A seat taken in a game. Per-row rules are constraints here; the cross-row ones
    (team derived from seat, at most four players) are the smoke suite's to check."""

    __tablename__ = "game_participants"
    __table_args__ = (
        sa.CheckConstraint("seat BETWEEN 0 AND 3", name="seat_range"),
        sa.CheckConstraint("team IN (1, 2)", name="team_valid"),
        sa.UniqueConstraint("game_id", "seat"),
        sa.UniqueConstraint("game_id", "player_id"),
        # "Games of a player": the unique (game_id, player_id) index cannot serve it.
        sa.Index("ix_game_participants_player_id", "player_id"),
    )

    id: Mapped[IdentityPk]
    game_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("game_sessions.id", ondelete="CASCADE")
    )
    player_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("players.id"))
    seat: Mapped[int] = mapped_column(sa.SmallInteger)
    team: Mapped[int] = mapped_column(sa.SmallInteger)
    joined_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=NOW)


class Move(Base):
    """One step of a game, in order: a trump selection (trick 0) or a card play.

    Suit and rank are separate columns (since revisions 0005-0007) so the database itself can
    reject impossible cards and so trick winners can be computed with plain comparisons.
    """

    __tablename__ = "moves"
    __table_args__ = (
        sa.CheckConstraint("sequence_number > 0", name="sequence_positive"),
        sa.CheckConstraint("hand_number >= 1", name="hand_positive"),
        sa.CheckConstraint("trick_number BETWEEN 0 AND 13", name="trick_range"),
        sa.CheckConstraint(f"card_rank BETWEEN {MIN_RANK} AND {ACE}", name="rank_range"),
        # A trump selection names a suit only; a card play always has a rank.
        sa.CheckConstraint(
            "(move_type = 'trump_selection') = (card_rank IS NULL)", name="rank_matches_type"
        ),
        # Doubles as the "moves of a game in order" index.
        sa.UniqueConstraint("game_id", "sequence_number"),
    )

    id: Mapped[IdentityPk]
    game_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("game_sessions.id", ondelete="CASCADE")
    )
    player_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("players.id"))
    sequence_number: Mapped[int] = mapped_column(sa.Integer)
    hand_number: Mapped[int] = mapped_column(sa.SmallInteger)
    trick_number: Mapped[int] = mapped_column(sa.SmallInteger)
    move_type: Mapped[MoveType] = mapped_column(move_type_enum)
    card_suit: Mapped[CardSuit] = mapped_column(card_suit_enum)
    card_rank: Mapped[int | None] = mapped_column(sa.SmallInteger)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=NOW)


class PlayerGameStat(Base):
    """Per-player outcome of a completed game, kept so profiles need not replay moves."""

    __tablename__ = "player_game_stats"
    __table_args__ = (
        sa.CheckConstraint("team IN (1, 2)", name="team_valid"),
        sa.UniqueConstraint("game_id", "player_id"),
        sa.Index("ix_player_game_stats_player_id", "player_id"),
    )

    id: Mapped[IdentityPk]
    game_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("game_sessions.id", ondelete="CASCADE")
    )
    player_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("players.id"))
    team: Mapped[int] = mapped_column(sa.SmallInteger)
    tricks_won: Mapped[int] = mapped_column(sa.Integer, server_default=ZERO)
    hands_won: Mapped[int] = mapped_column(sa.Integer, server_default=ZERO)
    hands_as_hakem: Mapped[int] = mapped_column(sa.Integer, server_default=ZERO)
    points_scored: Mapped[int] = mapped_column(sa.Integer, server_default=ZERO)
    is_winner: Mapped[bool] = mapped_column(sa.Boolean)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=NOW)


class WebsocketConnection(Base):
    """A client socket; it outlives the game it was in (SET NULL) but not its player."""

    __tablename__ = "websocket_connections"
    __table_args__ = (sa.Index("ix_websocket_connections_player_id", "player_id"),)

    id: Mapped[IdentityPk]
    connection_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, unique=True)
    player_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("players.id", ondelete="CASCADE")
    )
    game_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("game_sessions.id", ondelete="SET NULL")
    )
    # asyncpg hands INET back as text through SQLAlchemy unless native types are enabled.
    client_ip: Mapped[str | None] = mapped_column(postgresql.INET)
    connected_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=NOW)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    disconnected_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class PerformanceMetric(Base):
    """Free-form time series written by the server and the bench suite; read per metric over time."""

    __tablename__ = "performance_metrics"
    __table_args__ = (
        sa.Index("ix_performance_metrics_metric_name_recorded_at", "metric_name", "recorded_at"),
    )

    id: Mapped[IdentityPk]
    metric_name: Mapped[str] = mapped_column(sa.String(64))
    value: Mapped[float] = mapped_column(sa.Double)
    unit: Mapped[str | None] = mapped_column(sa.String(16))
    tags: Mapped[dict[str, Any]] = mapped_column(postgresql.JSONB, server_default=EMPTY_JSONB)
    recorded_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=NOW)
