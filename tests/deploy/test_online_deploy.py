"""Deploys a game being played does not notice: 0004 -> head (the online card split and a
concurrent index) under steady game traffic fails no game transaction and passes its gate
(the churned tables are vacuumed first), and so does the rollback; a deploy killed during
its backfill or its concurrent index build is continued, not refused, by the next one."""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import time
from dataclasses import dataclass, field

import asyncpg
import pytest
from deploy_support import DEPLOY_PASSWORD, DEPLOY_ROLE, DeployEnv
from sqlalchemy.engine import URL

from pytest_hokmdb.cli.rollback_migration import add_migration_parser, run_migration
from pytest_hokmdb.deploy.orchestrator import DeployOptions, run_deploy
from pytest_hokmdb.errors import ExitCode
from pytest_hokmdb.migrate import adowngrade

GAME_STATEMENT_TIMEOUT_MS = 3000


def _as_deployer(env: DeployEnv) -> URL:
    """Revisions run as the deploy role, as a deploy runs them (it owns what they create)."""
    return URL.create("postgresql+asyncpg", DEPLOY_ROLE, DEPLOY_PASSWORD, env.db.cluster.host, env.db.cluster.port, env.name)


@dataclass
class Game:
    """A bounded loop of the game server's own transactions, as the game's role would run them."""

    env: DeployEnv
    clients: int = 4
    done: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    context: dict = field(default_factory=dict)  # type: ignore[type-arg]

    async def start(self) -> None:
        from hokm_profile.workload import prepare

        probe = await self.env.connect()
        try:
            games = [r[0] for r in await probe.fetch("SELECT id FROM game_sessions ORDER BY id")]
            players = [r[0] for r in await probe.fetch("SELECT id FROM players ORDER BY id")]
            self.context = await prepare(probe)
        finally:
            await probe.close()
        self._tasks = [asyncio.create_task(self._client(i, games, players)) for i in range(self.clients)]
        await asyncio.sleep(0.3)

    def roll_back_the_release(self) -> None:
        """The game's release is rolled back before its schema: the new release plays until the
        old one can again (``hokm_profile.workload.live_release``)."""
        self.context["release"]["direction"] = "back"

    async def _client(self, n: int, games: list[int], players: list[int]) -> None:
        from hokm_profile.workload import play_move

        rng = random.Random(n)
        conn = await asyncpg.connect(self.env.db.dsn, server_settings={
            "statement_timeout": str(GAME_STATEMENT_TIMEOUT_MS), "application_name": "game-server"})
        try:
            while not self._stop.is_set():
                game, player = rng.choice(games), rng.choice(players)
                t0 = time.monotonic()
                try:
                    async with conn.transaction():
                        kind = rng.randrange(6)
                        if kind == 0:  # a game's moves in order
                            await conn.fetch("SELECT id, sequence_number, move_type FROM moves WHERE game_id = $1 "
                                             "ORDER BY sequence_number", game)
                        elif kind == 1:  # a player's recent games
                            await conn.fetch("SELECT g.id FROM game_participants p JOIN game_sessions g ON g.id = p.game_id "
                                             "WHERE p.player_id = $1 ORDER BY g.created_at DESC LIMIT 20", player)
                        elif kind == 2:  # rating after a game
                            await conn.execute("UPDATE players SET rating = least(rating + 1, 3000), last_seen_at = now() "
                                               "WHERE id = $1", player)
                        elif kind == 3:  # a move's trick replayed: the hand of a game
                            await conn.fetch("SELECT count(*) FROM moves WHERE game_id = $1 AND hand_number = 1", game)
                        else:  # a turn: the game's first 60 moves read, then one of them UPDATEd, in the live release's form
                            await play_move(conn, rng, self.context)
                    self.done += 1
                except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self.latencies.append(time.monotonic() - t0)
                await asyncio.sleep(0.005)
        finally:
            await conn.close()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def _analyzed(env: DeployEnv) -> None:
    """A database copied from a template starts with no statistics history; a live one has it."""
    conn = await env.connect()
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def _rollback_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rollback.py")
    add_migration_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["migration", *argv])


