"""Checks of what stands between the game and its data: the primary the deploy writes to, the
standbys that must follow it, the slots that hold WAL for them, and PgBouncer's pools.

Each looks at the real component named by the environment's ``topology`` (or hokmdb's local
topology); each skips, saying so, only where the config says there is no such component. A
configured component that cannot be reached has not passed: it fails.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from pytest_hokmdb.checks.base import (
    Category,
    CheckContext,
    CheckFunction,
    CheckResult,
    check,
    sample,
    session_override,
)
from pytest_hokmdb.db import connect
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.db.topology import pooler_show
from pytest_hokmdb.errors import HokmdbError

FEATURE = "Topology"
CATEGORY: Category = "infrastructure"


def _unconfigured(what: str) -> CheckResult:
    return CheckResult.not_applicable(
        f"{what}: this environment's config lists none (topology.standbys / topology.pgbouncer / topology.local), "
        "so there is nothing to check; add them where the game runs behind one"
    )


@check("topology.target_is_primary", title="The target is the writable primary", feature=FEATURE, category=CATEGORY,
       severity="blocker")
async def target_is_primary(ctx: CheckContext) -> CheckResult:
    """A deploy or a game pointed at a standby (or at a node Patroni demoted) writes nothing:
    every write fails with 'read-only transaction'."""
    if await ctx.conn.fetchval("SELECT pg_is_in_recovery()"):
        return CheckResult.failed(
            f"{ctx.target.host}:{ctx.target.port} is a standby (in recovery), not the primary: writes fail there. "
            "Point database.host/port at the primary (with Patroni, at the leader)"
        )
    return CheckResult.passed(f"{ctx.target.host}:{ctx.target.port} is the primary (not in recovery)")


@dataclass(frozen=True)
class StandbyState:
    where: str
    in_recovery: bool
    receiver: str | None
    timeline: int | None
    behind_bytes: int | None
    lag_s: float | None
    paused: bool


_STANDBY = """
SELECT pg_is_in_recovery() AS in_recovery,
       (SELECT status FROM pg_stat_wal_receiver) AS receiver,
       (SELECT received_tli FROM pg_stat_wal_receiver) AS timeline,
       pg_last_wal_replay_lsn()::text AS replay_lsn,
       CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() <> 'not paused' ELSE false END AS paused,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS since_replay_s
