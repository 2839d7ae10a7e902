"""The SQL of Hokm's data invariants: rule values rendered as SQL, the window of games a
smoke run looks at, and one statement per invariant that selects ``bad(id, reason)``.

Why SQL and not Python: the checks run against databases with 10^8 moves, so the database
does the work and only a handful of offending ids come back. Rule values (seats and teams,
trick and point targets, kot scoring, rating bounds) come from ``hokm_profile.rules`` so that
a variant changes in one place.
"""

from __future__ import annotations

from hokm_profile import rules

DEFAULT_SAMPLE_LIMIT = 10
DEFAULT_MAX_GAMES = 1000

# --- rule values rendered as SQL -------------------------------------------------------


def _team_of_seat_sql(seat: str) -> str:
    arms = " ".join(f"WHEN {s} THEN {rules.team_of_seat(s)}" for s in rules.SEATS)
    return f"(CASE {seat} {arms} END)"


def _hand_points_sql(winner: str, loser_tricks: str, hakem_team: str) -> str:
    return (
        f"(CASE WHEN {loser_tricks} > 0 THEN {rules.POINTS_HAND_WIN} "
        f"WHEN {winner} = {hakem_team} THEN {rules.POINTS_KOT} ELSE {rules.POINTS_KOT_AGAINST_HAKEM} END)"
    )


def _next_hakem_sql(hakem_seat: str, winner_team: str) -> str:
    return (
        f"(CASE WHEN {_team_of_seat_sql(hakem_seat)} = {winner_team} THEN {hakem_seat} "
        f"ELSE ({hakem_seat} + 1) % {rules.PLAYERS_PER_GAME} END)"
    )


SEVEN = rules.TRICKS_TO_WIN_HAND
TARGET = rules.POINTS_TO_WIN_GAME
IN_PLAY = "('active', 'abandoned')"  # statuses whose last trick may be unfinished


def moves_of_g(windowed: bool) -> str:
    """``m``: the moves of the games in ``g``.

    Windowed, ``g`` holds a bounded number of games and the planner overestimates their
    moves (a quarter of them are waiting or just started), so it would hash-join a
    sequential scan of all of ``moves``; a LATERAL lookup per game walks the
    ``(game_id, sequence_number)`` index instead. A full scan keeps the hash join.
    """
    if windowed:
        # OFFSET 0 keeps the planner from pulling the subquery up into a plain join.
        return "g CROSS JOIN LATERAL (SELECT * FROM moves mv WHERE mv.game_id = g.id OFFSET 0) m"
    return "moves m JOIN g ON g.id = m.game_id"


def window_games_sql(window_param: str, limit_param: str, columns: str = "*") -> str:
    """The newest games created within the window: bounded by time and by count.

    One backward walk of ``ix_game_sessions_status_created_at`` per status, each stopping
    after ``limit`` games, then the newest ``limit`` of those: at most statuses x ``limit``
    index entries are read, however many games the window holds. A single ``ORDER BY
    created_at`` over ``status = ANY (...)`` cannot use that index's order (status comes
    first): it sorted every game of the window, and on smaller tables the planner chose a
    sequential scan that called ``enum_range()`` once per row. ``columns``: of ``w``.
    """
    return (
        f"SELECT w.{columns} FROM unnest(enum_range(NULL::game_status)) AS st(status)"
        " CROSS JOIN LATERAL (SELECT * FROM game_sessions gs WHERE gs.status = st.status"
        f" AND gs.created_at >= now() - {window_param}::interval"
        f" ORDER BY gs.created_at DESC, gs.id DESC LIMIT {limit_param}) w"
        f" ORDER BY w.created_at DESC, w.id DESC LIMIT {limit_param}"
    )


#: The first game id of the window (or one past the last game when the window is empty).
FIRST_GAME_SQL = (
    "SELECT coalesce(min(id), (SELECT coalesce(max(id), 0) + 1 FROM game_sessions))"
    f" FROM ({window_games_sql('$1', '$2', 'id')}) w"
)


