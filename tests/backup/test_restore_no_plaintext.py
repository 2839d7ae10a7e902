"""No plaintext copy of a backup on disk, at any moment of a restore, SIGKILL included.

``rollback.py restore`` is killed with SIGKILL while it decrypts, while pg_restore runs and
while the restored copy is being verified just before the swap; each time the disk holds no
file that is (or starts like) a plain custom-format dump (``PGDMP``), the target is exactly
as it was, and ``rollback.py cleanup`` then sweeps what earlier versions left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from backup_support import BackupSetup, add_bulk_table, descendants, fingerprint
from helpers import PROJECT_ROOT

from pytest_hokmdb.backup import take_backup

ROLLBACK = PROJECT_ROOT / "database" / "rollback.py"
DUMP_MAGIC = b"PGDMP"


def _plain_dumps(*roots: Path) -> list[Path]:
    """Every regular file under ``roots`` that starts like a pg_dump custom-format archive."""
    found = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink():
                    with open(path, "rb") as handle:
                        if handle.read(len(DUMP_MAGIC)) == DUMP_MAGIC:
                            found.append(path)
            except OSError:
                continue
    return found



def _decrypting(scratch: Path) -> Callable[[int], bool]:
    def seen(pid: int) -> bool:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                if os.readlink(fd).startswith(str(scratch)):
                    return True
            except OSError:
                continue
        return False
    return seen


def _child_running(word: str) -> Callable[[int], bool]:
    return lambda pid: any(word in cmd for _, cmd in descendants(pid))



@pytest.mark.parametrize("moment", ["decrypting", "pg_restore", "verifying before the swap"])
async def test_a_restore_killed_at_any_moment_leaves_no_plaintext(
    moment: str, backup_setup: BackupSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("HOKMDB_BACKUP_TMP", str(scratch))
    await add_bulk_table(backup_setup)
    record = await take_backup(backup_setup.loaded(), verify=None)
    before = await fingerprint(backup_setup.dsn)
    when = {
        "decrypting": _decrypting(scratch),
        "pg_restore": _child_running("pg_restore --dbname"),
        "verifying before the swap": _child_running("smoke"),
    }[moment]

    proc = subprocess.Popen(
        [sys.executable, str(ROLLBACK), "restore", "--environment", "testing", f"--db-config={backup_setup.config_dir}",
         "--backup-file", record.location],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **backup_setup.env, "HOKMDB_BACKUP_TMP": str(scratch)},
    )
    deadline = time.monotonic() + 120
    try:
        while not when(proc.pid):
            assert proc.poll() is None, f"the restore finished before the moment {moment!r} was seen"
            assert time.monotonic() < deadline, f"moment {moment!r} never came"
            time.sleep(0.001)
        children = [pid for pid, _ in descendants(proc.pid)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Orphaned children (pg_restore, the gate) finish or die on their own; then look.
    for pid in children:
        for _ in range(600):
            if not Path(f"/proc/{pid}").exists():
                break
            await asyncio.sleep(0.05)

    leftovers = _plain_dumps(scratch, PROJECT_ROOT / "database")
    assert leftovers == [], f"plaintext dump(s) on disk after SIGKILL while {moment}: {leftovers}"
    assert list(scratch.iterdir()) == [], f"files left in the scratch directory: {list(scratch.iterdir())}"
    assert await fingerprint(backup_setup.dsn) == before, "the target changed although the restore never swapped"


def test_cleanup_removes_plaintext_that_earlier_versions_left(backup_setup: BackupSetup, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    stale = scratch / "hokmdb-restore-k3x9a1" / "testing-20261101T000000Z-abcdef.dump"
    in_use = scratch / "hokmdb-restore-busy42" / "testing-20261102T000000Z-abcdef.dump"
    for path in (stale, in_use):
        path.parent.mkdir(parents=True)
        path.write_bytes(DUMP_MAGIC + b"\x01\x0e\x00 the whole database in plaintext")
    env = {**os.environ, **backup_setup.env, "HOKMDB_BACKUP_TMP": str(scratch)}
    with open(in_use, "rb"):  # a restore of an old version still reading its dump
        dry = subprocess.run([sys.executable, str(ROLLBACK), "cleanup", "--environment", "testing",
                              f"--db-config={backup_setup.config_dir}", "--dry-run"], capture_output=True, text=True, env=env, timeout=120)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert f"plaintext leftover {stale.parent}" in dry.stdout and stale.exists()
        done = subprocess.run([sys.executable, str(ROLLBACK), "cleanup", "--environment", "testing",
                               f"--db-config={backup_setup.config_dir}"], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert not stale.parent.exists(), done.stdout
        assert in_use.exists(), "cleanup removed a dump that a running restore still reads"
    again = subprocess.run([sys.executable, str(ROLLBACK), "cleanup", "--environment", "testing",
                            f"--db-config={backup_setup.config_dir}"], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and not in_use.parent.exists(), again.stdout + again.stderr
