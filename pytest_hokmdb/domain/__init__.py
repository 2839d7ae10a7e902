"""The Hokm game: its rules (``rules``) and a deterministic game simulator (``simulator``)."""

from pytest_hokmdb.domain import rules
from pytest_hokmdb.domain.simulator import GamePlan, SimulatedGame, generate_games, plan_games, simulate_game

__all__ = ["GamePlan", "SimulatedGame", "generate_games", "plan_games", "rules", "simulate_game"]
