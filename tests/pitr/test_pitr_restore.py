"""Restores to moments, named points and WAL positions of a real cluster's history.

The module's cluster (fixture ``history``) archives into an encrypted repository:

    marker 1 | FULL | marker 2 | DIFF | marker 3 | INCR | marker 4, restore point | marker 5 | marker 6

Every restore must hold exactly the markers up to its target, come from the newest
backup that ended before it, and leave the source cluster as it was.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from pitr_support import (
    CIPHER_PASS,
    OTHER_CIPHER_PASS,
    RESTORE_POINT,
    PitrCluster,
    markers_in,
    restores_left,
    source_markers,
)

from pytest_hokmdb.errors import BackupError, ExitCode
from pytest_hokmdb.pitr import (
    CipherPassWrong,
    RecoveryTarget,
    RecoveryTargetError,
    RestorePointLedger,
    create_restore_point,
    recovery_window,
    restore_to_point,
)
from pytest_hokmdb.pitr.window import format_time


async def test_backups_are_a_full_a_diff_on_it_and_an_incr_on_that(history: PitrCluster) -> None:
    info = history.engine.info()
    full, diff, incr = (history.backups[k] for k in ("full", "diff", "incr"))
    assert [b.label for b in info.backups] == [full.label, diff.label, incr.label]
    assert [b.type for b in info.backups] == ["full", "diff", "incr"]
    assert diff.prior == full.label and incr.prior == diff.label
    assert info.cipher == "aes-256-cbc"
    for backup in (full, diff, incr):
        assert backup.lsn_start < backup.lsn_stop
        assert backup.started_at <= backup.stopped_at
        assert backup.size > 0 and backup.repo_size > 0
    assert full.lsn_stop < diff.lsn_start and diff.lsn_stop < incr.lsn_start


async def test_time_after_marker_2_restores_from_the_full_backup(history: PitrCluster) -> None:
    copy = await restore_to_point(history.engine, RecoveryTarget.at_time(history.moments[2].time))
    try:
        assert await markers_in(copy) == [1, 2]
        assert copy.backup.label == history.backups["full"].label
        assert copy.recovered_time is not None and copy.recovered_time <= history.moments[2].time
    finally:
        copy.destroy()
    assert not copy.base_dir.exists()


async def test_time_after_marker_3_restores_from_the_diff_backup(history: PitrCluster) -> None:
    copy = await restore_to_point(history.engine, RecoveryTarget.at_time(history.moments[3].time))
    try:
        assert await markers_in(copy) == [1, 2, 3]
        assert copy.backup.label == history.backups["diff"].label
    finally:
        copy.destroy()


async def test_named_point_restores_from_the_incr_backup_on_a_spare_port_without_archiving(history: PitrCluster) -> None:
    point = RestorePointLedger.for_setup(history.setup).find(RESTORE_POINT)
    assert point is not None and history.moments[4].lsn <= point.lsn < history.moments[5].lsn
    copy = await restore_to_point(history.engine, RecoveryTarget.named(RESTORE_POINT))
    try:
        assert await markers_in(copy) == [1, 2, 3, 4]
        assert copy.backup.label == history.backups["incr"].label
        assert copy.port != history.cluster.port and copy.data_dir != history.cluster.data_dir
        assert copy.recovered_lsn >= point.lsn
        conn = await copy.admin_connect()
        try:
            assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
            # A copy that archived into the stanza would fork the repository's history.
            assert await conn.fetchval("SHOW archive_mode") == "off"
        finally:
            await conn.close()
    finally:
        copy.destroy()
    assert await source_markers(history.cluster) == [1, 2, 3, 4, 5, 6]


async def test_lsn_after_marker_5_restores_exactly_up_to_it(history: PitrCluster) -> None:
    live = await asyncpg.connect(**history.cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        copy = await restore_to_point(history.engine, RecoveryTarget.at_lsn(str(history.moments[5].lsn)), live=live)
    finally:
        await live.close()
    try:
        assert await markers_in(copy) == [1, 2, 3, 4, 5]
        assert copy.backup.label == history.backups["incr"].label
        assert "restored copy on 127.0.0.1:" in copy.describe()
    finally:
        copy.destroy()
    # Promoting the copy (timeline 2) pushed nothing into the repository.
    listing = history.engine.run("repo-ls", "--recurse", argument=f"archive/{history.setup.stanza}")
    assert ".history" not in listing


async def test_window_runs_from_the_oldest_backups_end_to_the_newest_archived_wal(history: PitrCluster) -> None:
    live = await asyncpg.connect(**history.cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        window = await recovery_window(history.engine, live)
    finally:
        await live.close()
    full = history.backups["full"]
    assert window.earliest_time == full.stopped_at + timedelta(seconds=1)
    assert window.earliest_lsn == full.lsn_stop
    assert window.latest_from == "archiver"
    assert window.latest_time >= history.moments[6].time
    assert window.latest_lsn > history.moments[6].lsn
    offline = await recovery_window(history.engine)
    assert offline.latest_from == "repository" and offline.latest_lsn == window.latest_lsn


def _assert_window_named(message: str, history: PitrCluster) -> None:
    earliest = format_time(history.backups["full"].stopped_at + timedelta(seconds=1))
    assert f"earliest reachable {earliest}" in message
    assert "latest reachable 20" in message


async def test_time_before_the_first_backup_is_refused_with_the_window(history: PitrCluster) -> None:
    before = restores_left(history)
    target = history.moments[1].time
    with pytest.raises(RecoveryTargetError) as caught:
        await restore_to_point(history.engine, RecoveryTarget.at_time(target))
    message = caught.value.message
    assert f"recovery target time {format_time(target)} is before the reachable window" in message
    _assert_window_named(message, history)
    assert caught.value.exit_code == ExitCode.BACKUP_ERROR
    assert restores_left(history) == before


async def test_time_after_the_newest_archived_wal_is_refused_with_the_window(history: PitrCluster) -> None:
    target = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(RecoveryTargetError) as caught:
        await restore_to_point(history.engine, RecoveryTarget.at_time(target))
    assert f"recovery target time {format_time(target)} is after the reachable window" in caught.value.message
    _assert_window_named(caught.value.message, history)
    assert "not archived yet" in (caught.value.hint or "")


async def test_lsn_inside_the_first_backup_is_refused(history: PitrCluster) -> None:
    lsn = history.backups["full"].lsn_start
    with pytest.raises(RecoveryTargetError) as caught:
        await restore_to_point(history.engine, RecoveryTarget.at_lsn(lsn))
    assert f"recovery target LSN {lsn} is before the reachable window" in caught.value.message
    _assert_window_named(caught.value.message, history)


async def test_unknown_restore_point_names_the_known_ones(history: PitrCluster) -> None:
    with pytest.raises(RecoveryTargetError) as caught:
        await restore_to_point(history.engine, RecoveryTarget.named("before-deploy-0007"))
    assert caught.value.message == (
        "restore point 'before-deploy-0007' is not known: hokmdb created no point of that name on this server "
        f"(known: '{RESTORE_POINT}')"
    )


async def test_a_restore_point_name_is_used_once(history: PitrCluster) -> None:
    conn = await asyncpg.connect(**history.cluster.admin_connect_kwargs())  # type: ignore[arg-type]
    try:
        with pytest.raises(BackupError, match=f"restore point '{RESTORE_POINT}' already exists on this server"):
            await create_restore_point(conn, RESTORE_POINT, ledger=RestorePointLedger.for_setup(history.setup))
    finally:
        await conn.close()


async def test_wrong_cipher_pass_says_the_repository_cannot_be_decrypted(history: PitrCluster) -> None:
    before = restores_left(history)
    engine = history.engine_with(cipher_pass=OTHER_CIPHER_PASS)
    with pytest.raises(CipherPassWrong) as caught:
        await restore_to_point(engine, RecoveryTarget.at_time(history.moments[3].time))
    text = str(caught.value)
    assert "the repository cannot be decrypted: the cipher pass is wrong or missing" in caught.value.message
    assert "check physical.cipher_pass" in (caught.value.hint or "")
    assert CIPHER_PASS not in text and OTHER_CIPHER_PASS not in text
    assert "\ufffd" not in text and "\x00" not in text  # none of the ciphertext pgBackRest prints
    assert restores_left(history) == before


async def test_restore_into_an_existing_directory_is_refused(history: PitrCluster, tmp_path: Path) -> None:
    existing = history.base / "already-here"
    existing.mkdir()
    with pytest.raises(BackupError, match="already exists; a restore always goes into a new directory"):
        await restore_to_point(history.engine, RecoveryTarget.at_time(history.moments[3].time), restore_dir=existing)
    assert existing.is_dir() and not any(existing.iterdir())


async def test_check_and_verify_pass_and_secrets_stay_out_of_files(history: PitrCluster) -> None:
    history.engine.check()
    report = history.engine.verify()
    assert report.ok, report.describe()
    assert report.describe() == "repository verified: ok"
    config = history.setup.config_file
    assert config.stat().st_mode & 0o777 == 0o600
    assert history.setup.work_dir.stat().st_mode & 0o777 == 0o700
    assert config.stat().st_uid == history.setup.user.uid
    text = config.read_text()
    assert "repo1-cipher-type=aes-256-cbc" in text and "cipher-pass" not in text
    # pgBackRest's own logs print options as <redacted>; the server's log (archive-push) has nothing either.
    for path in [*history.setup.work_dir.rglob("*"), history.cluster.log_file]:
        if path.is_file():
            assert CIPHER_PASS not in path.read_text(errors="replace"), path
