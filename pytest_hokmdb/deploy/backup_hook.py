"""The deploy's use of the backup module (``pytest_hokmdb.backup``): take a verified backup
before migrating, and restore it when the rollback by downgrade did not bring the database
back to a state the gate accepts."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.errors import BackupError

log = logging.getLogger("hokmdb.deploy.backup")


def _module() -> Any:
    try:
        from pytest_hokmdb import backup

        missing = [name for name in ("take_backup", "restore_and_swap") if not hasattr(backup, name)]
        if missing:
            raise ImportError(f"pytest_hokmdb.backup has no {', '.join(missing)}")
    except ImportError as exc:
        raise BackupError(
            f"the backup module is not available in this installation ({exc})",
            hint="install a hokmdb version with pytest_hokmdb.backup, or deploy with --skip-backup where that is allowed",
        ) from None
    return backup


def with_retention(loaded: LoadedConfig, days: int | None) -> LoadedConfig:
    """``--backup-retention DAYS`` overrides ``backup.retention_days`` for this deploy's backup."""
    if days is None:
        return loaded
    backup = loaded.config.backup.model_copy(update={"retention_days": days})
    return dataclasses.replace(loaded, config=loaded.config.model_copy(update={"backup": backup}))


async def take_verified_backup(loaded: LoadedConfig, target: Target, *, deploy_id: int | None) -> Any:
    """A backup the deploy may rely on: taken, verified, or a ``BackupError`` (the deploy does not start)."""
    backup = _module()
    verify = loaded.config.backup.verify_after_backup
    record = await backup.take_backup(
        loaded, target=target, reason=f"pre-deploy (deploy #{deploy_id})" if deploy_id else "pre-deploy",
        verify=verify if verify != "none" else "quick",
    )
    if not getattr(record, "verified", False):
        raise BackupError(
            f"backup {getattr(record, 'id', '?')} was taken but not verified; a deploy that needs a backup does not start without a verified one",
            hint="check the backup log; run `python database/rollback.py list-backups` to see its state",
        )
    log.info("backup %s taken and verified at %s", record.id, record.location)
    return record


async def restore_point_before_migrating(loaded: LoadedConfig, *, deploy_id: int | None) -> Any:
    """A named restore point (pgBackRest environments): "just before this deploy" is then one
    ``rollback.py restore --target-name`` away, with every write up to that moment kept."""
    from datetime import UTC, datetime

    from pytest_hokmdb.backup.physical import named_restore_point

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"hokmdb-deploy-{deploy_id}-{stamp}" if deploy_id else f"hokmdb-deploy-{stamp}"
    point = await named_restore_point(loaded, name)
    log.info("restore point %s created at %s", point.name, point.lsn)
    return point


async def restore(loaded: LoadedConfig, location: Any) -> None:
    backup = _module()
    await backup.restore_and_swap(loaded, location)


async def apply_retention(loaded: LoadedConfig, days: int) -> str:
    """``--backup-retention DAYS`` after a successful deploy: the backup module's cleanup with that
    many days (it never deletes the newest verified backup, nor one of the newest ``retention_count``).
    Never fails the deploy: problems are returned in the summary and logged."""
    try:
        from pytest_hokmdb.backup.retention import plan_cleanup, run_cleanup
    except ImportError as exc:
        return f"retention not applied: {exc}"
    try:
        plan = await plan_cleanup(loaded, days=days, databases=False)
        problems = list(plan.problems) + list(await run_cleanup(loaded, plan))
    except Exception as exc:  # noqa: BLE001 - retention is housekeeping, never a deploy failure
        log.warning("backup retention (%d days) not applied: %s", days, exc)
        return f"retention not applied: {exc}"
    for problem in problems:
        log.warning("backup retention: %s", problem)
    return f"retention {days} days: {len(plan.backups)} old backup(s) deleted" + (f", {len(problems)} problem(s)" if problems else "")
