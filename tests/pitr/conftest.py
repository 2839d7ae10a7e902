"""Fixtures of the point-in-time recovery tests: pgbackrest itself, and per module one
archiving cluster with markers and backups that every restore of the module starts from."""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import pytest
from pitr_support import (
    RESTORE_POINT,
    PitrCluster,
    new_base_dir,
    remove_archived_segment,
    start_pitr_cluster,
    switch_and_wait_archived,
    wait_past_stop,
    write_marker,
)
from pitr_support import ensure_pgbackrest as _ensure_pgbackrest

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.pitr import RestorePoint, RestorePointLedger, Segment, create_restore_point


@pytest.fixture(scope="session")
def pgbackrest_bin() -> str:
    """pgbackrest, installed from Debian's packages by scripts/ensure-pgbackrest.sh if missing (root)."""
    return _ensure_pgbackrest()


async def _restore_point(pitr: PitrCluster, name: str) -> RestorePoint:
    conn = await asyncpg.connect(**pitr.cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        return await create_restore_point(conn, name, ledger=RestorePointLedger.for_setup(pitr.setup))
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def history(pgbackrest_bin: str) -> Iterator[PitrCluster]:
    """An encrypted repository (aes-256-cbc) and this history of the cluster:

        marker 1 | FULL | marker 2 | DIFF | marker 3 | INCR | marker 4, restore point | marker 5 | marker 6

    Marker 6 is there so every target has a later commit in archived WAL (a time target
    is only known to be reached when recovery sees a transaction after it).
    """
    pitr = start_pitr_cluster(new_base_dir("hokmdb-pitr"), cipher=True)
    try:
        moments, cluster, engine = pitr.moments, pitr.cluster, pitr.engine
        moments[1] = run_sync(write_marker(cluster, 1))
        for marker, kind in ((2, "full"), (3, "diff"), (4, "incr")):
            pitr.backups[kind] = engine.backup(kind)  # type: ignore[arg-type]
            wait_past_stop(pitr.backups[kind])
            moments[marker] = run_sync(write_marker(cluster, marker))
        run_sync(_restore_point(pitr, RESTORE_POINT))
        moments[5] = run_sync(write_marker(cluster, 5))
        moments[6] = run_sync(write_marker(cluster, 6))
        run_sync(switch_and_wait_archived(cluster))
        yield pitr
    finally:
        pitr.destroy()


@pytest.fixture(scope="module")
def gap_history(pgbackrest_bin: str) -> Iterator[PitrCluster]:
    """An unencrypted repository: marker 1 | FULL | marker 2 | switch | marker 3 | switch | marker 4 | switch.

    and then the WAL segment holding marker 3 is removed from the repository.
    """
    pitr = start_pitr_cluster(new_base_dir("hokmdb-pitr-gap"), cipher=False)
    try:
        moments, cluster = pitr.moments, pitr.cluster
        moments[1] = run_sync(write_marker(cluster, 1))
        pitr.backups["full"] = pitr.engine.backup("full")
        wait_past_stop(pitr.backups["full"])
        for marker in (2, 3, 4):
            moments[marker] = run_sync(write_marker(cluster, marker))
            run_sync(switch_and_wait_archived(cluster))
        remove_archived_segment(pitr, Segment.containing(moments[3].lsn - 1, timeline=1))
        yield pitr
    finally:
        pitr.destroy()
