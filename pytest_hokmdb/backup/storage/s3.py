"""Backups in an S3 (or S3-compatible) bucket: multipart uploads through boto3, botocore's
own retries per request, permanent errors in one line."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from pytest_hokmdb.backup.storage.base import (
    MB,
    ObjectWriter,
    Storage,
    StoredObject,
)
from pytest_hokmdb.backup.streams import Pipe, PipeAborted
from pytest_hokmdb.config.model import BackupSettings
from pytest_hokmdb.errors import BackupError

log = logging.getLogger("hokmdb.backup")



_PERMANENT = {
    "NoSuchBucket": "bucket {bucket} does not exist",
    "AccessDenied": "access denied to s3://{bucket}/{key}",
    "AllAccessDisabled": "access denied to s3://{bucket}/{key}",
    "InvalidAccessKeyId": "the AWS access key is not valid for {endpoint}",
    "SignatureDoesNotMatch": "the AWS secret key does not match the access key for {endpoint}",
    "InvalidBucketName": "{bucket!r} is not a valid bucket name",
    "KMS.NotFoundException": "the KMS key for server-side encryption does not exist",
}


def s3_client(settings: BackupSettings) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=settings.s3_region,
        retries={"mode": "standard", "max_attempts": settings.s3_max_attempts},
        request_checksum_calculation=settings.s3_checksum,
        response_checksum_validation=settings.s3_checksum,
        connect_timeout=10,
        read_timeout=60,
        s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)


def explain_s3_error(exc: BaseException, *, bucket: str, key: str, endpoint: str | None, action: str) -> BackupError:
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    where = endpoint or "AWS S3"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _PERMANENT:
            text = _PERMANENT[code].format(bucket=bucket, key=key, endpoint=where)
            return BackupError(f"cannot {action}: {text}", hint="check backup.s3_bucket / S3_BACKUP_BUCKET_* and the credentials' policy")
        if code in ("404", "NoSuchKey", "NotFound"):
            return BackupError(f"cannot {action}: s3://{bucket}/{key} does not exist")
        if code == "403":
            return BackupError(f"cannot {action}: access denied to s3://{bucket}/{key}")
        return BackupError(f"cannot {action}: S3 error {code or status} on s3://{bucket}/{key}: {exc}")
    if isinstance(exc, NoCredentialsError):
        return BackupError(f"cannot {action}: no AWS credentials", hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile")
    if isinstance(exc, EndpointConnectionError):
        return BackupError(
            f"cannot {action}: S3 endpoint {where} unreachable after retries (backup.s3_max_attempts)",
            hint="check backup.s3_endpoint_url and the network",
        )
    if isinstance(exc, BotoCoreError):
        return BackupError(f"cannot {action}: {exc} (endpoint {where}, after retries)")
    return BackupError(f"cannot {action}: {type(exc).__name__}: {exc}")


class _S3Writer(ObjectWriter):
    """Streams into ``upload_fileobj`` (multipart above the threshold) from another thread."""

    def __init__(self, storage: S3Storage, key: str, on_bytes: Any) -> None:
        from boto3.s3.transfer import TransferConfig

        self.storage = storage
        self.key = key
        self.pipe = Pipe()
        self.error: BaseException | None = None
        self.done = False
        s = storage.settings
        concurrency = 4
        self.config = TransferConfig(
            multipart_threshold=s.s3_multipart_threshold_mb * MB,
            multipart_chunksize=s.s3_multipart_chunk_mb * MB,
            max_concurrency=concurrency,
            use_threads=True,
        )
        # A non-seekable stream is read part by part into memory: bound how many parts wait.
        self.config.max_in_memory_upload_chunks = concurrency + 2
        extra: dict[str, str] = {}
        if s.s3_sse:
            extra["ServerSideEncryption"] = s.s3_sse
            if s.s3_sse == "aws:kms" and s.s3_kms_key_id:
                extra["SSEKMSKeyId"] = s.s3_kms_key_id
        self.extra = extra
        self.thread = threading.Thread(target=self._upload, args=(on_bytes,), name="hokmdb-s3-upload", daemon=True)
        self.thread.start()

    def _upload(self, on_bytes: Any) -> None:
        try:
            self.storage.client.upload_fileobj(
                self.pipe, self.storage.bucket, self.key, ExtraArgs=self.extra or None, Config=self.config, Callback=on_bytes
            )
        except BaseException as exc:  # noqa: BLE001 - reported to the writing side
            self.error = exc
            self.pipe.abort(exc)

    def _raise_upload_error(self) -> None:
        if self.error is not None and not isinstance(self.error, PipeAborted):
            raise explain_s3_error(
                self.error, bucket=self.storage.bucket, key=self.key, endpoint=self.storage.settings.s3_endpoint_url,
                action=f"upload {self.storage.url(self.key.rsplit('/', 1)[-1])}",
            ) from None

    def write(self, data: bytes) -> int:
        try:
            return self.pipe.write(data)
        except PipeAborted:
            self._raise_upload_error()
            raise

    def commit(self) -> None:
        try:
            self.pipe.close()
        except PipeAborted:
            pass
        self.thread.join()
        self.done = True
        if self.error is not None:
            self._raise_upload_error()
            raise BackupError(f"upload of {self.key} failed: {self.error}")

    def abort(self, reason: BaseException | None = None) -> None:
        # The uploader sees the abort on its next read and s3transfer aborts the multipart
        # upload; if the endpoint is gone even that fails and `cleanup` aborts it later.
        self.pipe.abort(reason or BackupError("aborted"))
        self.thread.join(timeout=120)
        self.done = True


class S3Storage(Storage):
    kind = "s3"

    def __init__(self, settings: BackupSettings, bucket: str, prefix: str) -> None:
        self.settings = settings
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.settings)
        return self._client

    def _key(self, name: str) -> str:
        return self.prefix + name

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"

    def _fail(self, exc: BaseException, name: str, action: str) -> BackupError:
        return explain_s3_error(exc, bucket=self.bucket, key=self._key(name), endpoint=self.settings.s3_endpoint_url, action=action)

    @contextlib.contextmanager
    def writer(self, name: str, on_bytes: Any = None) -> Iterator[ObjectWriter]:
        w = _S3Writer(self, self._key(name), on_bytes)
        try:
            yield w
        except BaseException as exc:
            w.abort(exc)
            if isinstance(exc, PipeAborted):
                w._raise_upload_error()
            raise
        finally:
            if not w.done:
                w.abort()

    @contextlib.contextmanager
    def reader(self, name: str) -> Iterator[Any]:
        yield _S3Reader(self, name)

    def size(self, name: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail(exc, name, "read") from None
        except Exception as exc:
            raise self._fail(exc, name, "read") from None
        return int(head["ContentLength"])

    def read_text(self, name: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail(exc, name, "read") from None
        except Exception as exc:
            raise self._fail(exc, name, "read") from None
        return body.decode("utf-8")

    def write_text(self, name: str, text: str) -> None:
        extra: dict[str, str] = {}
        if self.settings.s3_sse:
            extra["ServerSideEncryption"] = self.settings.s3_sse
            if self.settings.s3_sse == "aws:kms" and self.settings.s3_kms_key_id:
                extra["SSEKMSKeyId"] = self.settings.s3_kms_key_id
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(name), Body=text.encode("utf-8"), ContentType="application/json", **extra
            )
        except Exception as exc:
            raise self._fail(exc, name, "write") from None

    def list(self) -> list[StoredObject]:
        out: list[StoredObject] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"):
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.prefix):]
                    out.append(StoredObject(name, int(item["Size"]), item["LastModified"]))
        except Exception as exc:
            raise self._fail(exc, "", "list") from None
        return out

    def delete(self, name: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:
            raise self._fail(exc, name, "delete") from None

    def stale_uploads(self, older_than: datetime) -> list[tuple[str, str]]:
        try:
            found = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        except Exception as exc:
            raise self._fail(exc, "", "list uploads in") from None
        return [
            (u["Key"][len(self.prefix):], u["UploadId"])
            for u in found.get("Uploads", [])
            if u["Initiated"] <= older_than
        ]

    def abort_upload(self, name: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(name), UploadId=upload_id)
        except Exception as exc:
            raise self._fail(exc, name, "abort upload of") from None


class _S3Reader:
    """A streaming GET that resumes with a Range request (pinned to the ETag) after a dropped connection."""

    def __init__(self, storage: S3Storage, name: str, retries: int = 5) -> None:
        self.storage = storage
        self.name = name
        self.offset = 0
        self.etag: str | None = None
        self.retries = retries
        self.body: Any = None

    def _open(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.storage.bucket, "Key": self.storage._key(self.name)}
        if self.offset:
            kwargs["Range"] = f"bytes={self.offset}-"
            if self.etag:
                kwargs["IfMatch"] = self.etag
        try:
            response = self.storage.client.get_object(**kwargs)
        except Exception as exc:
            raise self.storage._fail(exc, self.name, "download") from None
        self.etag = response.get("ETag")
        self.body = response["Body"]

    def read(self, n: int = -1) -> bytes:
        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError

        want = n if n and n > 0 else MB
        for attempt in range(self.retries + 1):
            if self.body is None:
                self._open()
            try:
                data = self.body.read(want)
            except (BotoCoreError, HTTPError, OSError) as exc:
                self.body = None
                if attempt == self.retries:
                    raise self.storage._fail(exc, self.name, "download") from None
                log.warning("download of %s interrupted at byte %d (%s); resuming", self.name, self.offset, exc)
                continue
            self.offset += len(data)
            return data
        return b""  # pragma: no cover

    def readable(self) -> bool:
        return True
