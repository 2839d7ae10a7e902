"""Damaged backups are refused before pg_restore touches anything, each with a message that
says what is wrong; the target stays exactly as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from backup_support import BackupSetup, database_names, fingerprint
from helpers import PROJECT_ROOT
from pyrage import x25519

import pytest_hokmdb.backup.restore as restore_module
from pytest_hokmdb.backup import restore_and_swap, take_backup
from pytest_hokmdb.backup.records import BackupRecord
from pytest_hokmdb.errors import BackupError

ROLLBACK = PROJECT_ROOT / "database" / "rollback.py"


def flip_byte(record: BackupRecord, setup: BackupSetup, mp: pytest.MonkeyPatch) -> str:
    path = Path(record.location)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return record.location


def flip_byte_and_fix_manifest(record: BackupRecord, setup: BackupSetup, mp: pytest.MonkeyPatch) -> str:
    """Damage that a checksum alone would not catch: the manifest is 'repaired' to match."""
    import hashlib

    flip_byte(record, setup, mp)
    record.manifest["object"]["sha256"] = hashlib.sha256(Path(record.location).read_bytes()).hexdigest()
    record.save_manifest()
    return record.location


def truncate(record: BackupRecord, setup: BackupSetup, mp: pytest.MonkeyPatch) -> str:
    path = Path(record.location)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    return record.location


def wrong_key(record: BackupRecord, setup: BackupSetup, mp: pytest.MonkeyPatch) -> str:
    mp.setenv("BACKUP_ENCRYPTION_KEY", str(x25519.Identity.generate()))
    return record.location


def missing_manifest(record: BackupRecord, setup: BackupSetup, mp: pytest.MonkeyPatch) -> str:
    Path(record.manifest_location).unlink()
    return record.location


def checksum_mismatch(record: BackupRecord, setup: BackupSetup, mp: pytest.MonkeyPatch) -> str:
    manifest = json.loads(Path(record.manifest_location).read_text())
    manifest["object"]["sha256"] = "0" * 64
    Path(record.manifest_location).write_text(json.dumps(manifest))
    return record.manifest_location  # the manifest's path works as well as the object's


CASES: list[tuple[str, Callable[..., str], str]] = [
    ("flipped byte", flip_byte, r"is corrupt: age authentication failed .* differs from the manifest"),
    ("flipped byte, manifest re-hashed", flip_byte_and_fix_manifest, r"is corrupt: age authentication failed .* SHA-256 matches"),
    ("truncated", truncate, r"is truncated: .* has \d+ bytes, the manifest says \d+"),
    ("wrong key", wrong_key, r"wrong key for backup .*: it was encrypted to age1\w+, but BACKUP_ENCRYPTION_KEY .* is the identity of age1\w+"),
    ("missing manifest", missing_manifest, r"missing manifest: .*\.manifest\.json does not exist next to .*\.dump\.age"),
    ("checksum mismatch", checksum_mismatch, r"checksum mismatch: the stored object's SHA-256 is [0-9a-f]{64}, the manifest says 0{64}"),
]


@pytest.mark.parametrize("damage, pattern", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
async def test_damaged_backup_is_refused_before_pg_restore_and_target_is_untouched(
    backup_setup: BackupSetup, monkeypatch: pytest.MonkeyPatch, damage: Callable[..., str], pattern: str
) -> None:
    loaded = backup_setup.loaded()
    record = await take_backup(loaded, verify="none")
    location = damage(record, backup_setup, monkeypatch)
    before = await fingerprint(backup_setup.dsn)
    databases = await database_names(backup_setup)
    restores: list[Any] = []
    real = restore_module.run_pg_restore

    def spy(*args: Any, **kwargs: Any) -> None:  # observes only; the real pg_restore runs if called
        restores.append(args)
        real(*args, **kwargs)

    monkeypatch.setattr(restore_module, "run_pg_restore", spy)
    with pytest.raises(BackupError, match=pattern):
        await restore_and_swap(backup_setup.loaded(), location)
    assert restores == [], "pg_restore was started"
    assert await database_names(backup_setup) == databases, "a database was created or dropped"
    assert await fingerprint(backup_setup.dsn) == before


def test_restore_script_says_which_damage_in_one_line_and_exits_7(backup_setup: BackupSetup) -> None:
    import asyncio

    record = asyncio.run(take_backup(backup_setup.loaded(), verify="none"))
    truncate(record, backup_setup, pytest.MonkeyPatch())
    proc = subprocess.run(
        [sys.executable, str(ROLLBACK), "restore", "--environment", "testing", f"--db-config={backup_setup.config_dir}",
         "--backup-file", record.location],
        capture_output=True, text=True, env={**os.environ, **backup_setup.env}, timeout=120,
    )
    assert proc.returncode == 7, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"backup {record.id} is truncated" in errors[0]
    assert "Traceback" not in proc.stderr
    assert backup_setup.live.password not in proc.stderr
