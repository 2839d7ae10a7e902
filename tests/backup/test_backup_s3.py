"""Backups in S3, against a real S3 HTTP endpoint on 127.0.0.1 (moto's server)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import asyncpg
import pytest
from backup_support import BackupSetup, s3

from pytest_hokmdb.backup import find_backup, list_backups, take_backup, verify_backup
from pytest_hokmdb.backup.retention import plan_cleanup, run_cleanup
from pytest_hokmdb.errors import BackupError


async def test_s3_backup_round_trip_listed_and_downloaded_by_the_aws_cli(s3_setup: BackupSetup, tmp_path: Path) -> None:
    loaded = s3_setup.loaded()
    bucket = loaded.config.backup.s3_bucket
    record = await take_backup(loaded, verify="quick")
    key = f"hokmdb/testing/{record.id}.dump.age"
    assert record.location == f"s3://{bucket}/{key}"
    assert record.manifest["object"]["storage"] == "s3"
    assert [r.location for r in list_backups(loaded)] == [record.location]
    assert not s3_setup.backups_dir.exists() or not any(s3_setup.backups_dir.rglob("*.dump.age"))

    endpoint = loaded.config.backup.s3_endpoint_url
    aws = str(Path(sys.executable).with_name("aws"))
    env = {**os.environ, **s3_setup.env}
    listing = subprocess.run([aws, "--endpoint-url", endpoint, "s3", "ls", f"s3://{bucket}/hokmdb/testing/"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert f"{record.id}.dump.age" in listing.stdout and f"{record.id}.manifest.json" in listing.stdout
    target = tmp_path / "downloaded.dump.age"
    copy = subprocess.run([aws, "--endpoint-url", endpoint, "s3", "cp", record.location, str(target)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert copy.returncode == 0, copy.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == record.manifest["object"]["sha256"]

    # s3://bucket/key is accepted wherever a backup path is: the manifest's key as well
    again = find_backup(loaded, f"s3://{bucket}/hokmdb/testing/{record.id}.manifest.json")
    result = await verify_backup(loaded, again, depth="quick")
    assert result["passed"], result["problems"]
    assert [v["depth"] for v in find_backup(loaded, record.location).manifest["verifications"]] == ["quick", "quick"]


async def test_missing_bucket_is_one_clear_error(s3_setup: BackupSetup) -> None:
    s3_setup.configure(backup__s3_bucket="no-such-bucket-hokmdb", backup__s3_endpoint_url=s3_setup.loaded().config.backup.s3_endpoint_url)
    with pytest.raises(BackupError) as caught:
        await take_backup(s3_setup.loaded(), verify="none")
    assert caught.value.message.startswith("cannot upload s3://no-such-bucket-hokmdb/hokmdb/testing/")
    assert "bucket no-such-bucket-hokmdb does not exist" in caught.value.message


class CuttableProxy:
    """A TCP proxy in front of the S3 endpoint that goes away for good (listener and every
    connection) after forwarding ``cut_after`` request bytes: the endpoint stops mid-upload."""

    def __init__(self, upstream: tuple[str, int], cut_after: int) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.forwarded = 0
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counts: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or self.stopped.is_set():
                    break
                dst.sendall(data)
                if counts:
                    with self.lock:
                        self.forwarded += len(data)
                    if self.forwarded >= self.cut_after:
                        self.stop()
                        break
        except OSError:
            pass

    def stop(self) -> None:
        self.stopped.set()
        try:
            self.listener.close()
        except OSError:
            pass
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


async def test_endpoint_stopped_mid_upload_fails_cleanly_and_leaves_no_backup(s3_setup: BackupSetup) -> None:
    loaded = s3_setup.loaded()
    endpoint = loaded.config.backup.s3_endpoint_url
    bucket = loaded.config.backup.s3_bucket
    assert endpoint and bucket
    # ~16 MB of hex text: a dump of several multipart parts (5 MB each)
    conn = await asyncpg.connect(s3_setup.dsn)
    try:
        await conn.execute(
            "CREATE TABLE bulk AS SELECT g AS id, string_agg(md5(random()::text || j), '') AS payload "
            "FROM generate_series(1, 4000) g, generate_series(1, 128) j GROUP BY g"
        )
        await conn.execute(f'GRANT SELECT ON bulk TO "{s3_setup.live.role}"')
    finally:
        await conn.close()
    host, port = endpoint.removeprefix("http://").split(":")
    proxy = CuttableProxy((host, int(port)), cut_after=2_500_000)
    s3_setup.configure(
        backup__s3_bucket=bucket, backup__s3_endpoint_url=f"http://127.0.0.1:{proxy.port}", backup__s3_region="us-east-1",
        backup__s3_multipart_threshold_mb=5, backup__s3_multipart_chunk_mb=5,
    )
    with pytest.raises(BackupError) as caught:
        await take_backup(s3_setup.loaded(), verify="none")
    assert proxy.stopped.is_set()
    message = caught.value.message
    assert message.startswith("cannot upload s3://") and "unreachable" in message, message

    # Back on the real endpoint: nothing that looks like a backup, no object at all.
    client = s3(endpoint)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    s3_setup.configure(backup__s3_bucket=bucket, backup__s3_endpoint_url=endpoint, backup__s3_region="us-east-1")
    loaded = s3_setup.loaded()
    assert list_backups(loaded) == []
    # The multipart upload could not even be aborted (the endpoint was gone): cleanup does it.
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert len(uploads) == 1 and uploads[0]["Key"].endswith(".dump.age")
    from datetime import timedelta

    plan = await plan_cleanup(loaded, leftover_age=timedelta(0), databases=False)
    assert [name for _, name, _ in plan.uploads] == [uploads[0]["Key"].rsplit("/", 1)[-1]]
    assert await run_cleanup(loaded, plan) == []
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
