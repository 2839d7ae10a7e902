"""rollback.py restore and emergency: verify first, swap in one short window, never leave
the target empty or half-restored."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from backup_support import BackupSetup, database_names, fingerprint
from helpers import PROJECT_ROOT, server_age_s

from pytest_hokmdb.backup import take_backup
from pytest_hokmdb.backup.emergency import emergency
from pytest_hokmdb.checks import performance

ROLLBACK = PROJECT_ROOT / "database" / "rollback.py"


def rollback(setup: BackupSetup, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROLLBACK), *args], capture_output=True, text=True,
        env={**os.environ, **setup.env}, timeout=timeout,
    )


def _restore_metrics(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The restore metrics textfile, parsed by prometheus-client (labels other than environment)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (directory / "hokmdb_restore_testing.prom").read_text()
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "environment"))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def change_target(setup: BackupSetup) -> None:
    """A change made after the backup: a restore must undo it, a failed one must keep it."""
    conn = await asyncpg.connect(setup.dsn)
    try:
        await conn.execute("UPDATE players SET rating = rating + 1 WHERE id IN (SELECT id FROM players ORDER BY id LIMIT 5)")
        await conn.execute("DELETE FROM performance_metrics")
    finally:
        await conn.close()


async def test_restore_dry_run_then_swap_keeps_the_previous_database(backup_setup: BackupSetup, tmp_path: Path) -> None:
    loaded = backup_setup.loaded()
    record = await take_backup(loaded, verify="quick")
    at_backup = await fingerprint(backup_setup.dsn)
    await change_target(backup_setup)
    changed = await fingerprint(backup_setup.dsn)
    assert changed != at_backup
    name = backup_setup.live.db.name
    databases = await database_names(backup_setup)
    common = ["--environment", "testing", f"--db-config={backup_setup.config_dir}", "--backup-file", record.location]
    config = backup_setup.config_dir / "testing.json"  # the restores export their metrics (issue 20)
    config.write_text(json.dumps({**json.loads(config.read_text()), "metrics": {"textfile_dir": str(tmp_path)}}))

    dry = rollback(backup_setup, "restore", *common, "--dry-run", "--no-smoke")
    assert dry.returncode == 0, dry.stderr
    assert f"dry run: backup {record.id} restored and verified; {name} was not touched" in dry.stdout
    assert _restore_metrics(tmp_path)[("hokmdb_restore_last_swapped", ())] == 0
    assert await fingerprint(backup_setup.dsn) == changed
    assert await database_names(backup_setup) == databases

    app = await asyncpg.connect(host=backup_setup.cluster.host, port=backup_setup.cluster.port, user=backup_setup.live.role,
                                password=backup_setup.live.password, database=name)
    # As the runbooks write it: the backup as a positional argument.
    real = rollback(backup_setup, "restore", "--environment", "testing", f"--db-config={backup_setup.config_dir}",
                    record.location)
    assert real.returncode == 0, real.stderr
    assert "terminating 1 connection(s) to " + name in real.stderr and backup_setup.live.role in real.stderr
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
        await app.fetchval("SELECT 1")
    await app.close()

    assert await fingerprint(backup_setup.dsn) == at_backup
    swapped = _restore_metrics(tmp_path)
    assert swapped[("hokmdb_restore_last_swapped", ())] == 1
    assert swapped[("hokmdb_restore_backup_info", (("backup", record.id),))] == 1
    assert swapped[("hokmdb_restore_last_verified_timestamp_seconds", ())] > 0
    kept = sorted((await database_names(backup_setup)) - databases)
    assert len(kept) == 1 and kept[0].startswith(name[:40]) and "_before_restore_" in kept[0]
    assert f"previous database kept as {kept[0]}" in real.stdout
    assert await fingerprint(backup_setup.admin_dsn(kept[0])) == changed
    # owners and grants came back exactly: the application role works on the restored database
    conn = await asyncpg.connect(host=backup_setup.cluster.host, port=backup_setup.cluster.port, user=backup_setup.live.role,
                                 password=backup_setup.live.password, database=name)
    try:
        assert await conn.fetchval("SELECT count(*) FROM players") == at_backup["counts"]["players"]  # type: ignore[index]
        await conn.execute("INSERT INTO performance_metrics (metric_name, value) VALUES ('after_restore', 1)")
    finally:
        await conn.close()


async def test_restore_killed_mid_way_leaves_the_target_exactly_as_it_was(backup_setup: BackupSetup) -> None:
    record = await take_backup(backup_setup.loaded(), verify="none")
    await change_target(backup_setup)
    before = await fingerprint(backup_setup.dsn)
    name = backup_setup.live.db.name
    proc = subprocess.Popen(
        [sys.executable, str(ROLLBACK), "restore", "--environment", "testing", f"--db-config={backup_setup.config_dir}",
         "--backup-file", record.location],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **backup_setup.env}, start_new_session=True,
    )
    admin = await asyncpg.connect(backup_setup.admin_dsn())
    seen = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            seen = await admin.fetchval(
                "SELECT datname FROM pg_stat_activity WHERE application_name = 'hokmdb pg_restore' AND datname LIKE '%\\_restoring\\_%'"
            )
            if seen:
                os.killpg(proc.pid, signal.SIGKILL)  # hokmdb and its pg_restore, mid-restore
                break
            await asyncio.sleep(0.005)
        proc.wait(timeout=30)
        assert seen, f"pg_restore was never seen running: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
        assert proc.returncode == -signal.SIGKILL
        # the killed client's sessions go away; the target is untouched and still named as before
        for _ in range(200):
            if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", seen):
                break
            await asyncio.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        await admin.close()
    assert await fingerprint(backup_setup.dsn) == before
    assert name in await database_names(backup_setup) and seen in await database_names(backup_setup)

    # cleanup drops the half-restored leftover and nothing else
    dry = rollback(backup_setup, "cleanup", "--environment", "testing", f"--db-config={backup_setup.config_dir}", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"database {seen}" in dry.stdout and seen in await database_names(backup_setup)
    done = rollback(backup_setup, "cleanup", "--environment", "testing", f"--db-config={backup_setup.config_dir}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert seen not in await database_names(backup_setup)
    assert await fingerprint(backup_setup.dsn) == before


async def test_emergency_restores_the_newest_verified_backup_after_a_last_state_backup(backup_setup: BackupSetup) -> None:
    loaded = backup_setup.loaded()
    verified = await take_backup(loaded, verify="quick")
    at_backup = await fingerprint(backup_setup.dsn)
    await change_target(backup_setup)
    unverified = await take_backup(loaded, verify="none")  # newer, but never proven: not a candidate
    changed = await fingerprint(backup_setup.dsn)

    result = await emergency(loaded, "players report lost games")
    assert result.ok, result.problems
    assert result.backup_id == verified.id and result.backup_id != unverified.id
    assert result.smoke_passed is True
    assert await fingerprint(backup_setup.dsn) == at_backup
    assert result.restore is not None and result.restore.previous_database
    assert await fingerprint(backup_setup.admin_dsn(result.restore.previous_database)) == changed
    # a last backup of the state being replaced was taken, with the reason
    from pytest_hokmdb.backup import list_backups

    last = next(r for r in list_backups(loaded) if r.id == result.last_state_backup)
    assert last.manifest["reason"] == "emergency last state: players report lost games"
    assert last.manifest["tables"]["public.performance_metrics"] == 0
    assert isinstance(result.alert_problems, list)


def test_a_restore_argument_that_cannot_be_a_backup_says_what_is_expected(backup_setup: BackupSetup) -> None:
    """Issue 32 item 13: an argument of no accepted form (a URL hokmdb does not read) was told
    "no backup at <a path made of it>", and a well-formed id that does not exist "is not a
    backup". Each now gets the message for what it is; nothing is connected to or restored."""
    common = ("restore", "--environment", "testing", f"--config={backup_setup.config_dir}", "--backup-file")
    forms = ("expected a backup id as `rollback.py list-backups` shows it (ENV-YYYYMMDDTHHMMSSZ-xxxxxx), the path of "
             "its ID.dump.age or ID.manifest.json, s3://bucket/prefix/ID.dump.age, 'latest' or 'latest-verified'")
    url = "https://backups.example.com/testing-20260101T000000Z-abcdef.dump.age"
    for argument in (url, "yesterday", "/etc/hostname"):
        proc = rollback(backup_setup, *common, argument, timeout=60)
        assert proc.returncode != 0, proc.stdout + proc.stderr
        assert f"{argument!r} is not a backup: {forms}" in proc.stderr, proc.stderr
        assert "no such backup" not in proc.stderr and "Traceback" not in proc.stderr
    missing = "testing-20260101T000000Z-abcdef"
    proc = rollback(backup_setup, *common, missing, timeout=60)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert f"no such backup: {missing!r} is not in {backup_setup.backups_dir}" in proc.stderr, proc.stderr
    assert "hint: `python database/rollback.py list-backups --environment testing` lists the backups" in proc.stderr
    assert "is not a backup" not in proc.stderr and "Traceback" not in proc.stderr


