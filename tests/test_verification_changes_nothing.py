"""Verification never changes what it verifies, on the embedded target too: a smoke run does
not create, align or repair the application role (that is ``hokmdb cluster start`` /
``deploy.py --setup``), so an escalated role is reported, and a missing role is an error that
names the setup command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROJECT_ROOT, admin_fetchval, write_config_dir

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.cluster import EmbeddedCluster

SMOKE = PROJECT_ROOT / "database" / "smoke_tests.py"
HOKMDB = Path(sys.executable).parent / "hokmdb"


@pytest.fixture
def embedded_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A development config whose embedded cluster lives under tmp_path (created, not provisioned)."""
    config_dir = tmp_path / "config"
    write_config_dir(config_dir, "development", embedded__data_dir=str(tmp_path / "cluster"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DB_") and k != "HOKMDB_ENVIRONMENT"}
    env["HOKMDB_ENV_FILE"] = str(tmp_path / "no-such.env")
    env["COLUMNS"] = "200"
    cluster = EmbeddedCluster(tmp_path / "cluster")
    yield config_dir, env, cluster
    cluster.destroy()


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, check=False)



def test_a_smoke_run_reports_an_escalated_embedded_role_and_leaves_it_as_it_was(embedded_dev) -> None:  # type: ignore[no-untyped-def]
    config_dir, env, cluster = embedded_dev
    setup = _run([str(HOKMDB), "cluster", "start", "--environment", "development", "--config", str(config_dir)], env)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    run_sync(admin_fetchval(cluster, "ALTER ROLE hokm_app SUPERUSER CREATEROLE"))

    proc = _run([sys.executable, str(SMOKE), "--environment", "development", "--config", str(config_dir), "-k", "security"], env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "application role hokm_app has SUPERUSER" in output
    assert "application role hokm_app has CREATEROLE" in output
    # The verifier did not repair what it verified.
    assert run_sync(admin_fetchval(cluster, "SELECT rolsuper AND rolcreaterole FROM pg_roles WHERE rolname = 'hokm_app'")) is True


def test_a_smoke_run_on_an_unprovisioned_embedded_cluster_names_the_setup_command_and_creates_nothing(embedded_dev) -> None:  # type: ignore[no-untyped-def]
    config_dir, env, cluster = embedded_dev
    proc = _run([sys.executable, str(SMOKE), "--environment", "development", "--config", str(config_dir)], env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 3, output
    assert "role 'hokm_app' and database 'hokm_dev' do not exist on the embedded cluster of development" in output
    assert "deploy.py --environment development --setup" in output
    assert "Traceback" not in output
    assert run_sync(admin_fetchval(cluster, "SELECT count(*) FROM pg_roles WHERE rolname = 'hokm_app'")) == 0
    assert run_sync(admin_fetchval(cluster, "SELECT count(*) FROM pg_database WHERE datname = 'hokm_dev'")) == 0
