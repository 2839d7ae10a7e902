"""Fixtures for the project's own tests: a TLS-enabled cluster and config directories
that point the plugin's environments at throwaway databases."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import trustme
from sqlalchemy.engine import URL
from helpers import APP_PASSWORD, APP_USER, TlsCluster, write_config_dir

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.cluster.embedded import THROWAWAY_SETTINGS
from pytest_hokmdb.db import provision
from pytest_hokmdb.migrate import upgrade


@pytest.fixture(scope="session")
def tls_cluster() -> Iterator[TlsCluster]:
    """A throwaway cluster serving TLS with a certificate for 127.0.0.1 from a test CA,
    holding an application role (non-superuser) and a database at head."""
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    base = Path(tempfile.gettempdir()) / f"hokmdb-tls-{uuid.uuid4().hex[:10]}"
    cluster = EmbeddedCluster(base, settings=dict(THROWAWAY_SETTINGS))
    cluster.init()
    cert, key = cluster.data_dir / "server.crt", cluster.data_dir / "server.key"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    for path in (cert, key):
        path.chmod(0o600)
        if cluster.user.switches:
            os.chown(path, cluster.user.uid, cluster.user.gid)
    cluster.ssl_files = (cert, key)
    cluster.start()
    ca_file = base / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ca_file.chmod(0o644)
    dbname = "hokm_staging"
    run_sync(provision(cluster, dbname=dbname, user=APP_USER, password=APP_PASSWORD))
    # Migrations run as the application role, which owns the database, as on a real server.
    app_url = URL.create("postgresql+asyncpg", APP_USER, APP_PASSWORD, cluster.host, cluster.port, dbname)
    upgrade(app_url, "head")
    try:
        yield TlsCluster(cluster, ca_file, dbname)
    finally:
        cluster.destroy()


@pytest.fixture
def staging_env(tls_cluster: TlsCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config directory whose staging (and production) point at the TLS cluster."""
    config_dir = tmp_path / "config"
    for environment in ("staging", "production"):
        write_config_dir(config_dir, environment, database__sslrootcert=str(tls_cluster.ca_file), database__name=tls_cluster.dbname)
    monkeypatch.setenv("DB_HOST_STAGING", "127.0.0.1")
    monkeypatch.setenv("DB_HOST_PRODUCTION", "127.0.0.1")
    monkeypatch.setenv("DB_PORT", str(tls_cluster.port))
    monkeypatch.setenv("DB_USER", APP_USER)
    monkeypatch.setenv("DB_PASSWORD_STAGING", APP_PASSWORD)
    monkeypatch.setenv("DB_PASSWORD_PRODUCTION", APP_PASSWORD)
    monkeypatch.delenv("HOKMDB_ENVIRONMENT", raising=False)
    return config_dir


@pytest.fixture(autouse=True)
def _isolated_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A developer's own .env.database must not change what the tests see."""
    monkeypatch.setenv("HOKMDB_ENV_FILE", str(tmp_path / "no-such.env"))