def games_cte(windowed: bool) -> str:
    """``g``: the games under examination (windowed: see ``window_games_sql``)."""
    if not windowed:
        return "g AS (SELECT * FROM game_sessions)"
    # Bounded twice: by time ($2) and by count ($3, the newest games first), so the cost of a
    # smoke run does not grow with a busy day's traffic (10^7 games, 10^8 moves).
    return f"g AS ({window_games_sql('$2', '$3')})"


# --- the checks' SQL (the part after "WITH g AS (...), "; must define bad(id, reason)) ---

SQL_1 = f"""
p AS (SELECT gp.* FROM game_participants gp JOIN g ON g.id = gp.game_id),
bad(id, reason) AS (
    SELECT game_id, format('%s participants (at most {rules.PLAYERS_PER_GAME})', count(*))
      FROM p GROUP BY game_id HAVING count(*) > {rules.PLAYERS_PER_GAME}
    UNION ALL
    SELECT game_id, format('seat %s is outside {min(rules.SEATS)}..{max(rules.SEATS)}', seat)
      FROM p WHERE seat NOT BETWEEN {min(rules.SEATS)} AND {max(rules.SEATS)}
    UNION ALL
    SELECT game_id, format('seat %s is taken %s times', seat, count(*)) FROM p GROUP BY game_id, seat HAVING count(*) > 1
    UNION ALL
    SELECT game_id, format('player %s sits %s times', player_id, count(*))
      FROM p GROUP BY game_id, player_id HAVING count(*) > 1
    UNION ALL
    SELECT game_id, format('player %s on seat %s is in team %s, seat %s plays for team %s',
                           player_id, seat, team, seat, {_team_of_seat_sql('seat')})
      FROM p WHERE team IS DISTINCT FROM {_team_of_seat_sql('seat')}
)"""

SQL_2 = f"""
bad(id, reason) AS (
    SELECT g.id, format('%s game has %s participants', g.status, count(p.id))
      FROM g LEFT JOIN game_participants p ON p.game_id = g.id
     WHERE g.status IN ('active', 'completed')
     GROUP BY g.id, g.status HAVING count(p.id) <> {rules.PLAYERS_PER_GAME}
)"""

SQL_3 = f"""
bad(id, reason) AS (
    SELECT g.id, r.reason
      FROM g CROSS JOIN LATERAL (VALUES
        (g.status = 'waiting' AND (g.started_at IS NOT NULL OR g.completed_at IS NOT NULL),
         'waiting game has started_at/completed_at set (it cannot go back to waiting)'),
        (g.status IN ('waiting', 'active', 'abandoned') AND g.winning_team IS NOT NULL,
         format('%s game has winning_team %s (only completed games have a winner)', g.status, g.winning_team)),
        (g.status = 'waiting' AND (g.team1_score <> 0 OR g.team2_score <> 0),
         format('waiting game has scores %s-%s', g.team1_score, g.team2_score)),
        (g.status = 'active' AND g.started_at IS NULL, 'active game has no started_at'),
        (g.status = 'active' AND g.completed_at IS NOT NULL, 'active game has completed_at set'),
        (g.status = 'active' AND greatest(g.team1_score, g.team2_score) >= {TARGET},
         format('active game has scores %s-%s: a team reached {TARGET}, the game should have ended',
                g.team1_score, g.team2_score)),
        (g.status = 'completed' AND g.started_at IS NULL, 'completed game never started (no started_at)'),
        (g.status = 'completed' AND g.completed_at IS NULL, 'completed game has no completed_at'),
        (g.status = 'completed' AND g.winning_team IS NULL, 'completed game has no winning_team'),
        (g.status = 'completed' AND g.winning_team IS NOT NULL
            AND (CASE g.winning_team WHEN 1 THEN g.team1_score ELSE g.team2_score END) < {TARGET},
         format('winning team %s has %s points (needs {TARGET})', g.winning_team,
                CASE g.winning_team WHEN 1 THEN g.team1_score ELSE g.team2_score END)),
        (g.status = 'completed' AND g.winning_team IS NOT NULL
            AND (CASE g.winning_team WHEN 1 THEN g.team2_score ELSE g.team1_score END) >= {TARGET},
         format('losing team also has %s points', CASE g.winning_team WHEN 1 THEN g.team2_score ELSE g.team1_score END)),
        (g.started_at < g.created_at, format('started_at %s is before created_at %s', g.started_at, g.created_at)),
        (g.completed_at < g.started_at,
         format('completed_at %s is before started_at %s', g.completed_at, g.started_at)),
        (g.completed_at IS NOT NULL AND g.started_at IS NULL, 'completed_at is set but started_at is not'),
        (g.completed_at < g.created_at,
         format('completed_at %s is before created_at %s', g.completed_at, g.created_at))
      ) AS r(broken, reason)
     WHERE r.broken
)"""

