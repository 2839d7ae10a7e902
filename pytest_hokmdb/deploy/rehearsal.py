"""Rehearse a deploy on a restored copy under simulated game load, before production sees it.

``python database/deploy.py --environment production --rehearse`` restores the environment's
newest *verified* backup into a local topology of its own (a throwaway primary, a streaming
standby, PgBouncer in transaction mode), plays the application's workload through PgBouncer,
runs the pending deploy with the environment's own deploy, lock and smoke settings (the gate
included), then rolls it back to where it started, and prints what production should expect:
how long, which table was blocked for how long, how many game transactions failed, how far
the standby fell behind, how long clients waited in the pool, whether the rollback works.

Nothing touches the real target: the environment's database is never connected to; its config
is read for the backup storage and the settings, with unset database variables stood in for.
The copy, its standby and PgBouncer are removed afterwards (``--keep-rehearsal`` keeps them);
the report, the deploy's and the rollback's logs stay in ``<deploy.log_dir>/rehearsal_<env>_<stamp>/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from pytest_hokmdb.backup.pg import bin_dir, run_pg_restore
from pytest_hokmdb.backup.records import BackupRecord, find_backup
from pytest_hokmdb.backup.verify import fetched_dump, scratch_smoke_settings
from pytest_hokmdb.cluster.embedded import EmbeddedCluster
from pytest_hokmdb.cluster.topology import POOLER_ADMIN, LocalTopology
from pytest_hokmdb.config import LoadedConfig, load_config
from pytest_hokmdb.config.profile import project_profile
from pytest_hokmdb.db.resolve import provision
from pytest_hokmdb.db.scratch import start_throwaway_cluster
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.db.topology import PoolerEndpoint
from pytest_hokmdb.deploy.load import (
    LockTimes,
    Peaks,
    Traffic,
    Workload,
    run_traffic,
    sample_locks,
    sample_topology,
)
from pytest_hokmdb.deploy.options import DeployOptions
from pytest_hokmdb.errors import ExitCode, Refused
from pytest_hokmdb.redaction import register_secret

log = logging.getLogger("hokmdb.rehearsal")

REHEARSAL_ENVIRONMENT = "testing"  # the copy's config: no approval, no production-only refusals
APP_USER, OWNER_USER, MONITOR_USER = "rehearsal_app", "rehearsal_owner", "rehearsal_monitor"
SECRET_VARS = {
    "app": "HOKMDB_REHEARSAL_APP_PASSWORD",
    "owner": "HOKMDB_REHEARSAL_OWNER_PASSWORD",
    "monitor": "HOKMDB_REHEARSAL_MONITOR_PASSWORD",
    "pooler": "HOKMDB_REHEARSAL_POOLER_PASSWORD",
}


@dataclass
class RehearsalOptions:
    environment: str
    config_path: str | None = None
    target_revision: str = "head"
    backup: str = "latest-verified"
    clients: int = 8
    game_statement_timeout_ms: int = 3000
    maintenance_mode: bool = False
    max_downtime_s: float | None = None
    rollback: bool = True
    keep: bool = False
    show_progress: bool | None = None


@dataclass
class Rehearsal:
    """What production should expect, as measured on the copy."""

    environment: str
    backup_id: str
    backup_revision: str | None
    target_revision: str
    restore_s: float = 0.0
    deploy_exit: int | None = None
    deploy_message: str = ""
    deploy_s: float = 0.0
    deploy_final_revision: str | None = None
    longest_locks: dict[str, float] = field(default_factory=dict)
    sampled_locks: dict[str, float] = field(default_factory=dict)
    load: str = ""
    transactions: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    stall_ms: float = 0.0
    p99_ms: float = 0.0
    lag_peak_bytes: float | None = None
    lag_peak_s: float | None = None
    pool_wait_peak_ms: float | None = None
    rollback_exit: int | None = None
    rollback_message: str = ""
    rollback_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    directory: str = ""

    @property
    def exit_code(self) -> int:
        """The deploy's own failure first; then a rollback that does not work; then failed game
        transactions (a deploy that the game notices is not ready for production)."""
        if self.deploy_exit not in (None, int(ExitCode.OK)):
            return int(self.deploy_exit)  # type: ignore[arg-type]
        if self.rollback_exit not in (None, int(ExitCode.OK)):
            return int(ExitCode.ROLLBACK_FAILED)
        if self.failed or self.problems:
            return int(ExitCode.CHECKS_FAILED)
        return int(ExitCode.OK)

    def verdict(self) -> str:
        code = self.exit_code
        if code == ExitCode.OK:
            return "the deploy and its rollback work on a copy of production's data under game load"
        if self.deploy_exit not in (None, int(ExitCode.OK)):
            return f"the deploy FAILED on the copy (exit {self.deploy_exit}): {self.deploy_message}"
        if self.rollback_exit not in (None, int(ExitCode.OK)):
            return f"the deploy worked but its rollback FAILED (exit {self.rollback_exit}): {self.rollback_message}"
        reasons = ([f"{self.failed} game transaction(s) failed during the deploy"] if self.failed else []) + self.problems
        return "the deploy worked, but " + "; ".join(reasons)

    def lines(self) -> list[str]:
        locks = self.longest_locks or self.sampled_locks
        lock_text = ", ".join(f"{t} {s:.2f}s" for t, s in sorted(locks.items(), key=lambda kv: -kv[1])[:4]) or "none"
        rows = [
            ("backup", f"{self.backup_id} at revision {self.backup_revision or 'base'}, restored in {self.restore_s:.1f}s"),
            ("deploy", f"{self.backup_revision or 'base'} -> {self.target_revision}: exit {self.deploy_exit} in "
                       f"{self.deploy_s:.1f}s, now at {self.deploy_final_revision or 'base'}"),
            ("write locks", f"longest held per table: {lock_text}"),
            ("game", f"{self.load}: {self.transactions} transactions, {self.failed} failed, longest {self.stall_ms:.0f} ms, "
                     f"p99 {self.p99_ms:.0f} ms"),
            ("standby", "no standby" if self.lag_peak_bytes is None else
                        f"replay lag peak {self.lag_peak_bytes / 1024 / 1024:.1f} MiB / {self.lag_peak_s or 0:.2f}s"),
            ("PgBouncer", "not measured" if self.pool_wait_peak_ms is None else
                          f"longest client wait {self.pool_wait_peak_ms:.0f} ms"),
        ]
        if self.rollback_exit is None:
            rows.append(("rollback", "not rehearsed" + (": the deploy failed first" if self.deploy_exit else "")))
        else:
            state = "works" if self.rollback_exit == ExitCode.OK else f"FAILED (exit {self.rollback_exit})"
            rows.append(("rollback", f"{self.target_revision} -> {self.backup_revision or 'base'} in {self.rollback_s:.1f}s: "
                                     f"{state}; {self.rollback_message}"))
        for kind, count in sorted(self.failures.items(), key=lambda kv: -kv[1])[:4]:
            rows.append(("failed", f"{count} x {kind}"))
        rows += [("problem", p) for p in self.problems]
        rows.append(("report", self.directory))
        return [f"  {name:<12} {text}" for name, text in rows]


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _var(name: str) -> str:
    return "${" + SECRET_VARS[name] + "}"


def rehearsal_config(loaded: LoadedConfig, primary: EmbeddedCluster, topology: LocalTopology, dbname: str,
                     directory: Path, options: RehearsalOptions) -> Path:
    """The copy's config: the environment's deploy, lock and smoke settings, the copy's
    endpoints, secrets only as ``${VARIABLES}``; no backups, no notifications."""
    real = loaded.config
    deploy = real.deploy.model_dump(mode="json", exclude_none=True)
    deploy.update(log_dir=str(directory), require_approval=False, allow_force=False)
    database = {
        "host": primary.host, "port": primary.port, "name": dbname, "sslmode": "disable",
        "user": APP_USER, "password": _var("app"),
        "owner_user": OWNER_USER, "owner_password": _var("owner"),
        "monitor_user": MONITOR_USER, "monitor_password": _var("monitor"),
        "statement_timeout_ms": real.database.statement_timeout_ms, "lock_timeout_ms": real.database.lock_timeout_ms,
    }
    budgets: dict[str, Any] = {}
    if real.topology is not None:
        budgets = {k: getattr(real.topology, k) for k in ("replay_timeout_s", "max_slot_retained_bytes", "max_pool_wait_s")}
    data = {
        "environment": REHEARSAL_ENVIRONMENT,
        "description": f"rehearsal of a {real.environment} deploy on a restored copy",
        "database": database,
        "embedded": {"enabled": False},
        "deploy": deploy,
        "smoke": scratch_smoke_settings(loaded),
        "topology": {
            "standbys": [{"host": "127.0.0.1", "port": topology.standby_port}],
            "pgbouncer": {"host": "127.0.0.1", "port": topology.pooler_port, "admin_user": POOLER_ADMIN,
                          "admin_password": _var("pooler"), "database": dbname},
            **budgets,
        },
    }
    path = directory / f"{REHEARSAL_ENVIRONMENT}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


@contextlib.contextmanager
def _secrets_in_environment(values: dict[str, str]) -> Iterator[None]:
    """The copy's passwords for the deploy, its gate (a pytest child) and the rollback; removed after."""
    for value in values.values():
        register_secret(value)
    previous = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in previous.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


