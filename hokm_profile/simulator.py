"""A deterministic Hokm game simulator that produces rule-abiding rows for the seed.

Why a simulator and not random rows: the integrity checks (hokm-domain.md, invariants
1..11) replay tricks, trump choices and scores from ``moves``; seed data must satisfy
them, so it has to come from games actually played by the rules.

Everything is driven by ``random.Random`` instances seeded from one number, so the same
arguments always produce the same games (the seed loader's idempotency depends on it).
Rows come out as plain tuples in the column order of the ``*_COLUMNS`` constants, ready
for ``asyncpg.Connection.copy_records_to_table``; the hot loop avoids objects per card
because generation speed bounds seeding speed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hokm_profile import rules
from hokm_profile.rules import SUITS

GAME_COLUMNS: tuple[str, ...] = (
    "id", "room_code", "status", "hakem_player_id", "trump_suit", "current_round", "game_state",
    "team1_score", "team2_score", "winning_team", "created_at", "started_at", "completed_at",
)
PARTICIPANT_COLUMNS: tuple[str, ...] = ("game_id", "player_id", "seat", "team", "joined_at")
MOVE_COLUMNS: tuple[str, ...] = (
    "game_id", "player_id", "sequence_number", "hand_number", "trick_number",
    "move_type", "card_suit", "card_rank", "created_at",
)
STATS_COLUMNS: tuple[str, ...] = (
    "game_id", "player_id", "team", "tricks_won", "hands_won", "hands_as_hakem",
    "points_scored", "is_winner", "created_at",
)

TRUMP_SELECTION = "trump_selection"
CARD_PLAY = "card_play"

#: Share of each status among generated games (abandoned split below).
STATUS_WEIGHTS: dict[str, float] = {"completed": 0.80, "active": 0.08, "waiting": 0.07, "abandoned": 0.05}
#: Share of abandoned games that had started (stopped mid-hand) rather than never filled.
ABANDONED_AFTER_START = 0.6
#: Share of card choices made at random (among legal cards) instead of by the heuristic,
#: so that games vary and sweeps (kot) happen at a realistic rate.
RANDOM_PLAY_SHARE = 0.15
#: Time window the generated games fall in, before the anchor ("now").
HISTORY_SPAN = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class GamePlan:
    """What to generate for one game, decided before ids are reserved."""

    index: int
    status: str
    started: bool
    created_at: datetime
    seed: int

    @property
    def room_code(self) -> str:
        return f"seed-{self.index:06d}"


@dataclass(slots=True)
class HandRecord:
    """One played hand, kept only when asked (tests replay it against the rules)."""

    number: int
    hakem_seat: int
    trump: str
    dealt: tuple[tuple[int, ...], ...]  # per seat, in deal order: the hakem's first 5 were his preview
    tricks: list[tuple[int, tuple[int, ...], int]] = field(default_factory=list)  # (leader, cards, winner)
    team_tricks: tuple[int, int] = (0, 0)
    winner_team: int | None = None
    points: int = 0


@dataclass(slots=True)
class SimulatedGame:
    """One game's rows (``id`` is the reserved ``game_sessions.id``)."""

    id: int
    room_code: str
    status: str
    hakem_player_id: int | None
    trump_suit: str | None
    current_round: int
    game_state: dict[str, Any]
    team1_score: int
    team2_score: int
    winning_team: int | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    participants: list[tuple[Any, ...]]
    moves: list[tuple[Any, ...]]
    stats: list[tuple[Any, ...]]
    seat_players: dict[int, int]
    first_hakem_seat: int | None = None
    face_up_deal: tuple[int, ...] = ()
    hands: list[HandRecord] = field(default_factory=list)

    def game_row(self) -> tuple[Any, ...]:
        """The ``game_sessions`` row in ``GAME_COLUMNS`` order (game_state as JSON text)."""
        return (
            self.id, self.room_code, self.status, self.hakem_player_id, self.trump_suit,
            self.current_round, json.dumps(self.game_state, sort_keys=True),
            self.team1_score, self.team2_score, self.winning_team,
            self.created_at, self.started_at, self.completed_at,
        )


class _Stopped(Exception):
    """Raised inside the play loop when an in-progress game reaches its stop point."""