SQL_4 = """
bad(id, reason) AS (
    SELECT m.game_id,
           format('%s moves numbered %s..%s (%s distinct numbers)', count(*), min(m.sequence_number),
                  max(m.sequence_number), count(DISTINCT m.sequence_number))
      FROM __MOVES_OF_G__
     GROUP BY m.game_id
    HAVING min(m.sequence_number) <> 1 OR max(m.sequence_number) <> count(*)
        OR count(DISTINCT m.sequence_number) <> count(*)
)"""

SQL_5 = f"""
plays AS (SELECT m.*, g.status FROM __MOVES_OF_G__
           WHERE m.move_type = 'card_play' AND m.trick_number > 0),
tricks AS (
    SELECT game_id, status, hand_number, trick_number, count(*) AS cards, count(DISTINCT player_id) AS players,
           max(hand_number) OVER (PARTITION BY game_id) AS last_hand,
           max(trick_number) OVER (PARTITION BY game_id, hand_number) AS last_trick,
           count(*) OVER (PARTITION BY game_id, hand_number) AS tricks_in_hand
      FROM plays GROUP BY game_id, status, hand_number, trick_number
),
bad(id, reason) AS (
    SELECT game_id, format('hand %s: the %s of %s is played %s times', hand_number, card_rank, card_suit, count(*))
      FROM plays GROUP BY game_id, hand_number, card_suit, card_rank HAVING count(*) > 1
    UNION ALL
    SELECT game_id, format('hand %s trick %s: %s cards from %s players', hand_number, trick_number, cards, players)
      FROM tricks
     WHERE cards > {rules.PLAYERS_PER_GAME} OR players <> cards
        OR (cards < {rules.PLAYERS_PER_GAME}
            AND NOT (status IN {IN_PLAY} AND hand_number = last_hand AND trick_number = last_trick))
    UNION ALL
    SELECT DISTINCT game_id, format('hand %s: tricks are not numbered 1..%s', hand_number, tricks_in_hand)
      FROM tricks WHERE last_trick <> tricks_in_hand
)"""