async def _restore(loaded: LoadedConfig, record: BackupRecord, cluster: EmbeddedCluster, dbname: str,
                   passwords: dict[str, str], show_progress: bool | None) -> None:
    """Roles as production has them (owner, application, monitoring), then the dump restored
    as the owner, so the copy's objects belong to the owner and the app role has DML only."""
    await provision(cluster, dbname=dbname, user=APP_USER, password=passwords["app"],
                    monitor=(MONITOR_USER, passwords["monitor"]), owner=(OWNER_USER, passwords["owner"]))
    owner = Target(environment=REHEARSAL_ENVIRONMENT, host=cluster.host, port=cluster.port, dbname=dbname,
                   user=OWNER_USER, password=passwords["owner"], sslmode="disable", statement_timeout_ms=0)
    with fetched_dump(loaded, record, show_progress=show_progress) as (dump, findings):
        await asyncio.to_thread(
            run_pg_restore, bin_dir(loaded), dump, owner, jobs=loaded.config.backup.restore_jobs, exact=False,
            entries=int(findings.get("toc_entries", 0)), show_progress=show_progress,
        )
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs(dbname))  # type: ignore[arg-type]
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def _workload(loaded: LoadedConfig) -> Workload | None:
    return project_profile(loaded.project_root).load_workload()


