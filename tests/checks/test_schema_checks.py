"""The schema checks pass on a database at head and fail, naming the problem, on one broken on purpose."""

from __future__ import annotations

import asyncpg
from helpers import run_statements

from pytest_hokmdb.checks import schema
from pytest_hokmdb.checks.schema import normalise_type
from pytest_hokmdb.migrate import adowngrade


def test_type_spellings_of_catalog_and_models_compare_equal() -> None:
    assert normalise_type("character varying(32)") == normalise_type("VARCHAR(32)")
    assert normalise_type("timestamp with time zone") == normalise_type("TIMESTAMP WITH TIME ZONE")
    assert normalise_type("timestamp(3) without time zone") == normalise_type("TIMESTAMP(3)")
    assert normalise_type("double precision") == normalise_type("FLOAT")
    assert normalise_type("numeric(10,2)") == normalise_type("NUMERIC(10, 2)")
    assert normalise_type("integer[]") == normalise_type("INTEGER[]")
    assert normalise_type("integer") != normalise_type("SMALLINT")
    assert normalise_type("character varying(32)") != normalise_type("VARCHAR(64)")


# -- schema.at_expected_revision ---------------------------------------------------------------


async def test_revision_passes_at_head(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await schema.at_expected_revision(await check_context_factory(hokmdb_fresh_db))
    assert result.status == "passed", result.message
    assert result.measured == "0008"


async def test_revision_fails_one_behind_head(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await adowngrade(hokmdb_fresh_db.url, "0007")
    result = await schema.at_expected_revision(await check_context_factory(hokmdb_fresh_db))
    assert result.status == "failed"
    assert "at revision 0007, 1 revision behind 0008" in result.message
    assert "deploy" in result.message


async def test_revision_passes_at_explicit_target(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await adowngrade(hokmdb_fresh_db.url, "0007")
    result = await schema.at_expected_revision(await check_context_factory(hokmdb_fresh_db, target_revision="0007"))
    assert result.status == "passed", result.message
    assert "--target-revision 0007" in result.message


async def test_revision_fails_ahead_of_explicit_target(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await schema.at_expected_revision(await check_context_factory(hokmdb_fresh_db, target_revision="0004"))
    assert result.status == "failed"
    assert "at revision 0008, 4 revisions ahead of 0004 (--target-revision 0004)" in result.message


async def test_revision_fails_for_a_target_the_code_does_not_know(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await schema.at_expected_revision(await check_context_factory(hokmdb_fresh_db, target_revision="9999"))
    assert result.status == "failed"
    assert "target revision '9999' is not in this code's migration history" in result.message


async def test_revision_fails_on_a_database_never_migrated(hokmdb_empty_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await schema.at_expected_revision(await check_context_factory(hokmdb_empty_db))
    assert result.status == "failed"
    assert "no recorded revision" in result.message and "0008" in result.message


# -- schema.matches_models ---------------------------------------------------------------------


async def test_models_match_a_seeded_database(seeded_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await schema.matches_models(await check_context_factory(seeded_db))
    assert result.status == "passed", result.message
    assert "8 tables" in result.message


async def test_a_database_held_to_an_earlier_revision_is_compared_with_what_that_revision_builds(
    hokmdb_fresh_db, check_context_factory
) -> None:  # type: ignore[no-untyped-def]
    """A rollback or point-in-time restore to before a deploy is judged against its own revision:
    0007 has no ix_game_participants_player_id, so its absence is right there; a broken 0007 fails."""
    await run_statements(hokmdb_fresh_db, "DROP INDEX ix_game_participants_player_id")
    held = await schema.matches_models(await check_context_factory(hokmdb_fresh_db, target_revision="0007"))
    assert held.status == "passed", held.message
    assert "schema matches what revision 0007 builds" in held.message
    at_head = await schema.matches_models(await check_context_factory(hokmdb_fresh_db, target_revision="0008"))
    assert at_head.status == "failed" and "missing index ix_game_participants_player_id" in at_head.message
    await run_statements(hokmdb_fresh_db, "DROP INDEX ix_players_rating_desc")
    broken = await schema.matches_models(await check_context_factory(hokmdb_fresh_db, target_revision="0007"))
    assert broken.status == "failed", broken.message
    assert "held to revision 0007" in broken.message and "ix_players_rating_desc" in broken.message


async def test_a_project_without_models_is_compared_with_what_its_migrations_build(
    hokmdb_fresh_db, check_context_factory, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """No profile and ``metadata = false``: the check cannot use models, so it compares with a
    reference built from the migrations at head (fail closed: it still looks)."""
    import shutil
    from dataclasses import replace

    from helpers import PROJECT_ROOT

    shutil.copytree(PROJECT_ROOT / "migrations", tmp_path / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "alembic.ini", tmp_path / "alembic.ini")
    (tmp_path / "pyproject.toml").write_text("[tool.hokmdb.migrations]\nmetadata = false\n")
    ctx = replace(await check_context_factory(hokmdb_fresh_db), project_root=tmp_path)
    assert ctx.profile.name == "none"
    result = await schema.matches_models(ctx)
    assert result.status == "passed", result.message
    assert "schema matches what revision 0008 builds" in result.message
    await run_statements(hokmdb_fresh_db, "DROP INDEX ix_players_rating_desc")
    broken = await schema.matches_models(ctx)
    assert broken.status == "failed", broken.message
    assert "the project has no models (metadata = false)" in broken.message
    assert "ix_players_rating_desc" in broken.message and "If the database is behind, deploy" in broken.message


async def test_models_ignore_alembic_and_tool_tables(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(hokmdb_fresh_db, "CREATE TABLE hokmdb_deploy_log (id int PRIMARY KEY, note text)")
    result = await schema.matches_models(await check_context_factory(hokmdb_fresh_db))
    assert result.status == "passed", result.message


async def test_models_drift_names_each_difference(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(
        hokmdb_fresh_db,
        "DROP INDEX ix_game_participants_player_id",
        "ALTER TABLE moves ALTER COLUMN card_rank TYPE integer",
        "ALTER TABLE players ALTER COLUMN email SET NOT NULL",
        "ALTER TABLE players ADD COLUMN nickname text",
        "ALTER TABLE moves DROP CONSTRAINT ck_moves_rank_matches_type",
        "CREATE TABLE scratch (id int)",
        "CREATE INDEX ix_players_display_name ON players (display_name)",
    )
    result = await schema.matches_models(await check_context_factory(hokmdb_fresh_db))
    assert result.status == "failed"
    expected_items = [
        "missing index ix_game_participants_player_id on game_participants",
        "column moves.card_rank is integer, models say smallint",
        "column players.email is NOT NULL, models say nullable",
        "unexpected column players.nickname (text)",
        "missing check constraint ck_moves_rank_matches_type on moves",
        "unexpected table scratch (1 column)",
        "unexpected index ix_players_display_name on players",
    ]
    for item in expected_items:
        assert item in result.message
        assert item in result.evidence["schema drift"]
    assert result.measured == len(expected_items)
    assert "migration" in result.message


async def test_models_drift_on_a_missing_table_and_enum_value(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(hokmdb_fresh_db, "DROP TABLE performance_metrics", "ALTER TYPE game_status ADD VALUE 'paused'")
    result = await schema.matches_models(await check_context_factory(hokmdb_fresh_db))
    assert result.status == "failed"
    assert "missing table performance_metrics" in result.message
    assert "enum type game_status has values ['waiting', 'active', 'completed', 'abandoned', 'paused']" in result.message


# -- schema.no_invalid_indexes -----------------------------------------------------------------


async def test_invalid_indexes_pass_at_head(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await schema.no_invalid_indexes(await check_context_factory(hokmdb_fresh_db))
    assert result.status == "passed", result.message


async def test_invalid_index_left_by_a_failed_concurrent_build(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(
        hokmdb_fresh_db,
        "INSERT INTO performance_metrics (metric_name, value) VALUES ('rtt', 1), ('rtt', 2)",
    )
    try:
        await run_statements(hokmdb_fresh_db, "CREATE UNIQUE INDEX CONCURRENTLY uq_metric_name ON performance_metrics (metric_name)")
    except asyncpg.UniqueViolationError:
        pass
    else:
        raise AssertionError("the concurrent unique build should have failed on the duplicate rows")
    result = await schema.no_invalid_indexes(await check_context_factory(hokmdb_fresh_db))
    assert result.status == "failed"
    assert "1 invalid index in schema public: uq_metric_name on performance_metrics" in result.message
    assert "DROP INDEX CONCURRENTLY public.uq_metric_name" in result.message
    assert "uq_metric_name" in result.evidence["invalid indexes"]


# -- schema.no_unvalidated_constraints ---------------------------------------------------------


async def test_unvalidated_constraints_pass_at_head(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    result = await schema.no_unvalidated_constraints(await check_context_factory(hokmdb_fresh_db))
    assert result.status == "passed", result.message


async def test_a_database_held_at_an_expand_revision_may_carry_what_it_leaves_not_valid(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    """0006 adds its checks NOT VALID and 0007 validates them: a database held at 0006 (the
    expand phase deployed, the contract waiting) passes; a NOT VALID constraint 0006 does not
    build still fails there, and at head nothing NOT VALID passes."""
    await adowngrade(hokmdb_fresh_db.url, "0006")
    held = await schema.no_unvalidated_constraints(await check_context_factory(hokmdb_fresh_db, target_revision="0006"))
    assert held.status == "passed", held.message
    assert "exactly as revision 0006 builds them" in held.message and "ck_moves_rank_range on moves" in held.message
    await run_statements(hokmdb_fresh_db, "ALTER TABLE players ADD CONSTRAINT ck_players_probe CHECK (rating >= 0) NOT VALID")
    extra = await schema.no_unvalidated_constraints(await check_context_factory(hokmdb_fresh_db, target_revision="0006"))
    assert extra.status == "failed", extra.message
    assert "ck_players_probe on players" in extra.message


async def test_not_valid_constraint_is_named_with_its_fix(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(
        hokmdb_fresh_db,
        "ALTER TABLE moves DROP CONSTRAINT ck_moves_rank_range, "
        "ADD CONSTRAINT ck_moves_rank_range CHECK (card_rank BETWEEN 2 AND 14) NOT VALID",
    )
    ctx = await check_context_factory(hokmdb_fresh_db)
    result = await schema.no_unvalidated_constraints(ctx)
    assert result.status == "failed"
    assert "ck_moves_rank_range on moves" in result.message
    assert "ALTER TABLE public.moves VALIDATE CONSTRAINT ck_moves_rank_range" in result.message
    # Same name, same kind: the drift check is not what catches this, this check is.
    assert (await schema.matches_models(ctx)).status == "passed"