# Trick winners and hand results, shared by invariants 6 and 7. Built as one pass of
# window functions and aggregates over the window's moves (no joins between derived
# tables: their row estimates are poor, and a nested loop over them costs seconds).
HANDS = f"""
m AS (
    SELECT m.game_id, m.hand_number, m.trick_number, m.sequence_number, m.player_id, m.move_type,
           m.card_suit, m.card_rank, s.seat, {_team_of_seat_sql('s.seat')} AS team,
           g.status, g.hakem_player_id AS game_hakem
      FROM __MOVES_OF_G__
      LEFT JOIN game_participants s ON s.game_id = m.game_id AND s.player_id = m.player_id
),
m1 AS (
    SELECT m.*,
           max(card_suit::text) FILTER (WHERE move_type = 'trump_selection')
               OVER (PARTITION BY game_id, hand_number) AS trump,
           first_value(card_suit::text) OVER trick AS led,
           count(*) OVER (PARTITION BY game_id, hand_number, trick_number) AS cards
      FROM m
    WINDOW trick AS (PARTITION BY game_id, hand_number, trick_number ORDER BY sequence_number)
),
m2 AS (
    SELECT m1.*,
           (move_type = 'card_play' AND trick_number > 0 AND cards = {rules.PLAYERS_PER_GAME}
            AND row_number() OVER (
                PARTITION BY game_id, hand_number, trick_number
                ORDER BY CASE WHEN card_suit::text = trump THEN 100 + card_rank
                              WHEN card_suit::text = led THEN card_rank ELSE 0 END DESC,
                         sequence_number) = 1) AS takes_trick
      FROM m1
),
per_hand AS (
    SELECT game_id, hand_number, min(status::text) AS status, min(game_hakem) AS game_hakem,
           count(*) FILTER (WHERE takes_trick AND team = 1) AS t1,
           count(*) FILTER (WHERE takes_trick AND team = 2) AS t2,
           (array_agg(team ORDER BY trick_number DESC) FILTER (WHERE takes_trick))[1] AS last_team,
           max(trick_number) FILTER (WHERE takes_trick) AS last_won_trick,
           max(trick_number) AS max_trick,
           count(*) FILTER (WHERE move_type = 'trump_selection') AS choices,
           min(sequence_number) FILTER (WHERE move_type = 'trump_selection') AS choice_seq,
           min(sequence_number) FILTER (WHERE move_type = 'card_play') AS first_play_seq,
           count(*) FILTER (WHERE (move_type = 'trump_selection') <> (trick_number = 0)) AS misnumbered,
           (array_agg(player_id ORDER BY sequence_number) FILTER (WHERE move_type = 'trump_selection'))[1]
               AS hakem_id,
           (array_agg(seat ORDER BY sequence_number) FILTER (WHERE move_type = 'trump_selection'))[1] AS hakem_seat,
           (array_agg(player_id ORDER BY sequence_number)
               FILTER (WHERE move_type = 'card_play' AND trick_number = 1))[1] AS leader_id
      FROM m2 GROUP BY game_id, hand_number
),
hands AS (
    SELECT h.*, CASE WHEN t1 >= {SEVEN} THEN 1 WHEN t2 >= {SEVEN} THEN 2 END AS winner,
           max(hand_number) OVER (PARTITION BY game_id) AS last_hand,
           count(*) OVER (PARTITION BY game_id) AS hand_count
      FROM per_hand h
)"""

SQL_6 = HANDS + f""",
rotation AS (
    SELECT game_id, hand_number, hakem_seat,
           lag(hakem_seat) OVER w AS prev_hakem_seat, lag(winner) OVER w AS prev_winner,
           lag(hand_number) OVER w AS prev_hand
      FROM hands WINDOW w AS (PARTITION BY game_id ORDER BY hand_number)
),
bad(id, reason) AS (
    SELECT game_id, format('hand %s has %s trump choices', hand_number, choices) FROM hands WHERE choices <> 1
    UNION ALL
    SELECT game_id, format('hand %s: trump named at move %s, after the first card (move %s)',
                           hand_number, choice_seq, first_play_seq)
      FROM hands WHERE choice_seq > first_play_seq
    UNION ALL
    SELECT game_id, format('hand %s: %s moves where trick_number 0 and trump_selection disagree',
                           hand_number, misnumbered)
      FROM hands WHERE misnumbered > 0
    UNION ALL
    SELECT DISTINCT game_id, format('hands are not numbered 1..%s', hand_count)
      FROM hands WHERE last_hand <> hand_count
    UNION ALL
    SELECT game_id, format('hand %s: trump named by player %s but trick 1 led by player %s (the hakem leads)',
                           hand_number, hakem_id, leader_id)
      FROM hands WHERE leader_id <> hakem_id
    UNION ALL
    SELECT game_id, format('hand 1: trump named by player %s, but the game''s hakem is %s', hakem_id, game_hakem)
      FROM hands WHERE hand_number = 1 AND choices > 0 AND hakem_id IS DISTINCT FROM game_hakem
    UNION ALL
    SELECT game_id, format('hand %s: hakem on seat %s, but after hand %s (hakem seat %s, won by team %s) '
                           'it should be seat %s', hand_number, hakem_seat, prev_hand, prev_hakem_seat,
                           prev_winner, {_next_hakem_sql('prev_hakem_seat', 'prev_winner')})
      FROM rotation
     WHERE prev_winner IS NOT NULL AND prev_hand = hand_number - 1 AND hakem_seat IS NOT NULL
       AND prev_hakem_seat IS NOT NULL
       AND hakem_seat <> {_next_hakem_sql('prev_hakem_seat', 'prev_winner')}
)"""

