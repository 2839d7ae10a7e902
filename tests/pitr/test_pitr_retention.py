"""Retention: expire removes the oldest full backup and the WAL only it needed, and the
reachable window moves forward with it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from pitr_support import PitrCluster, new_base_dir, start_pitr_cluster, wait_past_stop, write_marker

from pytest_hokmdb.pitr import RecoveryTarget, RecoveryTargetError, Segment, recovery_window, restore_to_point


@pytest.fixture
def two_fulls(pgbackrest_bin: str) -> Iterator[PitrCluster]:
    pitr = start_pitr_cluster(new_base_dir("hokmdb-pitr-retention"), cipher=False)
    try:
        yield pitr
    finally:
        pitr.destroy()


async def test_expire_keeps_retention_full_backups_and_moves_the_window(two_fulls: PitrCluster) -> None:
    pitr = two_fulls
    first = pitr.engine.backup("full")
    wait_past_stop(first)
    pitr.moments[1] = await write_marker(pitr.cluster, 1)
    second = pitr.engine.backup("full")
    assert pitr.engine.expire() == []  # retention_full=2: both stay
    engine = pitr.engine_with(retention_full=1)
    assert engine.expire() == [first.label]
    info = engine.info()
    assert [b.label for b in info.backups] == [second.label]
    archive = info.current_archive
    assert archive is not None and archive.min_wal is not None
    assert Segment.parse(archive.min_wal) == Segment.parse(second.wal_start)
    window = await recovery_window(engine)
    assert window.earliest_time == second.stopped_at + timedelta(seconds=1)
    with pytest.raises(RecoveryTargetError, match="is before the reachable window: earliest reachable"):
        await restore_to_point(engine, RecoveryTarget.at_time(pitr.moments[1].time))
