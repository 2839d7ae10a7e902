"""A hole in the archived WAL: restores past it fail clearly and leave nothing behind.

The module's cluster (fixture ``gap_history``) archives into an unencrypted repository:

    marker 1 | FULL | marker 2 | switch | marker 3 | switch | marker 4 | switch

and the segment holding marker 3 is then deleted from the repository.
"""

from __future__ import annotations

import pytest
from pitr_support import PitrCluster, markers_in, restores_left, source_markers

from pytest_hokmdb.pitr import RecoveryTarget, Segment, WalGapError, restore_to_point
from pytest_hokmdb.pitr.window import format_time


def _missing(gap_history: PitrCluster) -> Segment:
    assert gap_history.removed_segment is not None
    return gap_history.removed_segment


async def test_restore_past_the_gap_names_the_missing_wal_and_leaves_the_source_serving(gap_history: PitrCluster) -> None:
    missing = _missing(gap_history)
    before = restores_left(gap_history)
    with pytest.raises(WalGapError) as caught:
        await restore_to_point(gap_history.engine, RecoveryTarget.at_time(gap_history.moments[3].time))
    message = caught.value.message
    assert message.startswith(f"recovery to time {format_time(gap_history.moments[3].time)} stopped early")
    assert (
        f"stopped early: WAL between {missing.start} and {missing.end} is missing from the repository "
        f"(segment {missing.name}); the nearest reachable point is LSN "
    ) in message
    assert "take a new full backup" in (caught.value.hint or "")
    # The failed copy is gone (its server log kept for the post-mortem); the source is untouched.
    assert restores_left(gap_history) == before
    kept = [p for p in gap_history.setup.log_dir.glob("pitr-*-postgres.log")]
    assert kept and "recovery ended before configured recovery target was reached" in kept[-1].read_text()
    assert await source_markers(gap_history.cluster) == [1, 2, 3, 4]
    assert gap_history.cluster.is_running()


async def test_a_target_before_the_gap_is_still_reachable(gap_history: PitrCluster) -> None:
    copy = await restore_to_point(gap_history.engine, RecoveryTarget.at_lsn(gap_history.moments[2].lsn))
    try:
        assert await markers_in(copy) == [1, 2]
    finally:
        copy.destroy()


async def test_verify_reports_the_gap(gap_history: PitrCluster) -> None:
    missing = _missing(gap_history)
    report = gap_history.engine.verify()
    assert not report.ok
    assert report.problems == (f"WAL missing from the repository: {missing.name} (LSN {missing.start} to {missing.end})",)
