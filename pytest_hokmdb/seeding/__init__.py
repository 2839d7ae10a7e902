"""Deterministic bulk seeding of development and testing databases."""

from pytest_hokmdb.seeding.loader import (
    GAME_TABLES,
    ROOM_CODE_PREFIX,
    USERNAME_PREFIX,
    ProgressCallback,
    SeedReport,
    default_anchor,
    seed,
)

__all__ = [
    "GAME_TABLES", "ROOM_CODE_PREFIX", "USERNAME_PREFIX", "ProgressCallback", "SeedReport", "default_anchor", "seed",
]
