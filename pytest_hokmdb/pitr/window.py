"""Which moments the repository can recover to, and which backup serves a given target.

A point can be recovered only if a backup ended before it and every WAL segment from
that backup up to the point is archived. So the window runs from the end of the oldest
backup to the newest archived WAL. Targets are checked against it (and named points
against hokmdb's ledger) before anything is restored, so a typo or a too-old date is a
one-line error rather than a restore that replays for an hour and then fails.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg

from pytest_hokmdb.db import Target, connect
from pytest_hokmdb.errors import HokmdbError
from pytest_hokmdb.pitr.engine import PgBackRest
from pytest_hokmdb.pitr.errors import RecoveryTargetError
from pytest_hokmdb.pitr.info import BackupSet, StanzaInfo
from pytest_hokmdb.pitr.points import RestorePoint, RestorePointLedger
from pytest_hokmdb.pitr.wal import Lsn, Segment

log = logging.getLogger("hokmdb.pitr")

TargetKind = Literal["time", "lsn", "name"]
# pgBackRest truncates a backup's stop time to the second; the backup may have ended up
# to a second later, and a time target inside the backup cannot be recovered to.
STOP_TIME_RESOLUTION = timedelta(seconds=1)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(sep=" ", timespec="microseconds" if moment.microsecond else "seconds")


@dataclass(frozen=True)
class RecoveryTarget:
    """Where a restored copy should stop: a moment, a WAL position or a named restore point."""

    kind: TargetKind
    time: datetime | None = None
    lsn: Lsn | None = None
    name: str | None = None

    @classmethod
    def at_time(cls, moment: datetime) -> RecoveryTarget:
        if moment.tzinfo is None:
            raise RecoveryTargetError(
                f"recovery target time {moment.isoformat()} has no time zone",
                hint="give the time with its offset, e.g. 2026-11-24T04:25:16+00:00",
            )
        return cls("time", time=moment.astimezone(UTC))

    @classmethod
    def at_lsn(cls, lsn: Lsn | str) -> RecoveryTarget:
        try:
            value = lsn if isinstance(lsn, Lsn) else Lsn.parse(lsn)
        except ValueError as exc:
            raise RecoveryTargetError(str(exc)) from None
        return cls("lsn", lsn=value)

    @classmethod
    def named(cls, name: str) -> RecoveryTarget:
        return cls("name", name=name)

    def describe(self) -> str:
        if self.kind == "time":
            assert self.time is not None
            return f"time {format_time(self.time)}"
        if self.kind == "lsn":
            return f"LSN {self.lsn}"
        return f"restore point {self.name!r}"

    def pgbackrest_target(self) -> str:
        """``--target`` for ``pgbackrest restore --type=<kind>``, in PostgreSQL's input formats."""
        if self.kind == "time":
            assert self.time is not None
            return self.time.strftime("%Y-%m-%d %H:%M:%S.%f+00")
        if self.kind == "lsn":
            return str(self.lsn)
        assert self.name is not None
        return self.name


@dataclass(frozen=True)
class RecoveryWindow:
    """The earliest and latest moments (and positions) the repository can recover to."""

    earliest_time: datetime
    earliest_lsn: Lsn
    latest_time: datetime
    latest_lsn: Lsn
    latest_from: Literal["archiver", "repository", "backup"]
    backups: tuple[BackupSet, ...]
    system_id: int | None

    def describe(self) -> str:
        return (
            f"earliest reachable {format_time(self.earliest_time)} (LSN {self.earliest_lsn}, end of backup "
            f"{self.backups[0].label}), latest reachable {format_time(self.latest_time)} (LSN {self.latest_lsn}, "
            f"{_LATEST_SOURCES[self.latest_from]})"
        )


_LATEST_SOURCES = {
    "archiver": "newest WAL the server reports archived",
    "repository": "newest WAL segment in the repository",
    "backup": "end of the newest backup",
}


@dataclass(frozen=True)
class _Archived:
    lsn: Lsn
    time: datetime | None


async def _archiver_state(live: asyncpg.Connection | Target, system_id: int | None) -> _Archived | None:
    """What the running server says it archived last; None when unreachable or another server."""
    try:
        conn = await connect(live) if isinstance(live, Target) else live
    except HokmdbError as exc:
        log.info("live server not reachable (%s); taking the latest point from the repository", exc.message)
        return None
    try:
        row = await conn.fetchrow(
            "SELECT a.last_archived_wal, a.last_archived_time, s.system_identifier, "
            "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') AS segment_size "
            "FROM pg_stat_archiver a, pg_control_system() s"
        )
    finally:
        if isinstance(live, Target):
            await conn.close()
    if row is None or not row["last_archived_wal"] or len(row["last_archived_wal"]) < 24:
        return None
    if system_id is not None and int(row["system_identifier"]) != system_id:
        log.warning("the live server is not the one this stanza backs up; ignoring its archiver")
        return None
    segment = Segment.parse(row["last_archived_wal"], int(row["segment_size"]))
    return _Archived(segment.end, row["last_archived_time"])