async def test_a_good_restore_is_not_failed_by_the_cold_reads_of_its_own_copy(backup_setup: BackupSetup, check_context_factory) -> None:  # type: ignore[no-untyped-def]
    """Issue 32, item 4: the restored copy's statistics are nothing but the restore's own reads
    (pg_restore, ANALYZE, row counts, amcheck), and a new database's stats_reset is empty, so
    on a server older than smoke.cache_hit_min_age_s performance.cache_hit_ratio judged them:
    `restore --dry-run` exited 7 and `emergency` swapped and then reported FAILED. A verified
    copy's statistics are reset, so they start with the copy and hold the workload only.

    The thresholds make any read from disk a failure, and the server is older than the age
    they require, so only the copy's own age can spare it."""
    loaded = backup_setup.loaded()
    record = await take_backup(loaded, verify="quick")
    server_age = int(await server_age_s(backup_setup.admin_dsn(), at_least=60))
    backup_setup.configure(smoke__min_cache_hit_ratio=1.0, smoke__cache_hit_min_reads=1, smoke__cache_hit_min_age_s=server_age)
    name = backup_setup.live.db.name

    dry = rollback(backup_setup, "restore", "--environment", "testing", f"--db-config={backup_setup.config_dir}",
                   "--backup-file", record.location, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr[-3000:]
    assert f"dry run: backup {record.id} restored and verified; {name} was not touched" in dry.stdout

    result = await emergency(backup_setup.loaded(), "players report lost games")
    assert result.ok and result.smoke_passed, result.problems
    # What the smoke suite saw on the swapped-in copy: statistics as young as the copy.
    ctx = await check_context_factory(backup_setup.live.db, smoke={"min_cache_hit_ratio": 1.0, "cache_hit_min_reads": 1,
                                                                   "cache_hit_min_age_s": server_age})
    cache = await performance.cache_hit_ratio(ctx)
    assert cache.status == "skipped", cache.message
    assert f"cache hit ratio: database {name}'s statistics were reset " in cache.message
    assert "hokmdb resets a copy it restores once the copy is verified" in cache.message
    assert f"under smoke.cache_hit_min_age_s ({server_age:g} s): a cold cache is no evidence" in cache.message