"""


async def _standby_state(target: Target, primary_lsn: str) -> StandbyState:
    conn = await connect(target)
    try:
        row = await conn.fetchrow(_STANDBY)
        assert row is not None
        behind = None
        if row["replay_lsn"] is not None:
            behind = await conn.fetchval("SELECT greatest(pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn), 0)::bigint",
                                         primary_lsn, row["replay_lsn"])
    finally:
        await conn.close()
    # Seconds since the last replayed commit mean lag only while WAL waits to be replayed.
    lag = row["since_replay_s"] if behind else 0.0
    return StandbyState(f"{target.host}:{target.port}", row["in_recovery"], row["receiver"], row["timeline"], behind, lag,
                        bool(row["paused"]))


@check("topology.standbys_follow", title="Standbys are in recovery, streaming on the primary's timeline and keep up",
       feature=FEATURE, category=CATEGORY, severity="critical")
async def standbys_follow(ctx: CheckContext) -> CheckResult:
    """Asked of each standby itself, not only of the primary's view: a standby that was promoted
    (split brain), fell to another timeline after a failover, paused replay or stopped
    streaming serves stale or diverging reads and cannot take over."""
    topo = ctx.topology
    if topo.problem:
        return CheckResult.failed(f"standbys: {topo.problem}")
    if not topo.standbys:
        return _unconfigured("standbys")
    primary_lsn = await ctx.observer.fetchval("SELECT pg_current_wal_lsn()::text")
    timeline = int((await ctx.observer.fetchval("SELECT pg_walfile_name(pg_current_wal_lsn())"))[:8], 16)
    max_s, max_bytes = ctx.settings.max_replication_lag_s, ctx.settings.max_replication_lag_bytes
    problems, described = [], []
    worst = 0.0
    for target in topo.standbys:
        where = f"{target.host}:{target.port}"
        try:
            state = await _standby_state(target, primary_lsn)
        except HokmdbError as exc:
            problems.append(f"standby {where} cannot be reached: {exc.message}")
            continue
        worst = max(worst, state.lag_s or 0.0)
        described.append(f"{where}: recovery={state.in_recovery}, receiver={state.receiver}, timeline={state.timeline}, "
                         f"{state.behind_bytes or 0} bytes behind, lag {state.lag_s or 0:.1f} s, paused={state.paused}")
        if not state.in_recovery:
            problems.append(f"standby {where} is not in recovery: it was promoted or is a separate server, and now takes "
                            "writes of its own (split brain); rebuild it from the primary")
            continue
        if state.receiver != "streaming":
            problems.append(f"standby {where} is not streaming (WAL receiver: {state.receiver or 'none'}): check its log, "
                            "primary_conninfo and the primary's pg_hba.conf replication lines")
        if state.timeline is not None and state.timeline != timeline:
            problems.append(f"standby {where} is on timeline {state.timeline}, the primary on {timeline}: it follows an old "
                            "primary after a failover; rewind or rebuild it")
        if state.paused:
            problems.append(f"standby {where} has WAL replay paused: run SELECT pg_wal_replay_resume() on it")
        if (state.behind_bytes or 0) > max_bytes:
            problems.append(f"standby {where} has {state.behind_bytes} bytes of WAL not replayed, over {max_bytes} "
                            "(smoke.max_replication_lag_bytes)")
        elif (state.lag_s or 0.0) > max_s:
            problems.append(f"standby {where} replays {state.lag_s:.1f} s behind, over {max_s:g} s "
                            "(smoke.max_replication_lag_s): long queries on it (max_standby_streaming_delay) or slow I/O")
    evidence = {"standbys": "\n".join(described)} if described else {}
    if problems:
        return CheckResult.failed("; ".join(problems), measured=round(worst, 2), threshold=max_s, evidence=evidence)
    return CheckResult.passed(f"{len(topo.standbys)} standby(s) in recovery, streaming on timeline {timeline}, worst lag "
                              f"{worst:.1f} s", measured=round(worst, 2), threshold=max_s, evidence=evidence)


@check("topology.replication_slots", title="No replication slot holds back WAL", feature=FEATURE, category=CATEGORY,
       severity="critical")
async def replication_slots(ctx: CheckContext) -> CheckResult:
    """A slot keeps every WAL segment its consumer has not confirmed: a slot whose standby or
    subscriber is gone fills the primary's disk until the server stops."""
    if await ctx.observer.fetchval("SELECT pg_is_in_recovery()"):
        return CheckResult.skipped("replication slots: the target is a standby; judge slots on the primary")
    limit = ctx.topology.max_slot_retained_bytes
    rows = await ctx.observer.fetch(
        """
        SELECT slot_name, slot_type, active, wal_status,
               pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained,
               greatest(age(xmin), age(catalog_xmin)) AS xmin_age
        FROM pg_replication_slots ORDER BY retained DESC NULLS LAST
        """
    )
    offenders = []
    for r in rows:
        retained = r["retained"] or 0
        if retained > limit:
            state = "active" if r["active"] else "inactive, nobody consumes it"
            offenders.append(f"{r['slot_name']} ({r['slot_type']}, {state}) retains {retained} bytes")
        elif r["wal_status"] == "lost":
            offenders.append(f"{r['slot_name']} ({r['slot_type']}) has lost WAL its consumer still needed")
        elif not r["active"] and r["xmin_age"] is not None:
            # Long before its WAL fills a disk, an abandoned slot that pins xmin (a standby's
            # hot_standby_feedback, a logical slot's catalog_xmin) stops VACUUM on every table.
            offenders.append(f"{r['slot_name']} ({r['slot_type']}, inactive) pins xmin {r['xmin_age']} transactions "
                             "back: VACUUM keeps every row deleted since, on every table")
    worst = max((r["retained"] or 0 for r in rows), default=0)
    evidence = {"slots": "\n".join(f"{r['slot_name']} active={r['active']} retained={r['retained']}" for r in rows)}
    if offenders:
        return CheckResult.failed(
            f"{len(offenders)} replication slot(s) hold back WAL over {limit} bytes (topology.max_slot_retained_bytes) "
            f"or, inactive, pin the xmin VACUUM needs: {sample(offenders)}. Reconnect the consumer, or drop a slot "
            "nobody needs: "
            "SELECT pg_drop_replication_slot('<name>')",
            measured=worst, threshold=limit, evidence=evidence,
        )
    return CheckResult.passed(f"{len(rows)} replication slot(s), none retains more than {limit} bytes",
                              measured=worst, threshold=limit, evidence=evidence)


