"""Backups as records: the manifest, finding a backup by path, id or ``latest``, listing them."""

from __future__ import annotations

import json
import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pytest_hokmdb.backup.storage import (
    DATA_SUFFIX,
    MANIFEST_SUFFIX,
    Storage,
    backup_id_of,
    split_location,
    storages,
)
from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.errors import BackupError

log = logging.getLogger("hokmdb.backup")

MANIFEST_FORMAT = "hokmdb-backup-manifest"
FORMAT_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def new_backup_id(environment: str, moment: datetime) -> str:
    return f"{environment}-{moment.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


@dataclass
class BackupRecord:
    id: str
    location: str
    manifest: dict[str, Any]
    storage: Storage = field(repr=False)

    @property
    def data_name(self) -> str:
        return self.id + DATA_SUFFIX

    @property
    def manifest_name(self) -> str:
        return self.id + MANIFEST_SUFFIX

    @property
    def manifest_location(self) -> str:
        return self.storage.url(self.manifest_name)

    @property
    def environment(self) -> str:
        return str(self.manifest.get("environment", "?"))

    @property
    def created_at(self) -> datetime:
        return parse_iso(self.manifest["started_at"])

    @property
    def revision(self) -> str | None:
        return self.manifest.get("alembic_revision")

    @property
    def size(self) -> int:
        return int(self.manifest.get("object", {}).get("size", 0))

    @property
    def last_verification(self) -> dict[str, Any] | None:
        runs = self.manifest.get("verifications") or []
        return runs[-1] if runs else None

    @property
    def verified(self) -> bool:
        """The newest verification passed (quick or full)."""
        last = self.last_verification
        return bool(last and last.get("passed"))

    @property
    def verification_failed(self) -> bool:
        last = self.last_verification
        return bool(last and not last.get("passed"))

    def verified_label(self) -> str:
        last = self.last_verification
        if not last:
            return "no"
        return f"{last.get('depth')} {'passed' if last.get('passed') else 'FAILED'}"

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "environment": self.environment,
            "time": self.manifest.get("started_at"),
            "revision": self.revision,
            "size": self.size,
            "verified": self.verified,
            "verification": self.last_verification,
            "location": self.location,
            "reason": self.manifest.get("reason"),
            # Where the dump was read: the primary, or a standby and how far behind it was.
            "source": self.manifest.get("source") or "primary",
        }

    def save_manifest(self) -> None:
        self.storage.write_text(self.manifest_name, json.dumps(self.manifest, indent=2, sort_keys=False) + "\n")

    def record_verification(self, result: dict[str, Any]) -> None:
        """Append a verification result and rewrite the manifest atomically."""
        self.manifest.setdefault("verifications", []).append(result)
        self.save_manifest()


