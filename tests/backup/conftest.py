"""Fixtures of the backup tests: an age key, a local S3 endpoint (moto's server on
127.0.0.1), and ``--environment testing`` configs whose backups go to a temporary
directory or bucket."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from backup_support import AWS_ENV, BackupSetup, s3
from helpers import LiveTarget
from pyrage import x25519


@pytest.fixture(scope="session")
def age_identity() -> str:
    return str(x25519.Identity.generate())


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint (moto's server) on 127.0.0.1, for this worker's session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    return dict(AWS_ENV)


@pytest.fixture
def bucket(s3_endpoint: str, aws_env: dict[str, str]) -> str:
    name = f"hokmdb-{uuid.uuid4().hex[:12]}"
    s3(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def backup_setup(live_target: LiveTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, age_identity: str) -> BackupSetup:
    """``--environment testing`` on a seeded database (non-superuser app role), backups
    to a temporary directory, an age identity in BACKUP_ENCRYPTION_KEY, and the cluster's
    superuser as the restore role."""
    backups = tmp_path / "backups"
    setup = BackupSetup(live_target, live_target.config_dir, backups, age_identity, {})
    setup.configure()
    env = {
        **live_target.env,
        "BACKUP_ENCRYPTION_KEY": age_identity,
        "DB_ADMIN_USER": "postgres",
        "DB_ADMIN_PASSWORD": live_target.db.cluster.superuser_password,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    setup.env = env
    return setup


@pytest.fixture
def s3_setup(backup_setup: BackupSetup, bucket: str, s3_endpoint: str, aws_env: dict[str, str]) -> BackupSetup:
    """The same, with backups going to a bucket of the local S3 endpoint."""
    backup_setup.configure(backup__s3_bucket=bucket, backup__s3_endpoint_url=s3_endpoint, backup__s3_region="us-east-1")
    backup_setup.env.update(aws_env)
    return backup_setup