async def recovery_window(
    engine: PgBackRest,
    live: asyncpg.Connection | Target | None = None,
    *,
    info: StanzaInfo | None = None,
) -> RecoveryWindow:
    """The window from the oldest usable backup's end to the newest archived WAL.

    The newest moment comes from the live server's ``pg_stat_archiver`` when it is
    reachable (and is the server this stanza backs up), else from when the newest WAL
    segment was stored in the repository, else from the newest backup's end.
    """
    info = info or engine.info()
    backups = info.usable_backups
    if not backups:
        raise RecoveryTargetError(
            f"stanza {engine.setup.stanza} holds no usable backup, so no point in time can be recovered",
            hint="take a full backup first; later moments become reachable from its end on",
        )
    oldest, newest = backups[0], backups[-1]
    latest_lsn = newest.lsn_stop
    latest_time = newest.stopped_at + STOP_TIME_RESOLUTION
    latest_from: Literal["archiver", "repository", "backup"] = "backup"
    archive = info.current_archive
    if archive is not None and archive.max_wal:
        repo_end = Segment.parse(archive.max_wal).end
        if repo_end > latest_lsn:
            latest_lsn = repo_end
            listed = await asyncio.to_thread(engine.archived_segments, archive.archive_id, directory=archive.max_wal[:16])
            stored = [a for a in listed if a.segment.end == repo_end]
            # Stored times are whole seconds too: the segment was stored before the next one.
            if stored and stored[-1].stored_at + STOP_TIME_RESOLUTION >= latest_time:
                latest_time, latest_from = stored[-1].stored_at + STOP_TIME_RESOLUTION, "repository"
    if live is not None:
        archived = await _archiver_state(live, info.system_id)
        # The archiver's time is exact (the repository's is in whole seconds); trust it when
        # it describes the newest WAL (its statistics restart from zero after a crash).
        if archived is not None and archived.time is not None and archived.lsn >= latest_lsn:
            latest_lsn, latest_time, latest_from = archived.lsn, archived.time, "archiver"
    return RecoveryWindow(
        earliest_time=oldest.stopped_at + STOP_TIME_RESOLUTION,
        earliest_lsn=oldest.lsn_stop,
        latest_time=latest_time,
        latest_lsn=latest_lsn,
        latest_from=latest_from,
        backups=backups,
        system_id=info.system_id,
    )


@dataclass(frozen=True)
class ResolvedTarget:
    """A target checked against the window, with the backup a restore should start from."""

    target: RecoveryTarget
    backup: BackupSet
    lsn: Lsn | None
    time: datetime | None
    point: RestorePoint | None = None


def _outside(described: str, window: RecoveryWindow, why: str, hint: str) -> RecoveryTargetError:
    return RecoveryTargetError(f"recovery target {described} is {why} the reachable window: {window.describe()}", hint=hint)


_TOO_EARLY_HINT = (
    "choose a later target: nothing before the end of the oldest backup still in the repository can be recovered"
)
_TOO_LATE_HINT = (
    "choose an earlier target; WAL written after the latest reachable point is not archived yet "
    "(create a restore point or wait for archive_timeout)"
)


def resolve_target(
    window: RecoveryWindow,
    target: RecoveryTarget,
    ledger: RestorePointLedger | None = None,
) -> ResolvedTarget:
    """Check ``target`` against the window (and names against the ledger); choose the backup.

    The backup is the newest one that ended before the target: it leaves the least WAL to
    replay, and one ending after the target could not stop there.
    """
    if target.kind == "time":
        assert target.time is not None
        if target.time < window.earliest_time:
            raise _outside(target.describe(), window, "before", _TOO_EARLY_HINT)
        if target.time > window.latest_time:
            raise _outside(target.describe(), window, "after", _TOO_LATE_HINT)
        backup = [b for b in window.backups if b.stopped_at + STOP_TIME_RESOLUTION <= target.time][-1]
        return ResolvedTarget(target, backup, None, target.time)
    point: RestorePoint | None = None
    if target.kind == "name":
        assert target.name is not None
        points = ledger.points(window.system_id) if ledger is not None else []
        point = next((p for p in points if p.name == target.name), None)
        if point is None:
            known = ", ".join(repr(p.name) for p in points[-20:]) or "none yet"
            raise RecoveryTargetError(
                f"restore point {target.name!r} is not known: hokmdb created no point of that name on this server "
                f"(known: {known})",
                hint="pick one of the known names, or a time or LSN target",
            )
        lsn = point.lsn
        described = f"{target.describe()} (created {format_time(point.created_at)} at LSN {point.lsn})"
    else:
        assert target.lsn is not None
        lsn = target.lsn
        described = target.describe()
    if lsn < window.earliest_lsn:
        raise _outside(described, window, "before", _TOO_EARLY_HINT)
    if lsn > window.latest_lsn:
        raise _outside(described, window, "after", _TOO_LATE_HINT)
    backup = [b for b in window.backups if b.lsn_stop <= lsn][-1]
    return ResolvedTarget(target, backup, lsn, point.created_at if point else None, point)