def parse_manifest(text: str, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BackupError(f"manifest {where} is not valid JSON ({exc.msg} at line {exc.lineno}): it is corrupt") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BackupError(f"{where} is not a hokmdb backup manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BackupError(
            f"manifest {where} has format version {version!r}; this hokmdb reads up to {FORMAT_VERSION}",
            hint="use a newer hokmdb to restore it",
        )
    for key in ("id", "environment", "object", "dump", "encryption", "tables", "started_at"):
        if key not in manifest:
            raise BackupError(f"manifest {where} lacks {key!r}: it is incomplete or corrupt")
    return manifest


def load_record(storage: Storage, backup_id: str) -> BackupRecord:
    manifest_name = backup_id + MANIFEST_SUFFIX
    text = storage.read_text(manifest_name)
    if text is None:
        data_exists = storage.size(backup_id + DATA_SUFFIX) is not None
        if data_exists:
            raise BackupError(
                f"missing manifest: {storage.url(manifest_name)} does not exist next to {storage.url(backup_id + DATA_SUFFIX)}; "
                "the backup is incomplete (interrupted before its manifest, the commit point, was written) "
                "or not a hokmdb backup",
                hint="use another backup; `rollback.py cleanup` removes such leftovers",
            )
        raise BackupError(f"no such backup: {storage.url(backup_id + DATA_SUFFIX)} does not exist (neither the object "
                          "nor its manifest)")
    manifest = parse_manifest(text, storage.url(manifest_name))
    if manifest["id"] != backup_id:
        raise BackupError(
            f"manifest {storage.url(manifest_name)} names backup {manifest['id']!r}, not {backup_id!r}: "
            "it belongs to another backup"
        )
    return BackupRecord(backup_id, storage.url(backup_id + DATA_SUFFIX), manifest, storage)


def list_backups(loaded: LoadedConfig, *, environment: str | None = None) -> list[BackupRecord]:
    """Every committed backup (one with a manifest) of the environment, newest first."""
    records: list[BackupRecord] = []
    for storage in storages(loaded):
        try:
            objects = storage.list()
        except BackupError as exc:
            log.warning("backups in %s not listed: %s", storage.url(""), exc.message)
            continue
        for obj in objects:
            if not obj.name.endswith(MANIFEST_SUFFIX):
                continue
            backup_id = backup_id_of(obj.name)
            assert backup_id is not None
            try:
                record = load_record(storage, backup_id)
            except BackupError as exc:
                log.warning("skipping %s: %s", storage.url(obj.name), exc.message)
                continue
            if environment is None or record.environment == environment:
                records.append(record)
    records.sort(key=lambda r: r.created_at, reverse=True)
    return records


# What ``find_backup`` accepts, for the message to an argument that is none of it; an id is
# what ``new_backup_id`` makes.
_ACCEPTED = ("a backup id as `rollback.py list-backups` shows it (ENV-YYYYMMDDTHHMMSSZ-xxxxxx), the path of its "
             f"ID{DATA_SUFFIX} or ID{MANIFEST_SUFFIX}, s3://bucket/prefix/ID{DATA_SUFFIX}, 'latest' or 'latest-verified'")
_BACKUP_ID = re.compile(r"[a-z]+-\d{8}T\d{6}Z-[0-9a-f]{6}")


def find_backup(loaded: LoadedConfig, location: str, *, require_verified: bool = False) -> BackupRecord:
    """A backup by path (object or manifest), ``s3://bucket/key``, id, or ``latest``."""
    environment = loaded.config.environment
    if location in ("latest", "latest-verified"):
        candidates = list_backups(loaded, environment=environment)
        if require_verified or location == "latest-verified":
            usable = [r for r in candidates if r.verified]
            what = "verified backup"
        else:
            usable = [r for r in candidates if not r.verification_failed]
            what = "backup (whose verification did not fail)"
        if not usable:
            where = ", ".join(s.url("") for s in storages(loaded))
            raise BackupError(f"no {what} of {environment} found in {where}", hint="take one: python database/backup.py")
        return usable[0]
    if "://" in location and not location.startswith("s3://"):
        # A URL hokmdb does not read (https://, file://, gs://): not a path to look under.
        raise BackupError(f"{location!r} is not a backup: expected {_ACCEPTED}")
    storage, name = split_location(loaded, location)
    backup_id = backup_id_of(name)
    if backup_id is None:
        # A bare id: look for it where this environment's backups live.
        if "/" not in location:
            for candidate in storages(loaded):
                if candidate.read_text(location + MANIFEST_SUFFIX) is not None or candidate.size(location + DATA_SUFFIX) is not None:
                    return load_record(candidate, location)
            if _BACKUP_ID.fullmatch(location):
                where = ", ".join(s.url("") for s in storages(loaded))
                raise BackupError(f"no such backup: {location!r} is not in {where}",
                                  hint=f"`python database/rollback.py list-backups --environment {environment}` lists the backups")
        raise BackupError(f"{location!r} is not a backup: expected {_ACCEPTED}")
    record = load_record(storage, backup_id)
    if require_verified and not record.verified:
        raise BackupError(f"backup {backup_id} has no passed verification")
    return record
