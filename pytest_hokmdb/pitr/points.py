"""Named restore points: created on the server, remembered in hokmdb's ledger.

PostgreSQL can recover to a name (``recovery_target_name``) but keeps no list of the
names it has seen, and pgBackRest does not list them either. Without a list, a mistyped
name is only discovered after a full restore has replayed all WAL and failed. So every
point hokmdb creates is also written to a small JSON ledger in the stanza's private
directory, with its LSN and time: names are checked (and mapped to a backup) before
anything is restored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from pytest_hokmdb.cluster.archive.settings import PitrSetup
from pytest_hokmdb.db import Target, connect
from pytest_hokmdb.errors import BackupError
from pytest_hokmdb.pitr.wal import Lsn, Segment

log = logging.getLogger("hokmdb.pitr")

MAX_NAME_LENGTH = 63  # PostgreSQL's MAXFNAMELEN - 1


@dataclass(frozen=True)
class RestorePoint:
    name: str
    lsn: Lsn
    created_at: datetime
    timeline: int
    system_id: int

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data.update(lsn=str(self.lsn), created_at=self.created_at.isoformat())
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> RestorePoint:
        return cls(
            name=str(data["name"]),
            lsn=Lsn.parse(str(data["lsn"])),
            created_at=datetime.fromisoformat(str(data["created_at"])),
            timeline=int(data["timeline"]),  # type: ignore[call-overload]
            system_id=int(data["system_id"]),  # type: ignore[call-overload]
        )


class RestorePointLedger:
    """The restore points hokmdb created for one stanza, in ``<work_dir>/restore-points.json``."""

    def __init__(self, path: Path, *, owner: tuple[int, int] | None = None) -> None:
        self.path = path
        self.owner = owner

    @classmethod
    def for_setup(cls, setup: PitrSetup) -> RestorePointLedger:
        return cls(setup.ledger_file, owner=(setup.user.uid, setup.user.gid) if setup.user.switches else None)

    def points(self, system_id: int | None = None) -> list[RestorePoint]:
        """Every recorded point (of one server when ``system_id`` is given), oldest first."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise BackupError(
                f"the restore-point ledger {self.path} is not valid JSON: {exc}",
                hint="restore it from a copy, or move it away to start a new ledger (older names are then unknown)",
            ) from None
        points = [RestorePoint.from_json(p) for p in data.get("points", [])]
        if system_id is not None:
            points = [p for p in points if p.system_id == system_id]
        return sorted(points, key=lambda p: p.lsn)

    def find(self, name: str, system_id: int | None = None) -> RestorePoint | None:
        return next((p for p in self.points(system_id) if p.name == name), None)

    def record(self, point: RestorePoint) -> None:
        points = [p for p in self.points() if not (p.name == point.name and p.system_id == point.system_id)]
        points.append(point)
        text = json.dumps({"points": [p.to_json() for p in sorted(points, key=lambda p: p.lsn)]}, indent=2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".restore-points-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text + "\n")
            os.chmod(tmp, 0o600)
            if self.owner is not None:
                os.chown(tmp, *self.owner)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


async def _wait_archived(conn: asyncpg.Connection, segment: Segment, timeout_s: float) -> None:
    """Until the archiver reports ``segment`` (or a later one) archived."""
    deadline = time.monotonic() + timeout_s
    while True:
        row = await conn.fetchrow("SELECT last_archived_wal, last_failed_wal, last_failed_time, last_archived_time FROM pg_stat_archiver")
        archived = row["last_archived_wal"]
        if archived and len(archived) >= 24 and Segment.parse(archived, segment.size) >= segment:
            return
        if time.monotonic() > deadline:
            failed = row["last_failed_wal"]
            detail = f"; the archiver last failed on {failed} at {row['last_failed_time']}" if failed else ""
            raise BackupError(
                f"WAL segment {segment.name} was not archived within {timeout_s:.0f}s{detail}",
                hint="the server's archive_command is failing: see its log for pgbackrest archive-push errors",
            )
        await asyncio.sleep(0.1)


async def create_restore_point(
    conn_or_target: asyncpg.Connection | Target,
    name: str,
    *,
    ledger: RestorePointLedger | None = None,
    wait_archived_s: float | None = 60.0,
) -> RestorePoint:
    """Mark a named point in WAL, switch to a new segment so it gets archived, record it.

    The WAL switch makes the point reachable right away rather than after
    ``archive_timeout``; with ``wait_archived_s`` the call also waits until the archiver
    has stored the segment, so a restore may target the point as soon as this returns.
    Names are unique per server: PostgreSQL would stop at the first of two equal names.
    """
    if not name or len(name.encode()) > MAX_NAME_LENGTH:
        raise BackupError(f"restore point name {name!r} must be 1 to {MAX_NAME_LENGTH} bytes long")
    own = not isinstance(conn_or_target, asyncpg.Connection)
    conn = await connect(conn_or_target) if isinstance(conn_or_target, Target) else conn_or_target
    try:
        system_id = int(await conn.fetchval("SELECT system_identifier FROM pg_control_system()"))
        if wait_archived_s is not None and await conn.fetchval("SELECT current_setting('archive_mode')") == "off":
            raise BackupError(
                f"cannot create restore point {name!r} to recover to: the server does not archive WAL (archive_mode=off)",
                hint="apply the archiving settings (pitr.archive_settings) and restart the server",
            )
        if ledger is not None and ledger.find(name, system_id) is not None:
            raise BackupError(
                f"restore point {name!r} already exists on this server",
                hint="restore points need unique names (recovery would stop at the first one); choose another",
            )
        try:
            row = await conn.fetchrow(
                "SELECT pg_create_restore_point($1)::text AS lsn, clock_timestamp() AS at, "
                "(SELECT timeline_id FROM pg_control_checkpoint()) AS timeline",
                name,
            )
            switched = await conn.fetchval("SELECT pg_switch_wal()::text")
        except asyncpg.InsufficientPrivilegeError as exc:
            raise BackupError(
                f"cannot create restore point {name!r}: {exc}",
                hint="connect as a superuser, or GRANT EXECUTE ON FUNCTION pg_create_restore_point(text), pg_switch_wal() to the role",
            ) from None
        except asyncpg.ObjectNotInPrerequisiteStateError as exc:
            raise BackupError(
                f"cannot create restore point {name!r}: {exc}",
                hint="the server needs wal_level=replica and must not be in recovery (apply the archiving settings)",
            ) from None
        point = RestorePoint(name, Lsn.parse(str(row["lsn"])), row["at"], int(row["timeline"]), system_id)
        if ledger is not None:
            ledger.record(point)
        if wait_archived_s is not None:
            # The switch record ends the segment holding the point; that segment must be archived.
            size = int(await conn.fetchval("SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'"))
            last = Segment.containing(max(Lsn.parse(str(switched)), point.lsn) - 1, point.timeline, size)
            await _wait_archived(conn, last, wait_archived_s)
        log.info("restore point %s at LSN %s (%s)", name, point.lsn, point.created_at.isoformat())
        return point
    finally:
        if own:
            await conn.close()
