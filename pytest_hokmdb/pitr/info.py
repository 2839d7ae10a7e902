"""What the repository holds, from ``pgbackrest info --output=json``, as typed values.

pgBackRest's JSON nests one stanza's status, archive range and backups several levels
deep and reports an undecryptable repository as a status (exit code 0), not a failure;
this module turns it into dataclasses and leaves deciding what is an error to the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pytest_hokmdb.pitr.wal import Lsn, Segment

BackupType = Literal["full", "diff", "incr"]


def _time(epoch: int | float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@dataclass(frozen=True)
class BackupSet:
    """One backup in the repository.

    ``stopped_at`` is pgBackRest's stop timestamp, which it records in whole seconds
    (truncated): the backup really ended at most a second later.
    """

    label: str
    type: BackupType
    started_at: datetime
    stopped_at: datetime
    lsn_start: Lsn
    lsn_stop: Lsn
    wal_start: str
    wal_stop: str
    size: int
    repo_size: int
    prior: str | None
    error: bool

    @property
    def timeline(self) -> int:
        return Segment.parse(self.wal_start).timeline

    def describe(self) -> str:
        return (
            f"{self.label} ({self.type}, {self.started_at:%Y-%m-%d %H:%M:%S} - {self.stopped_at:%H:%M:%S} UTC, "
            f"LSN {self.lsn_start} - {self.lsn_stop})"
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BackupSet:
        info = data.get("info") or {}
        repository = info.get("repository") or {}
        return cls(
            label=data["label"],
            type=data["type"],
            started_at=_time(data["timestamp"]["start"]),
            stopped_at=_time(data["timestamp"]["stop"]),
            lsn_start=Lsn.parse(data["lsn"]["start"]),
            lsn_stop=Lsn.parse(data["lsn"]["stop"]),
            wal_start=data["archive"]["start"],
            wal_stop=data["archive"]["stop"],
            size=int(info.get("size") or 0),
            repo_size=int(repository.get("size") or 0),
            prior=data.get("prior"),
            error=bool(data.get("error", False)),
        )


@dataclass(frozen=True)
class ArchiveRange:
    """The oldest and newest WAL segment archived for one PostgreSQL version/system (``15-1``)."""

    archive_id: str
    min_wal: str | None
    max_wal: str | None


@dataclass(frozen=True)
class StanzaInfo:
    """A stanza's status (code 0 = ok), cipher, archived WAL ranges and backups, oldest first."""

    name: str
    status_code: int
    status_message: str
    repo_status_code: int
    repo_status_message: str
    cipher: str
    system_id: int | None
    pg_version: str | None
    archives: tuple[ArchiveRange, ...]
    backups: tuple[BackupSet, ...]

    @property
    def ok(self) -> bool:
        return self.status_code == 0

    @property
    def usable_backups(self) -> tuple[BackupSet, ...]:
        """Backups restores may start from: those pgBackRest found no page errors in."""
        return tuple(b for b in self.backups if not b.error)

    @property
    def current_archive(self) -> ArchiveRange | None:
        """The archive of the current database (the last one listed)."""
        return self.archives[-1] if self.archives else None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StanzaInfo:
        repos = data.get("repo") or [{}]
        repo_status = repos[0].get("status") or {}
        dbs = data.get("db") or []
        current_db = dbs[-1] if dbs else {}
        backups = sorted((BackupSet.from_json(b) for b in data.get("backup") or []), key=lambda b: (b.stopped_at, b.label))
        return cls(
            name=data.get("name", ""),
            status_code=int((data.get("status") or {}).get("code", 99)),
            status_message=str((data.get("status") or {}).get("message", "")),
            repo_status_code=int(repo_status.get("code", 0)),
            repo_status_message=str(repo_status.get("message", "")),
            cipher=str(data.get("cipher", "")),
            system_id=int(current_db["system-id"]) if "system-id" in current_db else None,
            pg_version=current_db.get("version"),
            archives=tuple(
                ArchiveRange(a.get("id", ""), a.get("min"), a.get("max")) for a in data.get("archive") or []
            ),
            backups=tuple(backups),
        )
