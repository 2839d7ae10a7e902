"""Each integrity check catches its own invariant, and only its own.

For every invariant a seeded database (rule-abiding: all checks pass) is corrupted so
that exactly that invariant breaks; where the schema would refuse the corruption, the
test drops the constraint first, as a faulty migration or a manual fix would. The check
must name the offending id, every other check must stay green (so a check cannot pass
by accident of a neighbour), and the window must leave the corruption out once it is old.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import pytest

from hokm_profile import rules
from hokm_profile.invariants import INVARIANTS, INVARIANTS_BY_NUMBER, InvariantResult, run_all
from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase

WINDOW = timedelta(days=7)
RECENT = "g.created_at >= now() - interval '6 days'"
AGE = "interval '60 days'"


@dataclass(frozen=True)
class Broken:
    """What a corruption did: the id the check must report, and how to make it old."""

    offending: int | str
    age_sql: str  # moves the corrupted data out of the window


Corruption = Callable[[asyncpg.Connection], Awaitable[Broken]]


@pytest.fixture
async def conn(seeded_db: ThrowawayDatabase) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(seeded_db.dsn)
    try:
        yield connection
    finally:
        await connection.close()


# -- helpers -------------------------------------------------------------------------------


async def _drop_constraint(conn: asyncpg.Connection, table: str, kind: str, *columns: str) -> None:
    """Drop the constraint of ``kind`` (f, u, c) on exactly ``columns``, found in the catalog."""
    name = await conn.fetchval(
        """SELECT conname FROM pg_constraint c
            WHERE conrelid = $1::regclass AND contype::text = $2
              AND (SELECT array_agg(attname::text ORDER BY attname) FROM pg_attribute
                    WHERE attrelid = c.conrelid AND attnum = ANY (c.conkey)) = $3::text[]""",
        table, kind, sorted(columns),
    )
    assert name, f"no {kind} constraint on {table}({', '.join(columns)}) to drop"
    await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')


async def _game(conn: asyncpg.Connection, condition: str) -> int:
    game_id = await conn.fetchval(f"SELECT g.id FROM game_sessions g WHERE {condition} ORDER BY g.id LIMIT 1")
    assert game_id is not None, f"the seed holds no game where {condition}"
    return int(game_id)


def _age_game(game_id: int) -> str:
    return f"UPDATE game_sessions SET created_at = created_at - {AGE} WHERE id = {game_id}"


async def _outsider(conn: asyncpg.Connection, game_id: int) -> int:
    """A player who does not sit in ``game_id``."""
    return int(await conn.fetchval(
        "SELECT id FROM players WHERE id NOT IN (SELECT player_id FROM game_participants WHERE game_id = $1)"
        " ORDER BY id LIMIT 1", game_id))


async def _side_card(conn: asyncpg.Connection) -> tuple[int, int, int, dict[str, object]]:
    """A card play that neither leads nor wins its trick, in a recent completed game:
    (game id, move id, trick winner's move id, a card from another trick of the same hand
    in a suit that is neither trump nor led, so it cannot change who wins)."""
    rows = await conn.fetch(
        f"""SELECT m.id, m.game_id, m.hand_number, m.trick_number, m.sequence_number, m.player_id,
                   m.card_suit::text AS suit, m.card_rank AS rank, t.card_suit::text AS trump
              FROM moves m JOIN game_sessions g ON g.id = m.game_id
              JOIN moves t ON t.game_id = m.game_id AND t.hand_number = m.hand_number AND t.trick_number = 0
             WHERE g.status = 'completed' AND {RECENT} AND m.trick_number > 0
             ORDER BY m.game_id, m.sequence_number LIMIT 4000"""
    )
    tricks: dict[tuple[int, int, int], list[asyncpg.Record]] = {}
    for row in rows:
        tricks.setdefault((row["game_id"], row["hand_number"], row["trick_number"]), []).append(row)
    for (game, hand, _trick), cards in tricks.items():
        if len(cards) != rules.PLAYERS_PER_GAME:
            continue
        trump = cards[0]["trump"]
        ints = [rules.card_of(c["suit"], c["rank"]) for c in cards]
        winner = cards[rules.trick_winner_index(ints, rules.SUIT_INDEX[trump])]
        led = cards[0]["suit"]
        for victim in cards[1:]:
            if victim is winner:
                continue
            donors = [r for key, others in tricks.items() if key[:2] == (game, hand) and others is not cards
                      for r in others if r["suit"] not in (trump, led)]
            if donors:
                return game, victim["id"], winner["id"], {"suit": donors[0]["suit"], "rank": donors[0]["rank"],
                                                          "player": winner["player_id"]}
    raise AssertionError("the seed holds no trick with a replaceable card")


# -- one corruption per invariant -------------------------------------------------------------


async def fifth_participant(conn: asyncpg.Connection) -> Broken:
    game = await _game(conn, "g.status = 'waiting'")
    await _drop_constraint(conn, "game_participants", "u", "game_id", "seat")
    players = await conn.fetch(
        "SELECT id FROM players WHERE id NOT IN (SELECT player_id FROM game_participants WHERE game_id = $1)"
        " ORDER BY id LIMIT 5", game)
    have = await conn.fetchval("SELECT count(*) FROM game_participants WHERE game_id = $1", game)
    for row in players[: 5 - have]:
        await conn.execute("INSERT INTO game_participants (game_id, player_id, seat, team) VALUES ($1, $2, 0, 1)",
                           game, row["id"])
    return Broken(game, _age_game(game))


async def seat_on_wrong_team(conn: asyncpg.Connection) -> Broken:
    game = await _game(conn, "g.status = 'waiting' AND EXISTS (SELECT 1 FROM game_participants p WHERE p.game_id = g.id)")
    await conn.execute(
        "UPDATE game_participants SET team = 3 - team WHERE id = (SELECT min(id) FROM game_participants WHERE game_id = $1)",
        game)
    return Broken(game, _age_game(game))


async def active_with_empty_seats(conn: asyncpg.Connection) -> Broken:
    game = await _game(conn, "g.status = 'waiting'")
    await conn.execute("UPDATE game_sessions SET status = 'active', started_at = created_at + interval '1 minute'"
                       " WHERE id = $1", game)
    return Broken(game, _age_game(game))


async def completed_before_started(conn: asyncpg.Connection) -> Broken:
    game = await _game(conn, f"g.status = 'completed' AND {RECENT}")
    await conn.execute("UPDATE game_sessions SET completed_at = started_at - interval '1 minute' WHERE id = $1", game)
    return Broken(game, _age_game(game))


async def gap_in_sequence(conn: asyncpg.Connection) -> Broken:
    game = await _game(conn, f"g.status = 'completed' AND {RECENT}")
    await conn.execute(
        "UPDATE moves SET sequence_number = sequence_number + 1 WHERE game_id = $1"
        " AND sequence_number = (SELECT max(sequence_number) FROM moves WHERE game_id = $1)", game)
    return Broken(game, _age_game(game))


async def card_played_twice(conn: asyncpg.Connection) -> Broken:
    game, victim, _winner, donor = await _side_card(conn)
    await conn.execute("UPDATE moves SET card_suit = $2::card_suit, card_rank = $3 WHERE id = $1",
                       victim, donor["suit"], donor["rank"])
    return Broken(game, _age_game(game))


async def player_plays_twice_in_a_trick(conn: asyncpg.Connection) -> Broken:
    game, victim, _winner, donor = await _side_card(conn)
    await conn.execute("UPDATE moves SET player_id = $2 WHERE id = $1", victim, donor["player"])
    return Broken(game, _age_game(game))


async def trump_named_by_partner(conn: asyncpg.Connection) -> Broken:
    game = await _game(conn, f"g.status = 'completed' AND g.current_round >= 3 AND {RECENT}")
    await conn.execute(
        """UPDATE moves m SET player_id = partner.player_id
             FROM game_participants hakem, game_participants partner
            WHERE m.game_id = $1 AND m.hand_number = 2 AND m.trick_number = 0
              AND hakem.game_id = m.game_id AND hakem.player_id = m.player_id
              AND partner.game_id = m.game_id AND partner.seat = (hakem.seat + 2) % 4""", game)
    return Broken(game, _age_game(game))


async def hand_stopped_short(conn: asyncpg.Connection) -> Broken:
    """Remove the last trick of hand 1 and close the gap in sequence numbers."""
    game = await _game(conn, f"g.status = 'completed' AND g.current_round >= 2 AND {RECENT}")
    last = await conn.fetchrow(
        "SELECT max(trick_number) AS trick, max(sequence_number) AS seq FROM moves WHERE game_id = $1 AND hand_number = 1",
        game)
    await conn.execute("DELETE FROM moves WHERE game_id = $1 AND hand_number = 1 AND trick_number = $2",
                       game, last["trick"])
    await conn.execute("UPDATE moves SET sequence_number = sequence_number + 100000 WHERE game_id = $1"
                       " AND sequence_number > $2", game, last["seq"])
    await conn.execute("UPDATE moves SET sequence_number = sequence_number - 100004 WHERE game_id = $1"
                       " AND sequence_number > 100000", game)
    return Broken(game, _age_game(game))


async def score_not_earned(conn: asyncpg.Connection) -> Broken:
    game = await _game(conn, "g.status = 'active'")
    await conn.execute(
        f"UPDATE game_sessions SET team1_score = CASE WHEN team1_score < {rules.POINTS_TO_WIN_GAME - 1}"
        " THEN team1_score + 1 ELSE team1_score - 1 END WHERE id = $1", game)
    return Broken(game, _age_game(game))


async def hakem_not_seated(conn: asyncpg.Connection) -> Broken:
    game = await _game(conn, "g.status = 'waiting'")
    await conn.execute("UPDATE game_sessions SET hakem_player_id = $2 WHERE id = $1", game, await _outsider(conn, game))
    return Broken(game, _age_game(game))


async def statistics_row_missing(conn: asyncpg.Connection) -> Broken:
    game = await _game(conn, f"g.status = 'completed' AND {RECENT}")
    await conn.execute("DELETE FROM player_game_stats WHERE id = (SELECT max(id) FROM player_game_stats WHERE game_id = $1)",
                       game)
    return Broken(game, _age_game(game))


async def loser_marked_winner(conn: asyncpg.Connection) -> Broken:
    game = await _game(conn, f"g.status = 'completed' AND {RECENT}")
    await conn.execute("UPDATE player_game_stats SET is_winner = true WHERE game_id = $1 AND NOT is_winner", game)
    return Broken(game, _age_game(game))


def _age_player(player: int) -> str:
    return (f"UPDATE game_sessions SET created_at = created_at - {AGE}"
            f" WHERE id IN (SELECT game_id FROM game_participants WHERE player_id = {player})")


async def total_games_inflated(conn: asyncpg.Connection) -> Broken:
    player = int(await conn.fetchval(
        f"SELECT min(p.player_id) FROM game_participants p JOIN game_sessions g ON g.id = p.game_id"
        f" WHERE g.status = 'completed' AND {RECENT}"))
    await conn.execute("UPDATE players SET total_games = total_games + 1, losses = losses + 1 WHERE id = $1", player)
    return Broken(player, _age_player(player))


async def rating_out_of_bounds(conn: asyncpg.Connection) -> Broken:
    player = int(await conn.fetchval(
        f"SELECT min(p.player_id) FROM game_participants p JOIN game_sessions g ON g.id = p.game_id WHERE {RECENT}"))
    await _drop_constraint(conn, "players", "c", "rating")
    await conn.execute("UPDATE players SET rating = $2 WHERE id = $1", player, rules.RATING_MAX + 500)
    return Broken(player, _age_player(player))


async def moves_of_a_deleted_game(conn: asyncpg.Connection) -> Broken:
    game = await _game(conn, "g.status = 'active' AND EXISTS (SELECT 1 FROM moves m WHERE m.game_id = g.id)")
    move = await conn.fetchval("SELECT min(id) FROM moves WHERE game_id = $1", game)
    await _drop_constraint(conn, "moves", "f", "game_id")
    await conn.execute("DELETE FROM game_sessions WHERE id = $1", game)
    # Windowed, orphans count from the first game id of the window on: age every game up to it.
    return Broken(f"moves {move} -> game_sessions {game}",
                  f"UPDATE game_sessions SET created_at = created_at - {AGE} WHERE id <= {game}")


async def participant_of_a_deleted_player(conn: asyncpg.Connection) -> Broken:
    game = await _game(conn, "g.status = 'waiting' AND EXISTS (SELECT 1 FROM game_participants p WHERE p.game_id = g.id)")
    row = await conn.fetchval("SELECT min(id) FROM game_participants WHERE game_id = $1", game)
    await _drop_constraint(conn, "game_participants", "f", "player_id")
    await conn.execute("UPDATE game_participants SET player_id = 987654321 WHERE id = $1", row)
    return Broken(f"game_participants {row} -> players 987654321",
                  f"UPDATE game_sessions SET created_at = created_at - {AGE} WHERE id <= {game}")


CASES: list[tuple[int, Corruption]] = [
    (1, fifth_participant), (1, seat_on_wrong_team),
    (2, active_with_empty_seats),
    (3, completed_before_started),
    (4, gap_in_sequence),
    (5, card_played_twice), (5, player_plays_twice_in_a_trick),
    (6, trump_named_by_partner),
    (7, hand_stopped_short), (7, score_not_earned),
    (8, hakem_not_seated),
    (9, statistics_row_missing), (9, loser_marked_winner),
    (10, total_games_inflated), (10, rating_out_of_bounds),
    (11, moves_of_a_deleted_game), (11, participant_of_a_deleted_player),
]


async def _failures(conn: asyncpg.Connection, window: timedelta | None) -> dict[int, InvariantResult]:
    return {inv.number: result for inv, result in await run_all(conn, window=window) if not result.ok}


async def test_the_seed_passes_every_check(conn: asyncpg.Connection) -> None:
    for window in (None, WINDOW):
        failed = await _failures(conn, window)
        assert failed == {}, "\n".join(r.message for r in failed.values())


def test_every_invariant_has_a_corruption_case() -> None:
    assert sorted({number for number, _ in CASES}) == [inv.number for inv in INVARIANTS] == list(range(1, 12))


@pytest.mark.parametrize(("number", "corrupt"), CASES, ids=[f"{n}-{fn.__name__}" for n, fn in CASES])
async def test_check_catches_exactly_its_invariant(conn: asyncpg.Connection, number: int, corrupt: Corruption) -> None:
    broken = await corrupt(conn)
    invariant = INVARIANTS_BY_NUMBER[number]

    failed = await _failures(conn, None)
    assert set(failed) == {number}, "\n".join(r.message for r in failed.values())
    result = failed[number]
    assert result.count >= 1 and broken.offending in result.offending_ids, result
    assert result.message.startswith(f"invariant {number} ({invariant.name}): ")
    assert str(broken.offending) in result.message

    windowed = await invariant.run(conn, window=WINDOW)
    assert not windowed.ok and broken.offending in windowed.offending_ids, windowed.message

    await conn.execute(broken.age_sql)
    aged = await invariant.run(conn, window=WINDOW)
    assert aged.ok, f"the window should leave out data from {AGE} ago: {aged.message}"
    assert not (await invariant.run(conn, window=None)).ok, "a full scan must still see it"


async def test_sample_limit_bounds_the_ids_but_not_the_count(conn: asyncpg.Connection) -> None:
    games = [r["id"] for r in await conn.fetch(
        "SELECT id FROM game_sessions WHERE status = 'completed' ORDER BY id LIMIT 4")]
    await conn.execute("UPDATE game_sessions SET completed_at = started_at - interval '1 minute' WHERE id = ANY($1)",
                       games)
    result = await INVARIANTS_BY_NUMBER[3].run(conn, window=None, sample_limit=2)
    assert result.count == 4 and result.offending_ids == games[:2]
    assert f"{len(games)} games have a status" in result.message and "(first 2 of 4)" in result.message


async def test_checks_run_in_a_read_only_session(conn: asyncpg.Connection) -> None:
    """Staging and production sessions are read-only; every check must work there."""
    await conn.execute("SET default_transaction_read_only = on")
    for window in (None, WINDOW):
        results = await run_all(conn, window=window)
        assert all(r.ok for _inv, r in results), [r.message for _inv, r in results if not r.ok]
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        await conn.execute("UPDATE players SET rating = rating")


async def test_windowed_checks_use_the_created_at_index(conn: asyncpg.Connection) -> None:
    """With history behind it, the window is an index range on game_sessions, not a scan
    of every game (the point of the window on a server with millions of games)."""
    await conn.execute(
        "INSERT INTO game_sessions (room_code, status, created_at) SELECT 'old' || i, 'abandoned',"
        " now() - interval '90 days' - i * interval '1 minute' FROM generate_series(1, 30000) AS i")
    await conn.execute("ANALYZE game_sessions")
    for number in (1, 4, 6):
        sql = INVARIANTS_BY_NUMBER[number].query(windowed=True)
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", 10, WINDOW, 2000))
        assert "ix_game_sessions_status_created_at" in plan, plan
        assert "Seq Scan on game_sessions" not in plan, plan


async def test_windowed_checks_look_at_no_more_than_the_newest_max_games(conn: asyncpg.Connection) -> None:
    """On a busy server the window alone can hold millions of games: a smoke run examines
    only the newest ``max_games`` of them, and says so."""
    oldest_in_window = await conn.fetchval(
        "SELECT id FROM game_sessions WHERE status = 'completed' AND created_at >= now() - $1::interval"
        " ORDER BY created_at, id LIMIT 1",
        WINDOW,
    )
    await conn.execute("ALTER TABLE game_participants DROP CONSTRAINT uq_game_participants_game_id_seat")
    await conn.execute("UPDATE game_participants SET seat = 0 WHERE game_id = $1", oldest_in_window)
    invariant = INVARIANTS_BY_NUMBER[1]
    newest_only = await invariant.run(conn, window=WINDOW, max_games=5)
    assert newest_only.ok, newest_only.message
    assert "the newest 5 games created in the last" in newest_only.message
    everything_in_window = await invariant.run(conn, window=WINDOW, max_games=100_000)
    assert not everything_in_window.ok and oldest_in_window in everything_in_window.offending_ids
