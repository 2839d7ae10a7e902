"""The schema-dependent performance checks judge the revision the database is held to.

A database rolled back (or restored) to revision R must pass when it is what R builds and
fail when it lacks something R has. The hot queries declare, in data, the revision that
creates what their SQL reads (``since``) and the revision that creates their index
(``index_since``); these tests walk a seeded database down the real history and prove the
declarations exact: at every revision the checks held to it pass, a query runs exactly
from its ``since`` on, and its index exists exactly from its ``index_since`` on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from helpers import PROJECT_ROOT, assert_status, run_statements

from hokm_profile import hot_queries as hokm_hot
from pytest_hokmdb.checks import performance
from pytest_hokmdb.checks.base import CheckContext
from pytest_hokmdb.config.model import HotQuery
from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase
from pytest_hokmdb.migrate import adowngrade, alembic_config, script_directory

ContextFactory = Callable[..., Awaitable[CheckContext]]  # tests/conftest.py: check_context_factory
HOT = {q.name: q for q in hokm_hot.HOT_QUERIES}


def _history() -> list[str]:
    """The code's revisions, head first (the order a rollback walks them)."""
    script = script_directory(alembic_config(project_root=PROJECT_ROOT))
    return [rev.revision for rev in script.walk_revisions()]


def _includes(held: str, since: str | None) -> bool:
    return since is None or bool(performance.revision_includes(PROJECT_ROOT, held, since))


async def _plans(ctx: CheckContext, query: HotQuery) -> str | None:
    """The error planning ``query`` at this revision gives, or None when it plans."""
    run = await performance.run_hot_query(ctx.conn, query, hokm_hot.samples(1, 1, "test"), timed=False)
    return run.error


async def test_every_revision_passes_its_own_checks_and_the_declarations_are_exact(
    seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory
) -> None:
    history = _history()
    assert history[0] == "0008" and history[-1] == "0001", history
    declared = [q for q in hokm_hot.HOT_QUERIES if q.since or q.index_since]
    assert {q.name for q in declared} >= {"player_recent_games", "game_moves_in_order"}
    for revision in history:
        if revision != history[0]:
            await adowngrade(seeded_db.url, revision)
        ctx = await check_context_factory(seeded_db, target_revision=revision)
        hot = await performance.hot_queries(ctx)
        assert_status(hot, "passed")
        assert_status(await performance.no_seq_scan_on_indexed_lookup(ctx), "passed")
        for query in hokm_hot.HOT_QUERIES:
            error = await _plans(ctx, query)
            runs = _includes(revision, query.since)
            # Exact: the SQL plans at this revision if and only if the query is declared to run.
            assert (error is None) == runs, f"{query.name} at {revision}: since={query.since}, planning gave {error}"
            if not runs:
                assert f"{query.name} is not run: it reads what revision {query.since} creates, after {revision}" in hot.message
                continue
            if query.index_since:
                index = await performance.lookup_index(ctx.conn, query.expected_indexes[0])
                assert index.exists == _includes(revision, query.index_since), (query.name, revision, index)


async def test_held_to_an_older_revision_an_index_it_has_is_still_required(
    seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory
) -> None:
    """Rolled back to 0004 (before the moves' card columns), a database that lost an index
    0004 has fails hot_queries, naming the index and the revision-held notes."""
    await adowngrade(seeded_db.url, "0004")
    await run_statements(seeded_db, "DROP INDEX ix_players_rating_desc")
    result = await performance.hot_queries(await check_context_factory(seeded_db, target_revision="0004"))
    assert_status(result, "failed")
    assert "leaderboard_top_n does not use ix_players_rating_desc, which does not exist" in result.message
    assert "game_moves_in_order" not in result.message  # not run at 0004, so not blamed


async def test_a_scan_for_lack_of_an_index_the_revision_does_not_have_is_noted_not_failed(
    seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory
) -> None:
    """On a large game_participants, 0007 (no player_id index yet) scans it for a player's
    games: that is 0007's plan. At head the same scan means 0008's index was lost."""
    await run_statements(seeded_db, "DROP INDEX ix_game_participants_player_id")
    smoke = {"hot_queries": [HOT["player_recent_games"].model_dump()], "large_table_rows": 0}
    held = await performance.no_seq_scan_on_indexed_lookup(await check_context_factory(seeded_db, smoke=smoke, target_revision="0007"))
    assert_status(held, "passed")
    assert "held to 0007, whose migrations do not create these queries' indexes yet" in held.message
    assert "player_recent_games: Seq Scan on game_participants" in held.message
    at_head = await performance.no_seq_scan_on_indexed_lookup(await check_context_factory(seeded_db, smoke=smoke))
    assert_status(at_head, "failed")
    assert "player_recent_games: Seq Scan on game_participants" in at_head.message


async def test_a_since_the_history_does_not_know_fails_naming_the_query(
    seeded_db: ThrowawayDatabase, check_context_factory: ContextFactory
) -> None:
    """A typo in index_since must not excuse the index forever: the check fails and says why."""
    typo = HOT["player_recent_games"].model_copy(update={"index_since": "006"}).model_dump()
    ctx = await check_context_factory(seeded_db, smoke={"hot_queries": [typo]}, target_revision="0007")
    for check in (performance.hot_queries, performance.no_seq_scan_on_indexed_lookup):
        result = await check(ctx)
        assert_status(result, "failed")
        assert "smoke.hot_queries player_recent_games: index_since '006' is not a revision in this code's migration history" in result.message


def test_ancestry_follows_the_revision_graph_not_the_spelling() -> None:
    assert performance.revision_includes(PROJECT_ROOT, "0007", "0008") is False
    assert performance.revision_includes(PROJECT_ROOT, "0008", "0008") is True
    assert performance.revision_includes(PROJECT_ROOT, None, "0008") is True  # held to the code's head
    assert performance.revision_includes(PROJECT_ROOT, "0002", "0001") is True
    assert performance.revision_includes(PROJECT_ROOT, "0007", "nope") is None
    # A held revision the code does not know excuses nothing (schema.at_expected_revision names it).
    assert performance.revision_includes(PROJECT_ROOT, "9999", "0008") is True
