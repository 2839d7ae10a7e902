"""The rules of Hokm that shape the data, kept in one place.

The simulator, the seed loader and the integrity checks all read their numbers from
here (scoring values, seat/team mapping, rating bounds), because the rule variants
differ between servers and a value changed in one place must change everywhere.

Cards are small ints for speed in the simulator: ``card = suit_index * 13 + (rank - 2)``,
so ``0..12`` are hearts 2..A, ``13..25`` diamonds, ``26..38`` clubs, ``39..51`` spades.
The database stores them as (``card_suit`` enum, ``card_rank`` 2..14).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# --- cards ---------------------------------------------------------------------------
#: Suit names exactly as the ``card_suit`` enum spells them, in card-index order.
SUITS: tuple[str, ...] = ("hearts", "diamonds", "clubs", "spades")
SUIT_INDEX: dict[str, int] = {name: i for i, name in enumerate(SUITS)}
MIN_RANK = 2
MAX_RANK = 14  # the ace
JACK, QUEEN, KING, ACE = 11, 12, 13, 14
RANKS: tuple[int, ...] = tuple(range(MIN_RANK, MAX_RANK + 1))
RANK_NAMES: dict[int, str] = {**{r: str(r) for r in range(2, 11)}, JACK: "J", QUEEN: "Q", KING: "K", ACE: "A"}
DECK_SIZE = len(SUITS) * len(RANKS)  # 52
CARDS_PER_PLAYER = 13

# --- table ---------------------------------------------------------------------------
PLAYERS_PER_GAME = 4
SEATS: tuple[int, ...] = (0, 1, 2, 3)
TEAMS: tuple[int, int] = (1, 2)
#: Cards the hakem sees before naming trump.
HAKEM_PREVIEW_CARDS = 5

# --- scoring -------------------------------------------------------------------------
TRICKS_PER_HAND = 13
TRICKS_TO_WIN_HAND = 7
POINTS_HAND_WIN = 1
#: A 7-0 sweep by the hakem's team.
POINTS_KOT = 2
#: A 7-0 sweep of the hakem's team by the other team.
POINTS_KOT_AGAINST_HAKEM = 3
POINTS_TO_WIN_GAME = 7

# --- players -------------------------------------------------------------------------
RATING_MIN = 0
RATING_MAX = 3000
RATING_DEFAULT = 1000


def card_of(suit: str, rank: int) -> int:
    """The int card for a (suit name, rank 2..14) pair."""
    return SUIT_INDEX[suit] * 13 + (rank - MIN_RANK)


def suit_of(card: int) -> str:
    return SUITS[card // 13]


def rank_of(card: int) -> int:
    return card % 13 + MIN_RANK


def card_name(card: int) -> str:
    """Human form, e.g. ``'10H'`` or ``'AS'`` (the pre-0005 ``moves.card`` spelling)."""
    return f"{RANK_NAMES[rank_of(card)]}{suit_of(card)[0].upper()}"


def team_of_seat(seat: int) -> int:
    """Seats 0 and 2 are team 1, seats 1 and 3 team 2 (partners sit opposite)."""
    return 1 if seat % 2 == 0 else 2


def next_seat(seat: int) -> int:
    """The next player in turn order; always on the other team."""
    return (seat + 1) % PLAYERS_PER_GAME


def hand_points(winner_team: int, loser_tricks: int, hakem_team: int) -> int:
    """Points the winning team scores for one hand (kot variants live here)."""
    if loser_tricks > 0:
        return POINTS_HAND_WIN
    return POINTS_KOT if winner_team == hakem_team else POINTS_KOT_AGAINST_HAKEM


def next_hakem_seat(hakem_seat: int, hand_winner_team: int) -> int:
    """The hakem stays when his team won the hand, else the turn passes to the next seat."""
    return hakem_seat if team_of_seat(hakem_seat) == hand_winner_team else next_seat(hakem_seat)


def trick_winner_index(cards: Sequence[int], trump_suit_index: int) -> int:
    """Index in ``cards`` (play order) of the card that wins the trick.

    The highest trump wins, else the highest card of the suit led (the first card).
    """
    led = cards[0] // 13
    best_i, best_power = 0, -1
    for i, card in enumerate(cards):
        suit = card // 13
        if suit == trump_suit_index:
            power = 100 + card % 13
        elif suit == led:
            power = card % 13
        else:
            continue
        if power > best_power:
            best_i, best_power = i, power
    return best_i


def clamp_rating(rating: int) -> int:
    return max(RATING_MIN, min(RATING_MAX, rating))


def legal_cards(hand: Iterable[int], led_suit_index: int | None) -> list[int]:
    """Cards a player may play: any when leading, else the led suit when he holds it."""
    cards = list(hand)
    if led_suit_index is None:
        return cards
    following = [c for c in cards if c // 13 == led_suit_index]
    return following or cards
