"""What a SIGKILLed run leaves behind, ``rollback.py cleanup`` finds and removes (issue 32,
items 7 and 8), and what a live run still uses it leaves alone.

* ``pytest --restore-from-backup`` killed while its tests run leaves its ``hokmdb_restored_*``
  database (a full copy of the data); cleanup drops it, reporting it by name, and keeps the
  copy of a run that is alive, even when that run has no session open at the moment. A
  copy kept with ``--keep-restored`` stays until it is ``retention_days`` old.
* ``backup.py --verify-existing ID --verify full`` killed once pg_restore has filled its
  verification server leaves that server running with the decrypted data; its data
  directory is readable by no other account, and cleanup stops the server and removes the
  directory, so nothing of the data is left. A verification whose server directory another
  account could swap (a parent it owns) restores nothing there.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
from backup_support import BackupSetup, add_bulk_table, database_names, descendants
from helpers import PROJECT_ROOT

from pytest_hokmdb.backup import take_backup
from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.cluster.scratch import OWNER_FILE, sweep_orphans

ROLLBACK = PROJECT_ROOT / "database" / "rollback.py"
BACKUP = PROJECT_ROOT / "database" / "backup.py"
_WAIT_S = 240.0

HOLDING_TEST = '''
import os
import time
from pathlib import Path


def test_holds_the_restored_copy():
    """Says it runs (the restore is done by now), then waits to be released or killed."""
    Path(os.environ["HOKMDB_TEST_READY"]).write_text(str(os.getpid()))
    release = Path(os.environ["HOKMDB_TEST_RELEASE"])
    while not release.exists():
        time.sleep(0.05)
'''


def _wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + _WAIT_S
    while not condition():
        assert proc is None or proc.poll() is None, f"the process ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.01)



def _wait_gone(pids: list[int]) -> None:
    for pid in pids:
        _wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), f"the orphaned process {pid} ending")


def _cleanup(setup: BackupSetup, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROLLBACK), "cleanup", "--environment", "testing", f"--db-config={setup.config_dir}", *extra],
        capture_output=True, text=True, env=env, timeout=300,
    )


async def _sessions(setup: BackupSetup, dbname: str) -> int:
    conn = await asyncpg.connect(setup.admin_dsn())
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", dbname))
    finally:
        await conn.close()


def _restored(names: set[str]) -> set[str]:
    return {n for n in names if n.startswith("hokmdb_restored_")}


# -- item 7: the scratch database of a killed --restore-from-backup run ---------------------


async def test_cleanup_drops_the_restored_copy_of_a_killed_run_and_keeps_a_live_runs(
    backup_setup: BackupSetup, tmp_path: Path
) -> None:
    record = await take_backup(backup_setup.loaded(), verify="none")
    before = _restored(await database_names(backup_setup))
    project = tmp_path / "inner"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_holding.py").write_text(HOLDING_TEST)
    env = {**os.environ, **backup_setup.env, "HOKMDB_SCRATCH_DIR": str(tmp_path / "scratch")}

    def start(name: str) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
        run_env = {**env, "HOKMDB_TEST_READY": str(tmp_path / f"{name}.ready"),
                   "HOKMDB_TEST_RELEASE": str(tmp_path / f"{name}.release")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "test_holding.py", "-p", "no:cacheprovider", "-p", "no:xdist",
             "--environment=testing", f"--db-config={backup_setup.config_dir}", f"--restore-from-backup={record.location}"],
            cwd=project, env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        return proc, run_env

    killed, killed_env = start("killed")
    live, live_env = start("live")
    try:
        _wait_for(lambda: Path(killed_env["HOKMDB_TEST_READY"]).exists(), "the killed run's test started", killed)
        _wait_for(lambda: Path(live_env["HOKMDB_TEST_READY"]).exists(), "the live run's test started", live)
        copies = _restored(await database_names(backup_setup)) - before
        assert len(copies) == 2, copies
        orphans = [pid for pid, _ in descendants(killed.pid)]
        killed.send_signal(signal.SIGKILL)  # the pytest process only, as a crash would
        killed.wait(timeout=30)
        _wait_gone(orphans)
        # Which copy is whose: the live run's is the one its process still owns; both are
        # idle (the test holds no session), so sessions cannot tell them apart.
        for name in copies:
            assert await _sessions(backup_setup, name) == 0, f"{name} has sessions; the test wants idle copies"
        dry = _cleanup(backup_setup, env, "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        listed = {name for name in copies if f"- database {name} " in dry.stdout}
        assert len(listed) == 1, f"--dry-run should list exactly the killed run's copy of {sorted(copies)}:\n{dry.stdout}"
        (orphan,) = listed
        (kept,) = copies - listed
        assert f"- database {orphan} (the scratch restore of a run that is gone (killed), pid {killed.pid} " in dry.stdout
        assert f"keep database {kept}: the scratch restore of a live run, pid {live.pid} " in dry.stdout, dry.stdout
        assert copies <= _restored(await database_names(backup_setup)), "--dry-run removed something"

        done = _cleanup(backup_setup, env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"deleted 1 item(s)\n  - database {orphan} (" in done.stdout, done.stdout
        remaining = _restored(await database_names(backup_setup))
        assert orphan not in remaining, f"cleanup left the killed run's copy {orphan}:\n{done.stdout}"
        assert kept in remaining, f"cleanup dropped {kept}, which a live run uses:\n{done.stdout}"
        assert live.poll() is None
    finally:
        Path(live_env["HOKMDB_TEST_RELEASE"]).write_text("")
        for proc in (killed, live):
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        leftovers = _restored(await database_names(backup_setup)) - before
        if leftovers:  # a failed run of this test drops what it made, then says so
            conn = await asyncpg.connect(backup_setup.admin_dsn())
            try:
                for name in leftovers:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()
    assert live.returncode == 0
    assert leftovers == set(), "the live run did not drop its own copy"


async def test_a_copy_kept_with_keep_restored_stays_until_retention_days(backup_setup: BackupSetup, tmp_path: Path) -> None:
    """Its run is over (its process gone) on purpose: cleanup keeps it, saying until when,
    and drops it once it is older than ``retention_days`` (here ``--days 0``)."""
    record = await take_backup(backup_setup.loaded(), verify="none")
    before = _restored(await database_names(backup_setup))
    project = tmp_path / "inner"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_holding.py").write_text(HOLDING_TEST)
    (tmp_path / "release").write_text("")
    env = {**os.environ, **backup_setup.env, "HOKMDB_TEST_READY": str(tmp_path / "ready"),
           "HOKMDB_TEST_RELEASE": str(tmp_path / "release")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "test_holding.py", "-p", "no:cacheprovider", "-p", "no:xdist",
         "--environment=testing", f"--db-config={backup_setup.config_dir}", f"--restore-from-backup={record.location}",
         "--keep-restored"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (kept,) = _restored(await database_names(backup_setup)) - before
    try:
        dry = _cleanup(backup_setup, env, "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert f"keep database {kept}: kept with --keep-restored on " in dry.stdout, dry.stdout
        assert f"- database {kept}" not in dry.stdout, dry.stdout
        done = _cleanup(backup_setup, env)
        assert kept in _restored(await database_names(backup_setup)), done.stdout
        expired = _cleanup(backup_setup, env, "--days", "0")
        assert expired.returncode == 0, expired.stdout + expired.stderr
        assert f"- database {kept} (kept with --keep-restored on " in expired.stdout, expired.stdout
        assert kept not in _restored(await database_names(backup_setup)), expired.stdout
    finally:
        conn = await asyncpg.connect(backup_setup.admin_dsn())
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{kept}" WITH (FORCE)')
        finally:
            await conn.close()


# -- item 8: the server of a killed full verification ----------------------------------------



def _verification_dirs(root: Path) -> list[Path]:
    return [p for p in root.glob("verify-*") if (p / OWNER_FILE).is_file()] if root.is_dir() else []


def _postgres_processes(data_dir: Path) -> list[str]:
    return [c for _, c in descendants(1) if "postgres" in c and str(data_dir) in c]


def _private_to_the_server(path: Path) -> list[str]:
    """Why another account could read ``path`` or swap it or one of its parents (nothing, if private)."""
    server = pwd.getpwnam("postgres").pw_uid
    problems = []
    info = path.stat()
    if info.st_uid != server or stat.S_IMODE(info.st_mode) != 0o700:
        problems.append(f"{path}: owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o} (want postgres, 700)")
    for parent in path.parents:
        info = parent.stat()
        if info.st_uid not in (0, server):
            problems.append(f"{parent}: owned by uid {info.st_uid}")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
            problems.append(f"{parent}: writable by others (mode {stat.S_IMODE(info.st_mode):o}), not sticky")
    return problems


async def _rows_in_copy(cluster: EmbeddedCluster) -> dict[str, int]:
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        names = [r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'hokmdb\\_verify\\_%'")]
    finally:
        await conn.close()
    assert len(names) == 1, names
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs(names[0]))  # type: ignore[arg-type]
    try:
        tables = await conn.fetch(
            "SELECT format('%I.%I', schemaname, relname) AS t FROM pg_stat_user_tables ORDER BY 1")
        return {r["t"]: int(await conn.fetchval(f"SELECT count(*) FROM {r['t']}")) for r in tables}
    finally:
        await conn.close()


async def test_cleanup_stops_the_server_of_a_killed_full_verification_and_removes_its_data(
    backup_setup: BackupSetup, tmp_path: Path
) -> None:
    await add_bulk_table(backup_setup)
    record = await take_backup(backup_setup.loaded(), verify="none")
    root = tmp_path / "scratch"
    env = {**os.environ, **backup_setup.env, "HOKMDB_SCRATCH_DIR": str(root)}
    try:
        await _kill_a_full_verification_and_clean_up(backup_setup, record.id, root, env)
    finally:  # whatever failed, no server of this test outlives it
        sweep_orphans(lambda path: EmbeddedCluster(path).destroy(), root)


async def _kill_a_full_verification_and_clean_up(setup: BackupSetup, backup_id: str, root: Path, env: dict[str, str]) -> None:
    backup_setup = setup
    proc = subprocess.Popen(
        [sys.executable, str(BACKUP), "--environment", "testing", f"--db-config={backup_setup.config_dir}",
         "--verify-existing", backup_id, "--verify", "full"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        # The moment the copy is complete: pg_restore has filled the server and ended, and the
        # checks (analyze, row counts, amcheck) run before the smoke gate starts.
        _wait_for(lambda: any("pg_restore --dbname" in c for _, c in descendants(proc.pid)),
                  "pg_restore filling the verification server", proc)
        _wait_for(lambda: not any("pg_restore" in c for _, c in descendants(proc.pid)), "pg_restore ending", proc)
        proc.send_signal(signal.SIGKILL)  # the hokmdb process only, as a crash would
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # No child was left to finish anything (the smoke gate, which sweeps orphans when it ends, had not started).
    assert descendants(proc.pid) == []

    (tracked,) = _verification_dirs(root)
    cluster = EmbeddedCluster(tracked)
    data_dir = cluster.data_dir
    assert cluster.is_running(), "the verification server should outlive its killed owner (the crash being reproduced)"
    rows = await _rows_in_copy(cluster)
    assert sum(rows.values()) > 0, f"the verification server should hold the restored data: {rows}"
    assert _private_to_the_server(data_dir) == []
    other = subprocess.run(["ls", str(data_dir / "base")], capture_output=True, text=True, user="nobody", timeout=30)
    assert other.returncode != 0 and "Permission denied" in other.stderr, other.stdout + other.stderr

    dry = _cleanup(backup_setup, env, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert str(tracked) in dry.stdout, f"--dry-run does not list the orphaned verification server {tracked}:\n{dry.stdout}"
    assert cluster.is_running() and data_dir.is_dir(), "--dry-run stopped or removed something"

    done = _cleanup(backup_setup, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert str(tracked) in done.stdout, done.stdout
    assert not cluster.is_running(), f"cleanup left the orphaned verification server running:\n{done.stdout}"
    assert _postgres_processes(data_dir) == []
    left = [p for p in (tracked, cluster.base_dir, data_dir, cluster.socket_dir) if p.exists()]
    assert left == [], f"cleanup left {left}:\n{done.stdout}"

    again = _cleanup(backup_setup, env, "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert not any(str(tracked) in line for line in json.loads(again.stdout)[0]["delete"])


async def test_a_full_verification_never_restores_where_another_account_could_swap_a_directory(
    backup_setup: BackupSetup, tmp_path: Path
) -> None:
    """A scratch root below a directory another account owns (one it could have created
    first in /tmp): that account could rename the verification server's directory and put
    its own in its place. The backup is not restored there; the server is removed again."""
    record = await take_backup(backup_setup.loaded(), verify="none")
    nobody = pwd.getpwnam("nobody")
    hostile = Path(tempfile.mkdtemp(prefix="hokmdb-test-hostile-", dir="/tmp"))
    root = hostile / "scratch"
    try:
        os.chown(hostile, nobody.pw_uid, nobody.pw_gid)
        hostile.chmod(0o777)
        env = {**os.environ, **backup_setup.env, "HOKMDB_SCRATCH_DIR": str(root)}
        result = subprocess.run(
            [sys.executable, str(BACKUP), "--environment", "testing", f"--db-config={backup_setup.config_dir}",
             "--verify-existing", record.id, "--verify", "full"],
            capture_output=True, text=True, env=env, timeout=300,
        )
        assert result.returncode == 7, result.stdout + result.stderr
        assert "full verification FAILED" in result.stdout, result.stdout
        assert "the backup is not restored into the verification server" in result.stdout, result.stdout
        assert f"{hostile} belongs to uid {nobody.pw_uid}" in result.stdout, result.stdout
        assert _verification_dirs(root) == []
        assert [c for _, c in descendants(1) if "postgres" in c and str(hostile) in c] == []
    finally:
        if root.is_dir():
            sweep_orphans(lambda path: EmbeddedCluster(path).destroy(), root)
        shutil.rmtree(hostile, ignore_errors=True)
