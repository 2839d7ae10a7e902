"""Backups in a local directory: written as ``.partial`` and renamed, fsynced, never half there."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_hokmdb.backup.storage.base import (
    MB,
    PARTIAL_SUFFIX,
    ObjectWriter,
    Storage,
    StoredObject,
)
from pytest_hokmdb.errors import BackupError

log = logging.getLogger("hokmdb.backup")


class _LocalWriter(ObjectWriter):
    def __init__(self, final: Path) -> None:
        self.final = final
        self.partial = final.with_name(final.name + PARTIAL_SUFFIX)
        self.handle = open(self.partial, "wb", buffering=MB)
        self.done = False

    def write(self, data: bytes) -> int:
        return self.handle.write(data)

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.partial, self.final)
        _fsync_dir(self.final.parent)
        self.done = True

    def abort(self, reason: BaseException | None = None) -> None:
        if not self.handle.closed:
            self.handle.close()
        self.partial.unlink(missing_ok=True)
        self.done = True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage(Storage):
    kind = "local"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).resolve()

    def url(self, name: str) -> str:
        return str(self.directory / name)

    def _ensure(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackupError(f"cannot create backup directory {self.directory}: {exc.strerror}") from None

    @contextlib.contextmanager
    def writer(self, name: str, on_bytes: Any = None) -> Iterator[ObjectWriter]:
        self._ensure()
        w = _LocalWriter(self.directory / name)
        try:
            yield w
        except BaseException as exc:
            w.abort(exc)
            raise
        finally:
            if not w.done:
                w.abort()

    @contextlib.contextmanager
    def reader(self, name: str) -> Iterator[Any]:
        try:
            handle = open(self.directory / name, "rb", buffering=MB)
        except FileNotFoundError:
            raise BackupError(f"backup object {self.url(name)} does not exist") from None
        with handle:
            yield handle

    def size(self, name: str) -> int | None:
        try:
            return (self.directory / name).stat().st_size
        except FileNotFoundError:
            return None

    def read_text(self, name: str) -> str | None:
        try:
            return (self.directory / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def write_text(self, name: str, text: str) -> None:
        self._ensure()
        final = self.directory / name
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.directory)

    def list(self) -> list[StoredObject]:
        if not self.directory.is_dir():
            return []
        out = []
        for path in self.directory.iterdir():
            if path.is_file():
                st = path.stat()
                out.append(StoredObject(path.name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        return out

    def delete(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)