def plan_games(count: int, *, random_seed: int, anchor: datetime) -> list[GamePlan]:
    """Statuses and creation times for ``count`` games, oldest first.

    Oldest first because ids are handed out in this order, like a live server's
    identity column, so "recent" and "high id" agree (the windowed checks rely on it).
    Finished games lie in the last ``HISTORY_SPAN``; games still running or waiting
    were created in the last hours, where a live server has them.
    """
    rng = random.Random(random_seed)
    statuses = list(STATUS_WEIGHTS)
    weights = list(STATUS_WEIGHTS.values())
    span_s = HISTORY_SPAN.total_seconds()
    raw: list[tuple[datetime, str, bool, int]] = []
    for _ in range(count):
        status = rng.choices(statuses, weights)[0]
        started = status in ("completed", "active") or (
            status == "abandoned" and rng.random() < ABANDONED_AFTER_START
        )
        if status == "active":
            age_s = rng.uniform(3600, 3 * 3600)
        elif status == "waiting":
            age_s = rng.uniform(600, 3600)
        else:
            age_s = rng.uniform(4 * 3600, span_s)
        created = anchor - timedelta(seconds=round(age_s, 3))
        raw.append((created, status, started, rng.getrandbits(63)))
    raw.sort(key=lambda item: item[0])
    return [GamePlan(i, status, started, created, seed) for i, (created, status, started, seed) in enumerate(raw)]