_SYNC_COUNT = re.compile(r"^\s*(?:(first|any)\s+)?(\d+)\s*\(", re.IGNORECASE)


def required_sync_standbys(names: str) -> tuple[int, str]:
    """How many standbys ``synchronous_standby_names`` makes every commit wait for, and the
    method: ``FIRST n (...)`` / ``n (...)`` is priority, ``ANY n (...)`` quorum, a plain list one."""
    match = _SYNC_COUNT.match(names)
    if match is None:
        return 1, "priority"
    return int(match.group(2)), "quorum" if (match.group(1) or "").lower() == "any" else "priority"


_SYNC_STATE = """
SELECT current_setting('synchronous_standby_names') AS names,
       coalesce((SELECT string_agg(coalesce(application_name, '?') || ' ' || coalesce(sync_state, '?'), ', '
                                   ORDER BY application_name)
                 FROM pg_stat_replication), '') AS attached,
       (SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')) AS synchronous,
       (SELECT count(*) FROM pg_stat_replication WHERE sync_state IS NULL) AS hidden
"""


_COMMIT_LEVEL = """
SELECT reset_val AS level, source, format('%I', session_user) AS role, format('%I', current_database()) AS db
FROM pg_settings WHERE name = 'synchronous_commit'
"""


@check("topology.synchronous_standbys", title="Synchronous replication is what the topology promises, and commits do not hang",
       feature=FEATURE, category=CATEGORY, severity="critical")
async def synchronous_standbys(ctx: CheckContext) -> CheckResult:
    """``synchronous_standby_names`` makes every commit wait until enough named standbys
    confirm it. Naming a standby that is not attached makes every write of the game hang; a
    topology that promises synchronous replication (``topology.synchronous_replication``)
    with the setting empty, or ``synchronous_commit`` at ``local``/``off``, loses
    acknowledged moves on failover. Read on the primary, from ``pg_stat_replication``, whose
    ``sync_state`` only superusers and ``pg_read_all_stats`` members see."""
    if await ctx.observer.fetchval("SELECT pg_is_in_recovery()"):
        return CheckResult.skipped("synchronous replication: the target is a standby; judge it on the primary")
    row = await ctx.observer.fetchrow(_SYNC_STATE)
    # synchronous_commit as the application's sessions start: a value set on its role or database
    # wins over the server's (and ALTER SYSTEM would not change it).
    own = await ctx.conn.fetchrow(_COMMIT_LEVEL)
    names, level, promised = row["names"].strip(), own["level"], ctx.topology.synchronous_replication
    evidence = {"replication": f"synchronous_standby_names = '{names}'\nsynchronous_commit = {level}\n"
                               f"attached: {row['attached'] or 'none'}\n"}
    if not names:
        if promised:
            return CheckResult.failed(
                "the topology promises synchronous replication (topology.synchronous_replication), but "
                "synchronous_standby_names is empty: commits do not wait for a standby, and a failover loses the "
                "moves acknowledged last. Run ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (<standby "
                "application_name>)'; SELECT pg_reload_conf() (as a superuser; with Patroni, synchronous_mode: true), "
                "or set topology.synchronous_replication = false if asynchronous is the design",
                measured=0, threshold=1, evidence=evidence)
        return CheckResult.passed("replication is asynchronous (synchronous_standby_names empty), as configured",
                                  measured=0, threshold=0, evidence=evidence)
    need, method = required_sync_standbys(names)
    have = int(row["synchronous"])
    if have < need and row["hidden"]:
        return CheckResult.skipped(
            f"synchronous_standby_names = '{names}' needs {need} synchronous standby(s), but this role cannot see "
            f"the sync state of {row['hidden']} attached standby(s); {ctx.monitor_hint()}",
            measured=have, threshold=need, evidence=evidence)
    if have < need:
        return CheckResult.failed(
            f"synchronous_standby_names = '{names}' makes every commit wait for {need} {method} standby(s), but "
            f"{have} {'is' if have == 1 else 'are'} attached as synchronous (attached: {row['attached'] or 'none'}): "
            "every write of the game hangs until one connects. Start or reconnect the standby (its primary_conninfo "
            "application_name must match), or run ALTER SYSTEM SET synchronous_standby_names = ''; SELECT "
            "pg_reload_conf() (as a superuser) and accept asynchronous replication until it is back",
            measured=have, threshold=need, evidence=evidence)
    if promised and level in ("local", "off"):
        override = session_override("synchronous_commit", own["source"], role=own["role"], database=own["db"])
        if override is None:
            where, fix = "", ("ALTER SYSTEM SET synchronous_commit = on; SELECT pg_reload_conf() (and remove per-role or "
                              "per-database overrides)")
        else:
            where, fix = f", {override[0]},", f"{override[1]} ({override[2]})" if override[2] else override[1]
        return CheckResult.failed(
            f"synchronous_commit = {level}{where} for new sessions: commits do not wait for the synchronous standby that "
            f"topology.synchronous_replication promises, and a failover can lose acknowledged moves. Run {fix}",
            measured=have, threshold=need, evidence=evidence)
    return CheckResult.passed(
        f"{have} standby(s) attached as synchronous, {need} needed (synchronous_standby_names = '{names}')",
        measured=have, threshold=need, evidence=evidence)


