"""What a deploy and a migration rollback share: log file, steps, lock, revisions, gate,
recovery, history and notification.

``deploy.py`` (``orchestrator.run_deploy``) and ``rollback.py migration``
(``deploy.rollback.rollback_migration``) both drive a ``DeploySession``, so the two paths take the
same lock, use the same timeouts, write the same kind of log and history row, gate with the
same pytest suites and notify the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic.script import ScriptDirectory

from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.db.connect import connect
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.deploy import history
from pytest_hokmdb.deploy.lock import Actor, DeployLock
from pytest_hokmdb.deploy.runner import Budget, Migrator, ReplicaPolicy, RevisionFailed
from pytest_hokmdb.errors import ConfigError, ExitCode, HokmdbError
from pytest_hokmdb.gate import GateResult, run_gate
from pytest_hokmdb.migrate import alembic_config, current_revision, resolve_in
from pytest_hokmdb.migration.online import BackfillSettings
from pytest_hokmdb.redaction import RedactingFilter, redact

if TYPE_CHECKING:
    from pytest_hokmdb.db.topology import Topology

log = logging.getLogger("hokmdb.deploy")

RESULTS = {
    ExitCode.OK: "succeeded",
    ExitCode.ROLLED_BACK: "rolled_back",
    ExitCode.ROLLBACK_FAILED: "rollback_failed",
    ExitCode.PRIMARY_CHANGED: "primary_changed",
    ExitCode.CONTRACT_WAITS: "contract_waits",
    ExitCode.DEPLOY_LOCKED: "locked",
    ExitCode.REFUSED: "refused",
    ExitCode.BACKUP_ERROR: "backup_failed",
    ExitCode.CHECKS_FAILED: "failed",
    ExitCode.CONNECTION_ERROR: "failed",
    ExitCode.CONFIG_ERROR: "failed",
    ExitCode.INTERRUPTED: "interrupted",
}


@dataclass
class Step:
    name: str
    seconds: float
    status: str  # ok | failed | skipped
    detail: str


@dataclass
class Outcome:
    exit_code: int
    message: str
    environment: str = ""
    from_revision: str | None = None
    to_revision: str | None = None
    final_revision: str | None = None
    steps: list[Step] = field(default_factory=list)
    log_path: Path | None = None
    run_id: int | None = None
    duration_s: float = 0.0
    notification_problems: list[str] = field(default_factory=list)
    sql: dict[str, str] = field(default_factory=dict)
    # table -> the longest time (s) the migration held it under a lock that blocks writes
    longest_locks: dict[str, float] = field(default_factory=dict)
    # Standbys: time spent waiting for them to replay each revision, and the most WAL one had
    # left to replay when a revision committed (None: no standby is configured).
    replay_wait_s: float | None = None
    replay_peak_bytes: int | None = None

    @property
    def result(self) -> str:
        try:
            return RESULTS.get(ExitCode(self.exit_code), "failed")
        except ValueError:
            return "failed"


class StepFailed(HokmdbError):
    """A step failed in a way that decides the exit code (carried by ``code``)."""

    def __init__(self, message: str, code: ExitCode, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = code  # type: ignore[misc]


# -- log file -------------------------------------------------------------------------------


def _quiet_alembic(record: logging.LogRecord) -> bool:
    """Console filter while a deploy log is open: alembic below WARNING goes to the file only."""
    return not (record.name.startswith("alembic") and record.levelno < logging.WARNING)


class DeployLogFile:
    """``deployment_<env>_<timestamp>.log`` under ``deploy.log_dir``, every line redacted."""

    def __init__(self, loaded: LoadedConfig, kind: str = "deployment") -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        directory = loaded.resolve(loaded.config.deploy.log_dir)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{kind}_{loaded.config.environment}_{stamp}.log"
        n = 1
        while path.exists():
            n += 1
            path = directory / f"{kind}_{loaded.config.environment}_{stamp}_{n}.log"
        self.path = path
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.addFilter(RedactingFilter())
        self.handler.setLevel(logging.INFO)
        self._levels: dict[str, int] = {}

    def __enter__(self) -> DeployLogFile:
        root = logging.getLogger()
        # alembic's INFO lines (each revision, each offline rendering) belong in this file; on
        # the console only when the user asked for them (-v left the alembic logger at INFO).
        self._quieted = [] if logging.getLogger("alembic").getEffectiveLevel() <= logging.INFO else list(root.handlers)
        for handler in self._quieted:
            handler.addFilter(_quiet_alembic)
        root.addHandler(self.handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            self._levels[""] = root.level
            root.setLevel(logging.INFO)
        for name in ("hokmdb", "alembic.runtime.migration"):
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            if logger.level > logging.INFO or logger.level == logging.NOTSET:
                logger.setLevel(logging.INFO)
        self.path.chmod(0o640)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self.handler)
        for handler in self._quieted:
            handler.removeFilter(_quiet_alembic)
        self.handler.close()
        for name, level in self._levels.items():
            logging.getLogger(name or None).setLevel(level)


# -- the session ------------------------------------------------------------------------------


class DeploySession:
    def __init__(self, loaded: LoadedConfig, target: Target, *, kind: str, log_path: Path | None) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.actor = Actor.current()
        self.kind = kind
        self.target = replace(target.writable(), application_name=self.actor.application_name(kind))
        self.log_path = log_path
        self.cfg = alembic_config(project_root=loaded.project_root)
        self.script = ScriptDirectory.from_config(self.cfg)
        self.lock = DeployLock(self.target, self.actor, wait_s=self.config.deploy.lock_wait_s, purpose=kind)
        self.steps: list[Step] = []
        self.run_id: int | None = None
        self.started = time.monotonic()
        self.backup: Any = None
        self.restore_point: str | None = None  # the named restore point taken before migrating (pgBackRest)
        self.maintenance_on = False
        # Pre-flight checks that could not look and were passed with --force (never on
        # production): recorded in hokmdb_deploy_history so nobody later mistakes the deploy
        # for a verified one.
        self.unverified: list[str] = []
        # The monitoring connection's target: the migrator names blockers through it.
        self.monitor_target: Target | None = None
        # The game's database paused in PgBouncer (maintenance mode with deploy.maintenance_pause_pooler).
        self.pool_paused = False
        # Checks that already failed before the deploy changed anything, accepted with --force:
        # the later gates judge what the deploy did, so these failing again do not fail them.
        self.tolerated_failures: frozenset[str] = frozenset()
        # The failing checks of the last gate run (check id, else pytest node id).
        self.last_failures: list[str] = []

    def topology(self) -> Topology:
        """The environment's standbys and PgBouncer (``topology`` in its config)."""
        from pytest_hokmdb.db.topology import resolve_topology

        return resolve_topology(self.loaded, self.target, self.monitor_target)

    async def find_monitor(self) -> None:
        """Resolve the monitoring connection (None when the environment has none)."""
        from pytest_hokmdb.db.resolve import resolve_monitor_target

        try:
            self.monitor_target = await resolve_monitor_target(self.loaded, self.target)
        except HokmdbError as exc:
            log.warning("no monitoring connection (%s); blockers' queries may read <insufficient privilege>", exc.message)

    # -- bookkeeping ---------------------------------------------------------------------------

    @asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[dict[str, str]]:
        """Log the start and the end (with its duration) of a step; the body may set ``info['detail']``."""
        info: dict[str, str] = {"detail": "", "status": "ok"}
        t0 = time.monotonic()
        log.info("step %s: started", name)
        try:
            yield info
        except BaseException as exc:
            seconds = time.monotonic() - t0
            detail = info.get("detail") or getattr(exc, "message", None) or str(exc) or type(exc).__name__
            self.steps.append(Step(name, seconds, "failed", redact(str(detail))))
            log.error("step %s: FAILED after %.2fs: %s", name, seconds, redact(str(getattr(exc, "message", exc))))
            raise
        seconds = time.monotonic() - t0
        self.steps.append(Step(name, seconds, info["status"], info["detail"]))
        log.info("step %s: %s in %.2fs%s", name, info["status"], seconds, f" ({info['detail']})" if info["detail"] else "")

    def code_head(self) -> str:
        heads = self.script.get_heads()
        if len(heads) != 1:
            raise ConfigError(f"the migration history has {len(heads)} heads ({', '.join(heads)}); merge them first")
        return heads[0]

    def resolve_revision(self, revision: str) -> str:
        if revision in ("head", "heads"):
            return self.code_head()
        return resolve_in(self.script, revision)

    def knows(self, revision: str) -> bool:
        try:
            return self.script.get_revision(revision) is not None
        except Exception:  # noqa: BLE001
            return False

    async def current_revision(self) -> str | None:
        assert self.lock.conn is not None
        async with self.lock._use:
            return await current_revision(self.lock.conn)

    def migrator(self, *, max_downtime_s: float | None) -> Migrator:
        deploy = self.config.deploy
        return Migrator(
            target=self.target,
            lock=self.lock,
            actor=self.actor,
            project_root=self.loaded.project_root,
            lock_timeout_ms=self.config.database.lock_timeout_ms,
            statement_timeout_ms=deploy.migration_statement_timeout_ms,
            base_delay_s=deploy.lock_retry_base_delay_s,
            concurrent_wait_ms=int(deploy.concurrent_wait_s * 1000),
            budget=Budget(retry_budget_s=deploy.lock_retry_budget_s, max_downtime_s=max_downtime_s),
            monitor_target=self.monitor_target,
            backfill=BackfillSettings(deploy.backfill_batch_size, deploy.backfill_pause_ms, deploy.backfill_max_batch_ms,
                                      max_replica_lag_bytes=deploy.backfill_max_replica_lag_bytes),
            replicas=self.replica_policy(),
        )

    def replica_policy(self) -> ReplicaPolicy | None:
        """Standbys to wait for after each revision: those the topology lists (or the local
        one), at least smoke.expected_replicas; None for a single server."""
        topology = self.config.topology
        listed = 0 if topology is None else (1 if topology.local else len(topology.standbys))
        expected = max(listed, self.config.smoke.expected_replicas)
        if topology is None and expected == 0:
            return None
        return ReplicaPolicy(expected=expected, timeout_s=topology.replay_timeout_s if topology else 60.0)

    async def in_recovery(self) -> bool:
        assert self.lock.conn is not None
        async with self.lock._use:
            return bool(await self.lock.conn.fetchval("SELECT pg_is_in_recovery()"))

    async def start_history(self, *, from_revision: str | None, to_revision: str | None, options: dict[str, object]) -> None:
        assert self.lock.conn is not None
        async with self.lock._use:
            await history.ensure_tables(self.lock.conn)
            self.run_id = await history.start_run(
                self.lock.conn, kind=self.kind, environment=self.config.environment, actor=self.actor.who,
                host=self.actor.host, pid=self.actor.pid, from_revision=from_revision, to_revision=to_revision,
                log_path=str(self.log_path) if self.log_path else None, options=options,
            )

    async def finish_history(self, outcome: Outcome) -> None:
        """Record the result on the deploy's row. When the lock's session is gone or its
        server was demoted (a switchover mid-deploy), through the current primary instead:
        the row replicated there, and left 'running' the next deploy would call it killed."""
        if self.run_id is None:
            return
        fields = dict(result=outcome.result, exit_code=outcome.exit_code, final_revision=outcome.final_revision,
                      duration_s=outcome.duration_s,
                      message=redact(outcome.message + "".join(f"; forced unverified: {u}" for u in self.unverified))[:4000])
        problem: Exception | None = None
        if self.lock.conn is not None and not self.lock.conn.is_closed():
            try:
                async with self.lock._use:
                    await history.finish_run(self.lock.conn, self.run_id, **fields)  # type: ignore[arg-type]
                return
            except Exception as exc:  # noqa: BLE001 - tried again on the current primary
                problem = exc
        try:
            from pytest_hokmdb.db.resolve import resolve_target

            fresh = await resolve_target(self.loaded, start=False)
            conn = await connect(replace(fresh, user=self.target.user, password=self.target.password, read_only=False))
            try:
                await history.finish_run(conn, self.run_id, **fields)  # type: ignore[arg-type]
            finally:
                await conn.close()
            if problem is not None or outcome.exit_code == ExitCode.PRIMARY_CHANGED:
                log.info("result of deploy #%d recorded on the current primary %s:%d", self.run_id, fresh.host, fresh.port)
        except Exception as exc:  # noqa: BLE001 - the log file still has everything
            log.error("could not record the result in %s: %s", history.HISTORY_TABLE, redact(str(exc or problem)))

    # -- applying and reverting -------------------------------------------------------------------

    async def table_stats(self) -> dict[int, Any]:
        """Per-table counters before a migration or rollback, for ``tidy`` to compare with."""
        from pytest_hokmdb.deploy.cleanup import table_stats

        try:
            return await table_stats(self.target)
        except Exception as exc:  # noqa: BLE001 - without them tidy vacuums what is churned now
            log.warning("could not read table statistics before migrating: %s", redact(str(exc)))
            return {}

    async def tidy(self, before: dict[int, Any]) -> None:
        """Step "vacuum": VACUUM (ANALYZE) / ANALYZE exactly the tables the migration churned,
        so the gate judges the database, not the migration's dead rows (deploy.cleanup)."""
        from pytest_hokmdb.deploy.cleanup import tidy

        async with self.step("vacuum") as info:
            info["detail"] = await tidy(self.target, before, lock_timeout_ms=self.config.database.lock_timeout_ms)

    async def apply(self, migrator: Migrator, revisions: list[Any], applied: list[str],
                    hold: Callable[[Any], Awaitable[bool]] | None = None) -> list[str]:
        """Apply ``revisions`` in order; record each one's checksum as it lands; ids land in
        ``applied``. ``hold(rev)`` True stops before ``rev`` (a contract the old release still needs)."""
        try:
            for rev in revisions:
                if hold is not None and await hold(rev):
                    break
                await self.lock.ensure_held()
                await migrator.run_step("upgrade", rev.revision, rev.revision)
                applied.append(rev.revision)
                async with self.lock._use:
                    await history.record_revision(
                        self.lock.conn, rev.revision, history.file_sha256(rev.path), Path(rev.path).name, how="applied",
                        deploy_id=self.run_id,
                    )
        finally:
            await migrator.close()
        return applied

    async def revert(self, migrator: Migrator, current: str | None, destination: str | None) -> list[str]:
        reverted: list[str] = []
        try:
            for rev, below in migrator.downgrade_path(current, destination):
                await self.lock.ensure_held()
                await migrator.run_step("downgrade", rev.revision, below)
                reverted.append(rev.revision)
                async with self.lock._use:
                    await history.forget_revision(self.lock.conn, rev.revision)
        finally:
            await migrator.close()
        return reverted

    # -- the gate ---------------------------------------------------------------------------------

    async def gate(self, revision: str | None, suites: list[str], label: str) -> tuple[bool, str]:
        """Run each gate suite as pytest (``run_gate``) against ``revision``; (passed, summary).

        A suite passes when pytest passed, or when every check that failed is one of
        ``tolerated_failures`` (failing before the deploy, accepted with --force); a suite that
        could not run (no JSON result, an exit other than 0 or 1) never passes."""
        self.last_failures = []
        if not suites:
            return True, "no gate suites configured"
        if revision is None:
            current = await self.current_revision()
            ok = current is None
            return ok, "database is empty again (no revision recorded)" if ok else f"expected an empty database, found revision {current}"
        summaries: list[str] = []
        passed = True
        for suite in suites:
            # Held to `revision`: the schema-dependent checks judge what that revision builds
            # (schema.matches_models, performance.hot_queries), so a correct rollback passes.
            extra = [f"--target-revision={revision}"]
            result: GateResult = await asyncio.to_thread(
                run_gate, self.loaded, suite, extra_args=extra, timeout_s=self.config.deploy.gate_timeout_s
            )
            counts = ", ".join(f"{v} {k}" for k, v in sorted(result.summary.items())) or f"pytest exit {result.exit_code}"
            failures = [t for t in result.tests if t.get("outcome") in ("failed", "error")]
            names = [str(t.get("check") or t.get("nodeid")) for t in failures]
            self.last_failures += names
            ran = bool(result.document) and result.exit_code in (0, 1)
            suite_ok = result.passed or (ran and bool(names) and set(names) <= self.tolerated_failures)
            tolerated = f"; {len(names)} failing before the deploy too, accepted with --force" if suite_ok and names else ""
            summaries.append(f"{suite}: {'passed' if suite_ok else 'FAILED'} ({counts}{tolerated})")
            if not suite_ok:
                passed = False
                for test in failures:
                    log.error("%s gate: FAILED %s: %s", label, test.get("check") or test.get("nodeid"), redact(str(test.get("message", ""))))
                if not ran:
                    log.error("%s gate: pytest %s exited %d; its output:\n%s", label, suite, result.exit_code, result.output[-4000:])
        return passed, "; ".join(summaries)

    # -- recovery ---------------------------------------------------------------------------------

    async def recover(self, start: str | None, suites: list[str], reason: str) -> tuple[int, str]:
        """Bring the database back to ``start``: downgrade, gate; else restore the backup, gate."""
        log.error("deploy failed (%s): rolling back to %s", reason, start or "an empty database")
        downgraded = False
        async with self.step("rollback") as info:
            try:
                current = await self.current_revision()
                before = await self.table_stats()
                reverted = await self.revert(self.migrator(max_downtime_s=None), current, start)
                now = await self.current_revision()
                if now != start:
                    raise RevisionFailed(str(now), "downgrade", "error", f"after the downgrade the database is at {now}, not {start}", attempts=0, sqlstate=None)
                downgraded = True
                info["detail"] = f"downgraded {' -> '.join(reverted) or 'nothing'} to {start or 'base'}"
            except (RevisionFailed, HokmdbError) as exc:
                info["status"] = "failed"
                info["detail"] = f"downgrade failed: {getattr(exc, 'message', exc)}"
                log.error("downgrade to %s failed: %s", start, getattr(exc, "message", exc))
        if downgraded:
            await self.tidy(before)
            async with self.step("gate-after-rollback") as info:
                ok, summary = await self.gate(start, suites, "after rollback")
                info["detail"] = summary
                info["status"] = "ok" if ok else "failed"
            if ok:
                return int(ExitCode.ROLLED_BACK), f"{reason}; rolled back to {start or 'base'} and the gate passed"
        if self.backup is None:
            return int(ExitCode.ROLLBACK_FAILED), (
                f"{reason}; the rollback {'did not pass the gate' if downgraded else 'by downgrade failed'} "
                "and there is no pre-deploy backup to restore: the database needs an operator now"
            )
        from pytest_hokmdb.deploy.backup_hook import restore

        async with self.step("restore-backup") as info:
            try:
                # The restore swaps the database, ending every session on it, ours included:
                # release the lock session first and take it again on the restored database.
                await self.lock.close()
                await restore(self.loaded, self.backup.location)
                await self.lock.acquire()
                info["detail"] = f"restored backup {self.backup.id}"
            except Exception as exc:  # noqa: BLE001 - reported; nothing else left to try
                info["status"] = "failed"
                info["detail"] = f"restore of backup {getattr(self.backup, 'id', '?')} failed: {redact(str(getattr(exc, 'message', exc)))}"
                return int(ExitCode.ROLLBACK_FAILED), f"{reason}; the rollback failed and so did the restore: {info['detail']}"
        async with self.step("gate-after-restore") as info:
            ok, summary = await self.gate(start, suites, "after restore")
            info["detail"] = summary
            info["status"] = "ok" if ok else "failed"
        if ok:
            return int(ExitCode.ROLLED_BACK), f"{reason}; restored the pre-deploy backup {self.backup.id} and the gate passed"
        return int(ExitCode.ROLLBACK_FAILED), f"{reason}; restored the pre-deploy backup {self.backup.id} but the gate still fails"

    # -- notification -----------------------------------------------------------------------------

    async def notify(self, outcome: Outcome, *, title: str) -> list[str]:
        from pytest_hokmdb.notify import Notification, send

        code = outcome.exit_code
        severity = "info" if code == ExitCode.OK else "critical" if code == ExitCode.ROLLBACK_FAILED else "warning"
        fields = {
            "environment": self.config.environment,
            "from": outcome.from_revision or "empty",
            "to": outcome.to_revision or "?",
            "now at": outcome.final_revision or "empty",
            "result": outcome.result,
            "exit code": str(code),
            "duration": f"{outcome.duration_s:.1f}s",
            "by": str(self.actor),
        }
        if outcome.log_path:
            fields["log"] = str(outcome.log_path)
        note = Notification(
            event=f"{self.kind}.{outcome.result}", environment=self.config.environment, title=title,
            text=outcome.message, severity=severity, fields=fields,  # type: ignore[arg-type]
        )
        return await send(self.config, note)  # logs its own problems; never raises