def _choose_trump(preview: Sequence[int]) -> int:
    """The hakem names the suit he holds most of among his first five cards
    (ties: the higher ranks, then the lower suit index)."""
    counts = [0, 0, 0, 0]
    strength = [0, 0, 0, 0]
    for card in preview:
        counts[card // 13] += 1
        strength[card // 13] += card % 13
    return max(range(4), key=lambda s: (counts[s], strength[s], -s))


def _face_up_until_ace(rng: random.Random) -> tuple[int, tuple[int, ...]]:
    """Deal face up from seat 0 until an ace shows; its receiver is the first hakem."""
    deck = list(range(rules.DECK_SIZE))
    rng.shuffle(deck)
    for i, card in enumerate(deck):
        if card % 13 == rules.ACE - rules.MIN_RANK:
            return i % rules.PLAYERS_PER_GAME, tuple(deck[: i + 1])
    raise AssertionError("a 52-card deck always holds an ace")  # pragma: no cover


def _deal(rng: random.Random, hakem: int) -> list[list[int]]:
    """Shuffle and deal 5-4-4 starting with the hakem; each seat's list is in deal order,
    so ``hands[hakem][:5]`` are the cards the hakem saw before naming trump."""
    deck = list(range(rules.DECK_SIZE))
    rng.shuffle(deck)
    hands: list[list[int]] = [[], [], [], []]
    for i in range(4):
        seat = (hakem + i) % 4
        hands[seat] = deck[5 * i: 5 * i + 5] + deck[20 + 4 * i: 24 + 4 * i] + deck[36 + 4 * i: 40 + 4 * i]
    return hands


def _pick_card(
    rng: random.Random, held: list[list[int]], trump: int, led: int,
    best_power: int, partner_winning: bool,
) -> int:
    """Choose a legal card (suit*13 + rank index) and remove it from ``held``.

    ``held`` is one seat's cards as four ascending lists of rank indexes (0..12), one per
    suit. ``led`` is -1 when this seat leads. A simple heuristic (win cheaply, else
    throw the lowest), mixed with random legal choices.
    """
    if led >= 0 and held[led]:
        suits = (led,)
    else:
        suits = tuple(s for s in range(4) if held[s])
    if rng.random() < RANDOM_PLAY_SHARE:
        suit = suits[0] if len(suits) == 1 else rng.choice(suits)
        ranks = held[suit]
        return suit * 13 + ranks.pop(rng.randrange(len(ranks)))
    if led < 0:  # leading: cash an ace or king of a side suit, else lead low from a random suit
        for suit in suits:
            if suit != trump and held[suit][-1] >= 11:
                return suit * 13 + held[suit].pop()
        suit = suits[0] if len(suits) == 1 else rng.choice(suits)
        return suit * 13 + held[suit].pop(0)
    if held[led]:  # must follow suit
        ranks = held[led]
        if not partner_winning and best_power < 100 and ranks[-1] > best_power:
            return led * 13 + ranks.pop()
        return led * 13 + ranks.pop(0)
    trumps = held[trump]
    if trumps and not partner_winning:
        need = best_power - 100 if best_power >= 100 else -1
        for i, rank in enumerate(trumps):
            if rank > need:
                return trump * 13 + trumps.pop(i)
    side = [s for s in suits if s != trump] or [trump]
    suit = min(side, key=lambda s: held[s][0])
    return suit * 13 + held[suit].pop(0)


def simulate_game(
    plan: GamePlan, *, game_id: int, player_pool: Sequence[int], record_hands: bool = False,
) -> SimulatedGame:
    """Play (or set up) one game according to ``plan`` with players drawn from the pool.

    An active game, or one abandoned after it started, is the same game as its completed
    twin cut after a random move: the game is played once to learn its length, then
    replayed from the same seed up to a stop point strictly inside a hand.
    """
    if plan.status == "completed" or not plan.started:
        return _simulate(plan, game_id, player_pool, record_hands, stop_after=None)
    full = _simulate(plan, game_id, player_pool, False, stop_after=None)
    total = len(full.moves)
    cut = random.Random(plan.seed ^ 0x5EED).randrange(1, total)
    if full.moves[cut][4] == 0:  # the next move is a trump choice: stop after it, inside that hand
        cut += 1
    return _simulate(plan, game_id, player_pool, record_hands, stop_after=cut)


def _seat_players(rng: random.Random, pool: Sequence[int], count: int) -> dict[int, int]:
    """Random distinct players on random seats (a full table when count is 4)."""
    players = [pool[i] for i in rng.sample(range(len(pool)), count)]
    seats = sorted(rng.sample(rules.SEATS, count))
    return dict(zip(seats, players))


def _lobby(plan: GamePlan, game_id: int, rng: random.Random, seat_players: dict[int, int]) -> tuple[
    list[tuple[Any, ...]], datetime
]:
    """Participant rows; players join a few seconds to minutes after the room opens."""
    rows = []
    t = plan.created_at
    for seat in sorted(seat_players, key=lambda _s: rng.random()):
        t += timedelta(seconds=round(rng.uniform(2, 60), 3))
        rows.append((game_id, seat_players[seat], seat, rules.team_of_seat(seat), t))
    rows.sort(key=lambda r: r[2])
    return rows, t


def _simulate(
    plan: GamePlan, game_id: int, pool: Sequence[int], record_hands: bool, stop_after: int | None,
) -> SimulatedGame:
    rng = random.Random(plan.seed)
    if not plan.started:
        size = rng.randint(0, rules.PLAYERS_PER_GAME - 1)
        seat_players = _seat_players(rng, pool, size)
        participants, _ = _lobby(plan, game_id, rng, seat_players)
        return SimulatedGame(
            id=game_id, room_code=plan.room_code, status=plan.status, hakem_player_id=None,
            trump_suit=None, current_round=0,
            game_state={"phase": "lobby", "seats_taken": sorted(seat_players)},
            team1_score=0, team2_score=0, winning_team=None,
            created_at=plan.created_at, started_at=None, completed_at=None,
            participants=participants, moves=[], stats=[], seat_players=seat_players,
        )

    seat_players = _seat_players(rng, pool, rules.PLAYERS_PER_GAME)
    participants, last_join = _lobby(plan, game_id, rng, seat_players)
    started_at = last_join + timedelta(seconds=round(rng.uniform(1, 10), 3))
    pids = [seat_players[s] for s in rules.SEATS]
    first_hakem, face_up = _face_up_until_ace(rng)

    moves: list[tuple[Any, ...]] = []
    append = moves.append
    hands_log: list[HandRecord] = []
    scores = [0, 0, 0]  # by team (index 0 unused)
    tricks_by_seat = [0, 0, 0, 0]
    hands_won = [0, 0, 0]
    hakem_hands = [0, 0, 0, 0]
    hakem = first_hakem
    hand_no = trick_no = 0
    seq = 0
    elapsed = 0.0
    trump = -1
    tricks = [0, 0, 0]
    trick_cards: list[int] = []
    turn = hakem
    record: HandRecord | None = None
    random_ = rng.random
    try:
        while True:
            hand_no += 1
            hakem_hands[hakem] += 1
            dealt = _deal(rng, hakem)
            trump = _choose_trump(dealt[hakem][: rules.HAKEM_PREVIEW_CARDS])
            record = HandRecord(hand_no, hakem, SUITS[trump], tuple(tuple(h) for h in dealt)) if record_hands else None
            held = []
            for cards in dealt:
                by_suit: list[list[int]] = [[], [], [], []]
                for c in sorted(cards):
                    by_suit[c // 13].append(c % 13)
                held.append(by_suit)
            seq += 1
            trick_no = 0
            tricks = [0, 0, 0]
            trick_cards = []
            turn = hakem
            elapsed += 8 + 12 * random_()
            append((game_id, pids[hakem], seq, hand_no, 0, TRUMP_SELECTION, SUITS[trump], None,
                    started_at + timedelta(seconds=round(elapsed, 3))))
            if seq == stop_after:
                raise _Stopped
            leader = hakem
            while tricks[1] < rules.TRICKS_TO_WIN_HAND and tricks[2] < rules.TRICKS_TO_WIN_HAND:
                trick_no += 1
                trick_cards = []
                led = -1
                best_power = -1
                best_seat = leader
                turn = leader
                for _ in range(4):
                    card = _pick_card(rng, held[turn], trump, led, best_power, best_seat == (turn + 2) % 4)
                    suit = card // 13
                    if led < 0:
                        led = suit
                    power = 100 + card % 13 if suit == trump else (card % 13 if suit == led else -1)
                    if power > best_power:
                        best_power, best_seat = power, turn
                    trick_cards.append(card)
                    seq += 1
                    elapsed += 1 + 2 * random_()
                    append((game_id, pids[turn], seq, hand_no, trick_no, CARD_PLAY, SUITS[suit], card % 13 + 2,
                            started_at + timedelta(seconds=round(elapsed, 3))))
                    turn = (turn + 1) % 4
                    if seq == stop_after:
                        raise _Stopped
                tricks[1 if best_seat % 2 == 0 else 2] += 1
                tricks_by_seat[best_seat] += 1
                if record is not None:
                    record.tricks.append((leader, tuple(trick_cards), best_seat))
                leader = best_seat
                trick_cards = []
            winner = 1 if tricks[1] == rules.TRICKS_TO_WIN_HAND else 2
            points = rules.hand_points(winner, tricks[3 - winner], rules.team_of_seat(hakem))
            scores[winner] += points
            hands_won[winner] += 1
            if record is not None:
                record.team_tricks = (tricks[1], tricks[2])
                record.winner_team, record.points = winner, points
                hands_log.append(record)
            if scores[winner] >= rules.POINTS_TO_WIN_GAME:
                break
            hakem = rules.next_hakem_seat(hakem, winner)
            elapsed += 10 + 10 * random_()
    except _Stopped:
        if record is not None:
            record.team_tricks = (tricks[1], tricks[2])
            hands_log.append(record)
        end = started_at + timedelta(seconds=round(elapsed, 3))
        return SimulatedGame(
            id=game_id, room_code=plan.room_code, status=plan.status, hakem_player_id=pids[first_hakem],
            trump_suit=SUITS[trump], current_round=hand_no,
            game_state={
                "phase": "playing", "hand": hand_no, "trick": trick_no, "hakem_seat": hakem,
                "turn_seat": turn, "tricks": {"team1": tricks[1], "team2": tricks[2]},
                "table": [rules.card_name(c) for c in trick_cards],
                "scores": {"team1": scores[1], "team2": scores[2]}, "last_move_at": end.isoformat(),
            },
            team1_score=scores[1], team2_score=scores[2], winning_team=None,
            created_at=plan.created_at, started_at=started_at, completed_at=None,
            participants=participants, moves=moves, stats=[], seat_players=seat_players,
            first_hakem_seat=first_hakem, face_up_deal=face_up, hands=hands_log,
        )

    winner_team = 1 if scores[1] >= rules.POINTS_TO_WIN_GAME else 2
    completed_at = started_at + timedelta(seconds=round(elapsed + 5, 3))
    stats = [
        (game_id, pids[s], rules.team_of_seat(s), tricks_by_seat[s], hands_won[rules.team_of_seat(s)],
         hakem_hands[s], scores[rules.team_of_seat(s)], rules.team_of_seat(s) == winner_team, completed_at)
        for s in rules.SEATS
    ]
    return SimulatedGame(
        id=game_id, room_code=plan.room_code, status="completed", hakem_player_id=pids[first_hakem],
        trump_suit=SUITS[trump], current_round=hand_no,
        game_state={
            "phase": "finished", "hands_played": hand_no, "final_hakem_seat": hakem,
            "scores": {"team1": scores[1], "team2": scores[2]}, "winner": f"team{winner_team}",
        },
        team1_score=scores[1], team2_score=scores[2], winning_team=winner_team,
        created_at=plan.created_at, started_at=started_at, completed_at=completed_at,
        participants=participants, moves=moves, stats=stats, seat_players=seat_players,
        first_hakem_seat=first_hakem, face_up_deal=face_up, hands=hands_log,
    )


def generate_games(
    count: int, *, player_pool: Sequence[int], game_ids: Sequence[int], random_seed: int,
    anchor: datetime, record_hands: bool = False,
) -> Iterator[SimulatedGame]:
    """Yield ``count`` simulated games, oldest first, with ``game_ids`` handed out in order.

    ``player_pool`` must hold at least 4 player ids; ``game_ids`` at least ``count``
    ascending ids (reserved from the identity sequence by the loader).
    """
    if len(player_pool) < rules.PLAYERS_PER_GAME:
        raise ValueError(f"a game needs {rules.PLAYERS_PER_GAME} players; the pool has {len(player_pool)}")
    if len(game_ids) < count:
        raise ValueError(f"{count} games need {count} ids; got {len(game_ids)}")
    for plan, game_id in zip(plan_games(count, random_seed=random_seed, anchor=anchor), game_ids):
        yield simulate_game(plan, game_id=game_id, player_pool=player_pool, record_hands=record_hands)