SQL_7 = HANDS + f""",
points AS (
    SELECT game_id,
           sum(CASE WHEN winner = 1 THEN {_hand_points_sql('winner', 't2', _team_of_seat_sql('hakem_seat'))}
                    ELSE 0 END) AS p1,
           sum(CASE WHEN winner = 2 THEN {_hand_points_sql('winner', 't1', _team_of_seat_sql('hakem_seat'))}
                    ELSE 0 END) AS p2
      FROM hands GROUP BY game_id
),
bad(id, reason) AS (
    SELECT game_id, format('hand %s: team 1 took %s tricks, team 2 took %s (at most {SEVEN})', hand_number, t1, t2)
      FROM hands WHERE t1 > {SEVEN} OR t2 > {SEVEN}
    UNION ALL
    SELECT game_id, format('hand %s: play went on after team %s reached {SEVEN} tricks (to trick %s)',
                           hand_number, winner, max_trick)
      FROM hands WHERE winner IS NOT NULL AND (last_team <> winner OR max_trick > last_won_trick)
    UNION ALL
    SELECT game_id, format('hand %s ended %s-%s: no team reached {SEVEN} tricks', hand_number, t1, t2)
      FROM hands
     WHERE winner IS NULL AND NOT (hand_number = last_hand AND status IN {IN_PLAY})
    UNION ALL
    SELECT g.id, format('scores are %s-%s but the hands won give %s-%s', g.team1_score, g.team2_score,
                        coalesce(p.p1, 0), coalesce(p.p2, 0))
      FROM g LEFT JOIN points p ON p.game_id = g.id
     WHERE g.team1_score <> coalesce(p.p1, 0) OR g.team2_score <> coalesce(p.p2, 0)
)"""

SQL_8 = """
bad(id, reason) AS (
    SELECT g.id, format('hakem %s is not a participant', g.hakem_player_id)
      FROM g
     WHERE g.hakem_player_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM game_participants p WHERE p.game_id = g.id AND p.player_id = g.hakem_player_id)
)"""

SQL_9 = """
c AS (SELECT id, winning_team FROM g WHERE status = 'completed'),
bad(id, reason) AS (
    SELECT c.id, format('player %s has statistics but does not sit in the game', s.player_id)
      FROM c JOIN player_game_stats s ON s.game_id = c.id
      LEFT JOIN game_participants p ON p.game_id = c.id AND p.player_id = s.player_id
     WHERE p.id IS NULL
    UNION ALL
    SELECT c.id, format('participant %s has no statistics row', p.player_id)
      FROM c JOIN game_participants p ON p.game_id = c.id
      LEFT JOIN player_game_stats s ON s.game_id = c.id AND s.player_id = p.player_id
     WHERE s.id IS NULL
    UNION ALL
    SELECT c.id, format('player %s: statistics say team %s, the seat says team %s', s.player_id, s.team, p.team)
      FROM c JOIN player_game_stats s ON s.game_id = c.id
      JOIN game_participants p ON p.game_id = c.id AND p.player_id = s.player_id
     WHERE s.team <> p.team
    UNION ALL
    SELECT c.id, format('player %s: is_winner is %s but team %s won', s.player_id, s.is_winner, c.winning_team)
      FROM c JOIN player_game_stats s ON s.game_id = c.id
     WHERE s.is_winner IS DISTINCT FROM (s.team = c.winning_team)
)"""


