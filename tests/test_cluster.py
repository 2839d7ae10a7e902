"""The embedded cluster: created, started, stopped and restarted for real, as root
(dropping to an unprivileged account) and as a normal user."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import asyncpg
import pytest
from helpers import admin_fetchval, process_environ

from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.cluster.binaries import find_bin_dir
from pytest_hokmdb.cluster.embedded import THROWAWAY_SETTINGS
from pytest_hokmdb.errors import ClusterError

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def cluster_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"hokmdb-ct-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)



async def _execute(cluster: EmbeddedCluster, sql: str) -> None:
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_lifecycle_is_idempotent_and_keeps_data(cluster_dir: Path) -> None:
    cluster = EmbeddedCluster(cluster_dir, settings=dict(THROWAWAY_SETTINGS))
    assert not cluster.status().initialized
    try:
        cluster.start()
        cluster.start()  # already running: nothing to do
        status = cluster.status()
        assert status.running and status.port == cluster.port and status.pid
        assert "running" in status.describe() and str(cluster.port) in status.describe()
        await _execute(cluster, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
        assert cluster.stop() is True
        assert cluster.stop() is False
        assert "stopped" in cluster.status().describe()
        cluster.start()
        assert await admin_fetchval(cluster, "SELECT v FROM kept") == "still here"
        assert await admin_fetchval(cluster, "SHOW listen_addresses") == "127.0.0.1"
        assert (cluster.socket_dir / f".s.PGSQL.{cluster.port}").exists()
    finally:
        cluster.destroy()
    assert not cluster_dir.exists()


async def test_throwaway_clusters_are_copies_with_a_password_of_their_own(tmp_path: Path) -> None:
    """Throwaway clusters copy a pristine initdb instead of running initdb; each copy's
    superuser still has its own password (set as a SCRAM verifier: never in the server log),
    and the pristine directory is made without any (initdb without a password file)."""
    first = EmbeddedCluster(tmp_path / "one", settings=dict(THROWAWAY_SETTINGS))
    second = EmbeddedCluster(tmp_path / "two", settings=dict(THROWAWAY_SETTINGS))
    try:
        first.start()
        second.start()
        assert first.superuser_password != second.superuser_password
        for cluster in (first, second):
            assert await admin_fetchval(cluster, "SELECT rolpassword LIKE 'SCRAM-SHA-256$4096:%' FROM pg_authid "
                                                 "WHERE rolname = current_user") is True
            assert cluster.superuser_password not in cluster.log_file.read_text()
            assert "PASSWORD" not in cluster.log_file.read_text()
        wrong = dict(first.admin_connect_kwargs(), password=second.superuser_password)
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(**wrong)  # type: ignore[arg-type]
    finally:
        first.destroy()
        second.destroy()
    pristine = [p for p in Path(tempfile.gettempdir()).glob(f"hokmdb-pristine-{os.getuid()}/*") if p.is_dir()]
    assert pristine and all((p / "PG_VERSION").is_file() for p in pristine)


@pytest.mark.skipif(not IS_ROOT, reason="checks how hokmdb handles being run as root; this run is not root")
async def test_as_root_the_server_runs_as_an_unprivileged_account(cluster_dir: Path) -> None:
    cluster = EmbeddedCluster(cluster_dir, settings=dict(THROWAWAY_SETTINGS))
    try:
        cluster.start()
        owner = subprocess.run(["ps", "-o", "user=", "-p", str(cluster.status().pid)], capture_output=True, text=True).stdout.strip()
        assert owner == cluster.user.name != "root"
        assert cluster.data_dir.stat().st_uid == cluster.user.uid
        # Only the server account (and root) can reach the trust-authenticated socket.
        assert oct(cluster.socket_dir.stat().st_mode & 0o777) == "0o700"
    finally:
        cluster.destroy()


@pytest.mark.skipif(not IS_ROOT, reason="a directory the server account cannot enter only arises when running as root")
def test_as_root_an_unreachable_directory_falls_back_to_a_reachable_one(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    cluster = EmbeddedCluster(private / "cluster", settings=dict(THROWAWAY_SETTINGS))
    try:
        assert cluster.base_dir != private / "cluster"
        assert cluster.base_dir.name.startswith("cluster-")
        cluster.start()
        assert cluster.is_running()
    finally:
        cluster.destroy()


@pytest.mark.skipif(not IS_ROOT, reason="switching to a normal user needs root")
def test_as_a_normal_user_the_cluster_runs_as_that_user(cluster_dir: Path) -> None:
    import pwd

    user = pwd.getpwnam("nobody")
    # The venv's interpreter may live under /root (pyenv); the system Python of the same
    # version can load the same site-packages.
    site_packages = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    env = {"PATH": os.environ["PATH"], "HOME": tempfile.gettempdir(), "PYTHONPATH": os.pathsep.join([site_packages, str(Path(__file__).parents[1])])}
    python = None
    for candidate in (sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
        try:
            probe = subprocess.run([candidate, "-c", "import pytest_hokmdb.cluster"], user=user.pw_uid, group=user.pw_gid, env=env, capture_output=True, timeout=60)
        except OSError:
            continue
        if probe.returncode == 0:
            python = candidate
            break
    if python is None:
        pytest.skip("no Python interpreter with the project's packages is readable by the 'nobody' account here")
    script = (
        "from pathlib import Path; from pytest_hokmdb.cluster import EmbeddedCluster;"
        f"c = EmbeddedCluster(Path({str(cluster_dir)!r})); c.start(); s = c.status();"
        "print(s.os_user, s.running); c.destroy()"
    )
    result = subprocess.run(
        [python, "-c", script],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["nobody", "True"]


def test_a_fixed_port_in_use_is_reported(cluster_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cluster = EmbeddedCluster(cluster_dir, port=port, settings=dict(THROWAWAY_SETTINGS))
        try:
            with pytest.raises(ClusterError, match=f"port {port} on 127.0.0.1 is already in use"):
                cluster.start()
        finally:
            cluster.destroy()


def test_a_bad_bin_dir_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="does not contain initdb, pg_ctl and postgres"):
        find_bin_dir(tmp_path)


def test_a_server_that_cannot_start_points_at_its_log(cluster_dir: Path) -> None:
    cluster = EmbeddedCluster(cluster_dir, settings={**THROWAWAY_SETTINGS, "shared_buffers": "not-a-size"})
    try:
        with pytest.raises(ClusterError) as err:
            cluster.start()
        assert "pg_ctl failed" in str(err.value)
        assert f"server log: {cluster.log_file}" in str(err.value)
        assert "shared_buffers" in cluster.log_file.read_text()
    finally:
        cluster.destroy()


def test_ready_means_a_live_postmaster_of_this_start_that_says_ready(tmp_path: Path) -> None:
    """The start returns as soon as ``postmaster.pid`` says ready (not at pg_ctl's next tenth
    of a second), so that judgement must not be fooled by a stale file or a server still
    starting."""
    import time

    from pytest_hokmdb.cluster.process import postmaster_ready

    def pid_file(pid: int, started: float, status: str) -> None:
        lines = [str(pid), str(tmp_path), str(int(started)), "5432", "/tmp", "127.0.0.1", "  1234 5678", status]
        (tmp_path / "postmaster.pid").write_text("\n".join(lines) + "\n")

    launched = time.time()
    assert not postmaster_ready(tmp_path, launched)  # no file yet
    pid_file(os.getpid(), launched, "starting")
    assert not postmaster_ready(tmp_path, launched)
    pid_file(os.getpid(), launched - 3600, "ready   ")  # a killed server's file, its pid reused
    assert not postmaster_ready(tmp_path, launched)
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file(dead.pid, launched, "ready   ")  # the server died
    assert not postmaster_ready(tmp_path, launched)
    pid_file(os.getpid(), launched, "ready   ")
    assert postmaster_ready(tmp_path, launched)


# The operator's shell, as the README has it: these must never reach a server's environment.
OPERATOR_SECRETS = {
    "BACKUP_ENCRYPTION_KEY": "AGE-SECRET-KEY-1HOKMDBSENTINELNEVERINASERVERENVIRONMENT000000000000000",
    "DB_PASSWORD_PRODUCTION": "sentinel-db-password-7Hq",
    "AWS_SECRET_ACCESS_KEY": "sentinel-aws-secret-3Zp",
}


async def test_a_server_started_from_a_shell_holding_secrets_holds_none_of_them(cluster_dir: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A database superuser reads its server's environment; the operator's backup key, database
    passwords and cloud keys are in the operator's, and must not be in the server's."""
    for name, value in OPERATOR_SECRETS.items():
        monkeypatch.setenv(name, value)
    cluster = EmbeddedCluster(cluster_dir, settings=dict(THROWAWAY_SETTINGS))
    cluster.start()
    try:
        conn = await asyncpg.connect(**cluster.admin_connect_kwargs())  # type: ignore[arg-type]
        try:
            await conn.execute("CREATE TEMP TABLE env (line text)")
            await conn.execute("COPY env FROM PROGRAM 'tr ''\\0'' ''\\n'' < /proc/self/environ'")
            seen = {row[0].split("=", 1)[0]: row[0].split("=", 1)[-1] for row in await conn.fetch("SELECT line FROM env")}
        finally:
            await conn.close()
        postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
        assert "PATH" in seen and seen.get("USER"), seen  # the method reads the environment
        for environment in (seen, process_environ(postmaster)):
            leaked = {k for k, v in environment.items() if k in OPERATOR_SECRETS or v in OPERATOR_SECRETS.values()}
            assert not leaked, leaked
    finally:
        cluster.destroy()


def test_the_server_log_is_readable_by_its_account_only(cluster_dir: Path) -> None:
    """With log_statement = all a server log shows password verifiers: 0600, as is its data."""
    cluster = EmbeddedCluster(cluster_dir, settings=dict(THROWAWAY_SETTINGS))
    cluster.start()
    try:
        assert cluster.log_file.stat().st_mode & 0o777 == 0o600
        cluster.log_file.chmod(0o644)  # an older hokmdb's, or an operator's chmod
        cluster.stop()
        cluster.start()
        assert cluster.log_file.stat().st_mode & 0o777 == 0o600
    finally:
        cluster.destroy()
