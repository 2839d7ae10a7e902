"""Fixtures of the backup tests: an age key, a local S3 endpoint (moto's server on
127.0.0.1), and ``--environment testing`` configs whose backups go to a temporary
directory or bucket."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import LiveTarget, write_config_dir
from pyrage import x25519

from pytest_hokmdb.config import LoadedConfig, load_config

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


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
    monkeypatch.setenv("HOKMDB_S3_MAX_ATTEMPTS", "2")
    return dict(AWS_ENV)


def s3(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture
def bucket(s3_endpoint: str, aws_env: dict[str, str]) -> str:
    name = f"hokmdb-{uuid.uuid4().hex[:12]}"
    s3(s3_endpoint).create_bucket(Bucket=name)
    return name


@dataclass
class BackupSetup:
    live: LiveTarget
    config_dir: Path
    backups_dir: Path
    key: str
    env: dict[str, str]

    def loaded(self) -> LoadedConfig:
        return load_config("testing", self.config_dir)

    @property
    def cluster(self) -> Any:
        return self.live.db.cluster

    @property
    def dsn(self) -> str:
        return self.live.db.dsn

    def admin_dsn(self, dbname: str = "postgres") -> str:
        return self.cluster.admin_dsn(dbname)

    def configure(self, **overrides: object) -> None:
        write_config_dir(self.config_dir, "testing", backup__local_dir=str(self.backups_dir), **overrides)


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
        "HOKMDB_ADMIN_USER": "postgres",
        "HOKMDB_ADMIN_PASSWORD": live_target.db.cluster.superuser_password,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    setup.env = env
    return setup


@pytest.fixture
def s3_setup(backup_setup: BackupSetup, bucket: str, s3_endpoint: str, aws_env: dict[str, str]) -> BackupSetup:
    """The same, with backups going to a bucket of the local S3 endpoint."""
    backup_setup.configure(backup__s3_bucket=bucket, backup__s3_endpoint_url=s3_endpoint, backup__s3_region="us-east-1")
    backup_setup.env.update(aws_env, HOKMDB_S3_MAX_ATTEMPTS="2")
    return backup_setup


async def database_names(setup: BackupSetup) -> set[str]:
    conn = await asyncpg.connect(setup.admin_dsn())
    try:
        return {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()


async def fingerprint(dsn: str) -> dict[str, object]:
    """Row counts of the game tables plus a hash of every player row: 'exactly as it was'."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = [r["t"] for r in await conn.fetch(
            "SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        counts = {t: await conn.fetchval(f'SELECT count(*) FROM "{t}"') for t in tables}
        players = await conn.fetchval("SELECT md5(string_agg(p::text, ',' ORDER BY id)) FROM players p")
        return {"counts": counts, "players": players}
    finally:
        await conn.close()


def ensure_age() -> str:
    """The stock age tool from Debian's packages (installed when missing and we are root)."""
    found = shutil.which("age")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "age"], capture_output=True, timeout=300,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("age")
        if not found:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
            subprocess.run(["apt-get", "install", "-y", "-q", "age"], capture_output=True, timeout=300,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            found = shutil.which("age")
    if not found:
        pytest.skip("the age command-line tool is not installed and could not be installed (apt-get install age)")
    return found
