"""Backups that are proven: encrypted pg_dump backups, local and S3, verified by restoring them.

Public API (deploys call these):

    record = await take_backup(loaded, reason="pre-deploy", verify="quick")   # BackupRecord
    result = await restore_and_swap(loaded, "s3://bucket/key/ID.dump.age", dry_run=True)
    records = list_backups(loaded)                                            # newest first
    result = await verify_backup(loaded, record, depth="full")
"""

from __future__ import annotations

from pytest_hokmdb.backup.records import BackupRecord, find_backup
from pytest_hokmdb.backup.records import list_backups as _list_backups
from pytest_hokmdb.backup.restore import RestoreResult, ScratchRestore, restore_and_swap, restore_scratch
from pytest_hokmdb.backup.take import take_backup
from pytest_hokmdb.backup.verify import verify_backup
from pytest_hokmdb.config import LoadedConfig


def list_backups(loaded: LoadedConfig) -> list[BackupRecord]:
    """Every backup of the loaded environment (local directory and S3), newest first."""
    return _list_backups(loaded, environment=loaded.config.environment)


__all__ = [
    "BackupRecord",
    "RestoreResult",
    "ScratchRestore",
    "find_backup",
    "list_backups",
    "restore_and_swap",
    "restore_scratch",
    "take_backup",
    "verify_backup",
]
