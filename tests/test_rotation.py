"""Password rotation (issue 20): ``hokmdb rotate-password`` on a live embedded cluster while a
session of the role stays connected; the new password logs in, the old one no longer does,
and the clear password is in no server log (``log_statement = all``) and no process listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from helpers import admin_fetchval

HOKMDB = Path(sys.executable).parent / "hokmdb"




def _processes() -> str:
    """Every process's command line and environment this user may read, joined."""
    seen = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            for part in ("cmdline", "environ"):
                try:
                    seen.append((proc / part).read_bytes().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:
                    pass
    return "\n".join(seen)


async def test_rotating_the_app_password_keeps_sessions_and_leaks_the_clear_password_nowhere(embedded) -> None:  # type: ignore[no-untyped-def]
    config_dir, env, cluster = embedded
    started = subprocess.run([str(HOKMDB), "cluster", "start", "--environment", "development", "--config", str(config_dir)],
                             capture_output=True, text=True, env=env, timeout=300, check=False)
    assert started.returncode == 0, started.stdout + started.stderr
    await admin_fetchval(cluster, "ALTER SYSTEM SET log_statement = 'all'")
    await admin_fetchval(cluster, "SELECT pg_reload_conf()")
    old = json.loads(cluster.state_file.read_text())["app_passwords"]["hokm_app"]
    session = await asyncpg.connect(host=cluster.host, port=cluster.port, user="hokm_app", password=old, database="hokm_dev")
    try:
        rotation = subprocess.Popen([str(HOKMDB), "rotate-password", "--environment", "development", "--role", "app",
                                     "--config", str(config_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=env)
        listings = []
        while rotation.poll() is None:
            listings.append(_processes())
            time.sleep(0.02)
        out, err = rotation.communicate()
        assert rotation.returncode == 0, out + err
        new = json.loads(cluster.state_file.read_text())["app_passwords"]["hokm_app"]
        assert new != old and len(new) >= 32
        assert f"rotated the password of role hokm_app on postgresql://hokm_app:***@127.0.0.1:{cluster.port}/hokm_dev" in out
        assert f"stored in {cluster.state_file}" in out
        assert new not in out + err and old not in out + err
        assert await session.fetchval("SELECT 1") == 1  # the session open before the rotation keeps working
    finally:
        await session.close()
    fresh = await asyncpg.connect(host=cluster.host, port=cluster.port, user="hokm_app", password=new, database="hokm_dev")
    await fresh.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host=cluster.host, port=cluster.port, user="hokm_app", password=old, database="hokm_dev")

    server_log = "".join(p.read_text(errors="replace") for p in cluster.base_dir.glob("*.log"))
    assert "ALTER ROLE CURRENT_USER PASSWORD 'SCRAM-SHA-256$4096:" in server_log  # what travelled: the verifier
    assert new not in server_log
    assert listings and not any(new in listing for listing in listings)
    verifier = await admin_fetchval(cluster, "SELECT rolpassword FROM pg_authid WHERE rolname = 'hokm_app'")
    assert str(verifier).startswith("SCRAM-SHA-256$")

    # The rest of hokmdb reads the new password where the rotation stored it.
    smoke = subprocess.run([sys.executable, "-m", "pytest", "smoke/test_connection.py", "--environment=development",
                            f"--db-config={config_dir}", "-p", "no:cacheprovider", "-q"], capture_output=True, text=True,
                           env=env, timeout=300, check=False, cwd=Path(__file__).resolve().parents[1])
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr


def test_staging_needs_a_destination_and_production_an_approval_before_anything_changes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "HOKMDB_"))}
    env.update({"HOKMDB_ENV_FILE": str(tmp_path / "none.env"), "DB_PORT": "1", "DB_HOST_STAGING": "192.0.2.1",
                "DB_PASSWORD_STAGING": "old-staging-pw", "DB_HOST_PRODUCTION": "192.0.2.1",
                "DB_PASSWORD_PRODUCTION": "old-production-pw"})
    staging = subprocess.run([str(HOKMDB), "rotate-password", "--environment", "staging", "--role", "app"],
                             capture_output=True, text=True, env=env, timeout=60, check=False)
    assert staging.returncode == 2, staging.stderr
    assert "staging: the new password must go somewhere" in staging.stderr
    assert "hint: add --to-file PATH (written 0600) or --show" in staging.stderr
    production = subprocess.run([str(HOKMDB), "rotate-password", "--environment", "production", "--role", "app", "--show"],
                                capture_output=True, text=True, env=env, timeout=60, check=False)
    assert production.returncode == 4, production.stderr
    assert "rotating a production password needs approval" in production.stderr
    assert "Traceback" not in staging.stderr + production.stderr


