"""Where backups live: a local directory or an S3 (or S3-compatible) bucket.

A backup is two objects side by side: ``ID.dump.age`` (the encrypted dump) and
``ID.manifest.json``. The manifest is written last and is the commit point: listing
reads manifests only, so an interrupted backup (a ``.partial`` file, an aborted or
never-completed multipart upload, a data object without a manifest) is never taken for
a backup. ``cleanup`` removes such leftovers.

Retries (S3): botocore's own retry handler (``standard`` mode: exponential backoff with
jitter on throttling, 5xx and connection errors). It retries each request — each
multipart part — on its own, which is the only thing that can work for a stream that is
produced once and cannot be rewound; wrapping the whole upload in tenacity would have to
restart pg_dump. Permanent errors (no such bucket, access denied, bad credentials) are
not retried and become one ``BackupError``.
"""

from __future__ import annotations

from pathlib import Path

from pytest_hokmdb.backup.storage.base import (  # noqa: F401 - the package's API
    DATA_SUFFIX,
    MANIFEST_SUFFIX,
    MB,
    PARTIAL_SUFFIX,
    ObjectWriter,
    Storage,
    StoredObject,
)
from pytest_hokmdb.backup.storage.local import LocalStorage
from pytest_hokmdb.backup.storage.s3 import S3Storage, explain_s3_error, s3_client  # noqa: F401
from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.errors import BackupError


def local_storage(loaded: LoadedConfig) -> LocalStorage:
    return LocalStorage(loaded.resolve(loaded.config.backup.local_dir) / loaded.config.environment)


def s3_storage(loaded: LoadedConfig) -> S3Storage | None:
    settings = loaded.config.backup
    if not settings.s3_bucket:
        return None
    prefix = "/".join(p for p in (settings.s3_prefix.strip("/"), loaded.config.environment) if p)
    return S3Storage(settings, settings.s3_bucket, prefix)


def storages(loaded: LoadedConfig) -> list[Storage]:
    found: list[Storage] = [local_storage(loaded)]
    s3 = s3_storage(loaded)
    if s3 is not None:
        found.append(s3)
    return found


def destination_storage(loaded: LoadedConfig, destination: str | None) -> Storage:
    """``local``, ``s3``, or None: S3 when a bucket is configured, else the local directory."""
    if destination not in (None, "local", "s3"):
        raise BackupError(f"unknown backup destination {destination!r}", hint="use local or s3")
    s3 = s3_storage(loaded)
    if destination == "s3":
        if s3 is None:
            raise BackupError(
                f"--destination s3 but no bucket is configured for {loaded.config.environment}",
                hint="set S3_BACKUP_BUCKET_* (backup.s3_bucket)",
            )
        return s3
    if destination is None and s3 is not None:
        return s3
    return local_storage(loaded)


def split_location(loaded: LoadedConfig, location: str) -> tuple[Storage, str]:
    """A backup path or ``s3://bucket/key`` -> (storage, object name)."""
    if location.startswith("s3://"):
        rest = location[len("s3://"):]
        bucket, _, key = rest.partition("/")
        if not bucket or not key:
            raise BackupError(f"{location!r} is not an s3://bucket/key location")
        prefix, _, name = key.rpartition("/")
        return S3Storage(loaded.config.backup, bucket, prefix), name
    path = Path(location).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    return LocalStorage(path.parent), path.name


def backup_id_of(name: str) -> str | None:
    for suffix in (MANIFEST_SUFFIX, DATA_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None