async def test_deploying_0004_to_head_and_rolling_back_under_game_traffic_fails_no_game_transaction(deploy_env_factory, capsys) -> None:  # type: ignore[no-untyped-def]
    """Expand and contract around a game release, as an operator runs them: the deploy under the
    old release stops before the contract (exit 8, naming what still uses moves.card); after
    the rollout the next deploy contracts; a rollback that would undo the expand while the new
    release plays is refused; back to 0006, the release rolled back, then to 0004."""
    env: DeployEnv = deploy_env_factory(database__lock_timeout_ms=500, deploy__lock_retry_budget_s=30.0,
                                        deploy__backfill_batch_size=200, deploy__transition_window_s=2.0)
    await adowngrade(_as_deployer(env), "0004")
    await _analyzed(env)
    game = Game(env)
    await game.start()
    release = game.context["release"]
    release["manual"] = True
    assert release["form"] == "old"

    def rollback(revision: str) -> tuple[int, str]:
        code = run_migration(_rollback_args("--environment", "testing", f"--config={env.config_dir}", "--revision", revision))
        return code, capsys.readouterr().out

    try:
        expand = await run_deploy(DeployOptions("testing", str(env.config_dir)))
        release["form"] = "new"  # the rollout: the release that plays suit and rank
        before_contract = game.done
        outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
        during_deploy = game.done - before_contract
        refused_code, refused_out = await asyncio.to_thread(rollback, "0004")
        code_0006, out_0006 = await asyncio.to_thread(rollback, "0006")
        release["form"] = "old"  # the release rolled back before the rest of its schema
        code, rollback_out = await asyncio.to_thread(rollback, "0004")
    finally:
        await game.stop()
    # The old release still wrote moves.card: the contract waited, with the evidence.
    assert expand.exit_code == ExitCode.CONTRACT_WAITS, expand.message
    assert "contract revision 0007 was not applied: it removes moves.card" in expand.message, expand.message
    assert "call(s) of UPDATE moves SET card = card" in expand.message, expand.message
    assert expand.final_revision == "0006"
    assert {s.name: s for s in expand.steps}["gate"].status == "ok"
    assert outcome.exit_code == ExitCode.OK, outcome.message
    # Reads, rating updates and turns that UPDATE a move of the table being migrated, through
    # every revision, backfill, validation, index build and the rollback: none failed, no deadlock.
    assert game.failures == [], game.failures[:5]
    assert during_deploy > 50, "the game did not play during the deploy"
    steps = {s.name: s for s in outcome.steps}
    assert "0006 -> 0007 -> 0008" in steps["migrate"].detail
    # The backfill left dead rows in moves; the expand deploy tidied moves before its gate.
    expand_steps = {s.name: s for s in expand.steps}
    assert "0004 -> 0005 -> 0006" in expand_steps["migrate"].detail
    assert "VACUUM public.moves" in expand_steps["vacuum"].detail or "ANALYZE public.moves" in expand_steps["vacuum"].detail, \
        expand_steps["vacuum"].detail
    assert steps["gate"].status == "ok", steps["gate"].detail
    # Undoing the expand while the new release writes card_suit/card_rank would break it.
    assert refused_code == ExitCode.REFUSED, refused_out
    assert "undoes expand 0006, which removes moves.card_suit, moves.card_rank" in refused_out, refused_out
    assert code_0006 == 0, out_0006
    # The rollback goes through the same online machinery backwards, and passes its gate too.
    assert code == 0, rollback_out
    # The step back to 0006 backfills card again (0007's downgrade): its tidy step, too, VACUUMs
    # moves, or only ANALYZEs it when autovacuum got there first.
    assert "VACUUM public.moves" in out_0006 or "ANALYZE public.moves" in out_0006, out_0006
    assert "expand 0006 may be undone: nothing used moves.card_suit, moves.card_rank" in rollback_out, rollback_out
    assert await env.revision() == "0004"
    assert max(game.latencies) < 1.5, max(game.latencies)


async def test_a_deploy_killed_during_its_concurrent_index_build_is_cleaned_up_by_the_next(deploy_env_factory) -> None:  # type: ignore[no-untyped-def]
    """0008's CREATE INDEX CONCURRENTLY cut off leaves an INVALID index named as 0008 names it;
    the next deploy recognises it as 0008's own, drops it concurrently and builds it again."""
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[])
    await adowngrade(_as_deployer(env), "0007")
    conn = await asyncpg.connect(user=DEPLOY_ROLE, password=DEPLOY_PASSWORD, host=env.db.cluster.host,
                                 port=env.db.cluster.port, database=env.name)
    try:
        # Unique on purpose: the build fails half-way, exactly as a killed one does, INVALID.
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("CREATE UNIQUE INDEX CONCURRENTLY ix_game_participants_player_id ON game_participants (player_id)")
    finally:
        await conn.close()
    assert await env.fetchval("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = 'ix_game_participants_player_id'::regclass")

    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert outcome.exit_code == ExitCode.OK, outcome.message
    preflight = next(s for s in outcome.steps if s.name == "pre-flight")
    assert "1 leftover(s) of revision 0008's interrupted run accepted (it runs again)" in preflight.detail, preflight.detail
    assert "INVALID index(es) dropped: public.ix_game_participants_player_id" in preflight.detail
    assert await env.revision() == "0008"
    assert await env.fetchval("SELECT indisvalid AND NOT indisunique FROM pg_index "
                              "WHERE indexrelid = 'ix_game_participants_player_id'::regclass")


