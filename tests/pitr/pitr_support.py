"""Helpers of the point-in-time recovery tests (plain functions and classes; fixtures are in conftest.py).

The tests run what pgBackRest's own integration tests run: a real cluster archiving into
a real repository, marker rows written at successive moments with backups in between,
and restores that must contain exactly the markers up to their target.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from helpers import PROJECT_ROOT

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.cluster.embedded import THROWAWAY_SETTINGS
from pytest_hokmdb.config.model import PhysicalBackupSettings
from pytest_hokmdb.pitr import (
    BackupSet,
    Lsn,
    PgBackRest,
    PitrSetup,
    RestoredCopy,
    Segment,
    archiving_cluster,
    resolve_setup,
)

# Known values, so tests can prove they never leak into files or messages.
CIPHER_PASS = "Pitr-cipher-Zq8-secret-41"
OTHER_CIPHER_PASS = "Wrong-cipher-Kx3-secret-77"
RESTORE_POINT = "after-marker-4"
ENSURE_SCRIPT = PROJECT_ROOT / "scripts" / "ensure-pgbackrest.sh"


def ensure_pgbackrest() -> str:
    """pgbackrest on PATH: installed by scripts/ensure-pgbackrest.sh when missing and we are root."""
    found = shutil.which("pgbackrest")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip("pgbackrest is not installed: install it (apt-get install pgbackrest) to run the PITR tests")
    result = subprocess.run([str(ENSURE_SCRIPT)], capture_output=True, text=True, timeout=600)
    found = shutil.which("pgbackrest")
    if not found:
        pytest.skip(f"pgbackrest could not be installed by {ENSURE_SCRIPT.name}: {result.stderr.strip()[-300:]}")
    return found


def new_base_dir(prefix: str) -> Path:
    """A directory the server account can traverse (pytest's tmp dirs are root-only when we are root)."""
    import tempfile

    base = Path(tempfile.gettempdir()) / f"{prefix}-{uuid.uuid4().hex[:10]}"
    base.mkdir(mode=0o755)
    base.chmod(0o755)
    return base


def physical_settings(base: Path, *, cipher: bool, **overrides: object) -> PhysicalBackupSettings:
    values: dict[str, object] = {
        "stanza": "hokmdb",
        "repo_path": str(base / "repo"),
        "work_dir": str(base / "pgbackrest"),
        "retention_full": 2,
        "process_max": 2,
        "compress_type": "lz4",
        "archive_timeout_s": 0,
        "recovery_timeout_s": 120,
    }
    if cipher:
        values.update(cipher_type="aes-256-cbc", cipher_pass=CIPHER_PASS)
    values.update(overrides)
    return PhysicalBackupSettings.model_validate(values)


@dataclass
class Moment:
    """Right after a marker's commit: the server's clock and WAL insert position."""

    marker: int
    time: datetime
    lsn: Lsn


@dataclass
class PitrCluster:
    """A throwaway cluster archiving into a repository under ``base``."""

    base: Path
    cluster: EmbeddedCluster
    setup: PitrSetup
    engine: PgBackRest
    moments: dict[int, Moment] = field(default_factory=dict)
    backups: dict[str, BackupSet] = field(default_factory=dict)
    removed_segment: Segment | None = None

    def destroy(self) -> None:
        try:
            self.cluster.destroy()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def settings_with(self, **overrides: object) -> PhysicalBackupSettings:
        return self.setup.settings.model_copy(update=overrides)

    def engine_with(self, **overrides: object) -> PgBackRest:
        """Another engine on the same stanza, with some settings changed (e.g. the cipher pass)."""
        settings = PhysicalBackupSettings.model_validate({**self.setup.settings.model_dump(), **overrides})
        return PgBackRest(resolve_setup(settings, cluster=self.cluster))


def start_pitr_cluster(base: Path, *, cipher: bool) -> PitrCluster:
    """Cluster + stanza, archiving on: what ``hokmdb`` will set up for an environment with ``physical``."""
    cluster = EmbeddedCluster(base / "cluster", settings=dict(THROWAWAY_SETTINGS))
    settings = physical_settings(base, cipher=cipher)
    setup = resolve_setup(settings, cluster=cluster)
    archiving_cluster(cluster, setup)
    PgBackRest(setup)  # writes the config file archive_command reads
    cluster.start()
    setup = resolve_setup(settings, cluster=cluster)  # now with the port
    engine = PgBackRest(setup)
    engine.stanza_create()
    pitr = PitrCluster(base, cluster, setup, engine)
    run_sync(_sql(cluster, "CREATE TABLE markers (id int PRIMARY KEY, note text, at timestamptz DEFAULT clock_timestamp())"))
    return pitr


async def _sql(cluster: EmbeddedCluster, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def write_marker(cluster: EmbeddedCluster, marker: int) -> Moment:
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        await conn.execute("INSERT INTO markers (id, note) VALUES ($1, $2)", marker, f"marker {marker}")
        row = await conn.fetchrow("SELECT clock_timestamp() AS at, pg_current_wal_insert_lsn()::text AS lsn")
    finally:
        await conn.close()
    assert row is not None
    # The next commit must get a later timestamp than this moment.
    await asyncio.sleep(0.02)
    return Moment(marker, row["at"], Lsn.parse(row["lsn"]))


async def switch_and_wait_archived(cluster: EmbeddedCluster, timeout_s: float = 30) -> None:
    """End the current WAL segment and wait until the archiver has stored it."""
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        segment = await conn.fetchval("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + timeout_s
        while True:
            archived = await conn.fetchval("SELECT last_archived_wal FROM pg_stat_archiver")
            if archived and archived[:24] >= segment:
                return
            assert time.monotonic() < deadline, f"{segment} not archived within {timeout_s}s (last: {archived})"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


def wait_past_stop(backup: BackupSet) -> None:
    """Until a time target after now is certainly after ``backup``'s end (its stop time is in whole seconds)."""
    remaining = (backup.stopped_at.timestamp() + 1.05) - datetime.now(UTC).timestamp()
    if remaining > 0:
        time.sleep(remaining)


async def markers_in(copy: RestoredCopy) -> list[int]:
    conn = await copy.admin_connect()
    try:
        return [r["id"] for r in await conn.fetch("SELECT id FROM markers ORDER BY id")]
    finally:
        await conn.close()


async def source_markers(cluster: EmbeddedCluster) -> list[int]:
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        assert await conn.fetchval("SELECT NOT pg_is_in_recovery()")
        return [r["id"] for r in await conn.fetch("SELECT id FROM markers ORDER BY id")]
    finally:
        await conn.close()


def remove_archived_segment(pitr: PitrCluster, segment: Segment) -> None:
    """Delete one WAL segment from a posix repository, as a lost upload or a bad disk would."""
    assert pitr.setup.settings.repo_path is not None
    archive = pitr.setup.settings.repo_path / "archive" / pitr.setup.stanza
    files = list(archive.glob(f"*/{segment.name[:16]}/{segment.name}-*"))
    assert len(files) == 1, files
    files[0].unlink()
    pitr.removed_segment = segment


def restores_left(pitr: PitrCluster) -> list[Path]:
    """What restores left behind in the stanza's private restores/ directory."""
    directory = pitr.setup.restores_dir
    return sorted(directory.iterdir()) if directory.exists() else []
