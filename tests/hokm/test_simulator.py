"""The simulator plays by the rules: every generated game is replayed here, card by card,
against an independent implementation of the rules (the seed's correctness rests on it)."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hokm_profile import rules
from hokm_profile.simulator import (
    MOVE_COLUMNS,
    GamePlan,
    SimulatedGame,
    generate_games,
    plan_games,
    simulate_game,
)

ANCHOR = datetime(2026, 11, 24, tzinfo=UTC)
POOL = list(range(1001, 1101))
SEQ, HAND, TRICK, TYPE, SUIT, RANK, PLAYER, AT = (MOVE_COLUMNS.index(c) for c in (
    "sequence_number", "hand_number", "trick_number", "move_type", "card_suit", "card_rank", "player_id", "created_at"))


def _games(count: int, seed: int = 11) -> list[SimulatedGame]:
    return list(generate_games(count, player_pool=POOL, game_ids=range(1, count + 1), random_seed=seed,
                               anchor=ANCHOR, record_hands=True))


@pytest.fixture(scope="module")
def games() -> list[SimulatedGame]:
    return _games(400)


def _winner_of(cards: list[tuple[str, int]], trump: str) -> int:
    """Independent trick rule: the highest trump, else the highest card of the suit led."""
    led = cards[0][0]
    trumps = [(rank, i) for i, (suit, rank) in enumerate(cards) if suit == trump]
    if trumps:
        return max(trumps)[1]
    return max((rank, i) for i, (suit, rank) in enumerate(cards) if suit == led)[1]


def _replay(game: SimulatedGame) -> dict[str, Any]:
    """Replay the moves against the dealt cards, asserting every rule on the way."""
    seat_of = {player: seat for seat, player in game.seat_players.items()}
    moves = game.moves
    assert [m[SEQ] for m in moves] == list(range(1, len(moves) + 1))
    assert all(a[AT] <= b[AT] for a, b in itertools.pairwise(moves)), "move times go backwards"
    by_hand: dict[int, list[tuple[Any, ...]]] = {}
    for move in moves:
        by_hand.setdefault(move[HAND], []).append(move)
    assert list(by_hand) == list(range(1, len(by_hand) + 1))
    assert len(game.hands) == len(by_hand)

    scores = {1: 0, 2: 0}
    hakem = game.first_hakem_seat
    points_seen: list[int] = []
    for record, (number, hand_moves) in zip(game.hands, by_hand.items()):
        assert record.number == number and record.hakem_seat == hakem, f"hand {number}: wrong hakem"
        dealt = [set(cards) for cards in record.dealt]
        assert sorted(c for cards in record.dealt for c in cards) == list(range(rules.DECK_SIZE))
        assert all(len(cards) == rules.CARDS_PER_PLAYER for cards in record.dealt)
        choice, *plays = hand_moves
        assert choice[TYPE] == "trump_selection" and choice[TRICK] == 0 and choice[RANK] is None
        assert seat_of[choice[PLAYER]] == hakem, "trump not named by the hakem"
        trump = choice[SUIT]
        preview_suits = {rules.suit_of(c) for c in record.dealt[hakem][: rules.HAKEM_PREVIEW_CARDS]}
        assert trump in preview_suits, "trump named from cards the hakem had not seen"
        tricks = {1: 0, 2: 0}
        leader = hakem
        for start in range(0, len(plays), 4):
            trick = plays[start: start + 4]
            number_of_trick = start // 4 + 1
            assert max(tricks.values()) < rules.TRICKS_TO_WIN_HAND, "play went on after 7 tricks"
            assert all(m[TYPE] == "card_play" and m[TRICK] == number_of_trick for m in trick)
            seats = [seat_of[m[PLAYER]] for m in trick]
            assert seats == [(leader + k) % 4 for k in range(len(trick))], "out of turn"
            cards = [(m[SUIT], m[RANK]) for m in trick]
            for seat, (suit, rank) in zip(seats, cards):
                card = rules.card_of(suit, rank)
                assert card in dealt[seat], f"seat {seat} played {rules.card_name(card)} it does not hold"
                led = cards[0][0]
                if suit != led:
                    assert not any(rules.suit_of(c) == led for c in dealt[seat]), "did not follow suit"
                dealt[seat].remove(card)
            if len(trick) < 4:
                break
            winner_seat = seats[_winner_of(cards, trump)]
            tricks[rules.team_of_seat(winner_seat)] += 1
            leader = winner_seat
        if record.winner_team is None:  # the current hand of an unfinished game
            assert game.status != "completed" and number == len(by_hand)
            assert max(tricks.values()) < rules.TRICKS_TO_WIN_HAND
            break
        winner = 1 if tricks[1] == rules.TRICKS_TO_WIN_HAND else 2
        assert tricks[winner] == rules.TRICKS_TO_WIN_HAND and record.winner_team == winner
        loser_tricks = tricks[3 - winner]
        hakem_team = rules.team_of_seat(hakem)
        expected = 1 if loser_tricks else (2 if winner == hakem_team else 3)
        assert record.points == expected, f"hand {number}: {tricks} scored {record.points}"
        points_seen.append(expected)
        assert max(scores.values()) < rules.POINTS_TO_WIN_GAME, "a hand was played after the game was won"
        scores[winner] += expected
        hakem = hakem if rules.team_of_seat(hakem) == winner else (hakem + 1) % 4
    assert (game.team1_score, game.team2_score) == (scores[1], scores[2])
    return {"scores": scores, "points": points_seen}


def test_rules_values_and_helpers() -> None:
    assert [rules.team_of_seat(s) for s in rules.SEATS] == [1, 2, 1, 2]
    assert [rules.next_seat(s) for s in rules.SEATS] == [1, 2, 3, 0]
    assert rules.hand_points(1, 3, 2) == 1
    assert rules.hand_points(1, 0, 1) == rules.POINTS_KOT == 2
    assert rules.hand_points(2, 0, 1) == rules.POINTS_KOT_AGAINST_HAKEM == 3
    assert rules.next_hakem_seat(2, 1) == 2 and rules.next_hakem_seat(2, 2) == 3
    assert rules.card_name(rules.card_of("hearts", 10)) == "10H" and rules.card_name(rules.card_of("spades", 14)) == "AS"
    spades_2, hearts_a, hearts_k = rules.card_of("spades", 2), rules.card_of("hearts", 14), rules.card_of("hearts", 13)
    assert rules.trick_winner_index([hearts_k, hearts_a, spades_2], rules.SUIT_INDEX["spades"]) == 2
    assert rules.trick_winner_index([hearts_k, spades_2, hearts_a], rules.SUIT_INDEX["clubs"]) == 2
    assert rules.legal_cards([hearts_a, spades_2], rules.SUIT_INDEX["hearts"]) == [hearts_a]
    assert (rules.RATING_MIN, rules.RATING_MAX) == (0, 3000)


def test_every_started_game_replays_by_the_rules(games: list[SimulatedGame]) -> None:
    replayed = [_replay(g) for g in games if g.started_at is not None]
    assert len(replayed) > 300


def test_kot_is_scored_two_or_three(games: list[SimulatedGame]) -> None:
    points = Counter(p for g in games if g.started_at is not None for p in _replay(g)["points"])
    assert points[1] > 0 and points[2] > 0 and points[3] > 0, f"no kot of each kind in the sample: {points}"


def test_first_hakem_is_dealt_the_first_ace(games: list[SimulatedGame]) -> None:
    for game in (g for g in games if g.started_at is not None):
        deal = game.face_up_deal
        assert rules.rank_of(deal[-1]) == rules.ACE
        assert all(rules.rank_of(c) != rules.ACE for c in deal[:-1])
        assert game.first_hakem_seat == (len(deal) - 1) % 4
        assert game.hakem_player_id == game.seat_players[game.first_hakem_seat]


def test_completed_games_end_at_seven_points(games: list[SimulatedGame]) -> None:
    completed = [g for g in games if g.status == "completed"]
    for game in completed:
        scores = {1: game.team1_score, 2: game.team2_score}
        assert scores[game.winning_team] >= rules.POINTS_TO_WIN_GAME > scores[3 - game.winning_team]
        assert game.current_round == len(game.hands)
        assert game.trump_suit == game.hands[-1].trump
        assert game.created_at < game.started_at < game.completed_at <= ANCHOR
        assert [s[1] for s in game.stats] == [game.seat_players[s] for s in rules.SEATS]
        assert all(s[7] == (s[2] == game.winning_team) for s in game.stats)
        assert sum(s[3] for s in game.stats) == sum(sum(h.team_tricks) for h in game.hands)


def test_running_games_stop_inside_a_hand(games: list[SimulatedGame]) -> None:
    running = [g for g in games if g.status in ("active", "abandoned") and g.started_at is not None]
    assert running
    for game in running:
        assert game.winning_team is None and game.completed_at is None and game.stats == []
        assert max(game.team1_score, game.team2_score) < rules.POINTS_TO_WIN_GAME
        last = game.hands[-1]
        assert last.winner_team is None and max(last.team_tricks) < rules.TRICKS_TO_WIN_HAND
        assert game.moves[-1][HAND] == game.current_round == last.number
        assert game.game_state["phase"] == "playing" and game.game_state["hand"] == last.number
        assert game.moves[-1][AT] <= ANCHOR


def test_waiting_and_unstarted_games_have_no_moves(games: list[SimulatedGame]) -> None:
    lobby = [g for g in games if g.started_at is None]
    assert {g.status for g in lobby} == {"waiting", "abandoned"}
    sizes = Counter(len(g.participants) for g in lobby)
    assert set(sizes) <= {0, 1, 2, 3} and len(sizes) > 1
    for game in lobby:
        assert game.moves == [] and game.hakem_player_id is None and game.trump_suit is None
        assert game.current_round == 0 and (game.team1_score, game.team2_score) == (0, 0)
        assert len({p[2] for p in game.participants}) == len(game.participants)
        assert all(p[3] == rules.team_of_seat(p[2]) for p in game.participants)


def test_status_mix_is_realistic() -> None:
    plans = plan_games(4000, random_seed=5, anchor=ANCHOR)
    share = {k: v / len(plans) for k, v in Counter(p.status for p in plans).items()}
    assert 0.75 < share["completed"] < 0.85
    assert 0.05 < share["active"] < 0.11 and 0.04 < share["waiting"] < 0.10 and 0.02 < share["abandoned"] < 0.08
    assert any(p.started for p in plans if p.status == "abandoned")
    assert any(not p.started for p in plans if p.status == "abandoned")
    assert [p.created_at for p in plans] == sorted(p.created_at for p in plans)
    assert all(ANCHOR - timedelta(days=30) <= p.created_at < ANCHOR for p in plans)


def test_generation_is_deterministic() -> None:
    first, again, other = _games(30, seed=3), _games(30, seed=3), _games(30, seed=4)
    assert [(g.game_row(), g.participants, g.moves) for g in first] == [
        (g.game_row(), g.participants, g.moves) for g in again]
    assert [g.moves for g in first] != [g.moves for g in other]


def test_a_cut_game_is_a_prefix_of_its_completed_twin() -> None:
    plan = next(p for p in plan_games(200, random_seed=9, anchor=ANCHOR) if p.status == "active")
    cut = simulate_game(plan, game_id=1, player_pool=POOL)
    full = simulate_game(GamePlan(plan.index, "completed", True, plan.created_at, plan.seed), game_id=1,
                         player_pool=POOL)
    assert 0 < len(cut.moves) < len(full.moves)
    assert full.moves[: len(cut.moves)] == cut.moves


def test_needs_a_full_table_of_players() -> None:
    with pytest.raises(ValueError, match="needs 4 players"):
        next(generate_games(1, player_pool=[1, 2, 3], game_ids=[1], random_seed=1, anchor=ANCHOR))


def test_completed_games_from_other_seeds_replay_by_the_rules() -> None:
    """More games, independent of the module sample's seed and status mix."""
    rng = random.Random(2)
    plans = [GamePlan(i, "completed", True, ANCHOR - timedelta(days=1), rng.getrandbits(63)) for i in range(60)]
    for plan in plans:
        _replay(simulate_game(plan, game_id=plan.index + 1, player_pool=POOL, record_hands=True))
