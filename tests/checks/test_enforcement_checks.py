"""The enforcement checks pass on the Hokm database at head and fail, naming the object and
the fix, on one where a guarantee was switched off on purpose: triggers disabled (the
foreign keys' internal ones included), a trigger left in replica mode, replica mode set for
a database or a role, a DO INSTEAD rule, an unlogged table and sequence."""

from __future__ import annotations

import uuid

from helpers import assert_status, run_statements

from pytest_hokmdb.checks import enforcement


async def test_the_database_at_head_passes_every_enforcement_check(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    # What must not count: a view's _RETURN rule, a temporary table, a trigger that fires.
    await run_statements(
        hokmdb_fresh_db,
        "CREATE VIEW recent_moves AS SELECT * FROM moves",
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        "CREATE TRIGGER players_touch BEFORE UPDATE ON players FOR EACH ROW EXECUTE FUNCTION touch()",
    )
    ctx = await check_context_factory(hokmdb_fresh_db)
    await ctx.conn.execute("CREATE TEMPORARY TABLE scratch (id int)")
    for check in enforcement.CHECKS:
        assert_status(await check(ctx), "passed")


async def test_disabled_triggers_fail_naming_the_foreign_keys_they_enforce(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(
        hokmdb_fresh_db,
        "ALTER TABLE moves DISABLE TRIGGER ALL",
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        "CREATE TRIGGER players_touch BEFORE UPDATE ON players FOR EACH ROW EXECUTE FUNCTION touch()",
        "ALTER TABLE players ENABLE REPLICA TRIGGER players_touch",
    )
    ctx = await check_context_factory(hokmdb_fresh_db)
    foreign_key = await ctx.conn.fetchval(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'moves'::regclass AND contype = 'f' ORDER BY conname LIMIT 1")
    result = await enforcement.triggers_enabled(ctx)
    assert_status(result, "failed")
    assert f"foreign keys not enforced (their internal triggers are disabled): {foreign_key} on moves" in result.message
    assert "triggers that do not fire: players_touch on players (replica only)" in result.message
    assert "ALTER TABLE public.moves ENABLE TRIGGER ALL; ALTER TABLE public.players ENABLE TRIGGER ALL" in result.message


async def test_replica_mode_for_the_database_fails_and_says_how_to_reset_it(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    db = hokmdb_fresh_db
    await run_statements(db, f'ALTER DATABASE "{db.name}" SET session_replication_role = replica')
    result = await enforcement.replication_role_origin(await check_context_factory(db))
    assert_status(result, "failed")
    assert "sessions start with session_replication_role = replica (source: database)" in result.message
    assert f"session_replication_role=replica is set for role (every role) in database {db.name}" in result.message
    assert f"ALTER ROLE ALL IN DATABASE {db.name} RESET session_replication_role" in result.message
    assert "foreign keys and triggers are not enforced" in result.message


async def test_replica_mode_for_a_role_fails_even_for_another_session(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    """The checking session is not that role; the setting waits for the role's next login."""
    role = f"bulk_loader_{uuid.uuid4().hex[:8]}"
    await run_statements(hokmdb_fresh_db, f"CREATE ROLE {role} LOGIN", f"ALTER ROLE {role} SET session_replication_role = replica")
    try:
        result = await enforcement.replication_role_origin(await check_context_factory(hokmdb_fresh_db))
        assert_status(result, "failed")
        assert f"session_replication_role=replica is set for role {role} in database (every database)" in result.message
        assert f"ALTER ROLE {role} RESET session_replication_role" in result.message
    finally:
        await run_statements(hokmdb_fresh_db, f"DROP ROLE {role}")


async def test_a_do_instead_rule_fails_naming_it(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(hokmdb_fresh_db, "CREATE RULE swallow_moves AS ON INSERT TO moves DO INSTEAD NOTHING")
    result = await enforcement.no_rules(await check_context_factory(hokmdb_fresh_db))
    assert_status(result, "failed")
    assert "1 rewrite rule in schema public: swallow_moves on moves (DO INSTEAD)" in result.message
    assert "DROP RULE swallow_moves ON public.moves" in result.message


async def test_unlogged_relations_fail_naming_them(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(hokmdb_fresh_db, "CREATE UNLOGGED TABLE match_cache (id bigint PRIMARY KEY)",
                         "CREATE UNLOGGED SEQUENCE ticket_seq")
    result = await enforcement.tables_logged(await check_context_factory(hokmdb_fresh_db))
    assert_status(result, "failed")
    assert "2 unlogged relations in schema public: table match_cache, sequence ticket_seq" in result.message
    assert "ALTER TABLE public.match_cache SET LOGGED; ALTER SEQUENCE public.ticket_seq SET LOGGED" in result.message
    assert "A crash empties them" in result.message


async def test_row_security_without_a_policy_fails_and_with_one_passes(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(hokmdb_fresh_db, "ALTER TABLE moves ENABLE ROW LEVEL SECURITY",
                         "ALTER TABLE players ENABLE ROW LEVEL SECURITY", "ALTER TABLE players FORCE ROW LEVEL SECURITY")
    result = await enforcement.row_security_has_policies(await check_context_factory(hokmdb_fresh_db))
    assert_status(result, "failed")
    assert "row-level security is on without any policy for moves, players (forced, even for its owner) in schema public" \
        in result.message
    assert "ALTER TABLE public.moves DISABLE ROW LEVEL SECURITY" in result.message
    await run_statements(hokmdb_fresh_db, "CREATE POLICY everyone ON moves USING (true)",
                         "CREATE POLICY everyone ON players USING (true)")
    assert_status(await enforcement.row_security_has_policies(await check_context_factory(hokmdb_fresh_db)), "passed")


async def test_row_security_nobody_declared_fails_naming_the_table_and_its_policy(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    await run_statements(
        hokmdb_fresh_db,
        "ALTER TABLE players ENABLE ROW LEVEL SECURITY",
        "CREATE POLICY recent_only ON players FOR SELECT USING (created_at > now() - interval '1 day')",
    )
    result = await enforcement.row_security_as_declared(await check_context_factory(hokmdb_fresh_db))
    assert_status(result, "failed")
    assert "row-level security is on for table(s) the project does not declare" in result.message
    assert "players with policies recent_only (SELECT USING (created_at > (now() - '1 day'::interval)))" in result.message
    assert "ALTER TABLE public.players DISABLE ROW LEVEL SECURITY" in result.message
    assert "add the table to smoke.row_security_tables" in result.message
    # Declared, the same policy is the design and passes.
    declared = await enforcement.row_security_as_declared(
        await check_context_factory(hokmdb_fresh_db, smoke={"row_security_tables": ["players"]}))
    assert_status(declared, "passed")
    assert "row-level security is on for exactly players in schema public" in declared.message


async def test_row_security_declared_but_off_or_on_no_such_table_fails(hokmdb_fresh_db, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    ctx = await check_context_factory(hokmdb_fresh_db, smoke={"row_security_tables": ["game_sessions", "games"]})
    result = await enforcement.row_security_as_declared(ctx)
    assert_status(result, "failed")
    assert "row-level security is off for game_sessions, declared in smoke.row_security_tables" in result.message
    assert "ALTER TABLE public.game_sessions ENABLE ROW LEVEL SECURITY" in result.message
    assert "smoke.row_security_tables names games, not a table in schema public" in result.message
