"""The topology checks against a real primary, standby and PgBouncer: each passes on the healthy
topology and fails, naming the component and the fix, when the topology is broken that way."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import asyncpg
from helpers import assert_status
from topology_support import DBNAME, MONITOR, TopologyEnv

from pytest_hokmdb.checks import health, topology
from pytest_hokmdb.db.topology import PoolerEndpoint, Topology


async def test_a_healthy_topology_passes_every_topology_check(topology_env: TopologyEnv, topology_context) -> None:  # type: ignore[no-untyped-def]
    ctx = await topology_context(topology_env)
    for check in topology.CHECKS:
        if check is topology.patroni_members:
            assert_status(await check(ctx), "skipped")  # no Patroni in the light topology: not applicable
            continue
        assert_status(await check(ctx), "passed")
    result = await health.replication(ctx)
    assert_status(result, "passed")
    assert "1 replica(s) streaming" in result.message


async def test_a_target_that_is_a_standby_fails_the_primary_check(topology_env: TopologyEnv, topology_context) -> None:  # type: ignore[no-untyped-def]
    standby = replace(topology_env.primary, port=topology_env.topology.standby_port)
    result = await topology.target_is_primary(await topology_context(topology_env, target=standby))
    assert_status(result, "failed")
    assert f"127.0.0.1:{standby.port} is a standby (in recovery)" in result.message
    assert "Point database.host/port at the primary" in result.message


async def test_paused_replay_fails_naming_the_standby_and_the_fix(topology_env: TopologyEnv, topology_context) -> None:  # type: ignore[no-untyped-def]
    await topology_env.on_standby("SELECT pg_wal_replay_pause()")
    try:
        result = await topology.standbys_follow(await topology_context(topology_env))
    finally:
        await topology_env.on_standby("SELECT pg_wal_replay_resume()")
    assert_status(result, "failed")
    assert f"standby 127.0.0.1:{topology_env.topology.standby_port} has WAL replay paused" in result.message
    assert "pg_wal_replay_resume()" in result.message


async def test_lag_over_the_byte_budget_fails(topology_env: TopologyEnv, topology_context) -> None:  # type: ignore[no-untyped-def]
    """Replay paused while the primary writes: the standby falls behind in bytes."""
    await topology_env.on_standby("SELECT pg_wal_replay_pause()")
    conn = await asyncpg.connect(**topology_env.primary.asyncpg_kwargs())  # type: ignore[arg-type]
    table = f"lag_{uuid.uuid4().hex[:8]}"
    try:
        await conn.execute(f"CREATE TABLE {table} AS SELECT g AS n, repeat('x', 200) AS pad FROM generate_series(1, 20000) g")
        ctx = await topology_context(topology_env, smoke={"max_replication_lag_bytes": 1024 * 1024})
        result = await topology.standbys_follow(ctx)
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
        await topology_env.on_standby("SELECT pg_wal_replay_resume()")
    assert_status(result, "failed")
    assert "bytes of WAL not replayed, over 1048576 (smoke.max_replication_lag_bytes)" in result.message


async def test_a_stopped_standby_fails_both_views_of_replication(topology_env: TopologyEnv, topology_context) -> None:  # type: ignore[no-untyped-def]
    topology_env.topology.standby.stop()
    try:
        ctx = await topology_context(topology_env)
        follow = await topology.standbys_follow(ctx)
        attached = await health.replication(ctx)
    finally:
        topology_env.topology.start()
    assert_status(follow, "failed")
    assert f"standby 127.0.0.1:{topology_env.topology.standby_port} cannot be reached" in follow.message
    assert_status(attached, "failed")
    assert "no replica is attached, 1 expected" in attached.message


async def test_a_promoted_standby_is_split_brain(own_topology: TopologyEnv, topology_context) -> None:  # type: ignore[no-untyped-def]
    await own_topology.on_standby("SELECT pg_promote(true, 30)")
    result = await topology.standbys_follow(await topology_context(own_topology))
    assert_status(result, "failed")
    assert f"standby 127.0.0.1:{own_topology.topology.standby_port} is not in recovery" in result.message
    assert "split brain" in result.message


async def test_an_abandoned_slot_holding_wal_fails_naming_it(topology_env: TopologyEnv, topology_context) -> None:  # type: ignore[no-untyped-def]
    slot = f"abandoned_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(**topology_env.primary.asyncpg_kwargs())  # type: ignore[arg-type]
    try:
        await conn.execute(f"SELECT pg_create_physical_replication_slot('{slot}', true)")
        await conn.execute("CREATE TEMP TABLE churn AS SELECT g FROM generate_series(1, 50000) g; SELECT pg_switch_wal()")
        healthy = await topology.replication_slots(await topology_context(topology_env))
        ctx = await topology_context(topology_env, view=topology_env.view(max_slot_retained_bytes=64 * 1024))
        result = await topology.replication_slots(ctx)
    finally:
        await conn.execute(f"SELECT pg_drop_replication_slot('{slot}')")
        await conn.close()
    assert_status(healthy, "passed")
    assert_status(result, "failed")
    assert f"{slot} (physical, inactive, nobody consumes it) retains" in result.message
    assert "pg_drop_replication_slot" in result.message


async def test_an_inactive_slot_pinning_xmin_fails_long_before_its_wal_would(own_topology: TopologyEnv, topology_context) -> None:  # type: ignore[no-untyped-def]
    """A standby that is gone leaves its slot with the xmin its hot_standby_feedback last
    reported: VACUUM stops removing rows on every table while the WAL it keeps is still small."""
    env = own_topology
    before = await topology.replication_slots(await topology_context(env))
    # The standby reports its xmin every wal_receiver_status_interval (10 s): wait for the first.
    conn = await asyncpg.connect(**env.primary.asyncpg_kwargs())  # type: ignore[arg-type]
    try:
        for _ in range(300):
            if await conn.fetchval("SELECT xmin IS NOT NULL FROM pg_replication_slots WHERE slot_name = 'hokmdb_standby'"):
                break
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    env.topology.standby.stop()
    result = await topology.replication_slots(await topology_context(env))
    assert_status(before, "passed")  # the same slot, active: its xmin is the standby's, in use
    assert_status(result, "failed")
    assert "hokmdb_standby (physical, inactive) pins xmin" in result.message, result.message
    assert "VACUUM keeps every row deleted since, on every table" in result.message
    assert result.measured < env.view().max_slot_retained_bytes  # its WAL alone would not have failed it


async def test_a_paused_pool_and_waiting_clients_fail_the_pgbouncer_check(topology_env: TopologyEnv, topology_context) -> None:  # type: ignore[no-untyped-def]
    env = topology_env

    async def game_query() -> object:
        conn = await asyncpg.connect(host="127.0.0.1", port=env.topology.pooler_port, user=MONITOR,
                                     password=env.monitor_password, database=DBNAME, statement_cache_size=0)
        try:
            return await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    assert await game_query() == 1  # the game's pool exists (PgBouncer makes it on first use)
    await env.on_pooler_admin(f"PAUSE {DBNAME}")
    waiting = None
    try:
        paused = await topology.pgbouncer_pools(await topology_context(env))
        waiting = asyncio.create_task(game_query())
        await asyncio.sleep(1.0)
        ctx = await topology_context(env, view=env.view(max_pool_wait_s=0.3))
        stuck = await topology.pgbouncer_pools(ctx)
    finally:
        await env.on_pooler_admin(f"RESUME {DBNAME}")
        if waiting is not None:
            assert await asyncio.wait_for(waiting, 10) == 1  # served once resumed
    assert_status(paused, "failed")
    assert f"database {DBNAME} is PAUSED in PgBouncer at 127.0.0.1:{env.topology.pooler_port}" in paused.message
    assert f"RESUME {DBNAME};" in paused.message
    assert_status(stuck, "failed")
    assert "client(s) waiting, the longest" in stuck.message and "(topology.max_pool_wait_s)" in stuck.message


async def test_an_unreachable_or_unknown_component_fails_and_an_absent_one_skips(topology_env: TopologyEnv, topology_context) -> None:  # type: ignore[no-untyped-def]
    env = topology_env
    closed = replace(env.view(), pooler=PoolerEndpoint("127.0.0.1", 1, MONITOR, env.monitor_password, DBNAME))
    result = await topology.pgbouncer_pools(await topology_context(env, view=closed))
    assert_status(result, "failed")
    assert "PgBouncer at 127.0.0.1:1: cannot read its admin console as 'topo_monitor'" in result.message
    assert env.monitor_password not in result.message

    unset = Topology(configured=True, problem="the local topology of testing has not been set up (run `hokmdb topology start`)")
    for check in (topology.standbys_follow, topology.pgbouncer_pools):
        result = await check(await topology_context(env, view=unset))
        assert_status(result, "failed")
        assert "has not been set up" in result.message

    for check in (topology.standbys_follow, topology.pgbouncer_pools):
        result = await check(await topology_context(env, view=Topology()))
        assert_status(result, "skipped")
        assert "this environment's config lists none" in result.message


async def test_synchronous_commit_off_on_the_application_role_names_the_role_and_its_reset(topology_env: TopologyEnv, topology_context) -> None:  # type: ignore[no-untyped-def]
    """Issue 32 item 13: the server commits synchronously, the game's role does not (ALTER ROLE
    ... SET); the advice was ALTER SYSTEM, which changes nothing for that role."""
    from pytest_hokmdb.cluster.topology import STANDBY_NAME

    role, password = f"game_{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    admin = await asyncpg.connect(**topology_env.primary.asyncpg_kwargs())  # type: ignore[arg-type]
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await admin.execute(f"ALTER ROLE {role} SET synchronous_commit = off")
        await admin.execute(f"ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 ({STANDBY_NAME})'")
        await admin.execute("ALTER SYSTEM SET synchronous_commit = on")
        await admin.execute("SELECT pg_reload_conf()")
        for _ in range(100):
            if await admin.fetchval("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'"):
                break
            await asyncio.sleep(0.1)
        game = replace(topology_env.primary, user=role, password=password)
        ctx = await topology_context(topology_env, view=topology_env.view(synchronous_replication=True), target=game)
        result = await topology.synchronous_standbys(ctx)
    finally:
        await admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
        await admin.execute("ALTER SYSTEM RESET synchronous_commit")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.close()
    assert_status(result, "failed")
    assert f"synchronous_commit = off, set on role {role} (ALTER ROLE ... SET), for new sessions: commits do not " \
           "wait for the synchronous standby" in result.message
    assert f"Run ALTER ROLE {role} RESET synchronous_commit (as a superuser or a role with CREATEROLE)" in result.message
    assert "ALTER SYSTEM" not in result.message


async def test_a_synchronous_standby_that_is_attached_meets_the_promise(topology_env: TopologyEnv, topology_context) -> None:  # type: ignore[no-untyped-def]
    """The standby named in synchronous_standby_names is attached and confirms commits, once
    synchronous_commit waits for it; the same setting naming a standby that is not there makes
    every commit wait (the check fails)."""
    from pytest_hokmdb.cluster.topology import STANDBY_NAME

    admin = await asyncpg.connect(**topology_env.primary.asyncpg_kwargs())  # type: ignore[arg-type]
    try:
        await admin.execute(f"ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 ({STANDBY_NAME})'")
        await admin.execute("SELECT pg_reload_conf()")
        for _ in range(100):
            if await admin.fetchval("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'"):
                break
            await asyncio.sleep(0.1)
        ctx = await topology_context(topology_env, view=topology_env.view(synchronous_replication=True))
        local_commits = await topology.synchronous_standbys(ctx)  # the throwaway settings: synchronous_commit = off
        await admin.execute("ALTER SYSTEM SET synchronous_commit = on")
        await admin.execute("SELECT pg_reload_conf()")
        await asyncio.sleep(0.2)
        result = await topology.synchronous_standbys(ctx)
        await admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (standby_that_left)'")
        await admin.execute("SELECT pg_reload_conf()")
        await asyncio.sleep(0.2)
        gone = await topology.synchronous_standbys(ctx)
    finally:
        await admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
        await admin.execute("ALTER SYSTEM RESET synchronous_commit")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.close()
    assert_status(local_commits, "failed")
    assert "synchronous_commit = off for new sessions: commits do not wait for the synchronous standby that " \
           "topology.synchronous_replication promises" in local_commits.message
    assert_status(result, "passed")
    assert f"1 standby(s) attached as synchronous, 1 needed (synchronous_standby_names = 'FIRST 1 ({STANDBY_NAME})')" \
        in result.message
    assert_status(gone, "failed")
    assert f"but 0 are attached as synchronous (attached: {STANDBY_NAME} async)" in gone.message
