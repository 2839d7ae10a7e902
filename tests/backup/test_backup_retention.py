"""list-backups and cleanup: newest first, retention by age and count, never the newest verified."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backup_support import BackupSetup
from helpers import PROJECT_ROOT

from pytest_hokmdb.backup import list_backups, take_backup
from pytest_hokmdb.backup.records import BackupRecord, iso
from pytest_hokmdb.backup.retention import plan_backups
from pytest_hokmdb.backup.storage import LocalStorage

ROLLBACK = PROJECT_ROOT / "database" / "rollback.py"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def fake(index: int, age_days: float, verified: bool | None) -> BackupRecord:
    runs = [] if verified is None else [{"depth": "quick", "passed": verified}]
    manifest = {"started_at": iso(NOW - timedelta(days=age_days)), "verifications": runs, "environment": "testing"}
    return BackupRecord(f"b{index}", f"/x/b{index}.dump.age", manifest, LocalStorage(Path("/x")))


def test_retention_keeps_the_newest_n_and_the_young_and_always_the_newest_verified() -> None:
    records = [
        fake(0, 0.1, None),
        fake(1, 1.5, False),
        fake(2, 5, None),
        fake(3, 10, True),   # newest verified: kept although old and beyond the count
        fake(4, 20, True),
        fake(5, 30, None),
    ]
    delete, keep = plan_backups(records, days=7, count=2, now=NOW)
    assert [r.id for r in delete] == ["b4", "b5"]
    reasons = {r.id: why for r, why in keep}
    assert reasons == {
        "b0": "among the newest 2", "b1": "among the newest 2", "b2": "younger than 7 days", "b3": "newest verified backup",
    }
    # a backup goes only when both rules let it go; a lone old backup always stays
    delete, _ = plan_backups(records, days=1, count=1, now=NOW)
    assert [r.id for r in delete] == ["b1", "b2", "b4", "b5"]
    delete, _ = plan_backups([fake(0, 100, None)], days=1, count=1, now=NOW)
    assert delete == []


def rollback(setup: BackupSetup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROLLBACK), *args, f"--db-config={setup.config_dir}"],
                          capture_output=True, text=True, env={**os.environ, **setup.env}, timeout=120)


async def test_list_and_cleanup_commands(backup_setup: BackupSetup) -> None:
    loaded = backup_setup.loaded()
    old_verified = await take_backup(loaded, verify="quick")
    old_unverified = await take_backup(loaded, verify="none")
    newest = await take_backup(loaded, verify="none")
    for record, days in ((old_verified, 40), (old_unverified, 30)):  # age two of them
        record.manifest["started_at"] = iso(datetime.now(UTC) - timedelta(days=days))
        record.save_manifest()
    directory = Path(newest.location).parent
    leftover = directory / "testing-20200101T000000Z-abcdef.dump.age.partial"
    orphan = directory / "testing-20200101T000000Z-fedcba.dump.age"  # data without manifest
    for path in (leftover, orphan):
        path.write_bytes(b"half")
        os.utime(path, (time.time() - 7200, time.time() - 7200))

    listing = rollback(backup_setup, "list-backups", "--environment", "testing", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert [r["id"] for r in rows] == [newest.id, old_unverified.id, old_verified.id]
    assert [r["verified"] for r in rows] == [False, False, True]
    assert set(rows[0]) >= {"id", "environment", "time", "revision", "size", "verified", "location", "source"}
    assert rows[0]["source"] == "primary"
    table = rollback(backup_setup, "list-backups", "--environment", "testing")
    assert newest.id in table.stdout and "quick passed" in table.stdout
    assert "source" in table.stdout and "primary" in table.stdout

    dry = rollback(backup_setup, "cleanup", "--environment", "testing", "--count", "1", "--days", "7", "--dry-run", "--no-databases")
    assert dry.returncode == 0, dry.stderr
    assert "would delete 3 item(s)" in dry.stdout
    assert old_unverified.id in dry.stdout and leftover.name in dry.stdout and orphan.name in dry.stdout
    assert f"keep {old_verified.id}: newest verified backup" in dry.stdout
    assert len(list_backups(loaded)) == 3 and leftover.exists() and orphan.exists()

    done = rollback(backup_setup, "cleanup", "--environment", "testing", "--count", "1", "--days", "7", "--no-databases")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [r.id for r in list_backups(loaded)] == [newest.id, old_verified.id]
    assert not leftover.exists() and not orphan.exists() and not Path(old_unverified.location).exists()
