"""Hokm, hokmdb's first application profile: everything about the card game the generic
tool must not know.

==================  =======================================================================
``models``          the schema at head as SQLAlchemy 2.0 models (the migrations deploy it)
``rules``           the game's rules that shape the data (seats, tricks, scoring, ratings)
``simulator``       deterministic, rule-abiding games for seeding and tests
``seed``            bulk seeding of development and testing databases through COPY
``invariants``      one SQL check per data invariant of hokm-domain.md (the integrity group)
``hot_queries``     the game server's hot path and how to sample realistic parameters
``workload``        the game server's traffic, which rehearsals and the benchmark play while migrating
==================  =======================================================================

A project chooses it with ``[tool.hokmdb] profile = "hokm"`` (the ``hokmdb.profiles`` entry
point) or ``profile = "hokm_profile:profile"``. Nothing heavy is imported here: the core
loads each part by its import path when a check or a command needs it.
"""

from __future__ import annotations

from hokm_profile.hot_queries import HOT_QUERIES, PLACEHOLDERS, SAMPLE_TIMEOUT_MS
from pytest_hokmdb.config.profile import Profile

#: Tables on the game server's hot path, which also hold most rows (vacuum and analyze are watched).
HOT_TABLES: tuple[str, ...] = ("game_sessions", "game_participants", "moves", "players")

profile = Profile(
    name="hokm",
    description="the Hokm card-game server: players, games, moves and statistics",
    metadata="hokm_profile.models:metadata",
    hot_tables=HOT_TABLES,
    hot_queries=HOT_QUERIES,
    sampler="hokm_profile.hot_queries:pick_samples",
    placeholders=PLACEHOLDERS,
    sample_hint=(f"picking a sample game and player took over {SAMPLE_TIMEOUT_MS} ms: game_sessions' primary key "
                 "or game_participants' (game_id, seat) index is missing or bloated"),
    no_data="no games yet",
    check_groups={"integrity": "hokm_profile.invariants:CHECKS"},
    seeder="hokm_profile.seed:seed",
    workload="hokm_profile.workload:WORKLOAD",
)
