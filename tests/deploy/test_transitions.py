"""Expand and contract as two moments ([[tool.hokmdb.migrations.transitions]]): the contract
revision waits for evidence that nothing uses what it removes, a look that could not be made
is not evidence, and an automatic rollback never undoes an expand the live release needs."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from deploy_support import DEPLOY_PASSWORD, DEPLOY_ROLE, DeployEnv
from sqlalchemy.engine import URL
from test_online_deploy import Game, _analyzed

from pytest_hokmdb.deploy.orchestrator import DeployOptions, run_deploy
from pytest_hokmdb.deploy.transitions import uses
from pytest_hokmdb.errors import ExitCode
from pytest_hokmdb.migrate import adowngrade

FAIL_0009 = (
    "0009", "A revision that fails, after the expand phase of 0005-0006 and the contract 0007.",
    "op.execute(\"SELECT 1/0\")",
    "pass",
)
COMMENT_0010 = (
    "0010", "Comment on players; in this copy the contract of the 0006 transition.",
    "op.execute(\"COMMENT ON TABLE players IS 'probe 0010'\")",
    "op.execute('COMMENT ON TABLE players IS NULL')",
)


def _as_deployer(env: DeployEnv) -> URL:
    return URL.create("postgresql+asyncpg", DEPLOY_ROLE, DEPLOY_PASSWORD, env.db.cluster.host, env.db.cluster.port, env.name)


@pytest.mark.parametrize(("query", "expected"), [
    ("UPDATE moves SET card = card WHERE id = $1", True),
    ('INSERT INTO public."moves" (game_id, "card") VALUES ($1, $2)', True),
    ("SELECT m.card FROM moves m WHERE m.id = $1", True),
    ("UPDATE moves SET card_rank = card_rank WHERE id = $1", False),
    ("SELECT id FROM moves WHERE game_id = $1", False),
    ("SELECT card FROM hands", False),
    ("SELECT card FROM moves_archive", False),
])
def test_which_statements_use_moves_card(query: str, expected: bool) -> None:
    assert uses(query, "moves", "card") is expected


async def test_expand_only_stops_before_the_contract_with_exit_0(deploy_env_factory) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[])
    await adowngrade(_as_deployer(env), "0004")
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir), expand_only=True))
    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert "--expand-only: stopped before contract revision 0007, which removes moves.card" in outcome.message
    assert await env.revision() == "0006"
    pre = {s.name: s for s in outcome.steps}["pre-flight"].detail
    assert "contract revision(s) 0007 pending" in pre, pre


async def test_a_contract_nobody_can_vouch_for_waits_and_force_records_it(deploy_env_factory) -> None:  # type: ignore[no-untyped-def]
    """Without pg_stat_statements, a connected client's statements cannot be counted: not
    "nothing uses moves.card" but "cannot tell", so the contract waits (exit 8) saying what to
    install; --force (outside production) applies it and the history says so."""
    # Pointed at a database without it (the cluster's postgres has it, for the other tests).
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[], deploy__transition_window_s=0.5,
                                        deploy__statement_stats_database="template1")
    await adowngrade(_as_deployer(env), "0004")
    client = await asyncpg.connect(env.db.dsn, server_settings={"application_name": "game-server"})
    try:
        await client.fetchval("SELECT count(*) FROM players")  # connected, idle, nothing about moves.card
        waited = await run_deploy(DeployOptions("testing", str(env.config_dir)))
        forced = await run_deploy(DeployOptions("testing", str(env.config_dir), force=True))
    finally:
        await client.close()
    assert waited.exit_code == ExitCode.CONTRACT_WAITS, waited.message
    assert (f"could not look: pg_stat_statements is not installed in {env.name} nor in template1: add it to "
            "shared_preload_libraries") in waited.message, waited.message
    assert "roll out the release that uses moves.card_suit, moves.card_rank" in waited.message
    assert waited.final_revision == "0006"
    assert forced.exit_code == ExitCode.OK, forced.message
    assert await env.revision() == "0008"
    recorded = await env.fetchval("SELECT message FROM hokmdb_deploy_history ORDER BY id DESC LIMIT 1")
    assert "forced unverified: contract 0007 forced past: could not look" in str(recorded), recorded


async def test_a_failed_deploy_does_not_undo_the_expand_the_new_release_writes(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    """0009 fails after 0005-0008 applied; the game rolled out the new release as soon as 0006
    made it possible and writes card_rank. The rollback stops at 0006, where both releases
    work, instead of taking card_suit/card_rank away from the live release (exit 10, saying why)."""
    env: DeployEnv = deploy_env_factory(database__lock_timeout_ms=500, deploy__backfill_batch_size=200,
                                        deploy__transition_window_s=1.5)
    root = project_factory([FAIL_0009, COMMENT_0010])
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('contract = "0007"', 'contract = "0010"'))
    env.use_project(root)
    await adowngrade(_as_deployer(env), "0004")
    await _analyzed(env)
    game = Game(env, clients=2)
    await game.start()
    try:
        outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
        await asyncio.sleep(0.2)
    finally:
        await game.stop()
    assert game.context["release"]["form"] == "new"
    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome.message
    assert "not below 0006: undoing 0006 would remove moves.card_suit, moves.card_rank and" in outcome.message, outcome.message
    assert "card_rank" in outcome.message.split("not below 0006", 1)[1]
    assert await env.revision() == "0006"
    assert game.failures == [], game.failures[:5]