@check("topology.pgbouncer_pools", title="PgBouncer's pools serve without waiting", feature=FEATURE, category=CATEGORY,
       severity="critical")
async def pgbouncer_pools(ctx: CheckContext) -> CheckResult:
    """From PgBouncer's admin console (SHOW POOLS / SHOW DATABASES): clients waiting for a
    server connection longer than the budget, or a database left paused (a maintenance window
    nobody resumed), are game requests that hang."""
    topo = ctx.topology
    if topo.problem:
        return CheckResult.failed(f"PgBouncer: {topo.problem}")
    if topo.pooler is None:
        return _unconfigured("PgBouncer")
    endpoint = topo.pooler
    pools, databases = await asyncio.gather(pooler_show(endpoint, "POOLS"), pooler_show(endpoint, "DATABASES"))
    limit = topo.max_pool_wait_s
    ours = [p for p in pools if p.get("database") == endpoint.database]
    problems = []
    for db in databases:
        if db.get("name") == endpoint.database and db.get("paused") == "1":
            problems.append(f"database {endpoint.database} is PAUSED in {endpoint.describe()}: every new transaction waits; "
                            f"run RESUME {endpoint.database}; on its admin console (or `hokmdb topology resume`)")
        if db.get("name") == endpoint.database and db.get("disabled") == "1":
            problems.append(f"database {endpoint.database} is DISABLEd in {endpoint.describe()}: new clients are refused; "
                            f"run ENABLE {endpoint.database};")
    worst = 0.0
    described = []
    for p in ours:
        wait = float(p.get("maxwait", "0") or 0) + float(p.get("maxwait_us", "0") or 0) / 1e6
        waiting = int(p.get("cl_waiting", "0") or 0)
        worst = max(worst, wait)
        described.append(f"{p.get('database')}/{p.get('user')}: {p.get('cl_active')} active, {waiting} waiting "
                         f"(longest {wait:.2f} s), {p.get('sv_active')} server active, {p.get('sv_idle')} idle, "
                         f"mode {p.get('pool_mode')}")
        if waiting and wait > limit:
            problems.append(f"pool {p.get('database')}/{p.get('user')} has {waiting} client(s) waiting, the longest "
                            f"{wait:.2f} s, over {limit:g} s (topology.max_pool_wait_s): the pool is too small for the "
                            "load or server connections are held by long transactions; raise default_pool_size or "
                            "find the long transactions")
    evidence = {"SHOW POOLS": "\n".join(described)} if described else {}
    if problems:
        return CheckResult.failed("; ".join(problems), measured=round(worst, 3), threshold=limit, evidence=evidence)
    return CheckResult.passed(f"{endpoint.describe()}: {len(ours)} pool(s) for {endpoint.database}, longest client wait "
                              f"{worst:.2f} s", measured=round(worst, 3), threshold=limit, evidence=evidence)