# -- where --to-file may write (issue 32: a shared directory must not let anyone else in) ------


def test_the_password_file_is_refused_where_another_account_could_read_swap_or_own_it(tmp_path: Path) -> None:
    from pytest_hokmdb.deploy.rotation import _write_private, check_private_destination
    from pytest_hokmdb.errors import Refused

    private = tmp_path / "mine"
    private.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("someone's file\n")
    (private / "link").symlink_to(victim)
    with pytest.raises(Refused, match="is a symbolic link; hokmdb writes a secret only to a file it creates itself"):
        check_private_destination(private / "link")
    (private / "theirs").write_text("x\n")
    os.chown(private / "theirs", 65534, 65534)  # nobody's
    with pytest.raises(Refused, match=r"belongs to another account \(uid 65534\)"):
        check_private_destination(private / "theirs")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(Refused, match=r"may be written by other accounts \(mode 777, no sticky bit\)"):
        check_private_destination(open_dir / "pw")
    with pytest.raises(Refused, match="its directory .* cannot be used"):
        check_private_destination(tmp_path / "missing" / "pw")
    assert victim.read_text() == "someone's file\n"

    shared = tmp_path / "shared"  # like /tmp: world-writable with the sticky bit
    shared.mkdir()
    shared.chmod(0o1777)
    check_private_destination(shared / "pw")
    written = _write_private(shared / "pw", "secret\n")
    info = os.lstat(written)
    assert (info.st_mode & 0o777, info.st_uid) == (0o600, os.geteuid())
    assert sorted(p.name for p in shared.iterdir()) == ["pw"]  # no temporary file left behind


async def test_a_symlinked_to_file_is_refused_before_the_password_changes(embedded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config_dir, env, cluster = embedded
    started = subprocess.run([str(HOKMDB), "cluster", "start", "--environment", "development", "--config", str(config_dir)],
                             capture_output=True, text=True, env=env, timeout=300, check=False)
    assert started.returncode == 0, started.stdout + started.stderr
    old = json.loads(cluster.state_file.read_text())["app_passwords"]["hokm_app"]
    victim = tmp_path / "root-owned-file"
    victim.write_text("precious\n")
    link = tmp_path / "pw"
    link.symlink_to(victim)
    refused = subprocess.run([str(HOKMDB), "rotate-password", "--environment", "development", "--role", "app",
                              "--config", str(config_dir), "--to-file", str(link)],
                             capture_output=True, text=True, env=env, timeout=120, check=False)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert f"--to-file {link} is a symbolic link" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert victim.read_text() == "precious\n"
    assert json.loads(cluster.state_file.read_text())["app_passwords"]["hokm_app"] == old
    conn = await asyncpg.connect(host=cluster.host, port=cluster.port, user="hokm_app", password=old, database="hokm_dev")
    await conn.close()  # the old password still logs in: nothing changed


# -- issue 32 item 6: the monitoring role is read-only by default; the pooler keeps verifiers ------


async def test_the_read_only_monitoring_role_rotates_its_password(embedded) -> None:  # type: ignore[no-untyped-def]
    config_dir, env, cluster = embedded
    started = subprocess.run([str(HOKMDB), "cluster", "start", "--environment", "development", "--config", str(config_dir)],
                             capture_output=True, text=True, env=env, timeout=300, check=False)
    assert started.returncode == 0, started.stdout + started.stderr
    settings = await admin_fetchval(cluster, "SELECT array_to_string(rolconfig, ',') FROM pg_roles WHERE rolname = 'hokm_monitor'")
    assert "default_transaction_read_only=on" in str(settings)  # as provision_monitor and the README set it
    old = json.loads(cluster.state_file.read_text())["app_passwords"]["hokm_monitor"]
    rotation = subprocess.run([str(HOKMDB), "rotate-password", "--environment", "development", "--role", "monitor",
                               "--config", str(config_dir)], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert rotation.returncode == 0, rotation.stdout + rotation.stderr
    assert "rotated the password of role hokm_monitor on postgresql://hokm_monitor:***@" in rotation.stdout
    new = json.loads(cluster.state_file.read_text())["app_passwords"]["hokm_monitor"]
    assert new != old
    conn = await asyncpg.connect(host=cluster.host, port=cluster.port, user="hokm_monitor", password=new, database="hokm_dev")
    try:  # the role's read-only default is untouched: only the rotation's own session lifted it
        assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host=cluster.host, port=cluster.port, user="hokm_monitor", password=old, database="hokm_dev")
