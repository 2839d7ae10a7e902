"""Taking backups: the manifest, encryption a stock tool can undo, quick and full verification."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from backup_support import BackupSetup, ensure_age, fingerprint
from helpers import PROJECT_ROOT

from pytest_hokmdb.backup import list_backups, take_backup, verify_backup
from pytest_hokmdb.backup.records import load_record
from pytest_hokmdb.migrate import head_revision

BACKUP_SCRIPT = PROJECT_ROOT / "database" / "backup.py"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_backup_writes_an_encrypted_object_and_its_manifest_last(backup_setup: BackupSetup) -> None:
    loaded = backup_setup.loaded()
    before = await fingerprint(backup_setup.dsn)
    record = await take_backup(loaded, reason="test", verify="quick")

    obj = Path(record.location)
    manifest_path = obj.with_name(record.id + ".manifest.json")
    assert obj.is_file() and manifest_path.is_file()
    assert obj.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert b"COPY public.players" not in obj.read_bytes() and b"PGDMP" not in obj.read_bytes()[:200]
    m = json.loads(manifest_path.read_text())
    assert m["format"] == "hokmdb-backup-manifest" and m["format_version"] == 1
    assert m["environment"] == "testing" and m["database"]["name"] == backup_setup.live.db.name
    assert m["alembic_revision"] == head_revision()
    assert m["server_version"].startswith("15") and "pg_dump (PostgreSQL) 15" in m["pg_dump_version"]
    assert m["object"]["sha256"] == sha256(obj) and m["object"]["size"] == obj.stat().st_size
    assert m["dump"]["format"] == "custom" and m["dump"]["compression"]["method"] == "gzip"
    assert m["encryption"]["recipient_type"] == "x25519" and m["encryption"]["recipient"].startswith("age1")
    assert m["tables"] == {f"public.{t}": n for t, n in before["counts"].items()}  # type: ignore[union-attr]
    assert m["started_at"] <= m["finished_at"]
    assert [v["depth"] for v in m["verifications"]] == ["quick"] and m["verifications"][0]["passed"]
    text = manifest_path.read_text()
    assert backup_setup.key not in text and backup_setup.live.password not in text
    assert not list(obj.parent.glob("*.partial")) and not list(obj.parent.glob(".*tmp"))

    listed = list_backups(loaded)
    assert [r.id for r in listed] == [record.id] and listed[0].verified


def test_stock_age_tool_decrypts_a_backup_without_hokmdb(backup_setup: BackupSetup, tmp_path: Path) -> None:
    """The emergency path: `age -d -i key.txt ID.dump.age > ID.dump`, then pg_restore."""
    import asyncio

    age = ensure_age()
    record = asyncio.run(take_backup(backup_setup.loaded(), verify="none"))
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"# hokmdb test identity\n{backup_setup.key}\n")
    key_file.chmod(0o600)
    plain = tmp_path / "backup.dump"
    proc = subprocess.run([age, "-d", "-i", str(key_file), "-o", str(plain), record.location], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sha256(plain) == record.manifest["dump"]["sha256"]
    toc = subprocess.run([str(_pg_restore()), "--list", str(plain)], capture_output=True, text=True)
    assert toc.returncode == 0 and "TABLE DATA public moves" in toc.stdout


def _pg_restore() -> Path:
    from pytest_hokmdb.backup.pg import bin_dir

    return bin_dir() / "pg_restore"


@pytest.mark.slow  # age's scrypt is deliberately expensive: ~3 s to wrap, ~6 s for the age tool to unwrap
def test_passphrase_backup_decrypts_with_stock_age_through_the_wrapped_identity(
    backup_setup: BackupSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A passphrase key: the manifest carries the per-backup identity, age-encrypted with the
    passphrase; `age -d` (passphrase on the terminal) unwraps it, then decrypts the dump."""
    import asyncio
    import pty

    age = ensure_age()
    passphrase = "correct horse battery staple 42"
    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY", passphrase)
    record = asyncio.run(take_backup(backup_setup.loaded(), verify="none"))
    enc = record.manifest["encryption"]
    assert enc["recipient_type"] == "x25519-passphrase-envelope" and "BEGIN AGE ENCRYPTED FILE" in enc["wrapped_identity"]
    assert passphrase not in json.dumps(record.manifest)
    wrapped = tmp_path / "id.age"
    wrapped.write_text(enc["wrapped_identity"])
    identity = tmp_path / "id.txt"
    # age reads a passphrase from the terminal only: give it one.
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - child
        os.execv(age, [age, "-d", "-o", str(identity), str(wrapped)])
    output = b""
    sent = False
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
        if not sent and b"passphrase" in output.lower():
            os.write(fd, passphrase.encode() + b"\n")
            sent = True
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    plain = tmp_path / "backup.dump"
    proc = subprocess.run([age, "-d", "-i", str(identity), "-o", str(plain), record.location], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sha256(plain) == record.manifest["dump"]["sha256"]



async def test_full_verification_restores_checks_counts_amcheck_and_smoke(backup_setup: BackupSetup) -> None:
    loaded = backup_setup.loaded()
    record = await take_backup(loaded, verify="none")
    result = await verify_backup(loaded, record, depth="full", cluster=backup_setup.cluster)
    assert result["passed"], result["problems"]
    details = result["details"]
    assert details["row_counts"]["matched"] and details["row_counts"]["tables"] == len(record.manifest["tables"])
    assert details["amcheck"]["indexes_checked"] >= 20 and not details["amcheck"]["problems"]
    assert details["smoke"]["exit_code"] == 0 and details["smoke"]["summary"].get("passed", 0) > 20
    stored = load_record(record.storage, record.id).manifest
    assert stored["verifications"][-1]["depth"] == "full" and stored["verifications"][-1]["passed"]
    # the scratch database and its role are gone from the (shared) cluster
    conn = await asyncpg.connect(backup_setup.admin_dsn())
    try:
        assert not await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname LIKE 'hokmdb_verify_%'")
        assert not await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'hokmdb_verify_%'")
    finally:
        await conn.close()


async def test_full_verification_fails_when_restored_rows_differ_from_the_manifest(backup_setup: BackupSetup) -> None:
    loaded = backup_setup.loaded()
    record = await take_backup(loaded, verify="none")
    record.manifest["tables"]["public.players"] += 1  # the dump itself is intact; the counts disagree
    record.save_manifest()
    result = await verify_backup(loaded, record, depth="full", cluster=backup_setup.cluster, smoke=False)
    assert not result["passed"]
    players = record.manifest["tables"]["public.players"]
    assert result["problems"] == [f"row count: public.players: {players - 1} rows restored, manifest says {players}"]
    assert load_record(record.storage, record.id).verification_failed


async def test_row_counts_come_from_the_dump_snapshot_not_from_later_writes(backup_setup: BackupSetup) -> None:
    """Rows inserted while pg_dump runs are neither dumped nor counted: counts and dump agree."""
    import asyncio

    loaded = backup_setup.loaded()
    conn = await asyncpg.connect(backup_setup.dsn)
    stop = asyncio.Event()

    async def writer() -> int:
        n = 0
        while not stop.is_set():
            await conn.execute(
                "INSERT INTO performance_metrics (metric_name, value) VALUES ('bench', 1)"
            )
            n += 1
            await asyncio.sleep(0)
        return n

    task = asyncio.create_task(writer())
    try:
        record = await take_backup(loaded, verify="none")
    finally:
        stop.set()
        inserted = await task
        await conn.close()
    assert inserted > 0
    result = await verify_backup(loaded, record, depth="full", cluster=backup_setup.cluster, smoke=False)
    assert result["passed"], result["problems"]
    now = await fingerprint(backup_setup.dsn)
    assert record.manifest["tables"]["public.performance_metrics"] < now["counts"]["performance_metrics"]  # type: ignore[index]


def test_backup_script_prints_the_location_and_fails_with_exit_7_without_a_key(backup_setup: BackupSetup) -> None:
    env = {**os.environ, **backup_setup.env}
    proc = subprocess.run(
        [sys.executable, str(BACKUP_SCRIPT), "--environment", "testing", f"--db-config={backup_setup.config_dir}", "--verify", "quick",
         "--reason", "cron"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    location = proc.stdout.strip().splitlines()[-1]
    assert location.endswith(".dump.age") and Path(location).is_file()
    assert "quick verification of" in proc.stderr and "passed" in proc.stderr
    assert backup_setup.live.password not in proc.stdout + proc.stderr and backup_setup.key not in proc.stderr

    env.pop("BACKUP_ENCRYPTION_KEY")
    proc = subprocess.run(
        [sys.executable, str(BACKUP_SCRIPT), "--environment", "testing", f"--db-config={backup_setup.config_dir}"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 7
    assert proc.stderr.startswith("error: no backup encryption key for testing") and "Traceback" not in proc.stderr
    assert len(list(backup_setup.backups_dir.rglob("*.manifest.json"))) == 1


def test_backup_script_exports_when_size_and_verification_as_metrics(backup_setup: BackupSetup, tmp_path: Path) -> None:
    """Issue 20: backup age and size for the monitoring operators run (node_exporter textfile),
    parsed with prometheus-client's own parser."""
    import json
    import time

    from prometheus_client.parser import text_string_to_metric_families

    config = backup_setup.config_dir / "testing.json"
    data = json.loads(config.read_text())
    data["metrics"] = {"textfile_dir": str(tmp_path)}
    config.write_text(json.dumps(data))
    before = time.time()
    proc = subprocess.run(
        [sys.executable, str(BACKUP_SCRIPT), "--environment", "testing", f"--db-config={backup_setup.config_dir}",
         "--verify", "quick", "--json"],
        capture_output=True, text=True, env={**os.environ, **backup_setup.env}, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    samples = {s.name: s for family in text_string_to_metric_families((tmp_path / "hokmdb_backup_testing.prom").read_text())
               for s in family.samples}
    assert samples["hokmdb_backup_last_size_bytes"].value == summary["size"] > 0
    assert samples["hokmdb_backup_last_verified"].value == 1
    assert samples["hokmdb_backup_last_success_timestamp_seconds"].value >= before
    assert samples["hokmdb_backup_revision_info"].labels["revision"] == summary["revision"]