async def _measured(label: str, work: Any, load_kwargs: dict[str, Any], primary_kwargs: dict[str, Any],
                    pooler: PoolerEndpoint, workload: Workload | None, options: RehearsalOptions,
                    report: Rehearsal | None) -> tuple[Any, float]:
    """Run ``work`` while the game plays through PgBouncer and the samplers watch; the figures
    go into ``report`` (None: run under load, measure nothing)."""
    stop, sampler_stop = asyncio.Event(), asyncio.Event()
    traffic, locks, peaks = Traffic(), LockTimes(), Peaks()
    tasks: list[asyncio.Task[Any]] = []
    if workload is not None and options.clients > 0:
        tasks.append(asyncio.create_task(run_traffic(load_kwargs, workload, stop, traffic, clients=options.clients,
                                                     statement_timeout_ms=options.game_statement_timeout_ms)))
    samplers = [asyncio.create_task(sample_locks(primary_kwargs, sampler_stop, locks)),
                asyncio.create_task(sample_topology(primary_kwargs, pooler, sampler_stop, peaks))]
    await asyncio.sleep(1.0)  # the game is playing before the migration starts
    for task in tasks:
        if task.done() and task.exception() is not None:
            raise Refused(f"the simulated game load could not start on the restored copy: {task.exception()}",
                          hint="rehearse without load (--rehearsal-clients 0), or check the backup holds the game's data")
    t0 = time.monotonic()
    try:
        result = await work()
    finally:
        elapsed = time.monotonic() - t0
        sampler_stop.set()
        await asyncio.gather(*samplers, return_exceptions=True)
        await asyncio.sleep(1.0)
        stop.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    if report is not None:
        report.load = (f"{options.clients} clients through PgBouncer (statement_timeout {options.game_statement_timeout_ms} ms)"
                       if tasks else "no simulated load (the application profile has no workload)")
        report.transactions, report.failed = traffic.count, traffic.failed
        report.failures = {f"{kind} ({traffic.examples.get(kind, '')})": n for kind, n in traffic.failures.items()}
        report.stall_ms, report.p99_ms = traffic.stall_s * 1000, traffic.percentile(0.99) * 1000
        report.sampled_locks = dict(locks.longest)
        report.lag_peak_bytes, report.lag_peak_s = peaks.lag_bytes, peaks.lag_s
        report.pool_wait_peak_ms = None if peaks.pool_wait_s is None else peaks.pool_wait_s * 1000
        report.problems += [f"{label}: {p}" for p in peaks.problems]
    return result, elapsed