@check("topology.patroni_members", title="Patroni has one running leader and every member follows it",
       feature=FEATURE, category=CATEGORY, severity="critical")
async def patroni_members(ctx: CheckContext) -> CheckResult:
    """From Patroni's REST API (``/cluster``): no leader means no writes; a paused cluster means
    no automatic failover; a member not running or lagging past the failover limit cannot take
    over; and the target the game and the deploy use must be the leader."""
    from pytest_hokmdb.cluster.patroni import rest_get

    topo = ctx.topology
    if not topo.patroni_rest_urls:
        return _unconfigured("Patroni")
    body = None
    for base in topo.patroni_rest_urls:
        status, answer = await asyncio.to_thread(rest_get, base.rstrip("/") + "/cluster")
        if status == 200 and isinstance(answer, dict):
            body = answer
            break
    if body is None:
        return CheckResult.failed(f"Patroni: no REST API answered ({', '.join(topo.patroni_rest_urls)}); check that Patroni "
                                  "runs on the members and topology.patroni.rest_urls")
    members = body.get("members", [])
    described = [f"{m.get('name')} {m.get('role')} {m.get('state')} {m.get('host')}:{m.get('port')} timeline "
                 f"{m.get('timeline')} lag {m.get('lag')}" for m in members]
    problems = []
    leaders = [m for m in members if m.get("role") == "leader"]
    if len(leaders) != 1 or leaders[0].get("state") != "running":
        problems.append(f"{len(leaders)} leader(s) ({', '.join(str(m.get('name')) for m in leaders) or 'none'}), not one "
                        "running leader: writes fail until Patroni elects one (patronictl list)")
    if body.get("pause"):
        problems.append("the cluster is in maintenance mode (paused): Patroni will not fail over; run `patronictl resume`")
    running = [m for m in members if m.get("state") in ("running", "streaming")]
    if len(running) < topo.patroni_expected_members:
        problems.append(f"{len(running)} of {topo.patroni_expected_members} expected member(s) running "
                        "(topology.patroni.expected_members)")
    limit = ctx.settings.max_replication_lag_bytes
    for m in members:
        if m.get("role") != "leader" and isinstance(m.get("lag"), int) and m["lag"] > limit:
            problems.append(f"member {m.get('name')} lags {m['lag']} bytes, over {limit} (smoke.max_replication_lag_bytes): "
                            "it cannot take over without losing writes")
        elif m.get("role") != "leader" and m.get("lag") == "unknown":
            problems.append(f"member {m.get('name')} reports an unknown lag (not replicating)")
    if leaders and (leaders[0].get("host"), leaders[0].get("port")) != (ctx.target.host, ctx.target.port):
        problems.append(f"the target {ctx.target.host}:{ctx.target.port} is not the leader "
                        f"{leaders[0].get('host')}:{leaders[0].get('port')}")
    evidence = {"patroni /cluster": "\n".join(described)}
    if problems:
        return CheckResult.failed("Patroni: " + "; ".join(problems), measured=len(running),
                                  threshold=topo.patroni_expected_members, evidence=evidence)
    return CheckResult.passed(f"Patroni: leader {leaders[0].get('name')}, {len(running)} member(s) running",
                              measured=len(running), threshold=topo.patroni_expected_members, evidence=evidence)


CHECKS: list[CheckFunction] = [target_is_primary, standbys_follow, replication_slots, synchronous_standbys, pgbouncer_pools,
                               patroni_members]
