"""Helpers of the backup tests (plain functions and classes; the fixtures are in conftest.py).

Kept out of conftest.py because test modules import them, and ``from conftest import``
resolves to whichever conftest was imported last when several test directories run together.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import LiveTarget, write_config_dir

from pytest_hokmdb.config import LoadedConfig, load_config

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def s3(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"])


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
        # Two S3 attempts keep the tests of unreachable endpoints fast.
        settings: dict[str, object] = {"backup__s3_max_attempts": 2, **overrides}
        write_config_dir(self.config_dir, "testing", backup__local_dir=str(self.backups_dir), **settings)


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


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every descendant of ``pid``, read from /proc."""
    table = []
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(path.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (path.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        table.append((int(path.parent.name), parent, cmdline))
    tree, frontier = [], {pid}
    while frontier:
        found = [(p, c) for p, parent, c in table if parent in frontier]
        tree += found
        frontier = {p for p, _ in found}
    return tree


async def add_bulk_table(setup: BackupSetup) -> None:
    """Enough data that decryption and pg_restore take a moment to catch (a tool table: no drift)."""
    conn = await asyncpg.connect(setup.dsn)
    try:
        await conn.execute(
            "CREATE TABLE hokmdb_bulk_filler AS SELECT g, md5(g::text) || md5((g * 7)::text) AS pad "
            "FROM generate_series(1, 400000) g"
        )
        await conn.execute(f'GRANT SELECT ON hokmdb_bulk_filler TO "{setup.live.role}"')
    finally:
        await conn.close()