async def run_rehearsal(options: RehearsalOptions) -> Rehearsal:
    """Restore, play, deploy, roll back, measure; see the module's docstring."""
    from pytest_hokmdb.deploy.orchestrator import run_deploy
    from pytest_hokmdb.deploy.rollback import RollbackRequest, rollback_migration

    loaded = load_config(options.environment, options.config_path, stand_in_missing=True)
    if options.clients < 0:
        raise Refused("--rehearsal-clients must be 0 or more")
    workload = _workload(loaded)
    record = find_backup(loaded, options.backup, require_verified=True)
    directory = loaded.resolve(loaded.config.deploy.log_dir) / f"rehearsal_{options.environment}_{_stamp()}"
    directory.mkdir(parents=True, exist_ok=True)
    report = Rehearsal(environment=options.environment, backup_id=record.id, backup_revision=record.revision,
                       target_revision=options.target_revision, directory=str(directory))
    passwords = {k: secrets.token_urlsafe(18) for k in ("app", "owner", "monitor")}
    cluster = await asyncio.to_thread(start_throwaway_cluster, "rehearsal")
    topology = LocalTopology(cluster, pooler_roles=(APP_USER, MONITOR_USER))
    dbname = loaded.config.database.name
    try:
        t0 = time.monotonic()
        log.info("restoring backup %s into a local topology", record.id)
        await _restore(loaded, record, cluster, dbname, passwords, options.show_progress)
        report.restore_s = time.monotonic() - t0
        await asyncio.to_thread(topology.start)
        passwords["pooler"] = cluster.superuser_password
        config_dir = directory
        rehearsal_config(loaded, cluster, topology, dbname, config_dir, options)
        load_kwargs = dict(host="127.0.0.1", port=topology.pooler_port, user=APP_USER, password=passwords["app"],
                           database=dbname)
        primary_kwargs = cluster.admin_connect_kwargs(dbname)
        pooler = PoolerEndpoint("127.0.0.1", topology.pooler_port, POOLER_ADMIN, cluster.superuser_password, dbname)
        with _secrets_in_environment({SECRET_VARS[k]: v for k, v in passwords.items()}):
            deploy_options = DeployOptions(
                REHEARSAL_ENVIRONMENT, str(config_dir), target_revision=options.target_revision, skip_backup=True,
                maintenance_mode=options.maintenance_mode, max_downtime_s=options.max_downtime_s, notify=False,
            )
            outcome, report.deploy_s = await _measured("deploy", lambda: run_deploy(deploy_options), load_kwargs,
                                                       primary_kwargs, pooler, workload, options, report)
            report.deploy_exit, report.deploy_message = outcome.exit_code, outcome.message
            report.deploy_final_revision, report.longest_locks = outcome.final_revision, dict(outcome.longest_locks)
            if options.rollback and outcome.exit_code == ExitCode.OK and outcome.final_revision != record.revision:
                request = RollbackRequest(REHEARSAL_ENVIRONMENT, str(config_dir), revision=record.revision or "base")
                back, report.rollback_s = await _measured("rollback", lambda: rollback_migration(request), load_kwargs,
                                                          primary_kwargs, pooler, workload, options, None)
                report.rollback_exit, report.rollback_message = back.exit_code, back.message
    finally:
        if options.keep:
            log.warning("kept the rehearsal's topology: %s (remove with `hokmdb cluster janitor` or rm -r)", cluster.base_dir)
        else:
            await asyncio.to_thread(_remove, topology)
    (directory / "rehearsal.json").write_text(json.dumps({**asdict(report), "exit_code": report.exit_code,
                                                          "verdict": report.verdict()}, indent=2))
    return report


def _remove(topology: LocalTopology) -> None:
    """Standby and PgBouncer first (the slot goes with the primary), then the copy itself."""
    topology.destroy()
    topology.primary.destroy()