def sql_10(windowed: bool) -> str:
    touched = (
        "SELECT DISTINCT gp.player_id AS id FROM game_participants gp JOIN g ON g.id = gp.game_id"
        if windowed else "SELECT id FROM players"
    )
    return f"""
touched AS ({touched}),
history AS (
    SELECT t.id, count(gs.id) AS played, count(gs.id) FILTER (WHERE gp.team = gs.winning_team) AS won
      FROM touched t
      LEFT JOIN game_participants gp ON gp.player_id = t.id
      LEFT JOIN game_sessions gs ON gs.id = gp.game_id AND gs.status = 'completed'
     GROUP BY t.id
),
bad(id, reason) AS (
    SELECT p.id, format('total_games is %s but the player finished %s games', p.total_games, h.played)
      FROM players p JOIN history h ON h.id = p.id WHERE p.total_games <> h.played
    UNION ALL
    SELECT p.id, format('wins is %s but the player won %s games', p.wins, h.won)
      FROM players p JOIN history h ON h.id = p.id WHERE p.wins <> h.won
    UNION ALL
    SELECT p.id, format('wins %s + losses %s <> total_games %s', p.wins, p.losses, p.total_games)
      FROM players p JOIN touched t ON t.id = p.id WHERE p.wins + p.losses <> p.total_games
    UNION ALL
    SELECT p.id, format('rating %s is outside {rules.RATING_MIN}..{rules.RATING_MAX}', p.rating)
      FROM players p JOIN touched t ON t.id = p.id
     WHERE p.rating NOT BETWEEN {rules.RATING_MIN} AND {rules.RATING_MAX}
)"""


#: (referencing table, column, referenced table, timestamp column for the window, or None
#: for games and the rows that belong to one: then those from the window's first game id on).
_REFERENCES: tuple[tuple[str, str, str, str | None], ...] = (
    ("moves", "game_id", "game_sessions", None),
    ("moves", "player_id", "players", None),
    ("game_participants", "game_id", "game_sessions", None),
    ("game_participants", "player_id", "players", None),
    ("player_game_stats", "game_id", "game_sessions", None),
    ("player_game_stats", "player_id", "players", None),
    ("websocket_connections", "player_id", "players", "connected_at"),
    ("websocket_connections", "game_id", "game_sessions", "connected_at"),
    ("game_sessions", "hakem_player_id", "players", None),
    ("user_preferences", "player_id", "players", "updated_at"),
)


def sql_11(windowed: bool) -> str:
    """Orphans. Windowed, game-scoped rows are taken from the first game id created in the
    window on (ids grow with time), which walks the ``(game_id, ...)`` unique indexes
    instead of the whole table; an orphan has no game row left to date it by."""
    parts = []
    for table, column, referenced, stamp in _REFERENCES:
        key = "player_id" if table == "user_preferences" else "id"
        where = [f"c.{column} IS NOT NULL",
                 f"NOT EXISTS (SELECT 1 FROM {referenced} r WHERE r.id = c.{column})"]
        if windowed:
            game_key = "id" if table == "game_sessions" else "game_id"
            where.append(f"c.{stamp} >= now() - $2::interval" if stamp else f"c.{game_key} >= $4::bigint")
        parts.append(
            f"SELECT format('{table} %s -> {referenced} %s', c.{key}, c.{column}),"
            f" format('{table}.{column} = %s has no row in {referenced}', c.{column})"
            f" FROM {table} c WHERE {' AND '.join(where)}"
        )
    return "bad(id, reason) AS (\n    " + "\n    UNION ALL\n    ".join(parts) + "\n)"