async def test_a_deploy_killed_during_its_backfill_is_continued_by_the_next(deploy_env_factory) -> None:  # type: ignore[no-untyped-def]
    """kill -9 of deploy.py in the middle of 0006's backfill: the trigger it created stays
    (0006 was not recorded); the next deploy accepts it as 0006's own and the backfill
    continues where it stopped."""
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[], deploy__backfill_batch_size=50, deploy__backfill_pause_ms=40)
    await adowngrade(_as_deployer(env), "0004")
    expected = await env.fetchval("SELECT count(*) FROM moves")
    proc = env.popen("--target-revision", "0006")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            filled = await env.fetchval("SELECT count(card_suit) FROM moves") if await env.revision() == "0005" else 0
            if filled and filled >= expected // 3:  # type: ignore[operator]
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the backfill never got a third of the way:\n{proc.stdout.read() if proc.stdout else ''}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert await env.revision() == "0005"
    assert await env.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'moves_sync_card_%'") == 2

    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert outcome.exit_code == ExitCode.OK, outcome.message
    preflight = next(s for s in outcome.steps if s.name == "pre-flight")
    assert "leftover(s) of revision 0006's interrupted run accepted (it runs again)" in preflight.detail, preflight.detail
    assert await env.revision() == "0008"
    assert await env.fetchval("SELECT count(*) FROM moves WHERE card_suit IS NULL") == 0
    assert await env.fetchval("SELECT count(*) FROM moves") == expected


BACKFILL_THEN_DDL_0009 = (
    "0009", "Backfill players, then DDL that meets a lock timeout once (the shape of 0006).",
    """
    from pathlib import Path

    from alembic import context

    from pytest_hokmdb.migration.online import backfill, check_once

    op.execute("CREATE SEQUENCE IF NOT EXISTS probe_check_runs")
    backfill("players", set_="rating = rating", where="rating < -1000000")
    check_once("SELECT nextval('probe_check_runs')")  # counts its runs: a sequence is not rolled back
    flag = Path(os.environ["HOKMDB_TEST_FLAG"])
    if flag.exists() and not context.is_offline_mode():  # the lint renders this revision offline first
        flag.unlink()
        op.execute("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '55P03', MESSAGE = 'simulated lock timeout'; END $$")
    op.execute("COMMENT ON TABLE players IS 'probe 0009'")
    """,
    "op.execute('COMMENT ON TABLE players IS NULL')",
)


async def test_a_retry_after_a_lock_timeout_does_not_scan_a_finished_backfill_again(deploy_env_factory, project_factory,  # type: ignore[no-untyped-def]
                                                                                     tmp_path, monkeypatch) -> None:
    """At 100k games the backfill's final check scans 40.9M rows (50 s): a retry of 0006's DDL
    that re-ran it gave the next long report the time to take the retry's chance, again and
    again. A backfill finished earlier in the same deploy is not scanned again, nor is a check
    of its result that passed (``check_once``, 0006's REFUSE_UNPARSED)."""
    flag = tmp_path / "first-attempt"
    flag.write_text("")
    monkeypatch.setenv("HOKMDB_TEST_FLAG", str(flag))
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[], deploy__lock_retry_base_delay_s=0.1)
    env.use_project(project_factory([BACKFILL_THEN_DDL_0009]))
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert outcome.exit_code == ExitCode.OK, outcome.message
    migrate = next(s for s in outcome.steps if s.name == "migrate")
    assert " 1 lock timeout(s)" in migrate.detail, migrate.detail
    log = outcome.log_path.read_text()  # type: ignore[union-attr]
    assert log.count("backfill players: nothing to do") == 1, log
    assert "backfill players: finished earlier in this deploy; not scanning again" in log
    assert "check passed earlier in this deploy; not scanning again" in log
    assert await env.fetchval("SELECT last_value FROM probe_check_runs") == 1
    assert not flag.exists() and await env.revision() == "0009"
